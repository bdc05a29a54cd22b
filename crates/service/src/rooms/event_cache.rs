//! Recently read events, decoded, bounded in bytes (a share of the memory
//! budget). Syncs and pagination read the same events again and again;
//! decoding a stored PDU's JSON is most of the cost of reading it.
//!
//! A write that changes a stored event (a redaction) drops it after its
//! commit and moves the epoch on; a reader inserts what it read only if the
//! epoch has not moved since it started reading, so a row read before the
//! commit can never be cached after it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{EventId, OwnedEventId};

use super::StoredPdu;

pub(super) struct EventCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<OwnedEventId, (Arc<StoredPdu>, usize)>,
    bytes: usize,
    epoch: u64,
}

impl EventCache {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self { inner: Mutex::default(), max_bytes }
    }

    pub(super) fn get(&self, event_id: &EventId) -> Option<Arc<StoredPdu>> {
        self.inner.lock().expect("event cache").entries.get(event_id).map(|(event, _)| event.clone())
    }

    /// Taken before reading a row, handed back to `insert`.
    pub(super) fn epoch(&self) -> u64 {
        self.inner.lock().expect("event cache").epoch
    }

    /// Remember an event read at `epoch`; `encoded_len` is its stored size,
    /// and decoded it takes about three times that. When full, start again.
    pub(super) fn insert(&self, event: Arc<StoredPdu>, encoded_len: usize, epoch: u64) {
        let cost = encoded_len * 3 + 128;
        let mut inner = self.inner.lock().expect("event cache");
        if inner.epoch != epoch {
            return;
        }
        if inner.bytes + cost > self.max_bytes {
            inner.entries.clear();
            inner.bytes = 0;
        }
        if let Some((_, old)) = inner.entries.insert(event.event_id.clone(), (event, cost)) {
            inner.bytes -= old;
        }
        inner.bytes += cost;
    }

    /// A stored event changed (after its commit).
    pub(super) fn invalidate(&self, event_id: &EventId) {
        let mut inner = self.inner.lock().expect("event cache");
        inner.epoch += 1;
        if let Some((_, cost)) = inner.entries.remove(event_id) {
            inner.bytes -= cost;
        }
    }

    /// Events in memory now, and their estimated bytes.
    pub(super) fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("event cache");
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::{EventId, room_id};

    use super::{EventCache, StoredPdu};

    fn event(id: &str) -> Arc<StoredPdu> {
        Arc::new(StoredPdu {
            event_id: EventId::parse(id).unwrap(),
            room_id: room_id!("!r:x").to_owned(),
            json: Default::default(),
            stream: 1,
            state_before: 0,
            state_after: 0,
            txn: None,
        })
    }

    /// A row read before a redaction commits is never cached after it; the
    /// byte bound holds.
    #[test]
    fn stale_reads_are_not_cached_and_bytes_stay_bounded() {
        let cache = EventCache::new(10_000);
        let before = cache.epoch();
        cache.invalidate(&EventId::parse("$a").unwrap());
        cache.insert(event("$a"), 100, before);
        assert!(cache.get(&EventId::parse("$a").unwrap()).is_none(), "a stale read was cached");
        cache.insert(event("$a"), 100, cache.epoch());
        assert!(cache.get(&EventId::parse("$a").unwrap()).is_some());
        for i in 0..1000 {
            cache.insert(event(&format!("$e{i}")), 100, cache.epoch());
            assert!(cache.usage().1 <= 10_000);
        }
    }
}
