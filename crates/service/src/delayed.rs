//! Delayed events (MSC4140): events a client schedules to be sent later,
//! which it can cancel, restart (a heartbeat) or send at once. Element Call
//! schedules its "left the call" state this way, so a dead client leaves.
//!
//! Timers are rows in RocksDB (indexed by due time), so they survive
//! restarts; one worker task sends what is due through the normal append
//! path. A delayed message is sent with a transaction ID derived from its
//! delay ID, so a crash between sending and deleting cannot send it twice.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use estuary_core::{Config, Error, Result, error::ErrorKind};
use estuary_events::PduTemplate;
use estuary_storage::{Db, Table, codec::Json};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::error::{LimitExceededErrorData, RetryAfter},
    events::StateEventType,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};
use tokio::sync::Notify;

use crate::{
    accounts::tokens::random_token,
    rooms::{Rooms, Txn},
    storage_error::StorageResultExt,
};

/// The device recorded as sending delayed messages (their transaction IDs
/// are the delay IDs, unique on their own).
const DELAYED_DEVICE: &str = "msc4140_delayed_events";

/// At most this many due events are sent per pass of the worker.
const BATCH: usize = 100;

/// `delayid_delayedevent`: one scheduled event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelayedEvent {
    pub delay_id: String,
    pub user_id: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: JsonValue,
    pub delay_ms: u64,
    /// When it was scheduled or last restarted (ms since the epoch).
    pub running_since: u64,
    /// Stream position at scheduling: a delayed state event is dropped if
    /// someone else changes that state after it.
    pub scheduled_at: u64,
}

impl DelayedEvent {
    fn due(&self) -> u64 {
        self.running_since + self.delay_ms
    }

    /// As `GET /delayed_events` lists it.
    pub fn to_json(&self) -> JsonValue {
        let mut out = json!({
            "delay_id": self.delay_id,
            "room_id": self.room_id,
            "type": self.event_type,
            "content": self.content,
            "delay": self.delay_ms,
            "running_since": self.running_since,
        });
        if let Some(state_key) = &self.state_key {
            out["state_key"] = state_key.clone().into();
        }
        out
    }
}

/// What a client asks for.
pub struct ScheduleRequest<'a> {
    pub user_id: &'a UserId,
    pub device_id: Option<&'a DeviceId>,
    pub txn_id: Option<&'a str>,
    pub room_id: &'a RoomId,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: JsonValue,
    pub delay_ms: u64,
}

/// The actions of `POST /delayed_events/{delay_id}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateAction {
    Cancel,
    Restart,
    Send,
}

