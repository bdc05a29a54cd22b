//! The durable outgoing queue: jobs for remote HTTP endpoints (push
//! gateways, other servers; appservice transactions will share it), stored
//! in RocksDB so a restart loses nothing, delivered in order per
//! destination, one request in flight per destination, destinations in
//! parallel (one slow server never holds up another), with exponential
//! backoff per destination.
//!
//! A destination is a kind and an address: `push <url>` or `fed <server>`.
//! Federation jobs are PDUs and EDUs, batched into `/send` transactions of
//! at most 50 PDUs and 100 EDUs.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use estuary_core::Result;
use estuary_storage::{Batch, Db, Table, codec::Json};
use ruma::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::{sync::Notify, time::Instant};

use crate::{federation::client::FederationClient, storage_error::StorageResultExt};

/// A push to a push gateway (`/_matrix/push/v1/notify`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushJob {
    pub url: String,
    pub body: JsonValue,
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
}

/// One queued job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Job {
    Push(PushJob),
    /// A PDU for another server, in its federation form.
    Pdu {
        pdu: JsonValue,
    },
    /// An EDU (typing notifications and read receipts so far).
    Edu {
        edu: JsonValue,
    },
}

const FEDERATION_PREFIX: &str = "fed ";
const MAX_TXN_PDUS: usize = 50;
const MAX_TXN_EDUS: usize = 100;

/// The queue destination of a server.
pub fn server_destination(server: &ServerName) -> String {
    format!("{FEDERATION_PREFIX}{server}")
}

const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Outgoing {
    db: Db,
    queue: Table<(String, u64), Json<Job>>,
    federation: Arc<FederationClient>,
    /// Destinations with a delivery running now.
    in_flight: Mutex<HashSet<String>>,
    pushers: Table<(String, String, String), Json<JsonValue>>,
    http: reqwest::Client,
    wake: Notify,
    next_seq: AtomicU64,
    /// Destination → (retry not before, current backoff).
    backoff: Mutex<HashMap<String, (Instant, Duration)>>,
}

enum Outcome {
    Delivered,
    /// The endpoint refused the job for good (4xx): drop it.
    Refused,
    Retry,
}

