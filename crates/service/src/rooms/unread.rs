//! Unread notification counts, kept in memory between syncs.
//!
//! Every sync reports the counts of every room it shows, and counting means
//! reading every notification row after the user's read receipt: thousands
//! in a busy room nobody reads. So the last counts of each (user, room) are
//! kept with the position they count from, and a new notification adds to
//! them instead of forcing a recount; only a moved receipt or a purge
//! counts again.
//!
//! Consistency: a writer of new rows registers before its commit
//! ([`UnreadCache::begin_write`]) and adds to the kept counts after it
//! ([`NewRows::finish`]); a writer that deletes rows drops the entries after
//! its commit ([`UnreadCache::changed`]). Each step moves `epoch`. A reader
//! keeps what it counted only if no writer was under way when it started
//! and none went by since, so a count either includes a new row and is
//! not added to again, or misses it and is added to (or not kept).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

/// (notifications, highlights) per thread root; `None` is the main timeline.
pub type UnreadCounts = BTreeMap<Option<String>, (u64, u64)>;

/// What one entry costs, roughly: the key's two IDs, the counts, the map slot.
const ENTRY_BYTES: usize = 160;

type Entries = HashMap<(OwnedUserId, OwnedRoomId), (u64, Arc<UnreadCounts>)>;

#[derive(Default)]
struct State {
    entries: Entries,
    /// Moves when a write of new rows starts and ends, and after a deletion.
    epoch: u64,
    /// Writers of new rows between `begin_write` and `finish`.
    writing: u64,
}

pub(crate) struct UnreadCache {
    state: Mutex<State>,
    max_entries: usize,
}

/// A new notification row: its stream position, thread and highlight.
pub(crate) struct NewRow<'a> {
    pub user: &'a UserId,
    pub room_id: &'a RoomId,
    pub stream: u64,
    pub thread: Option<String>,
    pub highlight: bool,
}

/// A write of new notification rows under way (see the module's comment).
/// Dropped without `finish` (the commit failed), it only ends the write.
pub(crate) struct NewRows<'a> {
    cache: &'a UnreadCache,
}

impl UnreadCache {
    /// A cache within `bytes` of memory.
    pub(crate) fn new(bytes: usize) -> Self {
        Self { state: Mutex::default(), max_entries: (bytes / ENTRY_BYTES).max(64) }
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
        let started = {
            let state = self.lock();
            if let Some((from, counts)) = state.entries.get(&key)
                && *from == after
            {
                return Ok(counts.clone());
            }
            (state.writing == 0).then_some(state.epoch)
        };
        let counts = Arc::new(count()?);
        let mut state = self.lock();
        if started == Some(state.epoch) {
            if state.entries.len() >= self.max_entries {
                // Simpler than an LRU, and cheap to refill: a count is one scan.
                state.entries.clear();
            }
            state.entries.insert(key, (after, counts.clone()));
        }
        Ok(counts)
    }

    /// Call before committing new notification rows; then `finish` with them.
    pub(crate) fn begin_write(&self) -> NewRows<'_> {
        let mut state = self.lock();
        state.epoch += 1;
        state.writing += 1;
        NewRows { cache: self }
    }

    /// Notification rows of these (user, room) pairs were deleted (call
    /// after the write is committed): they are counted again.
    pub(crate) fn changed<'a>(&self, pairs: impl IntoIterator<Item = (&'a UserId, &'a RoomId)>) {
        let mut state = self.lock();
        for (user, room_id) in pairs {
            state.entries.remove(&(user.to_owned(), room_id.to_owned()));
        }
        state.epoch += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The map holds plain counts: one left by a panicking thread is whole.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NewRows<'_> {
    /// The rows are committed: add them to the counts kept.
    pub(crate) fn finish<'r>(self, rows: impl IntoIterator<Item = NewRow<'r>>) {
        let mut state = self.cache.lock();
        for row in rows {
            let key = (row.user.to_owned(), row.room_id.to_owned());
            let Some((from, counts)) = state.entries.get_mut(&key) else { continue };
            if row.stream <= *from {
                continue; // before the read receipt: not unread
            }
            let entry = Arc::make_mut(counts).entry(row.thread).or_default();
            entry.0 += 1;
            entry.1 += u64::from(row.highlight);
        }
        drop(state); // before `self`, whose drop takes the lock
    }
}

impl Drop for NewRows<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        state.writing -= 1;
        state.epoch += 1;
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

    fn new_row<'a>(user: &'a UserId, room_id: &'a RoomId, stream: u64, highlight: bool) -> NewRow<'a> {
        NewRow { user, room_id, stream, thread: None, highlight }
    }

    #[test]
    fn new_rows_add_to_the_kept_counts() {
        let cache = UnreadCache::new(1 << 20);
        let (user, room) = ids();
        let mut counted = 0;
        let mut get = |cache: &UnreadCache| {
            cache
                .get_or_count(&user, &room, 5, || {
                    counted += 1;
                    Ok::<_, ()>(counts(3))
                })
                .unwrap()
        };
        assert_eq!(*get(&cache), counts(3));
        let write = cache.begin_write();
        write.finish([new_row(&user, &room, 9, true), new_row(&user, &room, 4, false)]);
        let after = get(&cache);
        assert_eq!(after[&None], (4, 1), "the row after the receipt added, the one before not");
        assert_eq!(counted, 1, "no recount");
    }

    #[test]
    fn a_count_during_a_write_is_not_kept() {
        let cache = UnreadCache::new(1 << 20);
        let (user, room) = ids();
        let write = cache.begin_write();
        // Counted while the row is being committed: it may or may not be in.
        let during = cache.get_or_count(&user, &room, 0, || Ok::<_, ()>(counts(1))).unwrap();
        assert_eq!(*during, counts(1));
        write.finish([new_row(&user, &room, 9, false)]);
        let fresh = cache.get_or_count(&user, &room, 0, || Ok::<_, ()>(counts(1))).unwrap();
        assert_eq!(*fresh, counts(1), "counted again, not 1 + 1");
        let kept = cache.get_or_count(&user, &room, 0, || Ok::<_, ()>(counts(7))).unwrap();
        assert_eq!(*kept, counts(1), "kept once no write is under way");
    }

    #[test]
    fn a_failed_write_ends() {
        let cache = UnreadCache::new(1 << 20);
        let (user, room) = ids();
        drop(cache.begin_write());
        cache.get_or_count(&user, &room, 0, || Ok::<_, ()>(counts(2))).unwrap();
        let kept = cache.get_or_count(&user, &room, 0, || Ok::<_, ()>(counts(5))).unwrap();
        assert_eq!(*kept, counts(2));
    }
}
