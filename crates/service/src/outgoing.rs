//! The durable outgoing queue: jobs for remote HTTP endpoints (push
//! gateways, other servers, appservices), stored in RocksDB so a restart
//! loses nothing, delivered in order per destination, one request in flight
//! per destination, destinations in parallel (one slow server never holds
//! up another), with exponential backoff per destination.
//!
//! A destination is a kind and an address: `push <url>`, `fed <server>` or
//! `as <appservice id>`. Federation jobs are PDUs and EDUs, batched into
//! `/send` transactions of at most 50 PDUs and 100 EDUs; appservice jobs
//! are events and ephemeral data, batched into transactions of at most 100
//! of each. A transaction that failed is retried with the same ID and the
//! same jobs (`destination_txn` remembers which), so the receiver's
//! deduplication by transaction ID never drops a job.

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

use crate::{
    appservices::Appservices, federation::client::FederationClient, storage_error::StorageResultExt,
};

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
    /// An event for an appservice, in the client format.
    AppserviceEvent {
        as_event: JsonValue,
    },
    /// Ephemeral data for an appservice (`m.typing`, `m.receipt` with a
    /// `room_id`, `m.presence`).
    AppserviceEphemeral {
        as_ephemeral: JsonValue,
    },
    /// A to-device message for a device of an appservice's user (MSC2409):
    /// `type`, `sender`, `content`, `to_user_id`, `to_device_id`.
    AppserviceToDevice {
        as_to_device: JsonValue,
    },
    /// A user whose device list changed, for an appservice that encrypts (MSC3202).
    AppserviceDeviceList {
        as_device_list_changed: ruma::OwnedUserId,
    },
    /// The key counts of an appservice user's device after a change (MSC3202).
    AppserviceKeyCounts {
        as_key_counts: KeyCounts,
    },
}

/// One-time key counts and unused fallback key types of a device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyCounts {
    pub user_id: ruma::OwnedUserId,
    pub device_id: ruma::OwnedDeviceId,
    pub one_time_keys: std::collections::BTreeMap<String, u64>,
    pub unused_fallback_keys: Vec<String>,
}

impl Job {
    fn is_for_appservice(&self) -> bool {
        matches!(
            self,
            Self::AppserviceEvent { .. }
                | Self::AppserviceEphemeral { .. }
                | Self::AppserviceToDevice { .. }
                | Self::AppserviceDeviceList { .. }
                | Self::AppserviceKeyCounts { .. }
        )
    }
}

const FEDERATION_PREFIX: &str = "fed ";
const APPSERVICE_PREFIX: &str = "as ";
const MAX_TXN_PDUS: usize = 50;
const MAX_TXN_EDUS: usize = 100;
const MAX_TXN_APPSERVICE: usize = 100;

/// What a destination is, for metrics: `federation`, `appservice` or `push`.
pub fn destination_kind(destination: &str) -> &'static str {
    if destination.starts_with(FEDERATION_PREFIX) {
        "federation"
    } else if destination.starts_with(APPSERVICE_PREFIX) {
        "appservice"
    } else {
        "push"
    }
}

fn count_queued(destination: &str) {
    metrics::counter!("estuary_outgoing_jobs_queued_total", "kind" => destination_kind(destination))
        .increment(1);
}

/// The queue destination of a server.
pub fn server_destination(server: &ServerName) -> String {
    format!("{FEDERATION_PREFIX}{server}")
}

/// The queue destination of an appservice.
pub fn appservice_destination(id: &str) -> String {
    format!("{APPSERVICE_PREFIX}{id}")
}

