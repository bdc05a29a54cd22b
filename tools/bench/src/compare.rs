//! compare: one run that puts several homeservers side by side on the
//! figures of issue 20, interleaved scenario by scenario (every server runs
//! a scenario before the next scenario starts, so a slow minute of the
//! machine hurts all of them alike).
//!
//! Targets are `--target NAME=URL[,pid=PID][,data=DIR]`: any homeserver with
//! open registration (`m.login.dummy`) and no rate limits. With `--server`,
//! the Estuary the benchmark starts comes first, as `estuary`. The PID gives
//! server CPU per operation (`/proc/PID/stat`) and memory; DIR gives disk.
//! The benchmark's own CPU per operation is reported too, to show the load
//! generator is not the bottleneck. Before each server's turn, the run
//! waits until every server with a PID is idle, so work one server left
//! behind (a compaction, a queue) is not measured against the next.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{Args, Client, percentile};

pub struct Target {
    pub name: String,
    pub client: Client,
    pub pid: Option<u32>,
    pub data: Option<PathBuf>,
}

/// Parses `NAME=URL[,pid=PID][,data=DIR]`.
pub fn parse_target(spec: &str, http: &reqwest::Client) -> Result<Target> {
    let (name, rest) = spec.split_once('=').context("--target NAME=URL[,pid=PID][,data=DIR]")?;
    let mut parts = rest.split(',');
    let url = parts.next().context("target URL")?.trim_end_matches('/').to_owned();
    let (mut pid, mut data) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("pid", value)) => pid = Some(value.parse().context("target pid")?),
            Some(("data", value)) => data = Some(PathBuf::from(value)),
            _ => bail!("unknown target option {part:?}"),
        }
    }
    Ok(Target { name: name.to_owned(), client: Client { http: http.clone(), base: url }, pid, data })
}

/// CPU seconds a process has used: `pid` or `"self"`. The sum of its
/// threads' run time (`schedstat`, in nanoseconds), or, where that is not
/// available, user + system time from `stat` (in USER_HZ, 100 on Linux:
/// too coarse for one sync).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let nanos: Option<u64> = threads
        .flatten()
        .map(|task| {
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    if let Some(nanos) = nanos {
        return Some(nanos as f64 / 1e9);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The CPU a server and this benchmark use over a scenario.
struct CpuMeter {
    server: Option<(String, f64)>,
    own: f64,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> Self {
        let server = pid.and_then(|p| Some((p.to_string(), cpu_seconds(&p.to_string())?)));
        Self { server, own: cpu_seconds("self").unwrap_or(0.0) }
    }

    /// (server, benchmark) milliseconds of CPU per operation.
    fn per_op(&self, ops: usize) -> (Option<f64>, f64) {
        let ops = ops.max(1) as f64;
        let server =
            self.server.as_ref().and_then(|(pid, before)| Some((cpu_seconds(pid)? - before) * 1000.0 / ops));
        let own = (cpu_seconds("self").unwrap_or(self.own) - self.own) * 1000.0 / ops;
        (server, own)
    }
}

/// Wait (at most 30 s) until every target with a PID uses under 5% of a
/// core over half a second: what one server's scenario left running (a
/// compaction, background jobs) must not land in the next one's figures.
async fn settle(targets: &[Target]) {
    const WINDOW: Duration = Duration::from_millis(500);
    let pids: Vec<String> = targets.iter().filter_map(|t| t.pid).map(|p| p.to_string()).collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let before: Vec<Option<f64>> = pids.iter().map(|p| cpu_seconds(p)).collect();
        tokio::time::sleep(WINDOW).await;
        let busy = pids.iter().zip(&before).any(|(pid, before)| match (before, cpu_seconds(pid)) {
            (Some(before), Some(after)) => after - before > 0.05 * WINDOW.as_secs_f64(),
            _ => false,
        });
        if !busy {
            break;
        }
    }
    if started.elapsed() > Duration::from_secs(2) {
        println!("  (waited {:.1} s for the servers to go idle)", started.elapsed().as_secs_f64());
    }
}

/// A `/proc/PID/status` figure in MB.
fn status_mb(pid: u32, field: &str) -> Option<f64> {
    crate::current_memory_kib(pid, field).map(|kib| kib as f64 / 1024.0)
}

/// Bytes allocated on disk under `dir`, or by a file (what `du` counts).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return std::fs::metadata(dir).map_or(0, |meta| meta.blocks() * 512);
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Figures of one run: figure → target → value. Figures keep their order.
#[derive(Default)]
struct Table {
    order: Vec<String>,
    values: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Table {
    fn put(&mut self, figure: &str, target: &str, value: Option<f64>) {
        let Some(value) = value else { return };
        if !self.values.contains_key(figure) {
            self.order.push(figure.to_owned());
        }
        self.values.entry(figure.to_owned()).or_default().insert(target.to_owned(), value);
        println!("  {target}: {figure} = {value:.2}");
    }

    /// A markdown table, with each peer's ratio to the first target
    /// (above 1: the first target's figure is that many times better).
    fn print(&self, targets: &[Target]) {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let mut header = format!("| figure | {} |", names.join(" | "));
        let mut rule = format!("| --- |{}", " --- |".repeat(names.len()));
        for peer in &names[1..] {
            header.push_str(&format!(" {peer} ÷ {} |", names[0]));
            rule.push_str(" --- |");
        }
        println!("\n{header}\n{rule}");
        for figure in &self.order {
            let row = &self.values[figure];
            let cell = |name: &str| row.get(name).map_or("–".to_owned(), |v| format!("{v:.2}"));
            let mut line =
                format!("| {figure} | {} |", names.iter().map(|n| cell(n)).collect::<Vec<_>>().join(" | "));
            let higher_is_better = figure.contains("(messages/s)");
            for peer in &names[1..] {
                let ratio = match (row.get(*peer), row.get(names[0])) {
                    (Some(p), Some(f)) if *p > 0.0 && *f > 0.0 => {
                        format!("{:.2}", if higher_is_better { f / p } else { p / f })
                    }
                    _ => "–".to_owned(),
                };
                line.push_str(&format!(" {ratio} |"));
            }
            println!("{line}");
        }
    }
}

/// A registered user: access token and user ID.
struct User {
    token: String,
    id: String,
}

async fn register(client: &Client, name: &str) -> Result<User> {
    let (token, id) = client.register_user(name).await?;
    Ok(User { token, id })
}

/// A new device of `user_id` (registered with the benchmark's password).
async fn login(client: &Client, user_id: &str) -> Result<String> {
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": "bench-password",
    });
    let response = client.call(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(body)).await?;
    Ok(response["access_token"].as_str().context("access_token")?.to_owned())
}

async fn join(client: &Client, room: &str, owner: &User, member: &User) -> Result<()> {
    client.invite_and_join(room, &owner.token, &member.id, &member.token).await
}

async fn timed_get(client: &Client, path: &str, token: &str) -> Result<(Duration, usize, serde_json::Value)> {
    timed_get_as(client, path, token).await
}

/// A GET read as `T`: a partial view keeps the benchmark's own parsing
/// (not the server's work) out of the figure.
async fn timed_get_as<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    token: &str,
) -> Result<(Duration, usize, T)> {
    let started = Instant::now();
    let response = client.http.get(format!("{}{path}", client.base)).bearer_auth(token).send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        bail!("{path}: {status}");
    }
    Ok((elapsed, bytes.len(), serde_json::from_slice(&bytes)?))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Senders, each in its own room, send at once: rate, latency, CPU per message.
