//! `estuary-bench`: start a real Estuary on loopback with a temporary
//! database and measure it from the outside, as clients see it.
//!
//! - send: N clients, each in its own room, send messages concurrently;
//!   throughput and send latency percentiles.
//! - messages: one room filled with many events; `/messages` latency from
//!   the newest event and from deep in the history.
//!
//! - delivery, initial sync: see their functions.
//! - search: `/search` latency over the `/messages` room's history, for rare
//!   and common words, by rank and by recency.
//! - media: upload and download throughput of a 10 MB file, and the peak
//!   memory a fresh server gains while a 50 MiB file goes up and down.
//!
//! - rooms: room setup as a busy server sees it: three users create public,
//!   named rooms from 8 and then 32 concurrent connections, and a fourth
//!   user joins each; any refusal fails the run (the createRoom race).
//!
//! - appservice: delivery to an appservice (see `appservice.rs`).
//!
//! - sliding: simplified sliding sync as Element X uses it (see `sliding.rs`).
//!
//! - compare (`--target`): several homeservers side by side (see `compare.rs`).
//!
//! Also reports the server's peak resident memory (VmHWM).

mod appservice;
mod compare;
mod sliding;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Benchmark a real Estuary over HTTP")]
struct Args {
    /// The estuary binary to start (or give `--url` for a running server).
    #[arg(long, required_unless_present_any = ["url", "target"])]
    server: Option<std::path::PathBuf>,
    /// Drive a homeserver that is already running (any implementation, with
    /// open registration) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// With `--url`: the server's process ID, for its memory figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Concurrent clients (each with its own room) for the send benchmark.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 250)]
    messages_per_client: usize,
    /// Events in the room the /messages benchmark reads.
    #[arg(long, default_value_t = 100_000)]
    history: usize,
    /// /messages requests to time.
    #[arg(long, default_value_t = 300)]
    reads: usize,
    /// Messages whose delivery to a waiting /sync is timed.
    #[arg(long, default_value_t = 1000)]
    deliveries: usize,
    /// Rooms (with `--messages-per-room` each) for the initial sync benchmark.
    #[arg(long, default_value_t = 200)]
    sync_rooms: usize,
    #[arg(long, default_value_t = 50)]
    messages_per_room: usize,
    /// Rooms each room-setup run creates (at 8 and at 32 concurrent clients).
    #[arg(long, default_value_t = 400)]
    room_setups: usize,
    /// Rooms of the user whose room list the sliding sync benchmark loads.
    #[arg(long, default_value_t = 1000)]
    sliding_rooms: usize,
    /// Compare homeservers instead: `NAME=URL[,pid=PID][,data=DIR]`, once per
    /// server (with `--server`, the Estuary started comes first).
    #[arg(long)]
    target: Vec<String>,
    /// With `--target`: rooms of the user in the large initial sync.
    #[arg(long, default_value_t = 1000)]
    compare_rooms: usize,
    /// With `--target`: instead of comparing, hold a steady load on the
    /// first target for this many minutes and report its memory each minute.
    #[arg(long)]
    soak_minutes: Option<u64>,
    /// With `--soak-minutes`: messages sent a second.
    #[arg(long, default_value_t = 100)]
    soak_rate: u64,
    /// With `--target`: which comparisons to run, comma-separated.
    #[arg(long, default_value = "send,delivery,sync,pagination,sync-large")]
    scenarios: String,
    /// Which benchmarks to run, comma-separated.
    #[arg(long, default_value = "rooms,send,messages,search,delivery,sync,sliding,media,appservice")]
    only: String,
}

struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &std::path::Path) -> Result<Server> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("estuary.toml");
    std::fs::write(
        &config,
        format!(
            "port = 0\nallow_registration = true\nrc_enabled = false\nlog = \"warn,estuary=info\"\ndatabase_path = \"{}\"\n",
            dir.path().join("db").display()
        ),
    )?;
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .context("starting estuary")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(pos) = line.find("listening on http://") {
                let _ = tx.send(line[pos + 20..].trim().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).context("server did not start")?;
    Ok(Server { child, base: format!("http://{addr}"), dir })
}

