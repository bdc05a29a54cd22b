//! Ephemeral room data: typing notifications (in memory, with timeouts) and
//! read receipts (stored, public or private, threaded).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use estuary_core::{Error, Result, time::now_millis};
use estuary_storage::{Db, Key, Table, codec::Json};
use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value as JsonValue, json};
use tokio::time::Instant;

use crate::{
    outgoing::{Job, Outgoing, server_destination},
    rooms::Rooms,
    storage_error::StorageResultExt,
    streams::Streams,
};

/// The longest typing timeout a client may ask for.
const MAX_TYPING: Duration = Duration::from_secs(120);

/// (room ID, user ID, receipt type, thread ID or "").
pub type ReceiptKey = (String, String, String, String);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Stream position of the last change.
    position: u64,
}

pub struct Ephemeral {
    db: Db,
    config: Arc<estuary_core::Config>,
    /// Our users' typing and public receipts go to the room's other servers.
    outgoing: Arc<Outgoing>,
    streams: Arc<Streams>,
    rooms: Arc<Rooms>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    receipts: Table<ReceiptKey, Json<(String, u64)>>,
    stream_receipt: Table<u64, Json<ReceiptKey>>,
}

impl Ephemeral {
    pub fn new(
        config: Arc<estuary_core::Config>,
        db: &Db,
        streams: Arc<Streams>,
        rooms: Arc<Rooms>,
        outgoing: Arc<Outgoing>,
    ) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            config,
            outgoing,
            streams,
            rooms,
            typing: Mutex::new(HashMap::new()),
            receipts: db.table("roomiduserreceipt_receipt").db()?,
            stream_receipt: db.table("stream_receipt").db()?,
        })
    }

    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: Table<u64, Json<ReceiptKey>> = db.table("stream_receipt").db()?;
        Ok(table.last().db()?.map(|(k, _)| k).unwrap_or(0))
    }

    /// Queue an EDU of one of our users for the room's other servers, in
    /// `batch` when given (committed with the change it reports).
    fn send_edu(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        edu: JsonValue,
        batch: Option<&mut estuary_storage::Batch>,
    ) -> Result<()> {
        if !self.config.allow_federation || user_id.server_name() != self.config.server_name {
            return Ok(());
        }
        let servers = self.rooms.joined_servers(room_id)?;
        match batch {
            Some(batch) => {
                for server in &servers {
                    self.outgoing.stage(batch, &server_destination(server), Job::Edu { edu: edu.clone() });
                }
            }
            None => {
                for server in &servers {
                    self.outgoing.enqueue(&server_destination(server), Job::Edu { edu: edu.clone() })?;
                }
            }
        }
        Ok(())
    }

    /// Hand typing or a receipt to the appservices that asked for the
    /// room's ephemeral data (`receive_ephemeral`); a private receipt only
    /// to those whose namespace holds its user. In `batch` when given.
    fn send_to_appservices(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        data: JsonValue,
        private: bool,
        mut batch: Option<&mut estuary_storage::Batch>,
    ) -> Result<()> {
        let interested = self.rooms.appservices_in_room(room_id)?;
        let receivers = interested.iter().filter(|a| {
            a.receive_ephemeral
                && a.registration.url.is_some()
                && (!private || a.is_user_in_namespace(user_id))
        });
        for appservice in receivers {
            let job = Job::AppserviceEphemeral { as_ephemeral: data.clone() };
            match batch.as_deref_mut() {
                Some(batch) => self.outgoing.stage(batch, &appservice.destination(), job),
                None => self.outgoing.enqueue(&appservice.destination(), job)?,
            }
        }
        Ok(())
    }

    /// The room's `m.typing` for appservices: everyone typing now, and the room.
    fn typing_for_appservices(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let now = Instant::now();
        let users: Vec<OwnedUserId> = {
            let typing = self.typing.lock().expect("typing");
            typing
                .get(room_id)
                .map(|r| r.users.iter().filter(|(_, at)| **at > now).map(|(u, _)| u.clone()).collect())
                .unwrap_or_default()
        };
        let data = json!({"type": "m.typing", "room_id": room_id, "content": {"user_ids": users}});
        self.send_to_appservices(room_id, user_id, data, false, None)
    }

    fn wake_room(&self, room_id: &RoomId) -> Result<()> {
        let members = self.rooms.members_with_membership(room_id, "join")?;
        self.streams.notify(members.iter().map(|u| &**u));
        Ok(())
    }

    /// Start or stop typing; a start expires after `timeout`.
    pub fn set_typing(
        self: &Arc<Self>,
        room_id: &RoomId,
        user_id: &UserId,
        typing: Option<Duration>,
    ) -> Result<()> {
        if !self.rooms.is_joined(user_id, room_id)? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let expiry = typing.map(|t| Instant::now() + t.min(MAX_TYPING));
        let position = self.streams.bump(&self.db)?;
        {
            let mut typing_map = self.typing.lock().expect("typing");
            let room = typing_map.entry(room_id.to_owned()).or_default();
            match expiry {
                Some(at) => room.users.insert(user_id.to_owned(), at),
                None => room.users.remove(user_id),
            };
            room.position = position;
        }
        self.wake_room(room_id)?;
        self.typing_for_appservices(room_id, user_id)?;
        let edu = json!({"edu_type": "m.typing", "content": {
            "room_id": room_id, "user_id": user_id, "typing": expiry.is_some(),
        }});
        self.send_edu(room_id, user_id, edu, None)?;
        if let Some(at) = expiry {
            let this = self.clone();
            let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let _ = this.expire(&room_id, &user_id, at);
            });
        }
        Ok(())
    }

    fn expire(&self, room_id: &RoomId, user_id: &UserId, at: Instant) -> Result<()> {
        let still_typing = {
            let typing = self.typing.lock().expect("typing");
            typing.get(room_id).and_then(|r| r.users.get(user_id)).is_some_and(|t| *t == at)
        };
        if still_typing {
            let position = self.streams.bump(&self.db)?;
            let mut typing = self.typing.lock().expect("typing");
            if let Some(room) = typing.get_mut(room_id) {
                room.users.remove(user_id);
                room.position = position;
            }
            drop(typing);
            self.wake_room(room_id)?;
            self.typing_for_appservices(room_id, user_id)?;
        }
        Ok(())
    }

    /// The `m.typing` event of a room if it changed in `from..=to` (or always, initially).
    pub fn typing_event(&self, room_id: &RoomId, from: Option<u64>, to: u64) -> Option<JsonValue> {
        let typing = self.typing.lock().expect("typing");
        let room = typing.get(room_id)?;
        let changed = from.is_none_or(|f| room.position >= f && room.position <= to);
        let now = Instant::now();
        let users: Vec<&OwnedUserId> =
            room.users.iter().filter(|(_, at)| **at > now).map(|(u, _)| u).collect();
        // Initially, every room anyone typed in since the start gets its
        // list, empty or not: a client that synced from scratch right after
        // someone stopped typing must learn they stopped.
        changed.then(|| json!({"type": "m.typing", "content": {"user_ids": users}}))
    }

    /// The stream position of the latest event the user has read in a room.
    pub fn read_position(&self, user_id: &UserId, room_id: &RoomId) -> Result<u64> {
        self.rooms.read_position(user_id, room_id)
    }

    /// Rooms whose typing or receipts changed in `from..=to`.
    pub fn rooms_changed(&self, from: u64, to: u64) -> Result<Vec<OwnedRoomId>> {
        let mut rooms: Vec<OwnedRoomId> = {
            let typing = self.typing.lock().expect("typing");
            typing
                .iter()
                .filter(|(_, r)| r.position >= from && r.position <= to)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for (position, Json((room, ..))) in
            self.stream_receipt.scan_from(&[], Some(&from.encode()), false, usize::MAX).db()?
        {
            if position > to {
                break;
            }
            if let Ok(room) = RoomId::parse(room) {
                rooms.push(room);
            }
        }
        Ok(rooms)
    }

    /// Store a receipt (`m.read` or `m.read.private`), optionally for a thread.
    pub fn set_receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<&str>,
    ) -> Result<()> {
        if !self.rooms.is_joined(user_id, room_id)? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let position = match self.rooms.stored(event_id)? {
            Some(stored) if stored.room_id == room_id => stored.stream,
            _ => return Err(Error::not_found("Event not found in this room")),
        };
        let key = (
            room_id.to_string(),
            user_id.to_string(),
            receipt_type.to_owned(),
            thread_id.unwrap_or_default().to_owned(),
        );
        // Receipts only move forward: one for an earlier event than the
        // current receipt is accepted and ignored, as Synapse does.
        if let Some(Json((current, _))) = self.receipts.get(&key).db()?
            && let Ok(current) = ruma::EventId::parse(&current)
            && self.rooms.stored(&current)?.is_some_and(|c| c.stream > position)
        {
            return Ok(());
        }
        let mut batch = self.db.batch();
        let ts = now_millis();
        batch.put(&self.receipts, &key, &Json((event_id.to_string(), ts)));
        let mut receipt = json!({"ts": ts});
        if let Some(thread) = thread_id {
            receipt["thread_id"] = thread.into();
        }
        let data = json!({"type": "m.receipt", "room_id": room_id, "content": {
            event_id.as_str(): {receipt_type: {user_id.as_str(): receipt}}
        }});
        let private = receipt_type == "m.read.private";
        self.send_to_appservices(room_id, user_id, data, private, Some(&mut batch))?;
        if receipt_type == "m.read" {
            let mut data = json!({"ts": ts});
            if let Some(thread) = thread_id {
                data["thread_id"] = thread.into();
            }
            let edu = json!({"edu_type": "m.receipt", "content": {
                room_id.as_str(): {"m.read": {user_id.as_str(): {"event_ids": [event_id], "data": data}}}
            }});
            self.send_edu(room_id, user_id, edu, Some(&mut batch))?;
        }
        self.streams.commit(batch, |position, batch| {
            batch.put(&self.stream_receipt, &position, &Json(key.clone()))
        })?;
        self.outgoing.wake();
        self.wake_room(room_id)
    }

    /// The `m.receipt` event for a room: receipts changed in `from..=to`
    /// (all of them initially). Private receipts only reach their owner.
    pub fn receipt_event(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        from: Option<u64>,
        to: u64,
    ) -> Result<Option<JsonValue>> {
        let keys: Vec<ReceiptKey> = match from {
            None => {
                self.receipts.scan_prefix(&(room_id.to_string(),)).db()?.into_iter().map(|(k, _)| k).collect()
            }
            Some(from) => self
                .stream_receipt
                .scan_from(&[], Some(&from.encode()), false, usize::MAX)
                .db()?
                .into_iter()
                .take_while(|(position, _)| *position <= to)
                .map(|(_, Json(key))| key)
                .filter(|key| key.0 == room_id.as_str())
                .collect(),
        };
        let mut content: Map<String, JsonValue> = Map::new();
        for key in keys {
            if key.2 == "m.read.private" && key.1 != viewer.as_str() {
                continue;
            }
            let Some(Json((event_id, ts))) = self.receipts.get(&key).db()? else { continue };
            let mut receipt = json!({"ts": ts});
            if !key.3.is_empty() {
                receipt["thread_id"] = key.3.clone().into();
            }
            let by_type = content.entry(event_id).or_insert_with(|| json!({}));
            by_type[&key.2][&key.1] = receipt;
        }
        Ok((!content.is_empty()).then(|| json!({"type": "m.receipt", "content": content})))
    }
}
