//! To-device messages: queued per device, delivered by sync, removed once
//! the device acknowledges them by syncing with a later `since`.

use std::sync::Arc;

use estuary_core::Result;
use estuary_storage::{Db, Key, Table, codec::Json};
use ruma::{DeviceId, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{
    accounts::Accounts,
    appservices::Appservices,
    outgoing::{Job, Outgoing},
    storage_error::StorageResultExt,
    streams::Streams,
};

/// (type, sender, content) of a queued message, keyed by (user, device, stream).
type QueueTable = Table<(String, String, u64), Json<(String, String, JsonValue)>>;

/// The most messages one sync delivers; the rest follow in the next.
const PER_SYNC: usize = 100;

pub struct ToDevice {
    db: Db,
    streams: Arc<Streams>,
    accounts: Arc<Accounts>,
    /// Messages for the devices of a bridge's users go to the bridge when it
    /// encrypts through its transactions (MSC2409), not to a sync.
    appservices: Arc<Appservices>,
    outgoing: Arc<Outgoing>,
    queue: QueueTable,
    txns: Table<(String, String, String), String>,
}

impl ToDevice {
    pub fn new(
        db: &Db,
        streams: Arc<Streams>,
        accounts: Arc<Accounts>,
        appservices: Arc<Appservices>,
        outgoing: Arc<Outgoing>,
    ) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            streams,
            accounts,
            appservices,
            outgoing,
            queue: db.table("useriddevicestream_todevice").db()?,
            txns: db.table("useriddevicetxn_todevice").db()?,
        })
    }

    /// Queue messages: `targets` are (user, device or `*`, content).
    pub fn send(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
        event_type: &str,
        targets: Vec<(ruma::OwnedUserId, Option<ruma::OwnedDeviceId>, JsonValue)>,
    ) -> Result<()> {
        let txn_key = (sender.to_string(), sender_device.to_string(), txn_id.to_owned());
        if self.txns.contains(&txn_key).db()? {
            return Ok(());
        }
        let mut rows = Vec::new();
        for (user, device, content) in targets {
            if !self.accounts.is_local(&user) {
                continue; // To-device messages do not cross servers yet.
            }
            let devices = match device {
                Some(device) => vec![device],
                None => self.accounts.devices(&user)?.into_iter().map(|(id, _)| id).collect(),
            };
            for device in devices {
                rows.push((user.to_string(), device.to_string(), content.clone()));
            }
        }
        let mut batch = self.db.batch();
        batch.put(&self.txns, &txn_key, &String::new());
        let bridged = self.stage_for_appservices(sender, event_type, &mut rows, &mut batch);
        let payload = (event_type.to_owned(), sender.to_string());
        self.streams.commit(batch, |position, batch| {
            for (user, device, content) in &rows {
                let message = (payload.0.clone(), payload.1.clone(), content.clone());
                batch.put(&self.queue, &(user.clone(), device.clone(), position), &Json(message));
            }
        })?;
        if bridged {
            self.outgoing.wake();
        }
        let users: Vec<ruma::OwnedUserId> =
            rows.iter().filter_map(|(u, _, _)| UserId::parse(u.as_str()).ok()).collect();
        self.streams.notify(users.iter().map(|u| &**u));
        Ok(())
    }

    /// Take the messages for users whose bridge encrypts through its
    /// transactions out of `rows`, queued for the bridge in `batch`.
    fn stage_for_appservices(
        &self,
        sender: &UserId,
        event_type: &str,
        rows: &mut Vec<(String, String, JsonValue)>,
        batch: &mut estuary_storage::Batch,
    ) -> bool {
        if self.appservices.is_empty() {
            return false;
        }
        let mut bridged = false;
        rows.retain(|(user, device, content)| {
            let Some(appservice) =
                UserId::parse(user.as_str()).ok().and_then(|u| self.appservices.encrypting_for(&u))
            else {
                return true;
            };
            let as_to_device = json!({
                "type": event_type, "sender": sender, "content": content,
                "to_user_id": user, "to_device_id": device,
            });
            self.outgoing.stage(batch, &appservice.destination(), Job::AppserviceToDevice { as_to_device });
            bridged = true;
            false
        });
        bridged
    }

    /// Drop what the device has acknowledged (positions before `since`) and
    /// return what is pending up to `to`.
    pub fn take(
        &self,
        user: &UserId,
        device: &DeviceId,
        since: Option<u64>,
        to: u64,
    ) -> Result<Vec<JsonValue>> {
        Ok(self.drain(user, device, since, to, PER_SYNC)?.0)
    }

    /// Where a `/sync` reading up to `to` must end so that its to-device
    /// messages are all in its answer: at the last message of a full page
    /// when more are pending (the next sync acknowledges only what was
    /// sent, and goes on from there); `to` otherwise.
    pub fn sync_end(&self, user: &UserId, device: &DeviceId, since: Option<u64>, to: u64) -> Result<u64> {
        let prefix = (user.to_string(), device.to_string()).encode();
        let start = (user.to_string(), device.to_string(), since.unwrap_or(0)).encode();
        let pending = self.queue.scan_from(&prefix, Some(&start), false, PER_SYNC + 1).db()?;
        match pending.get(PER_SYNC) {
            Some(((_, _, position), _)) if *position <= to => Ok(pending[PER_SYNC - 1].0.2),
            _ => Ok(to),
        }
    }

    /// Sliding sync's `to_device`: drop what is before `since` (the client
    /// has it) and return up to `limit` messages up to `to`, with the
    /// `since` that acknowledges them (the position after the last one sent,
    /// or after `to` when all were).
    pub fn take_batch(
        &self,
        user: &UserId,
        device: &DeviceId,
        since: Option<u64>,
        to: u64,
        limit: usize,
    ) -> Result<(Vec<JsonValue>, u64)> {
        let (events, last) = self.drain(user, device, since, to, limit)?;
        let next = match last {
            Some(last) if events.len() == limit => last + 1,
            _ => to + 1,
        };
        Ok((events, next))
    }

    /// Messages of a device after position `after`, oldest first, at most
    /// `PER_SYNC`, having first dropped those up to `after` (acknowledged).
    /// Returns the messages and the position of the last one.
    pub fn page_after(
        &self,
        user: &UserId,
        device: &DeviceId,
        after: Option<u64>,
    ) -> Result<(Vec<JsonValue>, Option<u64>)> {
        self.drain(user, device, after.map(|a| a + 1), u64::MAX, PER_SYNC)
    }

    /// Delete messages before `acknowledged_below` and return up to
    /// `limit` of the rest at positions up to `to`, with the last position.
    fn drain(
        &self,
        user: &UserId,
        device: &DeviceId,
        acknowledged_below: Option<u64>,
        to: u64,
        limit: usize,
    ) -> Result<(Vec<JsonValue>, Option<u64>)> {
        let prefix = (user.to_string(), device.to_string()).encode();
        let mut batch = self.db.batch();
        let mut pending = Vec::new();
        let mut last = None;
        for ((u, d, position), Json((kind, sender, content))) in
            self.queue.scan_from(&prefix, None, false, usize::MAX).db()?
        {
            if acknowledged_below.is_some_and(|below| position < below) {
                batch.delete(&self.queue, &(u, d, position));
            } else if position <= to && pending.len() < limit {
                pending.push(json!({"type": kind, "sender": sender, "content": content}));
                last = Some(position);
            } else {
                break;
            }
        }
        if !batch.is_empty() {
            batch.commit().db()?;
        }
        Ok((pending, last))
    }

    /// Drop every message queued for a device (it was deleted).
    pub fn purge_device(&self, user: &UserId, device: &DeviceId) -> Result<()> {
        let prefix = (user.to_string(), device.to_string()).encode();
        let mut batch = self.db.batch();
        for (key, _) in self.queue.scan_from(&prefix, None, false, usize::MAX).db()? {
            batch.delete(&self.queue, &key);
        }
        batch.commit().db()
    }

    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: QueueTable = db.table("useriddevicestream_todevice").db()?;
        let mut highest = 0;
        for ((_, _, position), _) in table.scan_raw_prefix(&[], usize::MAX).db()? {
            highest = highest.max(position);
        }
        Ok(highest)
    }
}
