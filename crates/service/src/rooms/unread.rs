//! Unread notification counts, kept in memory between syncs.
//!
//! Every sync reports the counts of every room it shows, and counting means
//! reading every notification row after the user's read receipt. They only
//! change when a notification row is written or purged, or the receipt
//! moves, so the last counts of each (user, room) are kept with the
//! position they count from.
//!
//! Consistency: writers drop the entries they touch and bump `epoch` under
//! the lock, after their rows are committed; a reader keeps what it counted
//! only if no writer went by since it started (the epoch is unchanged), so
//! counts read before a write are never kept after it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

/// (notifications, highlights) per thread root; `None` is the main timeline.
pub type UnreadCounts = BTreeMap<Option<String>, (u64, u64)>;

/// What one entry costs, roughly: the key's two IDs, the counts, the map slot.
const ENTRY_BYTES: usize = 160;

type Entries = HashMap<(OwnedUserId, OwnedRoomId), (u64, Arc<UnreadCounts>)>;

pub(crate) struct UnreadCache {
    entries: Mutex<Entries>,
    epoch: AtomicU64,
    max_entries: usize,
}

impl UnreadCache {
    /// A cache within `bytes` of memory.
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            entries: Mutex::default(),
            epoch: AtomicU64::new(0),
            max_entries: (bytes / ENTRY_BYTES).max(64),
        }
    }

    /// The counts after position `after`, from the cache or from `count`.
    pub(crate) fn get_or_count<E>(
        &self,
        user: &UserId,
        room_id: &RoomId,
        after: u64,
        count: impl FnOnce() -> Result<UnreadCounts, E>,
    ) -> Result<Arc<UnreadCounts>, E> {
        let key = (user.to_owned(), room_id.to_owned());
        if let Some((from, counts)) = self.lock().get(&key)
            && *from == after
        {
            return Ok(counts.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let counts = Arc::new(count()?);
        let mut entries = self.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            if entries.len() >= self.max_entries {
                // Simpler than an LRU, and cheap to refill: a count is one scan.
                entries.clear();
            }
            entries.insert(key, (after, counts.clone()));
        }
        Ok(counts)
    }

    /// Notification rows of these (user, room) pairs were written or
    /// deleted (call after the write is committed).
    pub(crate) fn changed<'a>(&self, pairs: impl IntoIterator<Item = (&'a UserId, &'a RoomId)>) {
        let mut entries = self.lock();
        for (user, room_id) in pairs {
            entries.remove(&(user.to_owned(), room_id.to_owned()));
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map holds plain counts: one left by a panicking thread is whole.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (OwnedUserId, OwnedRoomId) {
        ("@a:x".try_into().unwrap(), "!r:x".try_into().unwrap())
    }

    fn counts(n: u64) -> UnreadCounts {
        BTreeMap::from([(None, (n, 0))])
    }

    #[test]
    fn counts_once_per_read_position_until_a_change() {
        let cache = UnreadCache::new(1 << 20);
        let (user, room) = ids();
        let mut counted = 0;
        let mut get = |after, n| {
            cache
                .get_or_count(&user, &room, after, || {
                    counted += 1;
                    Ok::<_, ()>(counts(n))
                })
                .unwrap()
        };
        assert_eq!(*get(5, 3), counts(3));
        assert_eq!(*get(5, 9), counts(3), "kept");
        assert_eq!(*get(7, 1), counts(1), "the receipt moved: counted again");
        assert_eq!(counted, 2);
        cache.changed([(&*user, &*room)]);
        assert_eq!(*cache.get_or_count(&user, &room, 7, || Ok::<_, ()>(counts(2))).unwrap(), counts(2));
    }

    #[test]
    fn counts_read_across_a_write_are_not_kept() {
        let cache = UnreadCache::new(1 << 20);
        let (user, room) = ids();
        let stale = cache
            .get_or_count(&user, &room, 0, || {
                // A notification is committed while this count is under way.
                cache.changed([(&*user, &*room)]);
                Ok::<_, ()>(counts(1))
            })
            .unwrap();
        assert_eq!(*stale, counts(1));
        let fresh = cache.get_or_count(&user, &room, 0, || Ok::<_, ()>(counts(2))).unwrap();
        assert_eq!(*fresh, counts(2), "the count read across the write was not kept");
    }
}
