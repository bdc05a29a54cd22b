//! Purging a room: everything this server stores of it goes, in batches,
//! so a purge interrupted by a restart is finished by running it again.
//!
//! Events held only as the auth chain of other events (outliers fetched
//! over federation) are not indexed by room and stay; nothing serves them
//! once the room is gone.

use std::collections::HashMap;

use estuary_core::Result;
use estuary_storage::{Key, Table, Value, codec::Json};
use ruma::{RoomId, UserId, events::StateEventType};

use super::{InviteStub, Rooms};
use crate::storage_error::StorageResultExt;

/// Rows deleted per committed batch.
const PURGE_BATCH: usize = 1000;

impl Rooms {
    /// Delete every event, index and membership of a room. Meant for a room
    /// no local user is in any more (the admin API's room deletion); other
    /// servers keep their copies. Returns the number of events deleted.
    pub async fn purge_room(&self, room_id: &RoomId) -> Result<u64> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = room_id.to_string();
        let kept = self.keep_local_leaves(room_id)?;
        let mut events = 0;
        for timeline in [&self.roomidstream_eventid, &self.roomidbackfill_eventid] {
            events += self.purge_events(timeline, &room, &kept)?;
        }
        for ((_, user), _) in self.roomiduserid_membership.scan_prefix(&(room.clone(),)).db()? {
            if !kept.contains_key(&user) {
                self.purge_member(&user, &room)?;
            }
        }
        for ((_, alias), _) in self.roomidalias_creator.scan_prefix(&(room.clone(),)).db()? {
            self.alias_roomid.delete(&alias).db()?;
        }
        let prefix = Key::encode(&(room.clone(),));
        self.delete_prefix(&self.roomiduserid_membership, &prefix)?;
        self.delete_prefix(&self.roomidalias_creator, &prefix)?;
        self.delete_prefix(&self.roomidts_eventid, &prefix)?;
        self.delete_prefix(&self.roomidthreadroot_latest, &prefix)?;
        self.delete_prefix(&self.roomidthreadlatest_root, &prefix)?;
        self.delete_prefix(&self.roomidtermstream_count, &prefix)?;
        self.end_peeks_into(room_id)?;
        for (key, _) in self.networkroomid.scan_raw_prefix(&[], usize::MAX).db()? {
            if key.1 == room {
                self.networkroomid.delete(&key).db()?;
            }
        }
        let mut batch = self.db.batch();
        batch.delete(&self.publicroomid, &room);
        batch.delete(&self.openroomid, &room);
        batch.delete(&self.roomid_room, &room);
        batch.commit().db()?;
        tracing::info!(%room_id, events, "room purged");
        Ok(events)
    }

    /// This server's users who left keep their leave (the event, its stream
    /// row, their membership and an out-of-band stub, as after a declined
    /// invite), so a client that syncs after the purge still learns it
    /// left. Returns user ID → the leave's event ID.
    fn keep_local_leaves(&self, room_id: &RoomId) -> Result<HashMap<String, String>> {
        let Some(room) = self.room(room_id)? else { return Ok(HashMap::new()) };
        let state = self.current_state(&room)?;
        let mut kept = HashMap::new();
        for ((_, user), membership) in
            self.roomiduserid_membership.scan_prefix(&(room_id.to_string(),)).db()?
        {
            let local = UserId::parse(&user).is_ok_and(|u| u.server_name() == self.config.server_name);
            if !local || !matches!(membership.as_str(), "leave" | "ban") {
                continue;
            }
            let Some(leave) = self.state_pdu(&state, &StateEventType::RoomMember, &user)? else { continue };
            let stub = InviteStub {
                event_id: leave.event_id.clone(),
                room_version: room.room_version.clone(),
                stripped: Vec::new(),
                membership: membership.clone(),
                via: None,
            };
            self.useridroomid_invite.put(&(user.clone(), room_id.to_string()), &Json(stub)).db()?;
            kept.insert(user, leave.event_id.to_string());
        }
        Ok(kept)
    }

    /// The events a timeline table lists, with the rows that name them
    /// (but the `kept` leaves and their stream rows).
    fn purge_events(
        &self,
        timeline: &Table<(String, u64), String>,
        room: &str,
        kept: &HashMap<String, String>,
    ) -> Result<u64> {
        let prefix = Key::encode(&(room.to_owned(),));
        let mut deleted = 0;
        loop {
            let rows = timeline.scan_raw_prefix(&prefix, PURGE_BATCH).db()?;
            if rows.is_empty() {
                return Ok(deleted);
            }
            let mut batch = self.db.batch();
            for (key, event_id) in &rows {
                if kept.values().any(|leave| leave == event_id) {
                    batch.delete(timeline, key);
                    continue;
                }
                if let Some(Json(stored)) = self.eventid_pdu.get(event_id).db()? {
                    batch.delete(&self.stream_roomideventid, &stored.stream);
                }
                for (relation, _) in self.eventidstream_relation.scan_prefix(&(event_id.clone(),)).db()? {
                    batch.delete(&self.eventidstream_relation, &relation);
                }
                self.delete_stored(&mut batch, event_id);
                batch.delete(timeline, key);
            }
            batch.commit().db()?;
            deleted += rows.len() as u64;
        }
    }

    /// A member's rows of the room: membership, join position, invite,
    /// forgotten mark and unread notifications.
    fn purge_member(&self, user: &str, room: &str) -> Result<()> {
        let key = (user.to_owned(), room.to_owned());
        let mut batch = self.db.batch();
        batch.delete(&self.useridroomid_membership, &key);
        batch.delete(&self.useridroomid_joinstream, &key);
        batch.delete(&self.useridroomid_invite, &key);
        batch.delete(&self.useridroomid_forgotten, &key);
        batch.commit().db()?;
        self.delete_prefix(&self.useridroomidstream_notification, &Key::encode(&key))?;
        if let (Ok(user), Ok(room_id)) = (UserId::parse(user), RoomId::parse(room)) {
            self.unread.changed([(&*user, &*room_id)]);
        }
        Ok(())
    }

    fn delete_prefix<K: Key, V: Value>(&self, table: &Table<K, V>, prefix: &[u8]) -> Result<()> {
        loop {
            let rows = table.scan_raw_prefix(prefix, PURGE_BATCH).db()?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = self.db.batch();
            for (key, _) in &rows {
                batch.delete(table, key);
            }
            batch.commit().db()?;
        }
    }
}

