//! Relations, bundled aggregations, threads, context, timestamps, reports.

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

async fn send(server: &TestServer, user: &User, room: &str, txn: &str, kind: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
    let (status, body) = server.put(&path, Some(&user.token), content).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn ids(events: &Value) -> Vec<&str> {
    events.as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn relations_threads_and_bundled_aggregations() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let root =
        send(&server, &alice, &room, "r", "m.room.message", json!({"msgtype": "m.text", "body": "root"}))
            .await;
    let thread = |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    let t1 = send(&server, &bob, &room, "t1", "m.room.message", thread("reply 1")).await;
    let t2 = send(&server, &alice, &room, "t2", "m.room.message", thread("reply 2")).await;
    let reaction = send(
        &server,
        &bob,
        &room,
        "x",
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}),
    )
    .await;
    let edit = send(&server, &alice, &room, "e", "m.room.message", json!({"msgtype": "m.text", "body": "* root v2",
        "m.new_content": {"msgtype": "m.text", "body": "root v2"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}})).await;
    let fake_edit = send(&server, &bob, &room, "f", "m.room.message", json!({"msgtype": "m.text", "body": "* hijack",
        "m.new_content": {"msgtype": "m.text", "body": "hijack"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}})).await;
    let reference = send(
        &server,
        &bob,
        &room,
        "ref",
        "m.room.message",
        json!({"msgtype": "m.text", "body": "see above",
        "m.relates_to": {"rel_type": "m.reference", "event_id": root}}),
    )
    .await;

    let base = format!("/_matrix/client/v1/rooms/{room}/relations/{root}");
    let (status, all) = server.get(&base, Some(&bob.token)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        ids(&all["chunk"]),
        [reference.as_str(), fake_edit.as_str(), edit.as_str(), reaction.as_str(), t2.as_str(), t1.as_str()],
        "newest first"
    );
    let (_, threads_only) = server.get(&format!("{base}/m.thread?dir=f"), Some(&bob.token)).await;
    assert_eq!(ids(&threads_only["chunk"]), [t1.as_str(), t2.as_str()]);
    let (_, reactions) = server.get(&format!("{base}/m.annotation/m.reaction"), Some(&bob.token)).await;
    assert_eq!(ids(&reactions["chunk"]), [reaction.as_str()]);
    let (_, page) = server.get(&format!("{base}?limit=2"), Some(&bob.token)).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 2);
    let next = page["next_batch"].as_str().unwrap();
    let (_, page2) = server.get(&format!("{base}?limit=10&from={next}"), Some(&bob.token)).await;
    assert_eq!(ids(&page2["chunk"]), [edit.as_str(), reaction.as_str(), t2.as_str(), t1.as_str()]);
    assert!(page2.get("next_batch").is_none_or(|n| n.is_null()));

    // Recursion reaches relations of relations.
    let nested = send(
        &server,
        &alice,
        &room,
        "n",
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": t1, "key": "🎉"}}),
    )
    .await;
    let (_, flat) = server.get(&format!("{base}/m.annotation"), Some(&bob.token)).await;
    assert_eq!(ids(&flat["chunk"]), [reaction.as_str()]);
    let (_, deep) = server.get(&format!("{base}/m.annotation?recurse=true"), Some(&bob.token)).await;
    assert_eq!(ids(&deep["chunk"]), [nested.as_str(), reaction.as_str()]);

    // Bundled aggregations on the root.
    let (_, event) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{root}"), Some(&bob.token)).await;
    let relations = &event["unsigned"]["m.relations"];
    assert_eq!(relations["m.thread"]["count"], 2, "{relations}");
    assert_eq!(relations["m.thread"]["latest_event"]["event_id"], t2.as_str());
    assert_eq!(relations["m.thread"]["current_user_participated"], true);
    assert_eq!(relations["m.reference"]["chunk"], json!([{"event_id": reference}]));
    assert_eq!(relations["m.replace"]["event_id"], edit.as_str(), "only the sender's own edits count");
    assert_eq!(event["content"]["body"], "root", "original content is kept (spec v1.7)");

    // Threads list, and participation.
    let carol = server.register("carol").await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&carol.token), json!({})).await;
    let (_, threads) =
        server.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), Some(&carol.token)).await;
    assert_eq!(ids(&threads["chunk"]), [root.as_str()]);
    let (_, mine) = server
        .get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"), Some(&carol.token))
        .await;
    assert_eq!(mine["chunk"], json!([]));

    // A redacted child no longer relates.
    server
        .put(&format!("/_matrix/client/v3/rooms/{room}/redact/{reaction}/rx"), Some(&bob.token), json!({}))
        .await;
    let (_, reactions) = server.get(&format!("{base}/m.annotation/m.reaction"), Some(&bob.token)).await;
    assert_eq!(reactions["chunk"], json!([]));

    let stranger = server.register("dave").await;
    assert_error(&server.get(&base, Some(&stranger.token)).await, 404, "M_NOT_FOUND");
}