pub struct DelayedEvents {
    config: Arc<Config>,
    db: Db,
    rooms: Arc<Rooms>,
    events: Table<String, Json<DelayedEvent>>,
    due_index: Table<(u64, String), String>,
    by_user: Table<(String, String), String>,
    txns: Table<(String, String, String), String>,
    wake: Notify,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl DelayedEvents {
    pub fn new(config: Arc<Config>, db: &Db, rooms: Arc<Rooms>) -> Result<Self> {
        Ok(Self {
            config,
            db: db.clone(),
            rooms,
            events: db.table("delayid_delayedevent").db()?,
            due_index: db.table("dueatdelayid").db()?,
            by_user: db.table("useriddelayid").db()?,
            txns: db.table("useriddevicetxn_delayid").db()?,
            wake: Notify::new(),
        })
    }

    /// Schedule an event; returns its delay ID. Repeating a transaction
    /// returns the same ID.
    pub fn schedule(&self, request: ScheduleRequest<'_>) -> Result<String> {
        let txn_key = match (request.device_id, request.txn_id) {
            (Some(device), Some(txn)) => {
                Some((request.user_id.to_string(), device.to_string(), txn.to_owned()))
            }
            _ => None,
        };
        if let Some(key) = &txn_key
            && let Some(existing) = self.txns.get(key).db()?
        {
            return Ok(existing);
        }
        let max_delay_ms = self.config.max_event_delay.saturating_mul(1000);
        if request.delay_ms > max_delay_ms {
            return Err(Error::forbidden(format!(
                "The requested delay ({}ms) exceeds the allowed maximum ({max_delay_ms}ms)",
                request.delay_ms
            )));
        }
        if !self.rooms.is_joined(request.user_id, request.room_id)? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let scheduled = self.of_user(request.user_id)?;
        if scheduled.len() as u64 >= self.config.max_delayed_events_per_user {
            // The earliest one will free a slot.
            let wait = scheduled.iter().map(DelayedEvent::due).min().unwrap_or(0).saturating_sub(now_ms());
            let mut data = LimitExceededErrorData::new();
            data.retry_after = Some(RetryAfter::Delay(Duration::from_millis(wait.max(1))));
            return Err(Error::matrix(
                429,
                ErrorKind::LimitExceeded(data),
                "Too many delayed events are scheduled",
            ));
        }
        let event = DelayedEvent {
            delay_id: format!("syd_{}", random_token(20)),
            user_id: request.user_id.to_owned(),
            room_id: request.room_id.to_owned(),
            event_type: request.event_type,
            state_key: request.state_key,
            content: request.content,
            delay_ms: request.delay_ms,
            running_since: now_ms(),
            scheduled_at: self.rooms.streams.current(),
        };
        let mut batch = self.db.batch();
        self.put_into(&mut batch, &event);
        if let Some(key) = &txn_key {
            batch.put(&self.txns, key, &event.delay_id);
        }
        batch.commit().db()?;
        self.wake.notify_one();
        Ok(event.delay_id)
    }

    /// The user's scheduled events, soonest first.
    pub fn of_user(&self, user_id: &UserId) -> Result<Vec<DelayedEvent>> {
        let mut events = Vec::new();
        for ((_, delay_id), _) in self.by_user.scan_prefix(&(user_id.to_string(),)).db()? {
            if let Some(Json(event)) = self.events.get(&delay_id).db()? {
                events.push(event);
            }
        }
        events.sort_by_key(DelayedEvent::due);
        Ok(events)
    }

    /// Cancel, restart or send now. Knowing the delay ID is the authority
    /// (MSC4140 lets a client hand it to a watchdog without a token).
    pub async fn update(&self, delay_id: &str, action: UpdateAction) -> Result<()> {
        let Json(mut event) = self
            .events
            .get(&delay_id.to_owned())
            .db()?
            .ok_or_else(|| Error::not_found("Delayed event not found"))?;
        match action {
            UpdateAction::Cancel => self.remove(&event),
            UpdateAction::Restart => {
                let mut batch = self.db.batch();
                batch.delete(&self.due_index, &(event.due(), event.delay_id.clone()));
                event.running_since = now_ms();
                self.put_into(&mut batch, &event);
                batch.commit().db()?;
                self.wake.notify_one();
                Ok(())
            }
            UpdateAction::Send => self.fire(&event).await,
        }
    }

    /// Start the worker that sends due events. Needs a tokio runtime.
    pub fn spawn_worker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // Register before looking, so a schedule in between wakes us.
                let woken = this.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let pause = match this.send_due().await {
                    Ok(pause) => pause,
                    Err(err) => {
                        tracing::error!("delayed events: {err}");
                        Duration::from_secs(5)
                    }
                };
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        })
    }

    /// Send everything due, oldest first; returns the time until the next one.
    async fn send_due(&self) -> Result<Duration> {
        let rows = self.due_index.scan_raw_prefix(&[], BATCH).db()?;
        let full_batch = rows.len() == BATCH;
        for ((due, delay_id), _) in rows {
            let now = now_ms();
            if due > now {
                return Ok(Duration::from_millis(due - now));
            }
            match self.events.get(&delay_id).db()? {
                Some(Json(event)) => self.fire(&event).await?,
                None => self.due_index.delete(&(due, delay_id)).db()?,
            }
        }
        // A full batch may have more due behind it; otherwise nothing is
        // scheduled and only a new schedule (which wakes the worker) matters.
        Ok(if full_batch { Duration::ZERO } else { Duration::from_secs(3600) })
    }

    /// Send the event now (unless it is a state event someone else has
    /// changed since), then forget it. Sending failures are logged: the
    /// client learns of them as a missing event, as with Synapse.
    async fn fire(&self, event: &DelayedEvent) -> Result<()> {
        let outcome = match &event.state_key {
            Some(state_key) if self.changed_by_others(event, state_key)? => {
                tracing::debug!(delay_id = %event.delay_id, "delayed state event dropped: state changed by another user");
                Ok(())
            }
            Some(state_key) => {
                let template =
                    PduTemplate::state(event.event_type.clone(), state_key.clone(), event.content.clone());
                self.rooms.send(&event.room_id, &event.user_id, template, None).await.map(|_| ())
            }
            None => {
                let template = PduTemplate::message(event.event_type.clone(), event.content.clone());
                let txn =
                    Txn { device_id: OwnedDeviceId::from(DELAYED_DEVICE), txn_id: event.delay_id.clone() };
                self.rooms.send(&event.room_id, &event.user_id, template, Some(txn)).await.map(|_| ())
            }
        };
        if let Err(err) = outcome {
            tracing::warn!(delay_id = %event.delay_id, user_id = %event.user_id, room_id = %event.room_id, "delayed event not sent: {err}");
        }
        self.remove(event)
    }

    /// Whether another user changed this state after the event was scheduled:
    /// walks the chain of replaced state events back to that point.
    fn changed_by_others(&self, event: &DelayedEvent, state_key: &str) -> Result<bool> {
        let Some(room) = self.rooms.room(&event.room_id)? else { return Ok(false) };
        let state = self.rooms.current_state(&room)?;
        let event_type = StateEventType::from(event.event_type.as_str());
        let mut next: Option<OwnedEventId> = self.rooms.state_event_id(&state, &event_type, state_key)?;
        // Bounded: a state key rarely changes a hundred times within one delay.
        for _ in 0..100 {
            let Some(id) = next.take() else { return Ok(false) };
            let Some(stored) = self.rooms.stored(&id)? else { return Ok(false) };
            if stored.stream <= event.scheduled_at {
                return Ok(false);
            }
            let sender = stored.sender().unwrap_or_default();
            if sender != event.user_id.as_str() {
                return Ok(true);
            }
            next = stored
                .json
                .get("unsigned")
                .and_then(|u| u.as_object())
                .and_then(|u| u.get("replaces_state"))
                .and_then(|r| r.as_str())
                .and_then(|r| OwnedEventId::try_from(r).ok());
        }
        Ok(false)
    }

    fn put_into(&self, batch: &mut estuary_storage::Batch, event: &DelayedEvent) {
        batch.put(&self.events, &event.delay_id, &Json(event.clone()));
        batch.put(&self.due_index, &(event.due(), event.delay_id.clone()), &String::new());
        batch.put(&self.by_user, &(event.user_id.to_string(), event.delay_id.clone()), &String::new());
    }

    fn remove(&self, event: &DelayedEvent) -> Result<()> {
        let mut batch = self.db.batch();
        batch.delete(&self.events, &event.delay_id);
        batch.delete(&self.due_index, &(event.due(), event.delay_id.clone()));
        batch.delete(&self.by_user, &(event.user_id.to_string(), event.delay_id.clone()));
        batch.commit().db()
    }
}
