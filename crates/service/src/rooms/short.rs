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
    /// (type, state_key) → short ID: every key ever seen (a bounded vocabulary).
    statekeys: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
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
            statekeys: Default::default(),
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
        let key = (event_type.to_string(), state_key.to_owned());
        if let Some(short) = self.statekeys.lock().expect("state key cache").get(&key) {
            return Ok(Some(*short));
        }
        self.statekey_short.get(&key).db()
    }

    /// The short ID of a state key, created if new. Two rooms may meet the
    /// same new key at once, so allocation happens under a lock and the
    /// mapping is remembered in memory until (and after) its batch commits;
    /// every batch that uses it writes it again, so it is never lost.
    pub fn state_key_short_or_create(
        &self,
        event_type: &StateEventType,
        state_key: &str,
        batch: &mut Batch,
    ) -> Result<u64> {
        let key = (event_type.to_string(), state_key.to_owned());
        let mut cache = self.statekeys.lock().expect("state key cache");
        let short = match cache.get(&key) {
            Some(short) => *short,
            None => {
                let short = match self.statekey_short.get(&key).db()? {
                    Some(short) => short,
                    None => self.allocate(),
                };
                cache.insert(key.clone(), short);
                short
            }
        };
        batch.put(&self.statekey_short, &key, &short);
        batch.put(&self.short_statekey, &short, &Json(key));
        Ok(short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_state_key_gets_one_short_id_even_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let shorts = ShortIds::new(&db).unwrap();
        let kind = StateEventType::RoomPowerLevels;
        // Two rooms meet the same new key before either batch commits.
        let (mut first, mut second) = (db.batch(), db.batch());
        let a = shorts.state_key_short_or_create(&kind, "", &mut first).unwrap();
        let b = shorts.state_key_short_or_create(&kind, "", &mut second).unwrap();
        assert_eq!(a, b);
        second.commit().unwrap();
        first.commit().unwrap();
        let reopened = ShortIds::new(&db).unwrap();
        assert_eq!(reopened.state_key_short(&kind, "").unwrap(), Some(a));
    }
}
