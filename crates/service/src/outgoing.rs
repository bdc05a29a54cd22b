//! The durable outgoing queue: jobs for remote HTTP endpoints (push gateways
//! now; federation and appservice transactions will share it), stored in
//! RocksDB so a restart loses nothing, delivered in order per destination,
//! with exponential backoff per destination.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use estuary_core::Result;
use estuary_storage::{Db, Table, codec::Json};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::{sync::Notify, time::Instant};

use crate::storage_error::StorageResultExt;

/// A push to a push gateway (`/_matrix/push/v1/notify`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushJob {
    pub url: String,
    pub body: JsonValue,
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Outgoing {
    queue: Table<(String, u64), Json<PushJob>>,
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
    pub fn new(db: &Db) -> Result<Self> {
        let queue: Table<(String, u64), Json<PushJob>> = db.table("destinationseq_job").db()?;
        // Sequence numbers only need to grow; resume after the greatest queued one.
        let mut next = 1;
        for ((_, seq), _) in queue.scan_raw_prefix(&[], usize::MAX).db()? {
            next = next.max(seq + 1);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("Estuary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(estuary_core::Error::internal)?;
        Ok(Self {
            queue,
            pushers: db.table("useridappidpushkey_pusher").db()?,
            http,
            wake: Notify::new(),
            next_seq: AtomicU64::new(next),
            backoff: Mutex::new(HashMap::new()),
        })
    }

    /// Queue a job for `destination` (jobs of one destination go in order).
    pub fn enqueue(&self, destination: &str, job: PushJob) -> Result<()> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.queue.put(&(destination.to_owned(), seq), &Json(job)).db()?;
        self.wake.notify_one();
        Ok(())
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

    /// Deliver what is due; returns how long until the next retry.
    async fn deliver_due(&self) -> Result<Duration> {
        let mut by_destination: Vec<(String, Vec<(u64, PushJob)>)> = Vec::new();
        for ((destination, seq), Json(job)) in self.queue.scan_raw_prefix(&[], 10_000).db()? {
            match by_destination.last_mut() {
                Some((d, jobs)) if *d == destination => jobs.push((seq, job)),
                _ => by_destination.push((destination, vec![(seq, job)])),
            }
        }
        let now = Instant::now();
        let mut next_pause = Duration::from_secs(60);
        for (destination, jobs) in by_destination {
            if let Some((not_before, _)) = self.backoff.lock().expect("backoff").get(&destination).copied()
                && not_before > now
            {
                next_pause = next_pause.min(not_before - now);
                continue;
            }
            for (seq, job) in jobs {
                match self.send_push(&job).await {
                    Outcome::Delivered | Outcome::Refused => {
                        self.queue.delete(&(destination.clone(), seq)).db()?;
                        self.backoff.lock().expect("backoff").remove(&destination);
                    }
                    Outcome::Retry => {
                        let mut backoff = self.backoff.lock().expect("backoff");
                        let delay = backoff
                            .get(&destination)
                            .map_or(FIRST_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
                        backoff.insert(destination.clone(), (Instant::now() + delay, delay));
                        next_pause = next_pause.min(delay);
                        break;
                    }
                }
            }
        }
        Ok(next_pause)
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