async fn send(target: &Target, tag: &str, args: &Args, table: &mut Table) -> Result<()> {
    let mut users = Vec::new();
    for i in 0..args.clients {
        let user = register(&target.client, &format!("{tag}s{i}")).await?;
        let room = target.client.create_room(&user.token).await?;
        users.push((user.token, room));
    }
    let cpu = CpuMeter::start(target.pid);
    let started = Instant::now();
    let mut all = crate::timed_sends(&target.client, users, args.messages_per_client).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (server, own) = cpu.per_op(all.len());
    all.sort();
    let name = &target.name;
    table.put(
        &format!("send rate, {} senders (messages/s)", args.clients),
        name,
        Some(all.len() as f64 / elapsed),
    );
    table.put("send p50 (ms)", name, Some(percentile(&all, 0.5)));
    table.put("send p99 (ms)", name, Some(percentile(&all, 0.99)));
    table.put("server CPU per message sent (ms)", name, server);
    table.put("benchmark's own CPU per message sent (ms)", name, Some(own));
    Ok(())
}

/// Send → arrival in another user's waiting `/sync`, one message at a time.
async fn delivery(target: &Target, tag: &str, args: &Args, table: &mut Table) -> Result<()> {
    let client = &target.client;
    let sender = register(client, &format!("{tag}courier")).await?;
    let receiver = register(client, &format!("{tag}recipient")).await?;
    let room = client.create_room(&sender.token).await?;
    join(client, &room, &sender, &receiver).await?;
    let (_, _, initial) = timed_get(client, "/_matrix/client/v3/sync", &receiver.token).await?;
    let mut since = initial["next_batch"].as_str().context("next_batch")?.to_owned();
    // (send → arrival, the send alone, sync requests needed, message number)
    let mut deliveries = Vec::new();
    for n in 0..args.deliveries {
        let text = format!("benchmark message d{n}");
        let watcher = {
            let (client, token, room, text) =
                (client.clone(), receiver.token.clone(), room.clone(), text.clone());
            tokio::spawn(async move {
                // A server may wake the sync for something else first (its
                // own bookkeeping): sync again until the message is there.
                let mut since = since;
                for syncs in 1..=20 {
                    let path = format!("/_matrix/client/v3/sync?since={since}&timeout=10000");
                    let (_, _, body) = timed_get(&client, &path, &token).await?;
                    since = body["next_batch"].as_str().context("next_batch")?.to_owned();
                    let events = body["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned();
                    if events.into_iter().flatten().any(|e| e["content"]["body"] == text.as_str()) {
                        return Ok::<_, anyhow::Error>((Instant::now(), since, syncs));
                    }
                }
                bail!("the message never reached the waiting sync")
            })
        };
        // Let the long-poll reach the server and wait there.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        client.send(&sender.token, &room, &format!("d{n}")).await?;
        let sent = started.elapsed();
        let (arrived, next, syncs) = watcher.await??;
        deliveries.push((arrived - started, sent, syncs, n));
        since = next;
    }
    // Where the slowest deliveries lost their time: in the send, or between
    // the send's answer and the sync's.
    deliveries.sort();
    for (total, sent, syncs, n) in deliveries.iter().rev().take(5) {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {}: slow delivery #{n}: {:.2} ms, of which the send {:.2} ms; {syncs} sync request(s)",
            target.name,
            ms(total),
            ms(sent)
        );
    }
    let resynced = deliveries.iter().filter(|(_, _, syncs, _)| *syncs > 1).count();
    println!("  {}: deliveries that needed more than one sync request: {resynced}", target.name);
    let latencies: Vec<Duration> = deliveries.iter().map(|(total, ..)| *total).collect();
    table.put("delivery to a waiting /sync p50 (ms)", &target.name, Some(percentile(&latencies, 0.5)));
    table.put("delivery to a waiting /sync p99 (ms)", &target.name, Some(percentile(&latencies, 0.99)));
    Ok(())
}

