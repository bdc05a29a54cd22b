//! Short IDs: event IDs and (event type, state key) pairs interned to u64,
//! so state snapshots are compact integer maps.

use std::sync::atomic::{AtomicU64, Ordering};

use estuary_core::Result;
use estuary_storage::{Batch, Db, Table, codec::Json};
use ruma::{EventId, OwnedEventId, events::StateEventType};

use crate::storage_error::StorageResultExt;

pub struct ShortIds {
    eventid_short: Table<String, u64>,
    short_eventid: Table<u64, String>,
    statekey_short: Table<(String, String), u64>,
    short_statekey: Table<u64, Json<(String, String)>>,
    /// Next free short ID (shared by events, state keys and state snapshots).
    next: AtomicU64,
}

impl ShortIds {
    pub fn new(db: &Db) -> Result<Self> {
        let short_eventid: Table<u64, String> = db.table("short_eventid").db()?;
        let short_statekey: Table<u64, Json<(String, String)>> = db.table("short_statekey").db()?;
        let snapshots: Table<u64, Vec<u8>> = db.table("shortstatehash_statelayer").db()?;
        // Recover the counter from the highest ID in use: no counter row can lag behind.
        let highest = [
            short_eventid.last().db()?.map(|(k, _)| k),
            short_statekey.last().db()?.map(|(k, _)| k),
            snapshots.last().db()?.map(|(k, _)| k),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        Ok(Self {
            eventid_short: db.table("eventid_short").db()?,
            short_eventid,
            statekey_short: db.table("statekey_short").db()?,
            short_statekey,
            next: AtomicU64::new(highest + 1),
        })
    }

    /// A fresh ID (for state snapshots).
    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn event_short(&self, event_id: &EventId) -> Result<Option<u64>> {
        self.eventid_short.get(&event_id.to_string()).db()
    }

    /// The short ID of an event, created (in `batch`) if new.
    pub fn event_short_or_create(&self, event_id: &EventId, batch: &mut Batch) -> Result<u64> {
        if let Some(short) = self.event_short(event_id)? {
            return Ok(short);
        }
        let short = self.allocate();
        batch.put(&self.eventid_short, &event_id.to_string(), &short);
        batch.put(&self.short_eventid, &short, &event_id.to_string());
        Ok(short)
    }

    pub fn event_id(&self, short: u64) -> Result<Option<OwnedEventId>> {
        Ok(self.short_eventid.get(&short).db()?.and_then(|id| EventId::parse(id).ok()))
    }

    pub fn state_key_short(&self, event_type: &StateEventType, state_key: &str) -> Result<Option<u64>> {
        self.statekey_short.get(&(event_type.to_string(), state_key.to_owned())).db()
    }

    pub fn state_key_short_or_create(
        &self,
        event_type: &StateEventType,
        state_key: &str,
        batch: &mut Batch,
    ) -> Result<u64> {
        if let Some(short) = self.state_key_short(event_type, state_key)? {
            return Ok(short);
        }
        let short = self.allocate();
        let key = (event_type.to_string(), state_key.to_owned());
        batch.put(&self.statekey_short, &key, &short);
        batch.put(&self.short_statekey, &short, &Json(key));
        Ok(short)
    }
}
