//! appservice: events delivered to an appservice, as a bridge sees them.
//! A fresh server (its first user is the admin) gets a minimal appservice,
//! registered through the admin API, whose bot is in every room.
//!
//! - latency: one message at a time, from the start of the send to the
//!   transaction carrying it arriving at the appservice;
//! - throughput: `--clients` senders in rooms of their own send
//!   `--messages-per-client` each at once; events delivered per second.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::{Json, Router, extract::State, routing::put};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::{Args, Client, send_concurrently, start, summary};

const AS_TOKEN: &str = "bench_as_token";

/// The appservice: reports the body of every message it is pushed.
async fn transaction(
    State(arrivals): State<UnboundedSender<(String, Instant)>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let arrived = Instant::now();
    for event in body["events"].as_array().into_iter().flatten() {
        if let Some(text) = event["content"]["body"].as_str() {
            let _ = arrivals.send((text.to_owned(), arrived));
        }
    }
    Json(json!({}))
}

pub async fn appservice_benchmark(binary: &std::path::Path, args: &Args) -> Result<()> {
    let server = start(binary)?;
    let client = Client {
        http: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
        base: server.base.clone(),
    };
    let admin = client.register("asadmin").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (arrivals, mut arrived) = unbounded_channel();
    let app =
        Router::new().route("/_matrix/app/v1/transactions/{txn}", put(transaction)).with_state(arrivals);
    let appservice = tokio::spawn(async move { axum::serve(listener, app).await });
    let registration = json!({
        "id": "bench", "url": url, "as_token": AS_TOKEN, "hs_token": "bench_hs_token",
        "sender_localpart": "benchbot", "namespaces": {"users": [{"exclusive": true, "regex": "@bench_.*"}]},
    });
    client
        .call(reqwest::Method::POST, "/_estuary/admin/v1/appservices", Some(&admin), Some(registration))
        .await?;

    let room = room_with_bot(&client, &admin).await?;
    let mut latencies = Vec::with_capacity(args.deliveries);
    for n in 0..args.deliveries {
        let txn = format!("a{n}");
        let started = Instant::now();
        client.send(&admin, &room, &txn).await?;
        let expected = format!("benchmark message {txn}");
        loop {
            let (text, at) = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                .await?
                .context("appservice ended")?;
            if text == expected {
                latencies.push(at - started);
                break;
            }
        }
    }
    summary("appservice delivery send → transaction", latencies);

    let mut senders = Vec::new();
    for i in 0..args.clients {
        let token = client.register(&format!("assender{i}")).await?;
        senders.push((room_with_bot(&client, &token).await?, token));
    }
    while arrived.try_recv().is_ok() {}
    let total = args.clients * args.messages_per_client;
    let started = Instant::now();
    let senders =
        senders.into_iter().enumerate().map(|(i, (room, token))| (token, room, format!("s{i}m"))).collect();
    send_concurrently(&client, senders, args.messages_per_client).await?;
    let sent = started.elapsed();
    let mut received = 0;
    while received < total {
        tokio::time::timeout(Duration::from_secs(30), arrived.recv()).await?.context("appservice ended")?;
        received += 1;
    }
    let delivered = started.elapsed();
    println!(
        "appservice throughput: {total} messages from {} senders sent in {:.2} s, all delivered in {:.2} s = {:.0} events/s",
        args.clients,
        sent.as_secs_f64(),
        delivered.as_secs_f64(),
        total as f64 / delivered.as_secs_f64()
    );
    appservice.abort();
    Ok(())
}

/// A new room of `token`'s user with the appservice's bot joined.
async fn room_with_bot(client: &Client, token: &str) -> Result<String> {
    let room = client.create_room(token).await?;
    client.invite_and_join(&room, token, "@benchbot:localhost", AS_TOKEN).await?;
    Ok(room)
}
