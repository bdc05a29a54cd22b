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
    /// Short ID → (type, state_key) of the keys allocated by this process:
    /// a key is read back (state resolution) before its batch commits.
    new_statekeys: std::sync::Mutex<std::collections::HashMap<u64, (String, String)>>,
}

/// New state keys remembered before their batches commit (see
/// `remember_new_key`).
const NEW_KEYS_KEPT: usize = 4096;

impl ShortIds {
    pub fn new(db: &Db) -> Result<Self> {
        let short_eventid: Table<u64, String> = db.table("short_eventid").db()?;
        let short_statekey: Table<u64, Json<(String, String)>> = db.table("short_statekey").db()?;
        let snapshots: Table<u64, Vec<u8>> = db.table("shortstatehash_statelayer").db()?;
        // Report IDs come from this counter too.
        let reports: Table<u64, Vec<u8>> = db.table("reportid_report").db()?;
        // Recover the counter from the highest ID in use: no counter row can lag behind.
        let highest = [
            short_eventid.last().db()?.map(|(k, _)| k),
            short_statekey.last().db()?.map(|(k, _)| k),
            snapshots.last().db()?.map(|(k, _)| k),
            reports.last().db()?.map(|(k, _)| k),
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
            new_statekeys: Default::default(),
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

    /// The event IDs of several short IDs in one batched read, in their
    /// order; a short ID with no event is left out.
    pub fn event_ids(&self, shorts: &[u64]) -> Result<Vec<String>> {
        Ok(self.short_eventid.multi_get(shorts).db()?.into_iter().flatten().collect())
    }

    /// The (event type, state key) a state key short ID stands for.
    pub fn state_key_of(&self, short: u64) -> Result<Option<(String, String)>> {
        if let Some(key) = self.new_statekeys.lock().expect("state key cache").get(&short) {
            return Ok(Some(key.clone()));
        }
        Ok(self.short_statekey.get(&short).db()?.map(|Json(key)| key))
    }

    pub fn state_key_short(&self, event_type: &StateEventType, state_key: &str) -> Result<Option<u64>> {
        let key = (event_type.to_string(), state_key.to_owned());
        if let Some(short) = self.statekeys.lock().expect("state key cache").get(&key) {
            return Ok(Some(*short));
        }
        self.statekey_short.get(&key).db()
    }

    /// Remember a key allocated now, until its batch has committed: past
    /// `NEW_KEYS_KEPT` of them, those already written are forgotten.
    fn remember_new_key(&self, short: u64, key: (String, String)) -> Result<()> {
        let mut new_keys = self.new_statekeys.lock().expect("state key cache");
        if new_keys.len() >= NEW_KEYS_KEPT {
            let mut written = Vec::new();
            for short in new_keys.keys() {
                if self.short_statekey.get(short).db()?.is_some() {
                    written.push(*short);
                }
            }
            for short in written {
                new_keys.remove(&short);
            }
        }
        new_keys.insert(short, key);
        Ok(())
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
                    None => {
                        let short = self.allocate();
                        self.remember_new_key(short, key.clone())?;
                        short
                    }
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
        // Read back before either commits (state resolution does).
        assert_eq!(shorts.state_key_of(a).unwrap(), Some(("m.room.power_levels".to_owned(), String::new())));
        second.commit().unwrap();
        first.commit().unwrap();
        let reopened = ShortIds::new(&db).unwrap();
        assert_eq!(reopened.state_key_short(&kind, "").unwrap(), Some(a));
    }

    /// Threads (rooms) meeting the same new keys and new events at once:
    /// one short ID per key, never one ID for two things, and what each
    /// batch committed reads back after a restart.
    #[test]
    fn short_ids_under_threads_are_unique_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let shorts = std::sync::Arc::new(ShortIds::new(&db).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|room| {
                let (shorts, db) = (shorts.clone(), db.clone());
                std::thread::spawn(move || {
                    let mut keys = Vec::new();
                    let mut events = Vec::new();
                    for i in 0..200 {
                        let mut batch = db.batch();
                        let user = format!("@user{}:localhost", i % 50);
                        let key = shorts
                            .state_key_short_or_create(&StateEventType::RoomMember, &user, &mut batch)
                            .unwrap();
                        let event_id = EventId::parse(format!("$room{room}event{i}")).unwrap();
                        let event = shorts.event_short_or_create(&event_id, &mut batch).unwrap();
                        batch.commit().unwrap();
                        keys.push((user, key));
                        events.push((event_id, event));
                    }
                    (keys, events)
                })
            })
            .collect();
        let mut by_key = std::collections::HashMap::new();
        let mut all_ids = std::collections::HashSet::new();
        let mut events = Vec::new();
        for thread in threads {
            let (keys, room_events) = thread.join().unwrap();
            for (user, key) in keys {
                assert_eq!(*by_key.entry(user).or_insert(key), key, "one key, two short IDs");
            }
            events.extend(room_events);
        }
        for key in by_key.values() {
            all_ids.insert(*key);
        }
        for (_, short) in &events {
            assert!(all_ids.insert(*short), "short ID {short} handed out twice");
        }
        let reopened = ShortIds::new(&db).unwrap();
        for (user, key) in &by_key {
            assert_eq!(reopened.state_key_short(&StateEventType::RoomMember, user).unwrap(), Some(*key));
        }
        for (event_id, short) in &events {
            assert_eq!(reopened.event_id(*short).unwrap().as_ref(), Some(event_id));
        }
        assert!(reopened.allocate() > *all_ids.iter().max().unwrap(), "a restart never reuses an ID");
    }
}