/// What a history purge deletes: the room's events before `before` (a
/// stream position; backfilled history is all before it), except state
/// events (the room needs them) and, unless `delete_local_events`, the
/// events of this server's users.
#[derive(Clone, Copy, Debug)]
pub struct HistoryPurge {
    pub before: u64,
    pub delete_local_events: bool,
}

impl Rooms {
    /// The purge point of `purge_up_to_event_id`: that event's position.
    pub fn purge_point_at_event(&self, room_id: &RoomId, event_id: &ruma::EventId) -> Result<u64> {
        let stored =
            self.stored(event_id)?.ok_or_else(|| estuary_core::Error::not_found("Event not found"))?;
        if stored.room_id != room_id {
            return Err(estuary_core::Error::invalid_param("The event is not in this room"));
        }
        Ok(stored.stream)
    }

    /// The purge point of `purge_up_to_ts`: after the room's last event
    /// sent at or before `ts` (404 when there is none).
    pub fn purge_point_at_ts(&self, room_id: &RoomId, ts: u64) -> Result<u64> {
        let prefix = Key::encode(&(room_id.to_string(),));
        let from = Key::encode(&(room_id.to_string(), ts, u64::MAX));
        let found = self.roomidts_eventid.scan_from(&prefix, Some(&from), true, 1).db()?;
        let Some(((_, _, stream), _)) = found.into_iter().next() else {
            return Err(estuary_core::Error::not_found("There is no event to be purged"));
        };
        Ok(stream + 1)
    }

    /// Delete the room's history before a point (`HistoryPurge`); the
    /// latest events (forward extremities) always stay. Returns the number
    /// of events deleted. Interrupted, it is run again from the start.
    pub async fn purge_history(&self, room_id: &RoomId, purge: HistoryPurge) -> Result<u64> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let key = room_id.to_string();
        let prefix = Key::encode(&(key.clone(),));
        let local = |stored: &super::StoredPdu| {
            stored
                .json
                .get("sender")
                .and_then(|s| s.as_str())
                .and_then(|s| UserId::parse(s).ok())
                .is_some_and(|sender| sender.server_name() == self.config.server_name)
        };
        let mut deleted = 0;
        for (timeline, live) in [(&self.roomidbackfill_eventid, false), (&self.roomidstream_eventid, true)] {
            let mut batch = self.db.batch();
            for ((_, position), event_id) in timeline.scan_raw_prefix(&prefix, usize::MAX).db()? {
                if live && position >= purge.before {
                    break;
                }
                let Some(Json(stored)) = self.eventid_pdu.get(&event_id).db()? else { continue };
                let extremity = room.extremities.iter().any(|e| e.as_str() == event_id);
                if stored.json.contains_key("state_key")
                    || extremity
                    || (local(&stored) && !purge.delete_local_events)
                {
                    continue;
                }
                batch.delete(&self.stream_roomideventid, &stored.stream);
                if let Some(ts) = stored.json.get("origin_server_ts").and_then(|t| t.as_integer()) {
                    batch.delete(
                        &self.roomidts_eventid,
                        &(key.clone(), u64::try_from(i64::from(ts)).unwrap_or(0), stored.stream),
                    );
                }
                for (relation, _) in self.eventidstream_relation.scan_prefix(&(event_id.clone(),)).db()? {
                    batch.delete(&self.eventidstream_relation, &relation);
                }
                self.delete_stored(&mut batch, &event_id);
                batch.delete(timeline, &(key.clone(), position));
                deleted += 1;
                if deleted % PURGE_BATCH as u64 == 0 {
                    std::mem::replace(&mut batch, self.db.batch()).commit().db()?;
                }
            }
            batch.commit().db()?;
        }
        tracing::info!(%room_id, deleted, "room history purged");
        Ok(deleted)
    }
}