/// Initial sync of a user in `rooms` rooms of `messages` messages each, with
/// `members` members in each room.
async fn initial_sync(
    target: &Target,
    tag: &str,
    (rooms, messages, members): (usize, usize, usize),
    table: &mut Table,
) -> Result<()> {
    let client = &target.client;
    let owner = register(client, &format!("{tag}r{rooms}owner")).await?;
    let mut others = Vec::new();
    for i in 1..members {
        others.push(register(client, &format!("{tag}r{rooms}m{i}")).await?);
    }
    for r in 0..rooms {
        let room = client.create_room(&owner.token).await?;
        for member in &others {
            join(client, &room, &owner, member).await?;
        }
        for m in 0..messages {
            let sender = if others.is_empty() { &owner } else { &others[m % others.len()] };
            client.send(&sender.token, &room, &format!("r{r}m{m}")).await?;
        }
    }
    let runs = if rooms > 100 { 5 } else { 20 };
    let (mut latencies, mut size, mut cpu) = (Vec::new(), 0, Vec::new());
    for _ in 0..runs {
        // A new device each time: Conduit and Synapse answer a repeated
        // request of one device from a cache, which would time nothing.
        let token = login(client, &owner.id).await?;
        let meter = CpuMeter::start(target.pid);
        let (elapsed, bytes, body) = timed_get(client, "/_matrix/client/v3/sync", &token).await?;
        // Let the server finish its own bookkeeping before reading its CPU.
        tokio::time::sleep(Duration::from_millis(20)).await;
        cpu.extend(meter.per_op(1).0);
        let joined = body["rooms"]["join"].as_object().map_or(0, |r| r.len());
        if joined != rooms {
            bail!("{}: initial sync returned {joined} of {rooms} rooms", target.name);
        }
        latencies.push(elapsed);
        size = bytes;
    }
    let server = (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64);
    latencies.sort();
    let plural = |n: usize, word: &str| if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") };
    let what = format!(
        "initial sync, {rooms} rooms × {}, {}",
        plural(messages, "message"),
        plural(members, "member")
    );
    table.put(&format!("{what}, p50 (ms)"), &target.name, Some(percentile(&latencies, 0.5)));
    table.put(&format!("{what}, server CPU (ms)"), &target.name, server);
    table.put(&format!("{what}, response (KB)"), &target.name, Some(size as f64 / 1000.0));
    Ok(())
}

/// What the pagination reads of a `/messages` page.
#[derive(serde::Deserialize)]
struct Page {
    chunk: Vec<serde::de::IgnoredAny>,
    end: Option<String>,
}

