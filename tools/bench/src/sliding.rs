//! sliding: simplified sliding sync (MSC4186) as Element X uses it, for a
//! user in many rooms: the first room-list request (range 0-19, Element X's
//! `required_state`, `timeline_limit` 1), each step of the growing range
//! (100 more rooms a request), the wake-up of an idle long-poll when a
//! message arrives, and what connection state costs the server in memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{Args, Client, current_memory_kib, summary};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// The `required_state` Element X's room list sends (matrix-sdk-ui 0.18).
fn element_x_list(ranges: Value) -> Value {
    json!({"all_rooms": {
        "ranges": ranges,
        "required_state": [
            ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
            ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
            ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
            ["org.matrix.msc3401.call.member", "*"], ["m.room.join_rules", ""],
            ["m.room.tombstone", ""], ["m.room.create", ""], ["m.room.history_visibility", ""],
            ["io.element.functional_members", ""], ["m.space.parent", "*"], ["m.space.child", "*"],
            ["org.matrix.msc3672.beacon_info", "*"]
        ],
        "timeline_limit": 1,
        "filters": {}
    }})
}

async fn request(
    client: &Client,
    token: &str,
    conn_id: &str,
    pos: Option<&str>,
    timeout_ms: u64,
    ranges: Value,
) -> Result<Value> {
    let query = match pos {
        Some(pos) => format!("?pos={pos}&timeout={timeout_ms}"),
        None => format!("?timeout={timeout_ms}"),
    };
    let body = json!({"conn_id": conn_id, "lists": element_x_list(ranges)});
    client.call(reqwest::Method::POST, &format!("{PATH}{query}"), Some(token), Some(body)).await
}

fn pos_of(body: &Value) -> Result<String> {
    Ok(body["pos"].as_str().context("pos")?.to_owned())
}

/// Load the whole list the way Element X grows it: 0-19, then 100 more
/// rooms a request. Returns the last `pos` and each growing step's latency.
async fn load_everything(
    client: &Client,
    token: &str,
    conn_id: &str,
    rooms: usize,
) -> Result<(String, Vec<Duration>)> {
    let first = request(client, token, conn_id, None, 0, json!([[0, 19]])).await?;
    let mut pos = pos_of(&first)?;
    let mut steps = Vec::new();
    let mut end = 99;
    loop {
        let end_now = end.min(rooms - 1);
        let t = Instant::now();
        let body = request(client, token, conn_id, Some(&pos), 0, json!([[0, end_now]])).await?;
        steps.push(t.elapsed());
        pos = pos_of(&body)?;
        if end_now == rooms - 1 {
            return Ok((pos, steps));
        }
        end += 100;
    }
}

pub async fn sliding_benchmark(client: &Client, args: &Args, pid: Option<u32>) -> Result<()> {
    let rooms = args.sliding_rooms.max(20);
    let token = client.register("slider").await?;
    let started = Instant::now();
    let mut room_ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let room = client.create_room(&token).await?;
        client.send(&token, &room, &format!("s{r}")).await?;
        room_ids.push(room);
    }
    println!("sliding setup: {rooms} rooms with a message each in {:.1} s", started.elapsed().as_secs_f64());

    // After a start the server reads each room's recency once (`bump.rs`);
    // that first request is reported on its own.
    let t = Instant::now();
    request(client, &token, "warm-up", None, 0, json!([[0, 19]])).await?;
    println!(
        "sliding first room list after a restart (recency read for {rooms} rooms): {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut first = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        let body = request(client, &token, &format!("first{i}"), None, 0, json!([[0, 19]])).await?;
        first.push(t.elapsed());
        let count = body["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0) as usize;
        anyhow::ensure!(count == rooms, "list count {count}, expected {rooms}");
        let sent = body["rooms"].as_object().map_or(0, |r| r.len());
        anyhow::ensure!(sent == 20, "first request sent {sent} rooms, expected 20");
    }
    summary(&format!("sliding first room list (0-19 of {rooms} rooms)"), first);

    // The same user's initial `/sync` (one event per room, lazy members), for comparison.
    let filter = r#"{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}"#;
    let path = format!(
        "/_matrix/client/v3/sync?filter={}",
        filter.replace('{', "%7B").replace('}', "%7D").replace('"', "%22")
    );
    let mut syncs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        client.call(reqwest::Method::GET, &path, Some(&token), None).await?;
        syncs.push(t.elapsed());
    }
    summary(&format!("/sync initial for the same user ({rooms} rooms, timeline 1, lazy members)"), syncs);

    let mut steps = Vec::new();
    let mut pos = String::new();
    for i in 0..5 {
        let (last, times) = load_everything(client, &token, &format!("grow{i}"), rooms).await?;
        steps.extend(times);
        pos = last;
    }
    summary("sliding growing range step (+100 rooms)", steps);

    // Idle long-poll: a message in one of the rooms wakes it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let watcher = {
        let client = Client { http: client.http.clone(), base: client.base.clone() };
        let token = token.clone();
        let full = json!([[0, rooms - 1]]);
        tokio::spawn(async move {
            loop {
                let Ok(body) = request(&client, &token, "grow4", Some(&pos), 30_000, full.clone()).await
                else {
                    return;
                };
                if body["rooms"].as_object().is_some_and(|r| !r.is_empty()) {
                    let _ = tx.send(Instant::now());
                }
                pos = body["pos"].as_str().unwrap_or_default().to_owned();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut wakes, mut after_stored) = (Vec::new(), Vec::new());
    for n in 0..args.deliveries.min(300) {
        // Let the watcher settle into its next long-poll first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = Instant::now();
        client.send(&token, &room_ids[n % rooms], &format!("wake{n}")).await?;
        let stored = Instant::now();
        let arrived =
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("watcher ended")?;
        wakes.push(arrived.saturating_duration_since(sent));
        // The message exists once its send is answered (the wake-up may even come first).
        after_stored.push(arrived.saturating_duration_since(stored));
    }
    watcher.abort();
    summary("sliding long-poll wake-up (send → answer)", wakes);
    summary("sliding long-poll wake-up (send answered → answer)", after_stored);

    if let Some(pid) = pid {
        connection_memory(client, pid, rooms).await?;
    }
    Ok(())
}

/// Resident memory gained per (room, connection) while connections each
/// hold the whole list, one per device (a device keeps a few connections):
/// 40 connections first (so the allocator has grown to serve such
/// answers), then the cost of 80 more.
async fn connection_memory(client: &Client, pid: u32, rooms: usize) -> Result<()> {
    const WARM: usize = 40;
    const MEASURED: usize = 80;
    let mut devices = Vec::new();
    for _ in 0..WARM + MEASURED {
        let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "slider"},
                           "password": "bench-password"});
        let body = client.call(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(login)).await?;
        devices.push(body["access_token"].as_str().context("access_token")?.to_owned());
    }
    let open = |range: std::ops::Range<usize>| {
        let devices = &devices;
        async move {
            for i in range {
                let first = request(client, &devices[i], "mem", None, 0, json!([[0, rooms - 1]])).await?;
                pos_of(&first)?;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    open(0..WARM).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = current_memory_kib(pid, "VmRSS:").context("VmRSS")?;
    open(WARM..WARM + MEASURED).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = current_memory_kib(pid, "VmRSS:").context("VmRSS")?;
    let per_room = (after.saturating_sub(before) * 1024) as f64 / (MEASURED * rooms) as f64;
    println!(
        "sliding connection state: {MEASURED} more connections × {rooms} rooms: RSS {:.1} → {:.1} MiB, about {per_room:.0} bytes per room per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    Ok(())
}
