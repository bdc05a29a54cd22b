//! Account data: global and per-room JSON documents a client stores for its
//! user. Stored now; `/sync` delivers changes once it exists.

use std::sync::Arc;

use estuary_core::{Error, Result};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{RoomId, UserId};
use serde_json::value::RawValue;

use crate::{storage_error::StorageResultExt, streams::Streams};

/// Types the server controls; clients may not write them through this API.
const SERVER_CONTROLLED: &[&str] = &["m.fully_read", "m.push_rules"];

pub struct AccountData {
    db: Db,
    streams: Arc<Streams>,
    useridroomidtype_accountdata: Table<(String, String, String), Json<Box<RawValue>>>,
    stream_accountdata: Table<u64, Json<(String, String, String)>>,
}

impl AccountData {
    pub fn new(db: &Db, streams: Arc<Streams>) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            streams,
            useridroomidtype_accountdata: db.table("useridroomidtype_accountdata").db()?,
            stream_accountdata: db.table("stream_accountdata").db()?,
        })
    }

    /// The highest stream position of an account data change.
    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: Table<u64, Json<(String, String, String)>> = db.table("stream_accountdata").db()?;
        Ok(table.last().db()?.map(|(k, _)| k).unwrap_or(0))
    }

    /// Changes with positions in `from..=to`: (room ID or "", type, content), latest per key.
    pub fn changes(
        &self,
        user_id: &UserId,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, String, Box<RawValue>)>> {
        if from == 0 && to >= self.streams.current() {
            // Everything: read the user's rows, not the whole server's stream.
            return self.of_user(user_id, None);
        }
        let start = estuary_storage::Key::encode(&from);
        let mut seen = std::collections::BTreeSet::new();
        for (position, Json((user, room, kind))) in
            self.stream_accountdata.scan_from(&[], Some(&start), false, usize::MAX).db()?
        {
            if position > to {
                break;
            }
            if user == user_id.as_str() {
                seen.insert((room, kind));
            }
        }
        let mut out = Vec::new();
        for (room, kind) in seen {
            let key = (user_id.to_string(), room.clone(), kind.clone());
            if let Some(Json(content)) = self.useridroomidtype_accountdata.get(&key).db()? {
                out.push((room, kind, content));
            }
        }
        Ok(out)
    }

    /// All of a user's account data (or one room's): (room ID or "", type, content).
    pub fn of_user(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
    ) -> Result<Vec<(String, String, Box<RawValue>)>> {
        let rows = match room_id {
            Some(room) => {
                self.useridroomidtype_accountdata.scan_prefix(&(user_id.to_string(), room.to_string()))
            }
            None => self.useridroomidtype_accountdata.scan_prefix(&(user_id.to_string(),)),
        };
        Ok(rows.db()?.into_iter().map(|((_, room, kind), Json(content))| (room, kind, content)).collect())
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
        self.set_internal(user_id, room_id, event_type, content)
    }

    /// Store account data, including the server-controlled types (`m.fully_read`).
    pub fn set_internal(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content: Box<RawValue>,
    ) -> Result<()> {
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("Account data content must be a JSON object"));
        }
        let key = Self::key(user_id, room_id, event_type);
        let mut batch = self.db.batch();
        batch.put(&self.useridroomidtype_accountdata, &key, &Json(content));
        self.streams.commit(batch, |position, batch| {
            batch.put(&self.stream_accountdata, &position, &Json(key.clone()))
        })?;
        self.streams.notify([user_id]);
        Ok(())
    }

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> Result<Box<RawValue>> {
        self.useridroomidtype_accountdata
            .get(&Self::key(user_id, room_id, event_type))
            .db()?
            .map(|Json(v)| v)
            .ok_or_else(|| Error::not_found("No account data of this type"))
    }
}