/// 1,000 events paged back in pages of 100, five times; the median walk.
async fn pagination(target: &Target, tag: &str, table: &mut Table) -> Result<()> {
    let client = &target.client;
    let user = register(client, &format!("{tag}historian")).await?;
    let room = client.create_room(&user.token).await?;
    let senders = (0..4).map(|w| (user.token.clone(), room.clone(), format!("p{w}-"))).collect();
    crate::send_concurrently(client, senders, 300).await?;
    let cpu = CpuMeter::start(target.pid);
    let mut walks = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut from: Option<String> = None;
        let mut events = 0;
        while events < 1000 {
            let path = match &from {
                Some(token) => {
                    format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100&from={token}")
                }
                None => format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
            };
            let (_, _, page) = timed_get_as::<Page>(client, &path, &user.token).await?;
            if page.chunk.is_empty() {
                bail!("{}: pagination ended after {events} events", target.name);
            }
            events += page.chunk.len();
            from = Some(page.end.context("end")?);
        }
        walks.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (server, _) = cpu.per_op(5);
    table.put("paginating 1,000 events back, pages of 100 (ms)", &target.name, Some(median(walks)));
    table.put("paginating 1,000 events back, server CPU (ms)", &target.name, server);
    Ok(())
}

fn resources(target: &Target, table: &mut Table) {
    if let Some(pid) = target.pid {
        table.put("resident memory after the run (MB)", &target.name, status_mb(pid, "VmRSS:"));
        table.put("peak resident memory (MB)", &target.name, status_mb(pid, "VmHWM:"));
    }
    if let Some(data) = &target.data {
        table.put("disk after the run (MB)", &target.name, Some(disk_bytes(data) as f64 / 1e6));
    }
}

pub async fn compare(targets: &[Target], args: &Args) -> Result<()> {
    // User names unique to this run, so a peer's database can be reused.
    let tag = format!(
        "b{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 1_000_000
    );
    let mut table = Table::default();
    for scenario in args.scenarios.split(',').map(str::trim) {
        println!("{scenario}:");
        for target in targets {
            settle(targets).await;
            let outcome = match scenario {
                "send" => send(target, &tag, args, &mut table).await,
                "delivery" => delivery(target, &tag, args, &mut table).await,
                "sync" => initial_sync(target, &tag, (20, 50, 6), &mut table).await,
                "pagination" => pagination(target, &tag, &mut table).await,
                "sync-large" => initial_sync(target, &tag, (args.compare_rooms, 1, 1), &mut table).await,
                other => bail!("unknown scenario {other:?}"),
            };
            // One server failing a scenario must not hide the others' figures.
            if let Err(error) = outcome {
                println!("  {}: {scenario} failed: {error:#}", target.name);
            }
        }
    }
    for target in targets {
        resources(target, &mut table);
    }
    table.print(targets);
    Ok(())
}

/// A steady load for `minutes`: senders into their rooms at about `rate`
/// messages a second, a waiting `/sync` following them, and every second an
/// initial sync and a page of history; resident memory each minute.
pub async fn soak(target: &Target, minutes: u64, rate: u64) -> Result<()> {
    let client = &target.client;
    let tag = format!(
        "k{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 1_000_000
    );
    let reader = register(client, &format!("{tag}reader")).await?;
    let mut senders = Vec::new();
    for i in 0..10 {
        let user = register(client, &format!("{tag}s{i}")).await?;
        let room = client.create_room(&user.token).await?;
        join(client, &room, &user, &reader).await?;
        senders.push((user, room));
    }
    let (_, _, initial) = timed_get(client, "/_matrix/client/v3/sync", &reader.token).await?;
    let mut since = initial["next_batch"].as_str().context("next_batch")?.to_owned();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next_minute = 0;
    println!("minute | messages sent | resident memory (MB)");
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let second = Instant::now();
        for n in 0..rate {
            let (user, room) = &senders[(n % 10) as usize];
            client.send(&user.token, room, &format!("soak{sent}")).await?;
            sent += 1;
        }
        let path = format!("/_matrix/client/v3/sync?since={since}&timeout=0");
        let (_, _, body) = timed_get(client, &path, &reader.token).await?;
        since = body["next_batch"].as_str().context("next_batch")?.to_owned();
        timed_get(client, "/_matrix/client/v3/sync", &senders[0].0.token).await?;
        let room = &senders[(sent / rate % 10) as usize].1;
        let page = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100");
        timed_get(client, &page, &reader.token).await?;
        if started.elapsed() >= Duration::from_secs(next_minute * 60) {
            let rss = target.pid.and_then(|pid| status_mb(pid, "VmRSS:")).unwrap_or(0.0);
            println!("{next_minute} | {sent} | {rss:.1}");
            next_minute += 1;
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(second.elapsed())).await;
    }
    let rss = target.pid.and_then(|pid| status_mb(pid, "VmRSS:")).unwrap_or(0.0);
    println!("{minutes} (end) | {sent} | {rss:.1}");
    Ok(())
}
