//! Async locks by key (a room, a user), created on first use and dropped
//! once idle, so the map stays as large as what is busy.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

/// Below this many locks, none are dropped.
const KEPT: usize = 1024;

pub struct KeyedLocks<K> {
    inner: Mutex<Inner<K>>,
}

struct Inner<K> {
    map: HashMap<K, Arc<tokio::sync::Mutex<()>>>,
    /// The size at which idle locks are dropped.
    prune_at: usize,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { map: HashMap::new(), prune_at: KEPT }) }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// The lock of `key`; everyone asking for the same key gets the same lock.
    pub fn get<Q>(&self, key: &Q) -> Arc<tokio::sync::Mutex<()>>
    where
        Q: ToOwned<Owned = K> + ?Sized,
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash,
    {
        let mut inner = self.inner.lock().expect("keyed locks");
        if inner.map.len() >= inner.prune_at {
            // Under the map's mutex, a count of 1 means only the map holds it.
            inner.map.retain(|_, lock| Arc::strong_count(lock) > 1);
            inner.prune_at = (inner.map.len() * 2).max(KEPT);
        }
        if let Some(lock) = inner.map.get(key) {
            return lock.clone();
        }
        inner.map.entry(key.to_owned()).or_default().clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{KEPT, KeyedLocks};

    /// Idle locks are dropped as the map grows; a held one never is.
    #[test]
    fn idle_locks_are_dropped_held_ones_kept() {
        let locks: KeyedLocks<String> = KeyedLocks::default();
        let held = locks.get("busy");
        for i in 0..5000 {
            drop(locks.get(format!("idle{i}").as_str()));
        }
        assert!(locks.len() <= KEPT, "{} locks kept for 1 busy key", locks.len());
        assert!(Arc::ptr_eq(&held, &locks.get("busy")), "a held lock was replaced");
    }
}
