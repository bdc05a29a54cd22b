//! Restrictions admins put on accounts: locked, suspended, shadow-banned.
//! They are checked on every request, so all of them live in memory; the
//! few restricted users are stored in one row of `global`.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
};

use estuary_core::{Error, Result};
use estuary_storage::{Table, codec::Json};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::storage_error::StorageResultExt;

const RESTRICTIONS_KEY: &str = "account_restrictions";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restrictions {
    /// Every token answers 401 `M_USER_LOCKED` until unlocked (the spec's
    /// account locking).
    #[serde(default)]
    pub locked: bool,
    /// The user reads but does not act in rooms (403 `M_USER_SUSPENDED`).
    #[serde(default)]
    pub suspended: bool,
    /// What the user sends looks accepted but reaches no one.
    #[serde(default)]
    pub shadow_banned: bool,
}

impl Restrictions {
    fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

pub struct AccountRestrictions {
    global: Table<String, Json<HashMap<OwnedUserId, Restrictions>>>,
    current: RwLock<HashMap<OwnedUserId, Restrictions>>,
    /// Serialises read-modify-write of the stored row.
    write: Mutex<()>,
}

impl AccountRestrictions {
    pub fn new(db: &estuary_storage::Db) -> Result<Self> {
        let global: Table<String, Json<HashMap<OwnedUserId, Restrictions>>> = db.table("global").db()?;
        let current = global.get(&RESTRICTIONS_KEY.to_owned()).db()?.map(|Json(m)| m).unwrap_or_default();
        Ok(Self { global, current: RwLock::new(current), write: Mutex::new(()) })
    }

    pub fn of(&self, user_id: &UserId) -> Restrictions {
        self.current.read().expect("restrictions").get(user_id).copied().unwrap_or_default()
    }

    /// Change a user's restrictions, stored before they take effect.
    pub fn update(&self, user_id: &UserId, change: impl FnOnce(&mut Restrictions)) -> Result<Restrictions> {
        let _guard = self.write.lock().map_err(|_| Error::internal("restrictions lock poisoned"))?;
        let mut all = self.current.read().expect("restrictions").clone();
        let entry = all.entry(user_id.to_owned()).or_default();
        change(entry);
        let updated = *entry;
        if updated.is_none() {
            all.remove(user_id);
        }
        self.global.put(&RESTRICTIONS_KEY.to_owned(), &Json(all.clone())).db()?;
        *self.current.write().expect("restrictions") = all;
        Ok(updated)
    }
}
