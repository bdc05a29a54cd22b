//! Many clients at once: rooms created, joined, left, renamed and written to
//! in parallel, then every room checked against what each client was told.
//! Also a `kill -9` in the middle of that load, and the consistency check.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

use crate::harness::{TestServer, User};

/// What clients were told: per room, its creator, the last acknowledged
/// value of each single-writer state key, and every acknowledged event.
#[derive(Default)]
struct Told {
    rooms: BTreeMap<String, RoomTold>,
}

#[derive(Default, Clone)]
struct RoomTold {
    creator: String,
    name: String,
    topic: Option<String>,
    /// user → membership, as the user's own last acknowledged change left it.
    members: BTreeMap<String, String>,
    /// user → power level the creator last set.
    power: BTreeMap<String, i64>,
    events: Vec<String>,
}

type Shared = Arc<Mutex<Told>>;

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{room}/{rest}")
}

/// The size of one run: rooms per creator, operations per client.
#[derive(Clone, Copy)]
struct Size {
    rooms_per_creator: usize,
    rounds: usize,
}

const CI_SIZE: Size = Size { rooms_per_creator: 20, rounds: 12 };

/// Register the admin, three creators and three joiners.
async fn users(server: &TestServer) -> (User, Vec<User>, Vec<User>) {
    let admin = server.register("admin").await; // the first account is an admin
    let mut creators = Vec::new();
    let mut joiners = Vec::new();
    for i in 0..3 {
        creators.push(server.register(&format!("creator{i}")).await);
        joiners.push(server.register(&format!("joiner{i}")).await);
    }
    (admin, creators, joiners)
}

/// Every creator creates its rooms all at once (one connection a room).
async fn create_rooms(server: &Arc<TestServer>, creators: &[User], size: Size, told: &Shared) -> usize {
    let mut tasks = Vec::new();
    let start = Arc::new(tokio::sync::Barrier::new(creators.len() * size.rooms_per_creator));
    for creator in creators {
        for i in 0..size.rooms_per_creator {
            let (server, creator, told, start) =
                (server.clone(), creator.clone(), told.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                // Open every connection first, then fire all at the same moment.
                let (status, _) = server.get("/_matrix/client/v3/account/whoami", Some(&creator.token)).await;
                assert_eq!(status, 200);
                start.wait().await;
                let name = format!("{} room {i}", creator.user_id);
                let body = json!({"preset": "public_chat", "name": name, "topic": "first"});
                let (status, response) =
                    server.post("/_matrix/client/v3/createRoom", Some(&creator.token), body).await;
                if status != 200 {
                    return Some(format!("createRoom answered {status}: {response}"));
                }
                let room_id = response["room_id"].as_str().unwrap().to_owned();
                let mut told = told.lock().unwrap();
                let previous = told.rooms.insert(
                    room_id.clone(),
                    RoomTold {
                        creator: creator.user_id.clone(),
                        name,
                        topic: Some("first".into()),
                        members: BTreeMap::from([(creator.user_id.clone(), "join".into())]),
                        ..Default::default()
                    },
                );
                previous.map(|_| format!("room ID {room_id} handed out twice"))
            }));
        }
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(failures.is_empty(), "{} room creations failed: {failures:#?}", failures.len());
    told.lock().unwrap().rooms.len()
}

