//! Recently read stored events, by event ID.
//!
//! Syncs and `/messages` read the same recent events again and again; each
//! read from RocksDB is a lookup and a decode, which with the client's
//! fields parsed again came to a third of an initial sync. Cached events
//! share their text and parsed fields with every clone handed out.
//!
//! Coherence: a write of an event (a redaction rewrites its target, a purge
//! deletes it) forgets it once its batch is committed, and moves an epoch
//! on. A reader notes the epoch before it reads the database and keeps what
//! it read only if no write was committed meanwhile, so an old row read
//! across a write is never kept.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use estuary_storage::Batch;

use super::StoredPdu;

pub(crate) struct EventCache {
    inner: Arc<Mutex<Inner>>,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    events: HashMap<String, StoredPdu>,
    bytes: usize,
    epoch: u64,
}

/// Bytes an entry is counted for: its text, twice for the parsed client
/// fields, and the map's slot.
fn cost(stored: &StoredPdu) -> usize {
    stored.json.text_len() * 2 + stored.event_id.as_str().len() * 2 + 256
}

impl EventCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { inner: Arc::default(), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("event cache")
    }

    /// Taken before reading the database; see [`Self::keep`].
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Several events, in the IDs' order (`None` where one is not cached).
    pub fn get_many(&self, event_ids: &[String]) -> Vec<Option<StoredPdu>> {
        let inner = self.lock();
        event_ids.iter().map(|id| inner.events.get(id).cloned()).collect()
    }

    /// Keep events read from the database since `epoch`, unless a write was
    /// committed meanwhile. Their client fields are parsed first, once for
    /// every later reader.
    pub fn keep(&self, epoch: u64, read: &[&StoredPdu]) {
        for stored in read {
            stored.json.client();
        }
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        for stored in read {
            let bytes = cost(stored);
            if inner.bytes + bytes > self.max_bytes {
                inner.events.clear();
                inner.bytes = 0;
                if bytes > self.max_bytes {
                    return;
                }
            }
            if let Some(old) = inner.events.insert(stored.event_id.to_string(), (*stored).clone()) {
                inner.bytes -= cost(&old);
            }
            inner.bytes += bytes;
        }
    }

    /// Forget `event_id` once `batch`, which writes or deletes it, is committed.
    pub fn forget_on_commit(&self, batch: &mut Batch, event_id: String) {
        let inner = self.inner.clone();
        batch.after_commit(move || {
            let mut inner = inner.lock().expect("event cache");
            inner.epoch += 1;
            if let Some(old) = inner.events.remove(&event_id) {
                inner.bytes -= cost(&old);
            }
        });
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.events.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(id: &str, body: &str) -> StoredPdu {
        serde_json::from_value(json!({
            "event_id": id, "room_id": "!r:x", "stream": 1, "state_before": 0, "state_after": 0,
            "json": {"type": "m.room.message", "sender": "@a:x", "content": {"body": body}},
        }))
        .unwrap()
    }

    fn get(cache: &EventCache, event_id: &str) -> Option<StoredPdu> {
        cache.get_many(&[event_id.to_owned()]).pop().flatten()
    }

    fn db() -> (tempfile::TempDir, estuary_storage::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = estuary_storage::Db::open(dir.path(), &Default::default()).unwrap();
        (dir, db)
    }

    #[test]
    fn keeps_what_was_read_and_forgets_it_when_written() {
        let (_dir, db) = db();
        let cache = EventCache::new(1 << 20);
        let epoch = cache.epoch();
        cache.keep(epoch, &[&stored("$a", "one")]);
        assert_eq!(get(&cache, "$a").unwrap().json.client().content_value()["body"], "one");
        let mut batch = db.batch();
        cache.forget_on_commit(&mut batch, "$a".into());
        assert!(get(&cache, "$a").is_some(), "kept until the write is committed");
        batch.commit().unwrap();
        assert!(get(&cache, "$a").is_none());
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn a_read_across_a_write_is_not_kept() {
        let (_dir, db) = db();
        let cache = EventCache::new(1 << 20);
        let epoch = cache.epoch();
        let mut batch = db.batch();
        cache.forget_on_commit(&mut batch, "$a".into());
        batch.commit().unwrap();
        cache.keep(epoch, &[&stored("$a", "old")]);
        assert!(get(&cache, "$a").is_none());
    }

    #[test]
    fn stays_within_its_bound() {
        let cache = EventCache::new(2_000);
        for n in 0..50 {
            cache.keep(cache.epoch(), &[&stored(&format!("$e{n}"), "some text")]);
            assert!(cache.usage().1 <= 2_000);
        }
        assert!(cache.usage().0 > 0);
    }
}
