//! State snapshots, stored as layers: a snapshot is its parent plus the
//! entries that changed. Chains are at most `MAX_DEPTH` layers deep; deeper
//! changes are merged into one layer over the base, and a new full base is
//! written only when that merged layer grows past half the base. A message
//! shares its snapshot with the event before it, so a room with 10,000
//! members copies nothing per message and little per state change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use estuary_core::{Error, Result};
use estuary_storage::{Batch, Db, Table, codec::Json};
use serde::{Deserialize, Serialize};

use crate::storage_error::StorageResultExt;

/// shortstatekey → shorteventid.
pub type StateMap = HashMap<u64, u64>;

const MAX_DEPTH: u8 = 8;
/// The empty snapshot (short IDs start at 1).
pub const EMPTY: u64 = 0;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Layer {
    parent: Option<u64>,
    depth: u8,
    /// Entries set in this layer over the parent.
    set: Vec<(u64, u64)>,
    /// Keys removed relative to the parent (only after state resolution).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<u64>,
}

pub struct StateStore {
    layers: Table<u64, Json<Layer>>,
    cache: Mutex<SnapshotCache>,
    /// Layers written into a batch not committed yet: a batch that stages
    /// several state events builds each layer over the one before. IDs are
    /// never reused, so another room can never see these.
    pending: Mutex<HashMap<u64, Layer>>,
}