/// One creator's work on its rooms: topics, power levels, messages.
async fn creator_work(server: Arc<TestServer>, creator: User, joiners: Vec<User>, size: Size, told: Shared) {
    let rooms: Vec<String> = told
        .lock()
        .unwrap()
        .rooms
        .iter()
        .filter(|(_, r)| r.creator == creator.user_id)
        .map(|(id, _)| id.clone())
        .collect();
    for round in 0..size.rounds {
        for (i, room) in rooms.iter().enumerate() {
            let topic = format!("topic {round}");
            let path = room_path(room, "state/m.room.topic/");
            let (status, body) = server.put(&path, Some(&creator.token), json!({"topic": topic})).await;
            assert_eq!(status, 200, "topic: {body}");
            record(&told, room, &body, |r| r.topic = Some(topic.clone()));

            let path = room_path(room, &format!("send/m.room.message/c{round}-{i}"));
            let (status, body) =
                server.put(&path, Some(&creator.token), json!({"msgtype": "m.text", "body": "hi"})).await;
            assert_eq!(status, 200, "message: {body}");
            record(&told, room, &body, |_| {});

            if round % 2 == 1 {
                // Room version 12: creators have unlimited power and are not listed.
                let favourite = &joiners[(round + i) % joiners.len()].user_id;
                let content = json!({"users": {favourite: 50}, "users_default": 0, "events_default": 0,
                    "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0});
                let path = room_path(room, "state/m.room.power_levels/");
                let (status, body) = server.put(&path, Some(&creator.token), content).await;
                assert_eq!(status, 200, "power levels: {body}");
                record(&told, room, &body, |r| {
                    r.power = BTreeMap::from([(favourite.clone(), 50)]);
                });
            }
        }
    }
}

/// One joiner's work: join rooms, talk, leave some, come back to some.
async fn joiner_work(server: Arc<TestServer>, joiner: User, offset: usize, size: Size, told: Shared) {
    let rooms: Vec<String> = told.lock().unwrap().rooms.keys().cloned().collect();
    for round in 0..size.rounds {
        for (i, room) in rooms.iter().enumerate().skip(offset % 2).step_by(2) {
            let joined = told.lock().unwrap().rooms[room].members.get(&joiner.user_id).cloned();
            let (action, after) = match joined.as_deref() {
                Some("join") if (round + i) % 3 == 0 => ("leave", "leave"),
                Some("join") => ("send", "join"),
                _ => ("join", "join"),
            };
            let (status, body) = match action {
                "send" => {
                    let path = room_path(room, &format!("send/m.room.message/j{round}-{i}"));
                    server.put(&path, Some(&joiner.token), json!({"msgtype": "m.text", "body": "yo"})).await
                }
                _ => server.post(&room_path(room, action), Some(&joiner.token), json!({})).await,
            };
            assert_eq!(status, 200, "{} {action} in {room}: {body}", joiner.user_id);
            record(&told, room, &body, |r| {
                r.members.insert(joiner.user_id.clone(), after.into());
            });
        }
    }
}

/// Note an acknowledged response (and its event, if it names one).
fn record(told: &Shared, room: &str, body: &Value, change: impl FnOnce(&mut RoomTold)) {
    let mut told = told.lock().unwrap();
    let room = told.rooms.get_mut(room).expect("known room");
    if let Some(event_id) = body["event_id"].as_str() {
        room.events.push(event_id.to_owned());
    }
    change(room);
}

/// Every room's state, timeline and indexes against what clients were told.
async fn verify(server: &TestServer, admin: &User, creators: &[User], told: &Told) {
    let token_of: HashMap<&str, &str> =
        creators.iter().map(|c| (c.user_id.as_str(), c.token.as_str())).collect();
    for (room, expected) in &told.rooms {
        let token = token_of[expected.creator.as_str()];
        let state = current_state(server, token, room).await;
        let content =
            |t: &str, k: &str| state.get(&(t.to_owned(), k.to_owned())).map(|e| e["content"].clone());
        assert_eq!(content("m.room.name", "").unwrap()["name"], expected.name, "name of {room}");
        assert_eq!(content("m.room.topic", "").unwrap()["topic"], json!(expected.topic), "topic of {room}");
        for (user, membership) in &expected.members {
            let actual = content("m.room.member", user).map(|c| c["membership"].clone());
            assert_eq!(actual, Some(json!(membership)), "membership of {user} in {room}");
        }
        if !expected.power.is_empty() {
            let users = content("m.room.power_levels", "").unwrap()["users"].clone();
            assert_eq!(users, json!(expected.power), "power levels of {room}");
        }
        for event in state.values() {
            assert_eq!(event["room_id"], json!(room), "state of {room} holds another room's event");
        }
        // Replaying the room's own timeline gives its current state, and
        // every acknowledged event is in that timeline once.
        let timeline = timeline(server, token, room).await;
        let mut replayed = BTreeMap::new();
        for event in &timeline {
            if let Some(key) = event["state_key"].as_str() {
                replayed.insert((event["type"].as_str().unwrap().to_owned(), key.to_owned()), event.clone());
            }
        }
        let ids = |m: &BTreeMap<(String, String), Value>| -> BTreeMap<(String, String), Value> {
            m.iter().map(|(k, e)| (k.clone(), e["event_id"].clone())).collect()
        };
        assert_eq!(ids(&replayed), ids(&state), "current state of {room} differs from its timeline replayed");
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for event in &timeline {
            *seen.entry(event["event_id"].as_str().unwrap()).or_default() += 1;
        }
        for event_id in &expected.events {
            assert_eq!(seen.get(event_id.as_str()), Some(&1), "acknowledged {event_id} not once in {room}");
        }
    }
    assert_consistent(server, admin).await;
}

/// The server's own consistency check finds nothing.
pub async fn assert_consistent(server: &TestServer, admin: &User) {
    let (status, report) = server.get("/_estuary/admin/v1/consistency", Some(&admin.token)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["problems"], json!([]), "consistency check: {report}");
    assert!(report["rooms"].as_u64().unwrap() > 0, "{report}");
}

async fn current_state(server: &TestServer, token: &str, room: &str) -> BTreeMap<(String, String), Value> {
    let (status, body) = server.get(&room_path(room, "state"), Some(token)).await;
    assert_eq!(status, 200, "state of {room}: {body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| ((e["type"].as_str().unwrap().into(), e["state_key"].as_str().unwrap().into()), e.clone()))
        .collect()
}

/// The whole timeline, oldest first.
async fn timeline(server: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = String::new();
    for _ in 0..100 {
        let path = room_path(room, &format!("messages?dir=f&limit=500{from}"));
        let (status, page) = server.get(&path, Some(token)).await;
        assert_eq!(status, 200, "messages of {room}: {page}");
        let chunk = page["chunk"].as_array().unwrap();
        events.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
            _ => return events,
        }
    }
    panic!("timeline of {room} did not end");
}

async fn run_load(server: &Arc<TestServer>, creators: &[User], joiners: &[User], size: Size) -> Shared {
    let told: Shared = Arc::default();
    create_rooms(server, creators, size, &told).await;
    let mut tasks = Vec::new();
    for creator in creators {
        let work = creator_work(server.clone(), creator.clone(), joiners.to_vec(), size, told.clone());
        tasks.push(tokio::spawn(work));
    }
    for (i, joiner) in joiners.iter().enumerate() {
        tasks.push(tokio::spawn(joiner_work(server.clone(), joiner.clone(), i, size, told.clone())));
    }
    for task in tasks {
        task.await.unwrap();
    }
    told
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_at_once_leave_every_room_as_they_were_told() {
    let server = Arc::new(TestServer::start().await);
    let (admin, creators, joiners) = users(&server).await;
    let told = run_load(&server, &creators, &joiners, CI_SIZE).await;
    let told = told.lock().unwrap().rooms.clone();
    verify(&server, &admin, &creators, &Told { rooms: told }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_room_creation_by_one_user_gives_distinct_complete_rooms() {
    let server = Arc::new(TestServer::start().await);
    let (admin, creators, _) = users(&server).await;
    let told: Shared = Arc::default();
    // One user, 40 rooms at once: the load that found the v12 room-ID race.
    let count = create_rooms(&server, &creators[..1], Size { rooms_per_creator: 40, rounds: 0 }, &told).await;
    assert_eq!(count, 40);
    let rooms = told.lock().unwrap().rooms.clone();
    verify(&server, &admin, &creators, &Told { rooms }).await;
}

/// `kill -9` in the middle of concurrent room creation and messages: after
/// a restart every acknowledged event is there, no room is half-created, and
/// the consistency check (offline and online) finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_concurrent_load_loses_nothing_acknowledged() {
    let server = Arc::new(TestServer::start().await);
    let (admin, creators, _) = users(&server).await;
    // (room, event, the creator's token) for every acknowledged message.
    let acked: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for creator in creators.clone() {
        for worker in 0..4 {
            let (server, creator, acked) = (server.clone(), creator.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..1000 {
                    let body = json!({"preset": "public_chat", "name": format!("w{worker} r{i}")});
                    let url = format!("{}/_matrix/client/v3/createRoom", server.base);
                    let Ok(response) =
                        server.http().post(url).bearer_auth(&creator.token).json(&body).send().await
                    else {
                        return;
                    };
                    let Ok(room) = response.json::<Value>().await else { return };
                    let Some(room) = room["room_id"].as_str().map(str::to_owned) else {
                        panic!("createRoom refused under load: {room}");
                    };
                    let url = format!(
                        "{}{}",
                        server.base,
                        room_path(&room, &format!("send/m.room.message/w{worker}m{i}"))
                    );
                    let message = json!({"msgtype": "m.text", "body": "before the crash"});
                    let Ok(response) =
                        server.http().put(url).bearer_auth(&creator.token).json(&message).send().await
                    else {
                        return;
                    };
                    let Ok(sent) = response.json::<Value>().await else { return };
                    let Some(event_id) = sent["event_id"].as_str() else {
                        panic!("a message into a room just created was refused: {sent}");
                    };
                    acked.lock().unwrap().push((room, event_id.to_owned(), creator.token.clone()));
                }
            }));
        }
    }
    // Let the load run, then kill the server mid-flight.
    for _ in 0..200 {
        if acked.lock().unwrap().len() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill_9();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    let dir = Arc::into_inner(server).expect("load tasks have ended").kill();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30, "the load made too little progress before the kill: {}", acked.len());

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("--config")
        .arg(dir.path().join("estuary.toml"))
        .arg("check")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "estuary check failed after kill -9: {report}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let server = TestServer::start_in(dir, "allow_registration = true\n");
    for (room, event_id, token) in &acked {
        let (status, event) = server.get(&room_path(room, &format!("event/{event_id}")), Some(token)).await;
        assert_eq!(status, 200, "acknowledged {event_id} in {room} lost: {event}");
    }
    // Every room any creator is in is whole: created, joined, named.
    for creator in &creators {
        let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&creator.token)).await;
        for room in joined["joined_rooms"].as_array().unwrap() {
            let state = current_state(&server, &creator.token, room.as_str().unwrap()).await;
            for key in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name"] {
                assert!(state.contains_key(&(key.to_owned(), String::new())), "{room} lacks {key}");
            }
        }
    }
    assert_consistent(&server, &admin).await;
}

