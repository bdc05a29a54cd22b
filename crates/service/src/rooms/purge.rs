//! Purging a room: everything this server stores of it goes, in batches,
//! so a purge interrupted by a restart is finished by running it again.
//!
//! Events held only as the auth chain of other events (outliers fetched
//! over federation) are not indexed by room and stay; nothing serves them
//! once the room is gone.

use estuary_core::Result;
use estuary_storage::{Key, Table, Value, codec::Json};
use ruma::RoomId;

use super::Rooms;
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
        let mut events = 0;
        for timeline in [&self.roomidstream_eventid, &self.roomidbackfill_eventid] {
            events += self.purge_events(timeline, &room)?;
        }
        for ((_, user), _) in self.roomiduserid_membership.scan_prefix(&(room.clone(),)).db()? {
            self.purge_member(&user, &room)?;
        }
        for ((_, alias), _) in self.roomidalias_creator.scan_prefix(&(room.clone(),)).db()? {
            self.alias_roomid.delete(&alias).db()?;
        }
        let prefix = Key::encode(&(room.clone(),));
        self.delete_prefix(&self.roomiduserid_membership, &prefix)?;
        self.delete_prefix(&self.roomidalias_creator, &prefix)?;
        self.delete_prefix(&self.roomidts_eventid, &prefix)?;
        self.delete_prefix(&self.roomidthreadroot_latest, &prefix)?;
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

    /// The events a timeline table lists, with the rows that name them.
    fn purge_events(&self, timeline: &Table<(String, u64), String>, room: &str) -> Result<u64> {
        let prefix = Key::encode(&(room.to_owned(),));
        let mut deleted = 0;
        loop {
            let rows = timeline.scan_raw_prefix(&prefix, PURGE_BATCH).db()?;
            if rows.is_empty() {
                return Ok(deleted);
            }
            let mut batch = self.db.batch();
            for (key, event_id) in &rows {
                if let Some(Json(stored)) = self.eventid_pdu.get(event_id).db()? {
                    batch.delete(&self.stream_roomideventid, &stored.stream);
                }
                for (relation, _) in self.eventidstream_relation.scan_prefix(&(event_id.clone(),)).db()? {
                    batch.delete(&self.eventidstream_relation, &relation);
                }
                batch.delete(&self.eventid_pdu, event_id);
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
        self.delete_prefix(&self.useridroomidstream_notification, &Key::encode(&key))
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
