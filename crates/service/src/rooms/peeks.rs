//! Peeks by device (MSC2753, `POST /peek/{roomIdOrAlias}`): a device follows a
//! world-readable room in its `/sync` (`rooms.peek`) without joining it.
//! Other devices of the same user do not see the peek.

use std::collections::{BTreeSet, HashMap};

use estuary_core::{Error, Result};
use estuary_storage::{Db, Key, Table};
use ruma::{DeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::Rooms;
use crate::storage_error::StorageResultExt;

/// Peeks: stored, and in memory by room so new events wake the peekers.
pub(super) struct Peeks {
    /// (user ID, device ID, room ID) → stream position when the peek began.
    table: Table<(String, String, String), u64>,
    by_room: std::sync::RwLock<HashMap<OwnedRoomId, BTreeSet<OwnedUserId>>>,
}

impl Peeks {
    pub(super) fn new(db: &Db) -> Result<Self> {
        let table: Table<(String, String, String), u64> = db.table("useriddeviceroomid_peek").db()?;
        let mut by_room: HashMap<OwnedRoomId, BTreeSet<OwnedUserId>> = HashMap::new();
        for ((user, _, room), _) in table.scan_raw_prefix(&[], usize::MAX).db()? {
            if let (Ok(user), Ok(room)) = (UserId::parse(user), RoomId::parse(room)) {
                by_room.entry(room).or_default().insert(user);
            }
        }
        Ok(Self { table, by_room: std::sync::RwLock::new(by_room) })
    }

    /// Users peeking into the room from some device.
    pub(super) fn peekers(&self, room_id: &RoomId) -> Vec<OwnedUserId> {
        let by_room = self.by_room.read().expect("peeks");
        by_room.get(room_id).map(|users| users.iter().cloned().collect()).unwrap_or_default()
    }
}

impl Rooms {
    /// Start peeking: only world-readable rooms, 403 otherwise.
    pub fn peek(&self, user: &UserId, device: &DeviceId, room_id: &RoomId) -> Result<()> {
        let forbidden = || Error::forbidden("Only world-readable rooms can be peeked into");
        let room = self.room(room_id)?.ok_or_else(forbidden)?;
        if self.history_visibility(&*self.state.load(room.state)?)? != "world_readable" {
            return Err(forbidden());
        }
        let key = (user.to_string(), device.to_string(), room_id.to_string());
        // As a sync token: positions from here on are after the peek.
        self.peeks.table.put(&key, &(self.streams.current() + 1)).db()?;
        self.peeks
            .by_room
            .write()
            .expect("peeks")
            .entry(room_id.to_owned())
            .or_default()
            .insert(user.to_owned());
        self.streams.notify([user]);
        Ok(())
    }

    pub fn unpeek(&self, user: &UserId, device: &DeviceId, room_id: &RoomId) -> Result<()> {
        self.peeks.table.delete(&(user.to_string(), device.to_string(), room_id.to_string())).db()?;
        let peeks = self.peeks.table.scan_prefix(&(user.to_string(),)).db()?;
        let other_device_peeks = peeks.into_iter().any(|((_, _, room), _)| room == room_id.as_str());
        if !other_device_peeks
            && let Some(users) = self.peeks.by_room.write().expect("peeks").get_mut(room_id)
        {
            users.remove(user);
        }
        Ok(())
    }

    /// Every peek into a room ends (the room is purged).
    pub(super) fn end_peeks_into(&self, room_id: &RoomId) -> Result<()> {
        for user in self.peeks.peekers(room_id) {
            for ((_, device, room), _) in self.peeks.table.scan_prefix(&(user.to_string(),)).db()? {
                if room == room_id.as_str() {
                    self.peeks.table.delete(&(user.to_string(), device, room)).db()?;
                }
            }
        }
        self.peeks.by_room.write().expect("peeks").remove(room_id);
        Ok(())
    }

    /// A deleted device's peeks end with it.
    pub fn delete_device_peeks(&self, user: &UserId, device: &DeviceId) -> Result<()> {
        for (room_id, _) in self.device_peeks(user, device)? {
            self.unpeek(user, device, &room_id)?;
        }
        Ok(())
    }

    /// The device's peeks: each room and the stream position its peek began.
    pub fn device_peeks(&self, user: &UserId, device: &DeviceId) -> Result<Vec<(OwnedRoomId, u64)>> {
        let prefix = (user.to_string(), device.to_string()).encode();
        let rows = self.peeks.table.scan_from(&prefix, None, false, 1_000).db()?;
        Ok(rows
            .into_iter()
            .filter_map(|((_, _, room), start)| RoomId::parse(room).ok().map(|r| (r, start)))
            .collect())
    }
}