impl Outgoing {
    pub fn new(db: &Db, federation: Arc<FederationClient>) -> Result<Self> {
        let queue: Table<(String, u64), Json<Job>> = db.table("destinationseq_job").db()?;
        // Sequence numbers only grow, also across restarts: they name
        // federation transactions, which a server must never see reused.
        // Start at the clock in microseconds, or after the greatest queued.
        let mut next = estuary_core::time::now_millis() * 1000;
        for ((_, seq), _) in queue.scan_raw_prefix(&[], usize::MAX).db()? {
            next = next.max(seq + 1);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("Estuary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(estuary_core::Error::internal)?;
        Ok(Self {
            db: db.clone(),
            queue,
            federation,
            in_flight: Mutex::new(HashSet::new()),
            pushers: db.table("useridappidpushkey_pusher").db()?,
            http,
            wake: Notify::new(),
            next_seq: AtomicU64::new(next),
            backoff: Mutex::new(HashMap::new()),
        })
    }

    /// Queue a job for `destination` (jobs of one destination go in order).
    pub fn enqueue(&self, destination: &str, job: Job) -> Result<()> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.queue.put(&(destination.to_owned(), seq), &Json(job)).db()?;
        self.wake.notify_one();
        Ok(())
    }

    /// Queue a job inside `batch`: it is delivered only if the batch commits
    /// (an event and its delivery to other servers are one write). Call
    /// `wake` after the commit.
    pub fn stage(&self, batch: &mut Batch, destination: &str, job: Job) {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        batch.put(&self.queue, &(destination.to_owned(), seq), &Json(job));
    }

    /// Start delivering what was staged.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A destination showed it is up (it sent us a request): retry what is
    /// queued for it now rather than after its backoff.
    pub fn destination_is_up(&self, destination: &str) {
        if self.backoff.lock().expect("backoff").remove(destination).is_some() {
            self.wake.notify_one();
        }
    }

    /// Number of queued jobs (for tests and admin reports).
    pub fn queued(&self) -> Result<usize> {
        Ok(self.queue.scan_raw_prefix(&[], usize::MAX).db()?.len())
    }

    /// Start the delivery worker.
    pub fn spawn_worker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let pause = match this.deliver_due().await {
                    Ok(pause) => pause,
                    Err(err) => {
                        tracing::error!("outgoing queue: {err}");
                        Duration::from_secs(5)
                    }
                };
                tokio::select! {
                    _ = this.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        })
    }

    /// Start a delivery for every destination with queued jobs that is due
    /// and has none running; returns how long until the next retry.
    async fn deliver_due(self: &Arc<Self>) -> Result<Duration> {
        let mut destinations: Vec<String> = Vec::new();
        for ((destination, _), _) in self.queue.scan_raw_prefix(&[], 10_000).db()? {
            if destinations.last() != Some(&destination) {
                destinations.push(destination);
            }
        }
        let now = Instant::now();
        let mut next_pause = Duration::from_secs(60);
        for destination in destinations {
            if let Some((not_before, _)) = self.backoff.lock().expect("backoff").get(&destination).copied()
                && not_before > now
            {
                next_pause = next_pause.min(not_before - now);
                continue;
            }
            if !self.in_flight.lock().expect("in flight").insert(destination.clone()) {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(err) = this.drain(&destination).await {
                    tracing::error!(%destination, "outgoing queue: {err}");
                }
                this.in_flight.lock().expect("in flight").remove(&destination);
                this.wake.notify_one();
            });
        }
        Ok(next_pause)
    }

    /// Deliver one destination's jobs in order until it is empty or fails.
    async fn drain(&self, destination: &str) -> Result<()> {
        loop {
            let jobs: Vec<(u64, Job)> = self
                .queue
                .scan_prefix(&(destination.to_owned(),))
                .db()?
                .into_iter()
                .take(MAX_TXN_PDUS + MAX_TXN_EDUS)
                .map(|((_, seq), Json(job))| (seq, job))
                .collect();
            if jobs.is_empty() {
                return Ok(());
            }
            let (outcome, done) = match destination.strip_prefix(FEDERATION_PREFIX) {
                Some(server) => self.send_transaction(server, &jobs).await,
                None => match &jobs[0] {
                    (seq, Job::Push(job)) => (self.send_push(job).await, vec![*seq]),
                    (seq, _) => (Outcome::Refused, vec![*seq]),
                },
            };
            match outcome {
                Outcome::Delivered | Outcome::Refused => {
                    let mut batch = self.db.batch();
                    for seq in done {
                        batch.delete(&self.queue, &(destination.to_owned(), seq));
                    }
                    batch.commit().db()?;
                    self.backoff.lock().expect("backoff").remove(destination);
                }
                Outcome::Retry => {
                    let mut backoff = self.backoff.lock().expect("backoff");
                    let delay =
                        backoff.get(destination).map_or(FIRST_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
                    backoff.insert(destination.to_owned(), (Instant::now() + delay, delay));
                    return Ok(());
                }
            }
        }
    }

    /// One `/send` transaction from the front of a server's queue: up to 50
    /// PDUs and 100 EDUs. Its ID is its first job's sequence number, so a
    /// retry after a restart is the same transaction.
    async fn send_transaction(&self, server: &str, jobs: &[(u64, Job)]) -> (Outcome, Vec<u64>) {
        use ruma::api::federation::transactions::send_transaction_message::v1::Request;
        let mut taken = Vec::new();
        let mut request = Request::new(
            ruma::TransactionId::new(), // replaced below
            self.federation.server_name().to_owned(),
            ruma::MilliSecondsSinceUnixEpoch::now(),
        );
        for (seq, job) in jobs {
            match job {
                Job::Pdu { pdu } if request.pdus.len() < MAX_TXN_PDUS => {
                    if let Ok(raw) = serde_json::value::to_raw_value(pdu) {
                        request.pdus.push(raw);
                    }
                }
                Job::Edu { edu } if request.edus.len() < MAX_TXN_EDUS => {
                    if let Ok(raw) = serde_json::value::to_raw_value(edu) {
                        request.edus.push(ruma::serde::Raw::from_json(raw));
                    }
                }
                Job::Push(_) => {}
                _ => break,
            }
            taken.push(*seq);
        }
        request.transaction_id = taken[0].to_string().into();
        let Ok(server_name) = <&ruma::ServerName>::try_from(server) else {
            return (Outcome::Refused, taken);
        };
        match self.federation.send(server_name, request).await {
            Ok(response) => {
                for (event_id, result) in response.pdus {
                    if let Err(reason) = result {
                        tracing::warn!(server, %event_id, "the server refused our event: {reason}");
                    }
                }
                (Outcome::Delivered, taken)
            }
            Err(err) if err.is_permanent() => {
                tracing::warn!(server, "the server refused a transaction; dropping it: {err}");
                (Outcome::Refused, taken)
            }
            Err(err) => {
                tracing::warn!(server, "sending a transaction failed; will retry: {err}");
                (Outcome::Retry, taken)
            }
        }
    }

    async fn send_push(&self, job: &PushJob) -> Outcome {
        let host = reqwest::Url::parse(&job.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let response = match self.http.post(&job.url).json(&job.body).send().await {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(gateway = %host, "push gateway unreachable: {err}");
                return Outcome::Retry;
            }
        };
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            tracing::warn!(gateway = %host, %status, "push gateway failed; will retry");
            return Outcome::Retry;
        }
        if !status.is_success() {
            tracing::warn!(gateway = %host, %status, "push gateway refused the notification");
            return Outcome::Refused;
        }
        let body: JsonValue = response.json().await.unwrap_or_default();
        let rejected =
            body["rejected"].as_array().is_some_and(|r| r.iter().any(|k| k == job.pushkey.as_str()));
        if rejected {
            tracing::info!(gateway = %host, user = %job.user_id, "push gateway rejected a pushkey; removing the pusher");
            let _ = self.pushers.delete(&(job.user_id.clone(), job.app_id.clone(), job.pushkey.clone()));
        }
        Outcome::Delivered
    }
}