/// A createRoom whose initial state is refused leaves nothing behind: no
/// room in the creator's list or sync, no alias, no directory entry.
#[tokio::test]
async fn a_refused_create_room_leaves_no_trace() {
    let server = Arc::new(TestServer::start().await);
    let (admin, creators, joiners) = users(&server).await;
    let alice = &creators[0];
    let body = json!({
        "preset": "public_chat", "visibility": "public", "room_alias_name": "doomed", "name": "Doomed",
        // Nobody may join someone else into a room: the tenth event is refused.
        "initial_state": [{"type": "m.room.member", "state_key": joiners[0].user_id, "content": {"membership": "join"}}],
    });
    let (status, response) = server.post("/_matrix/client/v3/createRoom", Some(&alice.token), body).await;
    assert_eq!(status, 403, "{response}");
    let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    let (_, sync) = server.get("/_matrix/client/v3/sync", Some(&alice.token)).await;
    assert_eq!(sync["rooms"]["join"].as_object().map_or(0, |r| r.len()), 0, "{sync}");
    let (status, _) = server.get("/_matrix/client/v3/directory/room/%23doomed:localhost", None).await;
    assert_eq!(status, 404, "the alias of a refused room must not resolve");
    let (_, directory) = server.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(directory["chunk"], json!([]));
    // The alias is free again, and a good request makes the room.
    let body = json!({"preset": "public_chat", "room_alias_name": "doomed", "name": "Fine"});
    let (status, response) = server.post("/_matrix/client/v3/createRoom", Some(&alice.token), body).await;
    assert_eq!(status, 200, "{response}");
    assert_consistent(&server, &admin).await;
}