fn peak_memory_kib(pid: u32) -> Option<u64> {
    current_memory_kib(pid, "VmHWM:")
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    async fn register(&self, name: &str) -> Result<String> {
        Ok(self.register_user(name).await?.0)
    }

    /// A new account (password `bench-password`): its access token and user ID.
    async fn register_user(&self, name: &str) -> Result<(String, String)> {
        let body = json!({"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy"}});
        let response =
            self.call(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(body)).await?;
        let field =
            |key: &str| Ok::<_, anyhow::Error>(response[key].as_str().context(key.to_owned())?.to_owned());
        Ok((field("access_token")?, field("user_id")?))
    }

    async fn create_room(&self, token: &str) -> Result<String> {
        let response = self
            .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(token), Some(json!({})))
            .await?;
        Ok(response["room_id"].as_str().context("room_id")?.to_owned())
    }

    /// `inviter` invites `invitee` into `room`, who joins with `invitee_token`.
    async fn invite_and_join(
        &self,
        room: &str,
        inviter: &str,
        invitee: &str,
        invitee_token: &str,
    ) -> Result<()> {
        let invite = json!({"user_id": invitee});
        let path = format!("/_matrix/client/v3/rooms/{room}/invite");
        self.call(reqwest::Method::POST, &path, Some(inviter), Some(invite)).await?;
        let path = format!("/_matrix/client/v3/rooms/{room}/join");
        self.call(reqwest::Method::POST, &path, Some(invitee_token), Some(json!({}))).await?;
        Ok(())
    }

    async fn send(&self, token: &str, room: &str, txn: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        let body = json!({"msgtype": "m.text", "body": format!("benchmark message {txn}")});
        self.call(reqwest::Method::PUT, &path, Some(token), Some(body)).await.map(|_| ())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn summary(name: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
}

/// Each (token, room, prefix) sends `count` messages (transaction IDs
/// `{prefix}{n}`) in order, all of them at once.
async fn send_concurrently(
    client: &Client,
    senders: Vec<(String, String, String)>,
    count: usize,
) -> Result<()> {
    let tasks = senders.into_iter().map(|(token, room, prefix)| {
        let client = Client { http: client.http.clone(), base: client.base.clone() };
        tokio::spawn(async move {
            for n in 0..count {
                client.send(&token, &room, &format!("{prefix}{n}")).await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    for result in futures::future::join_all(tasks).await {
        result??;
    }
    Ok(())
}

/// Each (token, room) sends `count` messages in order, all senders at
/// once; every send's latency.
async fn timed_sends(client: &Client, users: Vec<(String, String)>, count: usize) -> Result<Vec<Duration>> {
    let tasks = users.into_iter().enumerate().map(|(i, (token, room))| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for n in 0..count {
                let t = Instant::now();
                client.send(&token, &room, &format!("c{i}m{n}")).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    });
    let mut all = Vec::new();
    for result in futures::future::join_all(tasks).await {
        all.extend(result??);
    }
    Ok(all)
}

async fn send_benchmark(client: &Client, args: &Args) -> Result<()> {
    let mut users = Vec::new();
    for i in 0..args.clients {
        let token = client.register(&format!("sender{i}")).await?;
        let room = client.create_room(&token).await?;
        users.push((token, room));
    }
    let started = Instant::now();
    let all = timed_sends(client, users, args.messages_per_client).await?;
    let elapsed = started.elapsed();
    println!(
        "send: {} messages by {} clients into {} rooms in {:.2} s = {:.0} messages/s",
        all.len(),
        args.clients,
        args.clients,
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64()
    );
    summary("send latency", all);
    Ok(())
}

async fn messages_benchmark(client: &Client, args: &Args) -> Result<(String, String)> {
    let token = client.register("historian").await?;
    let room = client.create_room(&token).await?;
    let started = Instant::now();
    // Fill with concurrent senders (they serialise on the room, as in real life).
    let writers = 8;
    let senders = (0..writers).map(|w| (token.clone(), room.clone(), format!("h{w}-"))).collect();
    send_concurrently(client, senders, args.history / writers).await?;
    println!(
        "history: {} events into one room in {:.1} s",
        args.history / writers * writers,
        started.elapsed().as_secs_f64()
    );
    // Newest page, repeatedly.
    let newest = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    let mut latencies = Vec::new();
    for _ in 0..args.reads {
        let t = Instant::now();
        client.call(reqwest::Method::GET, &newest, Some(&token), None).await?;
        latencies.push(t.elapsed());
    }
    summary("/messages newest page (limit 50)", latencies);
    // Deep pages: walk back through the history with the `end` tokens.
    let mut latencies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..args.reads {
        let path = match &from {
            Some(token) => format!("{newest}&from={token}"),
            None => newest.clone(),
        };
        let t = Instant::now();
        let page = client.call(reqwest::Method::GET, &path, Some(&token), None).await?;
        latencies.push(t.elapsed());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    summary("/messages paginating back (limit 50)", latencies);
    Ok((token, room))
}

/// `/search` over the history room: rare words (one match), common words
/// (every message matches), two words, by recency and by rank.
async fn search_benchmark(client: &Client, args: &Args, token: &str) -> Result<()> {
    let writers = 8;
    let per_writer = args.history / writers;
    let queries: Vec<(String, &str)> = (0..args.reads)
        .map(|i| match i % 4 {
            0 => (format!("h{}-{}", i % writers, (i * 7919) % per_writer.max(1)), "recent"),
            1 => ("benchmark".to_owned(), "recent"),
            2 => ("benchmark message".to_owned(), "rank"),
            _ => (format!("{}", (i * 104729) % per_writer.max(1)), "rank"),
        })
        .collect();
    let mut by_kind: [Vec<Duration>; 4] = Default::default();
    for (i, (term, order)) in queries.iter().enumerate() {
        let body = json!({"search_categories": {"room_events": {"search_term": term, "order_by": order}}});
        let t = Instant::now();
        let found =
            client.call(reqwest::Method::POST, "/_matrix/client/v3/search", Some(token), Some(body)).await?;
        by_kind[i % 4].push(t.elapsed());
        if found["search_categories"]["room_events"]["results"].as_array().is_none_or(|r| r.is_empty()) {
            bail!("search for {term} found nothing");
        }
    }
    let all: Vec<Duration> = by_kind.iter().flatten().copied().collect();
    let [rare, common, two, number] = by_kind;
    summary("search rare word, recent", rare);
    summary("search common word, recent", common);
    summary("search two common words, rank", two);
    summary("search number, rank", number);
    summary("search all queries", all);
    Ok(())
}

fn current_memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Upload then download, returning the seconds each took.
async fn round_trip(client: &Client, token: &str, data: Vec<u8>) -> Result<(f64, f64)> {
    let len = data.len();
    let t = Instant::now();
    let response = client
        .http
        .post(format!("{}/_matrix/media/v3/upload", client.base))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(data)
        .send()
        .await?;
    let uploaded: Value = response.json().await?;
    let up = t.elapsed().as_secs_f64();
    let mxc = uploaded["content_uri"].as_str().context("content_uri")?;
    let t = Instant::now();
    let mut response = client
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{}", client.base, &mxc["mxc://".len()..]))
        .bearer_auth(token)
        .send()
        .await?;
    let mut received = 0;
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len();
    }
    if received != len {
        bail!("downloaded {received} of {len} bytes");
    }
    Ok((up, t.elapsed().as_secs_f64()))
}

/// Throughput of a 10 MB file, then the memory a fresh server gains while a
/// 50 MiB file goes up and down (the file is streamed, never held whole).
async fn media_benchmark(binary: &std::path::Path) -> Result<()> {
    let server = start(binary)?;
    let client = Client { http: reqwest::Client::new(), base: server.base.clone() };
    let token = client.register("uploader").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let idle = current_memory_kib(pid, "VmRSS:").context("VmRSS")?;
    // Reset the peak to now, so registration's password hashing does not count.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting VmHWM")?;
    let big: Vec<u8> = (0..50 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    round_trip(&client, &token, big).await?;
    let peak = current_memory_kib(pid, "VmHWM:").context("VmHWM")?;
    println!(
        "media 50 MiB up and down: idle {:.1} MiB, peak {:.1} MiB, +{:.1} MiB",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(idle) as f64 / 1024.0
    );
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for round in 0..5u32 {
        let data: Vec<u8> = (0..10_000_000u32)
            .map(|i| (i.wrapping_mul(2246822519).wrapping_add(round) >> 24) as u8)
            .collect();
        let (up, down) = round_trip(&client, &token, data).await?;
        ups.push(10.0 / up);
        downs.push(10.0 / down);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("media 10 MB: upload {:.0} MB/s, download {:.0} MB/s (mean of 5)", mean(&ups), mean(&downs));
    Ok(())
}

/// Send → arrival in another user's waiting `/sync`, one message at a time.
async fn delivery_benchmark(client: &Client, args: &Args) -> Result<()> {
    let sender = client.register("courier").await?;
    let receiver = client.register("recipient").await?;
    let room = client.create_room(&sender).await?;
    client.invite_and_join(&room, &sender, "@recipient:localhost", &receiver).await?;
    let initial = client.call(reqwest::Method::GET, "/_matrix/client/v3/sync", Some(&receiver), None).await?;
    let mut since = initial["next_batch"].as_str().context("next_batch")?.to_owned();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watcher = {
        let client = Client { http: client.http.clone(), base: client.base.clone() };
        let room = room.clone();
        tokio::spawn(async move {
            loop {
                let path = format!("/_matrix/client/v3/sync?since={since}&timeout=30000");
                let Ok(body) = client.call(reqwest::Method::GET, &path, Some(&receiver), None).await else {
                    return;
                };
                let arrived = Instant::now();
                for event in
                    body["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten()
                {
                    if let Some(text) = event["content"]["body"].as_str() {
                        let _ = tx.send((text.to_owned(), arrived));
                    }
                }
                since = body["next_batch"].as_str().unwrap_or_default().to_owned();
            }
        })
    };
    let mut latencies = Vec::with_capacity(args.deliveries);
    for n in 0..args.deliveries {
        let started = Instant::now();
        let txn = format!("d{n}");
        client.send(&sender, &room, &txn).await?;
        let expected = format!("benchmark message {txn}");
        loop {
            let (text, arrived) =
                tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("watcher ended")?;
            if text == expected {
                latencies.push(arrived - started);
                break;
            }
        }
    }
    watcher.abort();
    summary("delivery send → waiting /sync", latencies);
    Ok(())
}

/// Initial sync of a user in many rooms with history.
async fn initial_sync_benchmark(client: &Client, args: &Args) -> Result<()> {
    let token = client.register("member").await?;
    let started = Instant::now();
    for r in 0..args.sync_rooms {
        let room = client.create_room(&token).await?;
        for m in 0..args.messages_per_room {
            client.send(&token, &room, &format!("r{r}m{m}")).await?;
        }
    }
    println!(
        "initial sync setup: {} rooms × {} messages in {:.1} s",
        args.sync_rooms,
        args.messages_per_room,
        started.elapsed().as_secs_f64()
    );
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let body = client.call(reqwest::Method::GET, "/_matrix/client/v3/sync", Some(&token), None).await?;
        latencies.push(t.elapsed());
        let rooms = body["rooms"]["join"].as_object().map_or(0, |r| r.len());
        if rooms != args.sync_rooms {
            bail!("initial sync returned {rooms} rooms");
        }
    }
    summary("initial sync", latencies);
    Ok(())
}

/// Room setup from `concurrency` connections at once: create (public,
/// named) and a join by another user. Every request must succeed.
async fn room_setup_benchmark(client: &Client, args: &Args, concurrency: usize) -> Result<()> {
    let mut creators = Vec::new();
    for i in 0..3 {
        creators.push(client.register(&format!("setup{concurrency}c{i}")).await?);
    }
    let joiner = client.register(&format!("setup{concurrency}j")).await?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks = (0..concurrency).map(|worker| {
        let client = Client { http: client.http.clone(), base: client.base.clone() };
        let (creators, joiner, next, total) =
            (creators.clone(), joiner.clone(), next.clone(), args.room_setups);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let token = &creators[(n + worker) % creators.len()];
                let body = json!({"preset": "public_chat", "name": format!("room {n}")});
                let t = Instant::now();
                let created = client
                    .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(token), Some(body))
                    .await?;
                latencies.push(t.elapsed());
                let room = created["room_id"].as_str().context("room_id")?;
                let path = format!("/_matrix/client/v3/rooms/{room}/join");
                client.call(reqwest::Method::POST, &path, Some(&joiner), Some(json!({}))).await?;
            }
        })
    });
    let mut all = Vec::new();
    for result in futures::future::join_all(tasks).await {
        all.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "room setup, {concurrency} concurrent clients: {} rooms created and joined in {elapsed:.2} s ({:.0} rooms/s), no refusals",
        all.len(),
        all.len() as f64 / elapsed
    );
    summary(&format!("createRoom latency ({concurrency} clients)"), all);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = args.server.as_deref().filter(|_| args.url.is_none()).map(start).transpose()?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    if !args.target.is_empty() {
        let mut targets = Vec::new();
        if let Some(server) = &server {
            let client = Client { http: http.clone(), base: server.base.clone() };
            let data = Some(server.dir.path().join("db"));
            targets.push(compare::Target {
                name: "estuary".into(),
                client,
                pid: Some(server.child.id()),
                data,
            });
        }
        for spec in &args.target {
            targets.push(compare::parse_target(spec, &http)?);
        }
        if let Some(minutes) = args.soak_minutes {
            return compare::soak(&targets[0], minutes, args.soak_rate).await;
        }
        return compare::compare(&targets, &args).await;
    }
    let base = match (&server, &args.url) {
        (Some(server), _) => server.base.clone(),
        (None, Some(url)) => url.trim_end_matches('/').to_owned(),
        (None, None) => bail!("give --server, --url or --target"),
    };
    let pid = server.as_ref().map(|s| s.child.id()).or(args.pid);
    let client = Client { http, base };
    let run = |name: &str| args.only.split(',').any(|b| b.trim() == name);
    if run("appservice") {
        match &args.server {
            Some(binary) => appservice::appservice_benchmark(binary, &args).await?,
            None => println!("appservice: skipped (it starts its own server; needs --server)"),
        }
    }
    if run("media") {
        match &args.server {
            Some(binary) => media_benchmark(binary).await?,
            None => println!("media: skipped (it starts its own server; needs --server)"),
        }
    }
    if run("rooms") {
        for concurrency in [8, 32] {
            room_setup_benchmark(&client, &args, concurrency).await?;
        }
    }
    if run("send") {
        send_benchmark(&client, &args).await?;
    }
    if run("messages") || run("search") {
        let (token, _room) = messages_benchmark(&client, &args).await?;
        if run("search") {
            search_benchmark(&client, &args, &token).await?;
        }
    }
    if run("delivery") {
        delivery_benchmark(&client, &args).await?;
    }
    if run("sync") {
        initial_sync_benchmark(&client, &args).await?;
    }
    if run("sliding") {
        sliding::sliding_benchmark(&client, &args, pid).await?;
    }
    if let Some(kib) = pid.and_then(peak_memory_kib) {
        println!("server peak memory (VmHWM): {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
