//! Account data: global and per-room JSON documents a client stores for its
//! user. Stored now; `/sync` delivers changes once it exists.

use estuary_core::{Error, Result};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{RoomId, UserId};
use serde_json::value::RawValue;

use crate::storage_error::StorageResultExt;

/// Types the server controls; clients may not write them through this API.
const SERVER_CONTROLLED: &[&str] = &["m.fully_read", "m.push_rules"];

pub struct AccountData {
    useridroomidtype_accountdata: Table<(String, String, String), Json<Box<RawValue>>>,
}

impl AccountData {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self { useridroomidtype_accountdata: db.table("useridroomidtype_accountdata").db()? })
    }

    fn key(user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> (String, String, String) {
        (user_id.to_string(), room_id.map(|r| r.to_string()).unwrap_or_default(), event_type.to_owned())
    }

    /// Store `content` (a JSON object) as the user's account data of `event_type`.
    pub fn set(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content: Box<RawValue>,
    ) -> Result<()> {
        if SERVER_CONTROLLED.contains(&event_type) {
            return Err(Error::matrix(
                405,
                estuary_core::error::ErrorKind::BadJson,
                format!("Cannot set {event_type} through this API"),
            ));
        }
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("Account data content must be a JSON object"));
        }
        self.useridroomidtype_accountdata.put(&Self::key(user_id, room_id, event_type), &Json(content)).db()
    }

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> Result<Box<RawValue>> {
        self.useridroomidtype_accountdata
            .get(&Self::key(user_id, room_id, event_type))
            .db()?
            .map(|Json(v)| v)
            .ok_or_else(|| Error::not_found("No account data of this type"))
    }
}
