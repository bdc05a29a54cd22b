//! Erased users (`erase: true` on deactivation): anyone who joins a room
//! after the erasure is served redacted copies of the user's events, while
//! members who could already see them keep seeing the originals, as the
//! spec's `/account/deactivate` describes. Nothing is sent over federation.

use std::collections::HashMap;

use estuary_core::{Error, Result};
use estuary_storage::{Db, Table};
use ruma::{OwnedUserId, UserId};

use super::{Rooms, StoredPdu};
use crate::storage_error::StorageResultExt;

/// Erased users and the stream position of their erasure; few, so all in memory.
pub(super) struct Erasures {
    table: Table<String, u64>,
    erased: std::sync::RwLock<HashMap<OwnedUserId, u64>>,
}

impl Erasures {
    pub(super) fn new(db: &Db) -> Result<Self> {
        let table: Table<String, u64> = db.table("userid_erasure").db()?;
        let erased = table
            .scan_raw_prefix(&[], usize::MAX)
            .db()?
            .into_iter()
            .filter_map(|(user, position)| UserId::parse(user).ok().map(|u| (u, position)))
            .collect();
        Ok(Self { table, erased: std::sync::RwLock::new(erased) })
    }

    fn none(&self) -> bool {
        self.erased.read().expect("erasures").is_empty()
    }

    fn position(&self, user: &UserId) -> Option<u64> {
        self.erased.read().expect("erasures").get(user).copied()
    }
}

impl Rooms {
    /// Erase a (deactivated) user's content for those who join later.
    pub fn erase_user(&self, user: &UserId) -> Result<()> {
        let position = self.streams.current();
        self.erasures.table.put(&user.to_string(), &position).db()?;
        self.erasures.erased.write().expect("erasures").insert(user.to_owned(), position);
        Ok(())
    }

    /// Whether the user was deactivated with `erase`.
    pub fn is_erased(&self, user: &UserId) -> bool {
        self.erasures.position(user).is_some()
    }

    /// The event as `viewer` gets it: redacted when its sender was erased
    /// and the viewer's latest join to the room came after the erasure.
    pub(super) fn erased_for(&self, stored: &StoredPdu, viewer: &UserId) -> Result<Option<StoredPdu>> {
        // Almost always nobody is erased: then the sender is not even read.
        if self.erasures.none() {
            return Ok(None);
        }
        let sender = stored.sender().and_then(|s| UserId::parse(s).ok());
        let Some(erased_at) = sender.and_then(|s| self.erasures.position(&s)) else { return Ok(None) };
        let joined_at =
            self.useridroomid_joinstream.get(&(viewer.to_string(), stored.room_id.to_string())).db()?;
        if joined_at.is_none_or(|joined| joined <= erased_at) {
            return Ok(None);
        }
        let version = self.require_room(&stored.room_id)?.room_version;
        let rules = version.rules().ok_or_else(|| Error::internal("unknown room version"))?;
        let json = ruma::canonical_json::redact((*stored.json).clone(), &rules.redaction, None)
            .map_err(Error::internal)?;
        Ok(Some(StoredPdu { json: json.into(), ..stored.clone() }))
    }
}
