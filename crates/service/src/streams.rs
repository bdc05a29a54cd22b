//! The server's one stream of changes and the wake-ups of waiting syncs.
//!
//! Every change a client syncs (events, account data, later receipts and
//! to-device messages) gets a position from one counter. Positions are
//! allocated and committed in order under a short lock, so a sync that
//! reads up to the committed position never skips a change committed later
//! with a smaller position.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use estuary_core::Result;
use estuary_storage::Batch;
use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

use crate::storage_error::StorageResultExt;

/// `global` key of the highest position handed out for unstored changes.
const HIGH_WATER: &str = "stream_high_water";

pub struct Streams {
    next: AtomicU64,
    committed: AtomicU64,
    commit_lock: Mutex<()>,
    waiters: Mutex<HashMap<OwnedUserId, Arc<Notify>>>,
    /// Woken on every commit: for waiters not tied to a user's rooms
    /// (peeking at a room one is not in).
    any_change: Notify,
}

impl Streams {
    /// `highest` is the greatest position found in storage.
    pub fn new(highest: u64) -> Self {
        Self {
            next: AtomicU64::new(highest + 1),
            committed: AtomicU64::new(highest),
            commit_lock: Mutex::new(()),
            waiters: Mutex::new(HashMap::new()),
            any_change: Notify::new(),
        }
    }

    /// The greatest position whose change is committed.
    pub fn current(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Allocate a position, let `fill` add its rows to `batch`, and commit.
    pub fn commit(&self, batch: Batch, fill: impl FnOnce(u64, &mut Batch)) -> Result<u64> {
        self.commit_many(batch, 1, fill)
    }

    /// Allocate `count` consecutive positions (at least one), let `fill` add
    /// their rows to `batch` given the first, and commit them together.
    /// Returns the first position.
    pub fn commit_many(
        &self,
        mut batch: Batch,
        count: usize,
        fill: impl FnOnce(u64, &mut Batch),
    ) -> Result<u64> {
        let count = count.max(1) as u64;
        let _guard = self.commit_lock.lock().expect("commit lock");
        let first = self.next.fetch_add(count, Ordering::SeqCst);
        fill(first, &mut batch);
        batch.commit().db()?;
        self.committed.store(first + count - 1, Ordering::SeqCst);
        self.any_change.notify_waiters();
        Ok(first)
    }

    /// A position for a change that is not stored (typing): the high-water
    /// mark is written, so positions are never reused after a restart.
    pub fn bump(&self, db: &estuary_storage::Db) -> Result<u64> {
        let global: estuary_storage::Table<String, u64> = db.table("global").db()?;
        self.commit(db.batch(), |position, batch| batch.put(&global, &HIGH_WATER.to_owned(), &position))
    }

    /// The high-water mark stored by `bump`.
    pub fn stored_high_water(db: &estuary_storage::Db) -> Result<u64> {
        let global: estuary_storage::Table<String, u64> = db.table("global").db()?;
        Ok(global.get(&HIGH_WATER.to_owned()).db()?.unwrap_or(0))
    }

    /// Wakes on the next commit of any change.
    pub fn any_change(&self) -> &Notify {
        &self.any_change
    }

    /// The wake-up handle of a user's waiting syncs.
    pub fn waiter(&self, user_id: &UserId) -> Arc<Notify> {
        self.waiters.lock().expect("waiters").entry(user_id.to_owned()).or_default().clone()
    }

    /// Wake the syncs of these users.
    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let waiters = self.waiters.lock().expect("waiters");
        for user in users {
            if let Some(notify) = waiters.get(user) {
                notify.notify_waiters();
            }
        }
    }
}