const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Appservices usually run beside the server and come back quickly after a
/// restart: retry sooner, and never wait more than five minutes.
const FIRST_APPSERVICE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_APPSERVICE_BACKOFF: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Outgoing {
    db: Db,
    queue: Table<(String, u64), Json<Job>>,
    /// The jobs (first and last sequence number) of a destination's
    /// transaction that failed: its retry carries exactly these.
    destination_txn: Table<String, Json<(u64, u64)>>,
    federation: Arc<FederationClient>,
    appservices: Arc<Appservices>,
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
    pub fn new(
        config: &estuary_core::Config,
        db: &Db,
        federation: Arc<FederationClient>,
        appservices: Arc<Appservices>,
    ) -> Result<Self> {
        let queue: Table<(String, u64), Json<Job>> = db.table("destinationseq_job").db()?;
        // Sequence numbers only grow, also across restarts: they name
        // federation transactions, which a server must never see reused.
        // Start at the clock in microseconds, or after the greatest queued.
        let mut next = estuary_core::time::now_millis() * 1000;
        for ((_, seq), _) in queue.scan_raw_prefix(&[], usize::MAX).db()? {
            next = next.max(seq + 1);
        }
        let builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("Estuary/", env!("CARGO_PKG_VERSION")));
        let http = crate::federation::client::with_trusted_roots(builder, config)?
            .build()
            .map_err(estuary_core::Error::internal)?;
        Ok(Self {
            db: db.clone(),
            queue,
            destination_txn: db.table("destination_txn").db()?,
            federation,
            appservices,
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
        count_queued(destination);
        self.wake.notify_one();
        Ok(())
    }

    /// Queue a job inside `batch`: it is delivered only if the batch commits
    /// (an event and its delivery to other servers are one write). Call
    /// `wake` after the commit.
    pub fn stage(&self, batch: &mut Batch, destination: &str, job: Job) {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        batch.put(&self.queue, &(destination.to_owned(), seq), &Json(job));
        count_queued(destination);
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

    /// The jobs queued for a destination, in order (for tests).
    #[cfg(test)]
    pub(crate) fn jobs_for(&self, destination: &str) -> Result<Vec<Job>> {
        let jobs = self.queue.scan_prefix(&(destination.to_owned(),)).db()?;
        Ok(jobs.into_iter().map(|(_, Json(job))| job).collect())
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

    /// The destinations with queued jobs: one seek per destination, not a
    /// read of every job (a destination that is down may have thousands).
    fn queued_destinations(&self) -> Result<Vec<String>> {
        let mut destinations = Vec::new();
        let mut from: Option<Vec<u8>> = None;
        let mut keys = Vec::new();
        loop {
            keys.clear();
            self.queue
                .visit_from(&[], from.as_deref(), false, 1, |key, _| {
                    keys.push(key.to_vec());
                    Ok(())
                })
                .db()?;
            let Some(key) = keys.first() else { return Ok(destinations) };
            let (destination, _) = <(String, u64) as estuary_storage::Key>::decode(key)
                .map_err(|e| estuary_core::Error::internal(format!("outgoing queue key: {e}")))?;
            // Past every sequence number of this destination: its string,
            // the terminator, then more than eight 0xFF bytes.
            let mut next = estuary_storage::Key::encode(&(destination.clone(),));
            next.extend([0xFF; 9]);
            from = Some(next);
            destinations.push(destination);
        }
    }

    /// Start a delivery for every destination with queued jobs that is due
    /// and has none running; returns how long until the next retry.
    async fn deliver_due(self: &Arc<Self>) -> Result<Duration> {
        let destinations = self.queued_destinations()?;
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
            let jobs = self.next_jobs(destination)?;
            if jobs.is_empty() {
                return Ok(());
            }
            let (outcome, done) = if let Some(server) = destination.strip_prefix(FEDERATION_PREFIX) {
                self.send_transaction(server, &jobs).await
            } else if let Some(id) = destination.strip_prefix(APPSERVICE_PREFIX) {
                self.send_appservice_transaction(id, &jobs).await
            } else {
                match &jobs[0] {
                    (seq, Job::Push(job)) => (self.send_push(job).await, vec![*seq]),
                    (seq, _) => (Outcome::Refused, vec![*seq]),
                }
            };
            match outcome {
                Outcome::Delivered | Outcome::Refused => {
                    let mut batch = self.db.batch();
                    for seq in done {
                        batch.delete(&self.queue, &(destination.to_owned(), seq));
                    }
                    batch.delete(&self.destination_txn, &destination.to_owned());
                    batch.commit().db()?;
                    self.backoff.lock().expect("backoff").remove(destination);
                }
                Outcome::Retry => {
                    if let (Some(first), Some(last)) = (done.first(), done.last()) {
                        self.destination_txn.put(&destination.to_owned(), &Json((*first, *last))).db()?;
                    }
                    if self.back_off(destination) >= MAX_BACKOFF && destination.starts_with(FEDERATION_PREFIX)
                    {
                        self.catch_up(destination)?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The jobs of the destination's next transaction: those of the one
    /// that failed, if any, else the front of its queue.
    fn next_jobs(&self, destination: &str) -> Result<Vec<(u64, Job)>> {
        let pending = self.destination_txn.get(&destination.to_owned()).db()?.map(|Json(range)| range);
        let prefix = estuary_storage::Key::encode(&(destination.to_owned(),));
        Ok(self
            .queue
            .scan_raw_prefix(&prefix, MAX_TXN_PDUS + MAX_TXN_EDUS)
            .db()?
            .into_iter()
            .map(|((_, seq), Json(job))| (seq, job))
            .take_while(|(seq, _)| pending.is_none_or(|(_, last)| *seq <= last))
            .take(MAX_TXN_PDUS + MAX_TXN_EDUS)
            .collect())
    }

    /// A server unreachable for long (its backoff at the maximum) gets its
    /// queue cut to what still matters when it returns, as Synapse's
    /// catch-up does: see `stale_jobs`. Logged with the figures.
    fn catch_up(&self, destination: &str) -> Result<()> {
        let prefix = estuary_storage::Key::encode(&(destination.to_owned(),));
        let jobs: Vec<(u64, Job)> = self
            .queue
            .scan_raw_prefix(&prefix, usize::MAX)
            .db()?
            .into_iter()
            .map(|((_, seq), Json(job))| (seq, job))
            .collect();
        let pending = self.destination_txn.get(&destination.to_owned()).db()?.map(|Json((_, last))| last);
        let stale = stale_jobs(&jobs, pending);
        if stale.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for seq in &stale {
            batch.delete(&self.queue, &(destination.to_owned(), *seq));
        }
        batch.commit().db()?;
        let server = destination.trim_start_matches(FEDERATION_PREFIX);
        tracing::warn!(
            %server,
            queued = jobs.len(),
            dropped = stale.len(),
            "server unreachable for long: its queue is cut to the latest event of each room and what must not be lost"
        );
        Ok(())
    }

    /// Back off after a failure; returns the new delay.
    fn back_off(&self, destination: &str) -> Duration {
        metrics::counter!("estuary_outgoing_failures_total", "kind" => destination_kind(destination))
            .increment(1);
        let (first, max) = if destination.starts_with(APPSERVICE_PREFIX) {
            (FIRST_APPSERVICE_BACKOFF, MAX_APPSERVICE_BACKOFF)
        } else {
            (FIRST_BACKOFF, MAX_BACKOFF)
        };
        let mut backoff = self.backoff.lock().expect("backoff");
        let delay = backoff.get(destination).map_or(first, |(_, d)| (*d * 2).min(max));
        backoff.insert(destination.to_owned(), (Instant::now() + delay, delay));
        delay
    }

    /// One transaction to an appservice: up to 100 items of each kind from
    /// the front of its queue. Its ID is never reused for other content. Anything but a 2xx is retried:
    /// an appservice must not lose events.
    async fn send_appservice_transaction(&self, id: &str, jobs: &[(u64, Job)]) -> (Outcome, Vec<u64>) {
        let Some(appservice) = self.appservices.by_id(id) else {
            // Unregistered since: keep its jobs for a registration under the same ID.
            return (Outcome::Retry, Vec::new());
        };
        if appservice.registration.url.is_none() {
            // It receives nothing; what was queued before its URL was removed is dropped.
            return (Outcome::Refused, jobs.iter().map(|(seq, _)| *seq).collect());
        }
        let mut transaction = AppserviceTransaction::default();
        let mut taken = Vec::new();
        for (seq, job) in jobs {
            if job.is_for_appservice() && !transaction.add(job) {
                break;
            }
            taken.push(*seq);
        }
        let Some(last) = taken.last() else { return (Outcome::Delivered, taken) };
        // Named by its last job: a transaction always starts at the front
        // of the queue, so its last job says which jobs it carries. Digits
        // only, as Synapse sends and some appservices (SyTest's) expect.
        let request = transaction.into_request(last.to_string());
        match self.appservices.http.send(&appservice, request).await {
            Ok(_) => (Outcome::Delivered, taken),
            Err(err) => {
                tracing::warn!(
                    appservice = id,
                    "sending a transaction to the appservice failed; will retry: {err}"
                );
                (Outcome::Retry, taken)
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
                Job::Pdu { .. } | Job::Edu { .. } => break,
                _ => {}
            }
            taken.push(*seq);
        }
        // Named by its first and last job: a retry is the same transaction,
        // and no other content ever has this ID.
        request.transaction_id = format!("{}-{}", taken[0], taken[taken.len() - 1]).into();
        let Ok(server_name) = <&ruma::ServerName>::try_from(server) else {
            return (Outcome::Refused, taken);
        };
        (transaction_outcome(server, self.federation.send(server_name, request).await), taken)
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

/// An appservice transaction being assembled from queued jobs.
#[derive(Default)]
struct AppserviceTransaction {
    events: Vec<ruma::serde::Raw<ruma::events::AnyTimelineEvent>>,
    ephemeral: Vec<ruma::serde::Raw<ruma::api::appservice::event::push_events::v1::EphemeralData>>,
    to_device:
        Vec<ruma::serde::Raw<ruma::api::appservice::event::push_events::v1::AnyAppserviceToDeviceEvent>>,
    device_lists_changed: Vec<ruma::OwnedUserId>,
    /// The latest counts of each device (later jobs replace earlier ones).
    key_counts: std::collections::BTreeMap<(ruma::OwnedUserId, ruma::OwnedDeviceId), KeyCounts>,
}

impl AppserviceTransaction {
    /// Add a job; false when its kind is full (the transaction ends before it).
    fn add(&mut self, job: &Job) -> bool {
        fn raw<T>(list: &mut Vec<ruma::serde::Raw<T>>, value: &JsonValue) -> bool {
            if list.len() >= MAX_TXN_APPSERVICE {
                return false;
            }
            match serde_json::value::to_raw_value(value) {
                Ok(json) => list.push(ruma::serde::Raw::from_json(json)),
                Err(err) => tracing::error!("cannot serialise a queued appservice job: {err}"),
            }
            true
        }
        match job {
            Job::AppserviceEvent { as_event } => raw(&mut self.events, as_event),
            Job::AppserviceEphemeral { as_ephemeral } => raw(&mut self.ephemeral, as_ephemeral),
            Job::AppserviceToDevice { as_to_device } => raw(&mut self.to_device, as_to_device),
            Job::AppserviceDeviceList { as_device_list_changed: user } => {
                if !self.device_lists_changed.contains(user) {
                    self.device_lists_changed.push(user.clone());
                }
                true
            }
            Job::AppserviceKeyCounts { as_key_counts: counts } => {
                self.key_counts.insert((counts.user_id.clone(), counts.device_id.clone()), counts.clone());
                true
            }
            _ => true,
        }
    }

    fn into_request(self, txn_id: String) -> ruma::api::appservice::event::push_events::v1::Request {
        use ruma::api::appservice::event::push_events::v1::Request;
        let mut request = Request::new(txn_id.into(), self.events);
        request.ephemeral = self.ephemeral;
        request.to_device = self.to_device;
        request.device_lists.changed = self.device_lists_changed;
        for ((user, device), counts) in self.key_counts {
            let one_time_keys = counts
                .one_time_keys
                .into_iter()
                .map(|(algorithm, n)| (algorithm.into(), ruma::UInt::new(n).unwrap_or_default()))
                .collect();
            request
                .device_one_time_keys_count
                .entry(user.clone())
                .or_default()
                .insert(device.clone(), one_time_keys);
            let fallback = counts.unused_fallback_keys.into_iter().map(Into::into).collect();
            request.device_unused_fallback_key_types.entry(user).or_default().insert(device, fallback);
        }
        request
    }
}

/// Of a long-unreachable server's queued jobs (oldest first), those no
/// longer worth sending: every PDU but the newest of its room (the server
/// fetches the ones before with `get_missing_events`, as after any gap),
/// and typing, receipt and presence EDUs, stale by then. To-device
/// messages and device-list and signing-key updates stay, and so does
/// every job up to `pending` (the transaction being retried, which must
/// keep its content).
fn stale_jobs(jobs: &[(u64, Job)], pending: Option<u64>) -> Vec<u64> {
    const EPHEMERAL: [&str; 3] = ["m.typing", "m.receipt", "m.presence"];
    let mut rooms_seen = HashSet::new();
    let mut stale = Vec::new();
    for (seq, job) in jobs.iter().rev() {
        if pending.is_some_and(|last| *seq <= last) {
            continue;
        }
        let is_stale = match job {
            Job::Pdu { pdu } => match pdu["room_id"].as_str() {
                Some(room) => !rooms_seen.insert(room.to_owned()),
                None => false,
            },
            Job::Edu { edu } => edu["edu_type"].as_str().is_some_and(|kind| EPHEMERAL.contains(&kind)),
            _ => false,
        };
        if is_stale {
            stale.push(*seq);
        }
    }
    stale
}

/// What a `/send` answer means for the transaction's jobs.
fn transaction_outcome(
    server: &str,
    answer: std::result::Result<
        ruma::api::federation::transactions::send_transaction_message::v1::Response,
        crate::federation::FederationError,
    >,
) -> Outcome {
    match answer {
        Ok(response) => {
            for (event_id, result) in response.pdus {
                if let Err(reason) = result {
                    tracing::warn!(server, %event_id, "the server refused our event: {reason}");
                }
            }
            Outcome::Delivered
        }
        // The server took the transaction (2xx); only its per-PDU results
        // are unreadable (some servers answer `{}`).
        Err(crate::federation::FederationError::Invalid(reason)) => {
            tracing::debug!(server, "unreadable answer to a delivered transaction: {reason}");
            Outcome::Delivered
        }
        Err(err) if err.is_permanent() => {
            tracing::warn!(server, "the server refused a transaction; dropping it: {err}");
            Outcome::Refused
        }
        Err(err) => {
            tracing::warn!(server, "sending a transaction failed; will retry: {err}");
            Outcome::Retry
        }
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::{Job, Outcome, stale_jobs, transaction_outcome};
    use crate::federation::FederationError;

    #[test]
    fn a_long_unreachable_server_catches_up_with_the_latest_event_of_each_room() {
        let pdu = |room: &str| Job::Pdu { pdu: serde_json::json!({"room_id": room}) };
        let edu = |kind: &str| Job::Edu { edu: serde_json::json!({"edu_type": kind, "content": {}}) };
        let jobs = vec![
            (1, pdu("!a:x")),
            (2, edu("m.typing")),
            (3, pdu("!a:x")),
            (4, pdu("!b:x")),
            (5, edu("m.direct_to_device")),
            (6, edu("m.receipt")),
            (7, pdu("!a:x")),
            (8, edu("m.device_list_update")),
            (9, edu("m.presence")),
        ];
        let mut stale = stale_jobs(&jobs, None);
        stale.sort();
        assert_eq!(stale, vec![1, 2, 3, 6, 9]);
        // The transaction being retried (jobs 1 to 3) keeps its content.
        let mut stale = stale_jobs(&jobs, Some(3));
        stale.sort();
        assert_eq!(stale, vec![6, 9]);
    }

    #[test]
    fn a_transaction_answered_2xx_is_delivered_even_when_its_body_is_unreadable() {
        let unreadable = Err(FederationError::Invalid("missing field `pdus`".into()));
        assert!(matches!(transaction_outcome("s", unreadable), Outcome::Delivered));
        let refused = Err(FederationError::Status { status: 403, body: String::new() });
        assert!(matches!(transaction_outcome("s", refused), Outcome::Refused));
        let failed = Err(FederationError::Status { status: 502, body: String::new() });
        assert!(matches!(transaction_outcome("s", failed), Outcome::Retry));
        let limited = Err(FederationError::Status { status: 429, body: String::new() });
        assert!(matches!(transaction_outcome("s", limited), Outcome::Retry));
    }
}