/// A transaction ID is scoped to its endpoint, whose path names the room:
/// the same ID in two rooms sends two events, each in its own room.
#[tokio::test]
async fn one_transaction_id_in_two_rooms_sends_two_events() {
    let server = Arc::new(TestServer::start().await);
    let (_, creators, _) = users(&server).await;
    let alice = &creators[0];
    let mut sent = Vec::new();
    for name in ["one", "two"] {
        let (_, room) =
            server.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"name": name})).await;
        let room = room["room_id"].as_str().unwrap().to_owned();
        let path = room_path(&room, "send/m.room.message/same-txn");
        let (status, body) =
            server.put(&path, Some(&alice.token), json!({"msgtype": "m.text", "body": name})).await;
        assert_eq!(status, 200, "{body}");
        let event_id = body["event_id"].as_str().unwrap().to_owned();
        let (status, event) =
            server.get(&room_path(&room, &format!("event/{event_id}")), Some(&alice.token)).await;
        assert_eq!((status.as_u16(), &event["content"]["body"]), (200, &json!(name)));
        sent.push(event_id);
    }
    assert_ne!(sent[0], sent[1]);
}

/// The consistency check is for server admins only.
#[tokio::test]
async fn the_consistency_check_needs_an_admin() {
    let server = TestServer::start().await;
    let admin = server.register("admin").await; // the first account is an admin
    let alice = server.register("alice").await;
    let path = "/_estuary/admin/v1/consistency";
    crate::harness::assert_error(&server.get(path, None).await, 401, "M_MISSING_TOKEN");
    crate::harness::assert_error(&server.get(path, Some("nonsense")).await, 401, "M_UNKNOWN_TOKEN");
    crate::harness::assert_error(&server.get(path, Some(&alice.token)).await, 403, "M_FORBIDDEN");
    let (status, report) = server.get(path, Some(&admin.token)).await;
    assert_eq!((status.as_u16(), &report["problems"]), (200, &json!([])), "{report}");
}