/// `/threads` pages newest first by latest reply; `participated` fills a
/// page past roots the viewer took no part in, and its token goes on from
/// the first root left out.
#[tokio::test]
async fn threads_pages_by_latest_reply_and_participation() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let text = |body: &str| json!({"msgtype": "m.text", "body": body});
    let mut roots = Vec::new();
    for n in 0..5 {
        roots.push(send(&server, &alice, &room, &format!("root{n}"), "m.room.message", text("root")).await);
    }
    // Replies in the order 3, 0, 4, 1, 2: bob takes part in threads 0 and 1.
    for (n, replier) in [(3, &alice), (0, &bob), (4, &alice), (1, &bob), (2, &alice)] {
        let content = json!({"msgtype": "m.text", "body": "reply",
            "m.relates_to": {"rel_type": "m.thread", "event_id": roots[n]}});
        send(&server, replier, &room, &format!("reply{n}"), "m.room.message", content).await;
    }
    let base = format!("/_matrix/client/v1/rooms/{room}/threads");
    let (status, first) = server.get(&format!("{base}?limit=2"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(ids(&first["chunk"]), [roots[2].as_str(), roots[1].as_str()]);
    let next = first["next_batch"].as_str().expect("more threads");
    let (_, second) = server.get(&format!("{base}?limit=2&from={next}"), Some(&bob.token)).await;
    assert_eq!(ids(&second["chunk"]), [roots[4].as_str(), roots[0].as_str()]);
    let next = second["next_batch"].as_str().expect("one more thread");
    let (_, last) = server.get(&format!("{base}?limit=2&from={next}"), Some(&bob.token)).await;
    assert_eq!(ids(&last["chunk"]), [roots[3].as_str()]);
    assert!(last.get("next_batch").is_none_or(Value::is_null), "{last}");

    let mine = format!("{base}?include=participated&limit=2");
    let (_, page) = server.get(&mine, Some(&bob.token)).await;
    assert_eq!(ids(&page["chunk"]), [roots[1].as_str(), roots[0].as_str()], "{page}");
    for event in page["chunk"].as_array().unwrap() {
        assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["count"], 1, "{event}");
    }
    let next = page["next_batch"].as_str().expect("thread 3 is left");
    let (_, rest) = server.get(&format!("{mine}&from={next}"), Some(&bob.token)).await;
    assert_eq!(rest["chunk"], json!([]), "{rest}");
}

#[tokio::test]
async fn context_timestamps_and_reports() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let mut events = Vec::new();
    for i in 0..7 {
        let (_, body) = send_text(&server, &alice, &room, &format!("c{i}"), &format!("msg {i}")).await;
        events.push(body["event_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let (status, context) = server
        .get(&format!("/_matrix/client/v3/rooms/{room}/context/{}?limit=4", events[3]), Some(&alice.token))
        .await;
    assert_eq!(status, 200, "{context}");
    assert_eq!(context["event"]["event_id"], events[3].as_str());
    assert_eq!(ids(&context["events_before"]), [events[2].as_str(), events[1].as_str()]);
    assert_eq!(ids(&context["events_after"]), [events[4].as_str(), events[5].as_str()]);
    assert!(context["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    let (_, more) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=10&from={}",
                context["end"].as_str().unwrap()
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(ids(&more["chunk"]), [events[6].as_str()]);

    let (_, event) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", events[4]), Some(&alice.token)).await;
    let ts = event["origin_server_ts"].as_u64().unwrap();
    let path =
        |ts: u64, dir: &str| format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
    let (status, found) = server.get(&path(ts, "f"), Some(&alice.token)).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], events[4].as_str());
    let (_, before) = server.get(&path(ts - 1, "b"), Some(&alice.token)).await;
    assert_eq!(before["event_id"], events[3].as_str());
    assert_error(&server.get(&path(ts + 60_000, "f"), Some(&alice.token)).await, 404, "M_NOT_FOUND");

    let report = format!("/_matrix/client/v3/rooms/{room}/report/{}", events[0]);
    assert_eq!(server.post(&report, Some(&alice.token), json!({"reason": "spam"})).await.0, 200);
    let stranger = server.register("eve").await;
    assert_error(
        &server.post(&report, Some(&stranger.token), json!({"reason": "x"})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/report"),
                Some(&alice.token),
                json!({"reason": "bad room"})
            )
            .await
            .0,
        200
    );
}