impl StateStore {
    /// `cache_bytes` bounds the snapshots kept in memory.
    pub fn new(db: &Db, cache_bytes: usize) -> Result<Self> {
        Ok(Self {
            layers: db.table("shortstatehash_statelayer").db()?,
            cache: Mutex::new(SnapshotCache { max_bytes: cache_bytes, ..Default::default() }),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn layer(&self, id: u64) -> Result<Layer> {
        if let Some(layer) = self.pending.lock().expect("pending layers").get(&id) {
            return Ok(layer.clone());
        }
        self.layers
            .get(&id)
            .db()?
            .map(|Json(l)| l)
            .ok_or_else(|| Error::internal(format!("missing state layer {id}")))
    }

    /// The full state of snapshot `id`.
    pub fn load(&self, id: u64) -> Result<Arc<StateMap>> {
        if id == EMPTY {
            return Ok(Arc::new(StateMap::new()));
        }
        if let Some(hit) = self.cached(id) {
            return Ok(hit);
        }
        let mut chain = vec![self.layer(id)?];
        while let Some(parent) = chain.last().and_then(|l| l.parent) {
            // `cached` releases the lock before `remember` takes it again.
            if let Some(hit) = self.cached(parent) {
                return Ok(self.remember(id, apply(hit.as_ref().clone(), chain.iter().rev())));
            }
            chain.push(self.layer(parent)?);
        }
        Ok(self.remember(id, apply(StateMap::new(), chain.iter().rev())))
    }

    /// A cached snapshot. The guard is dropped on return: holding it into an
    /// `if let` body that calls `remember` would deadlock on this mutex.
    fn cached(&self, id: u64) -> Option<Arc<StateMap>> {
        self.cache.lock().expect("state cache").entries.get(&id).cloned()
    }

    fn remember(&self, id: u64, state: StateMap) -> Arc<StateMap> {
        let state = Arc::new(state);
        self.cache.lock().expect("state cache").insert(id, state.clone());
        state
    }

    /// Snapshots in memory now: how many, and their bytes.
    pub fn cache_usage(&self) -> (usize, usize) {
        let cache = self.cache.lock().expect("state cache");
        (cache.entries.len(), cache.bytes)
    }

    /// Store a snapshot: `parent` (if any) with `changes` applied (and
    /// `removed` keys dropped). Returns the new snapshot's ID, written in `batch`.
    pub fn store(
        &self,
        new_id: u64,
        parent: Option<u64>,
        changes: Vec<(u64, u64)>,
        removed: Vec<u64>,
        batch: &mut Batch,
    ) -> Result<Arc<StateMap>> {
        let parent_state = match parent {
            Some(p) => self.load(p)?,
            None => Arc::new(StateMap::new()),
        };
        let mut full = parent_state.as_ref().clone();
        for key in &removed {
            full.remove(key);
        }
        full.extend(changes.iter().copied());
        let layer = match parent {
            None => Layer { parent: None, depth: 0, set: sorted(&full), removed: Vec::new() },
            Some(p) => self.layer_over(p, &full, changes, removed)?,
        };
        batch.put(&self.layers, &new_id, &Json(layer.clone()));
        self.pending.lock().expect("pending layers").insert(new_id, layer);
        Ok(self.remember(new_id, full))
    }

    /// The batch holding these snapshots was committed, or dropped: they
    /// are no longer pending, and a dropped one is forgotten.
    pub fn settle(&self, ids: &[u64], committed: bool) {
        let mut pending = self.pending.lock().expect("pending layers");
        for id in ids {
            pending.remove(id);
        }
        drop(pending);
        if !committed {
            let mut cache = self.cache.lock().expect("state cache");
            for id in ids {
                cache.remove(*id);
            }
        }
    }

    fn layer_over(
        &self,
        parent: u64,
        full: &StateMap,
        changes: Vec<(u64, u64)>,
        removed: Vec<u64>,
    ) -> Result<Layer> {
        let parent_layer = self.layer(parent)?;
        if parent_layer.depth + 1 < MAX_DEPTH {
            return Ok(Layer { parent: Some(parent), depth: parent_layer.depth + 1, set: changes, removed });
        }
        // Too deep: diff against the chain's base instead.
        let mut base = parent;
        let mut base_layer = parent_layer;
        while let Some(p) = base_layer.parent {
            base = p;
            base_layer = self.layer(p)?;
        }
        let base_state = self.load(base)?;
        let set: Vec<(u64, u64)> =
            sorted(full).into_iter().filter(|(k, v)| base_state.get(k) != Some(v)).collect();
        let removed: Vec<u64> = base_state.keys().filter(|k| !full.contains_key(k)).copied().collect();
        if set.len() + removed.len() > base_state.len() / 2 {
            return Ok(Layer { parent: None, depth: 0, set: sorted(full), removed: Vec::new() });
        }
        Ok(Layer { parent: Some(base), depth: 1, set, removed })
    }
}

/// Snapshots by ID, bounded in bytes. When full it starts again empty: a
/// room's current snapshot is loaded again from its few layers on its next
/// use, and an LRU's bookkeeping would cost more than that reload.
#[derive(Default)]
struct SnapshotCache {
    entries: HashMap<u64, Arc<StateMap>>,
    bytes: usize,
    max_bytes: usize,
}

impl SnapshotCache {
    /// What a snapshot costs in memory: its table's slots and control bytes.
    fn cost(state: &StateMap) -> usize {
        state.capacity() * (size_of::<(u64, u64)>() + 1) + 64
    }

    fn insert(&mut self, id: u64, state: Arc<StateMap>) {
        let cost = Self::cost(&state);
        if self.bytes + cost > self.max_bytes {
            self.clear();
        }
        if let Some(old) = self.entries.insert(id, state) {
            self.bytes -= Self::cost(&old);
        }
        self.bytes += cost;
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.entries.remove(&id) {
            self.bytes -= Self::cost(&old);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

fn sorted(state: &StateMap) -> Vec<(u64, u64)> {
    let mut entries: Vec<(u64, u64)> = state.iter().map(|(k, v)| (*k, *v)).collect();
    entries.sort_unstable();
    entries
}

fn apply<'a>(mut state: StateMap, layers: impl Iterator<Item = &'a Layer>) -> StateMap {
    for layer in layers {
        for key in &layer.removed {
            state.remove(key);
        }
        state.extend(layer.set.iter().copied());
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading a snapshot whose parent (but not itself) is cached used to
    /// deadlock: the cache lock was still held when the result was stored.
    #[test]
    fn loading_over_a_cached_parent_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let store = std::sync::Arc::new(StateStore::new(&db, 1 << 20).unwrap());
        for (id, parent, change) in [(1, None, (1, 10)), (2, Some(1), (2, 20))] {
            let mut batch = db.batch();
            store.store(id, parent, vec![change], vec![], &mut batch).unwrap();
            batch.commit().unwrap();
        }
        store.cache.lock().unwrap().remove(2);
        let (tx, rx) = std::sync::mpsc::channel();
        let loader = store.clone();
        std::thread::spawn(move || tx.send(loader.load(2).map(|s| s.len()).ok()));
        let loaded = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("load deadlocked");
        assert_eq!(loaded, Some(2));
    }

    #[test]
    fn layers_round_trip_and_stay_shallow() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let store = StateStore::new(&db, 1 << 20).unwrap();
        let mut batch = db.batch();
        let initial: Vec<(u64, u64)> = (0..100).map(|k| (k, k + 1000)).collect();
        store.store(1, None, initial, vec![], &mut batch).unwrap();
        batch.commit().unwrap();
        let mut parent = 1;
        for i in 0..40u64 {
            let mut batch = db.batch();
            store.store(2 + i, Some(parent), vec![(i % 10, 5000 + i)], vec![], &mut batch).unwrap();
            batch.commit().unwrap();
            parent = 2 + i;
        }
        store.cache.lock().unwrap().clear();
        let state = store.load(parent).unwrap();
        assert_eq!(state.len(), 100);
        assert_eq!(state[&9], 5039);
        assert_eq!(state[&50], 1050);
        // No layer is deeper than MAX_DEPTH and none but bases copy the state.
        for id in 1..=parent {
            let layer = store.layer(id).unwrap();
            assert!(layer.depth < MAX_DEPTH);
            if layer.parent.is_some() {
                assert!(layer.set.len() <= 50, "layer {id} has {} entries", layer.set.len());
            }
        }
        let mut batch = db.batch();
        let after_removal = store.store(100, Some(parent), vec![], vec![3], &mut batch).unwrap();
        batch.commit().unwrap();
        assert!(!after_removal.contains_key(&3));
        store.cache.lock().unwrap().clear();
        assert_eq!(store.load(100).unwrap().len(), 99);
        assert_eq!(store.load(parent).unwrap().len(), 100, "older snapshots are unchanged");
    }

    /// Many rooms change state at once, from many threads, through a cache
    /// small enough to be cleared under them: every snapshot, loaded from
    /// the cache or from its layers, is exactly that room's state.
    #[test]
    fn concurrent_rooms_never_see_each_others_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let store = std::sync::Arc::new(StateStore::new(&db, 1 << 20).unwrap());
        let next_id = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let threads: Vec<_> = (0..8u64)
            .map(|room| {
                let (store, db, next_id) = (store.clone(), db.clone(), next_id.clone());
                std::thread::spawn(move || {
                    let mut expected = StateMap::new();
                    let mut history: Vec<(u64, StateMap)> = Vec::new();
                    let mut parent = None;
                    for step in 0..300u64 {
                        // Keys shared by every room; values unique to this room.
                        let key = (step * 7 + room) % 40;
                        let value = room * 1_000_000 + step;
                        let removed = if step % 11 == 10 { vec![(step + 3) % 40] } else { vec![] };
                        let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut batch = db.batch();
                        let stored =
                            store.store(id, parent, vec![(key, value)], removed.clone(), &mut batch).unwrap();
                        batch.commit().unwrap();
                        store.settle(&[id], true);
                        for k in &removed {
                            expected.remove(k);
                        }
                        expected.insert(key, value);
                        assert_eq!(*stored, expected, "room {room} step {step} as stored");
                        history.push((id, expected.clone()));
                        parent = Some(id);
                        if step % 50 == 0 {
                            store.cache.lock().unwrap().clear();
                        }
                    }
                    for (id, state) in &history {
                        assert_eq!(*store.load(*id).unwrap(), *state, "room {room} snapshot {id}");
                        assert!(
                            state.values().all(|v| v / 1_000_000 == room),
                            "room {room} sees another room"
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a room thread failed");
        }
    }

    /// Layers staged in one uncommitted batch build on each other; a dropped
    /// batch's snapshots are forgotten.
    #[test]
    fn staged_layers_chain_before_commit_and_vanish_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let store = StateStore::new(&db, 1 << 20).unwrap();
        let mut batch = db.batch();
        let mut parent = None;
        for id in 1..=20u64 {
            store.store(id, parent, vec![(id, id * 10)], vec![], &mut batch).unwrap();
            store.cache.lock().unwrap().clear();
            parent = Some(id);
        }
        assert_eq!(store.load(20).unwrap().len(), 20, "a staged chain loads before its commit");
        let ids: Vec<u64> = (1..=20).collect();
        drop(batch);
        store.settle(&ids, false);
        assert!(store.load(20).is_err(), "a dropped snapshot must not load");
    }
}
