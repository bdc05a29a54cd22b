//! Room recency for sliding sync (`bump_stamp`): the stream position of a
//! room's last event of a type that moves it up a room list, or of the
//! user's own last membership change there, whichever is later.
//!
//! Kept in memory and brought up to date from the server's event stream
//! before each use (each new event is read once, whoever syncs); a room or
//! membership not seen since startup is found by reading back from the end.

use std::{collections::HashMap, sync::Mutex};

use estuary_core::Result;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::rooms::{Rooms, StoredPdu, changes_membership};

/// Event types that bump a room (as Synapse's defaults; redactions,
/// reactions, receipts and other members' changes do not).
const BUMPING_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon",
    "org.matrix.msc3672.beacon",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
];

/// Positions read forward at most; beyond, the maps start over.
const MAX_CATCH_UP: u64 = 20_000;
/// Entries kept before the maps are cleared (they refill on demand).
const MAX_ENTRIES: usize = 200_000;
/// Pages of events read back when looking for a room's last bumping one.
const BACK_SCAN_PAGES: [usize; 4] = [1, 8, 64, 416];

#[derive(Default)]
struct Stamps {
    /// The stream position up to which `rooms` and `members` are current.
    checked_to: Option<u64>,
    rooms: HashMap<OwnedRoomId, u64>,
    /// Per user, per room: their last membership change.
    members: HashMap<OwnedUserId, HashMap<OwnedRoomId, u64>>,
}

#[derive(Default)]
pub struct BumpStamps {
    stamps: Mutex<Stamps>,
}

pub fn is_bumping(kind: &str) -> bool {
    BUMPING_TYPES.contains(&kind)
}

impl BumpStamps {
    /// The `bump_stamp` of each joined room of `user` (up to position `to`).
    pub fn joined(&self, rooms: &Rooms, user: &UserId, joined: &[OwnedRoomId], to: u64) -> Result<Vec<u64>> {
        let mut stamps = self.stamps.lock().expect("bump stamps");
        self.catch_up(&mut stamps, rooms, to)?;
        // What is missing is read back from where the maps are current.
        let upper = stamps.checked_to.unwrap_or(to).max(to);
        let mut out = Vec::with_capacity(joined.len());
        for room_id in joined {
            let room = match stamps.rooms.get(room_id) {
                Some(stamp) => *stamp,
                None => {
                    let stamp = last_bumping_event(rooms, room_id, upper)?;
                    stamps.rooms.insert(room_id.clone(), stamp);
                    stamp
                }
            };
            let membership = match stamps.members.get(user).and_then(|rooms| rooms.get(&**room_id)) {
                Some(stamp) => *stamp,
                None => {
                    let stamp = own_membership_position(rooms, user, room_id)?.unwrap_or(0);
                    stamps.members.entry(user.to_owned()).or_default().insert(room_id.clone(), stamp);
                    stamp
                }
            };
            out.push(room.max(membership));
        }
        Ok(out)
    }

    /// Read the events after `checked_to` (up to `to`) into the maps.
    fn catch_up(&self, stamps: &mut Stamps, rooms: &Rooms, to: u64) -> Result<()> {
        let Some(checked_to) = stamps.checked_to else {
            // Nothing known yet: everything is read back on demand.
            stamps.checked_to = Some(to);
            return Ok(());
        };
        if checked_to >= to {
            return Ok(());
        }
        let entries = stamps.rooms.len() + stamps.members.values().map(HashMap::len).sum::<usize>();
        if entries > MAX_ENTRIES || to - checked_to > MAX_CATCH_UP {
            // Too much to hold, or to read under the lock after a long quiet
            // spell: start over, reading rooms back as they are asked for.
            stamps.rooms.clear();
            stamps.members.clear();
            stamps.checked_to = Some(to);
            return Ok(());
        }
        for (position, room_id, event_id) in rooms.stream_event_ids(checked_to + 1, to, usize::MAX)? {
            let Some(stored) = rooms.stored(&event_id)? else { continue };
            if stored.rejected {
                continue;
            }
            let kind = stored.kind().unwrap_or_default();
            if is_bumping(kind) {
                stamps.rooms.insert(room_id.clone(), position);
            }
            if kind == "m.room.member"
                && changes_membership(&stored)
                && let Some(user) = stored.state_key()
                && let Ok(user) = UserId::parse(user)
            {
                stamps.members.entry(user).or_default().insert(room_id, position);
            }
        }
        stamps.checked_to = Some(to);
        Ok(())
    }
}

/// The position of the room's last bumping event at or before `to`; 0
/// when none is among its last events (the user's membership then decides).
fn last_bumping_event(rooms: &Rooms, room_id: &RoomId, to: u64) -> Result<u64> {
    let mut upper = to;
    let mut oldest = 0;
    // Small pages first: the last event is usually a message.
    for size in BACK_SCAN_PAGES {
        let (events, more) = rooms.room_events_between(room_id, 0, upper, size)?;
        for event in &events {
            if !event.rejected && event.kind().is_some_and(is_bumping) {
                return Ok(event.stream);
            }
            oldest = event.stream;
        }
        if !more || oldest == 0 {
            break;
        }
        upper = oldest - 1;
    }
    Ok(0)
}

/// The position of the user's last membership change in the room: their
/// current member event, or, when that only changed their profile, the
/// event it replaced, back to the change (a bounded walk).
pub fn own_membership_position(rooms: &Rooms, user: &UserId, room_id: &RoomId) -> Result<Option<u64>> {
    match rooms.own_member_event(user, room_id)? {
        Some(member) => membership_position(rooms, member).map(Some),
        None => Ok(None),
    }
}

/// The position of the membership change behind a member event.
pub fn membership_position(rooms: &Rooms, mut member: StoredPdu) -> Result<u64> {
    for _ in 0..50 {
        if changes_membership(&member) {
            break;
        }
        let replaces =
            member.json.get("unsigned").and_then(|u| u.as_object()).and_then(|u| u.get("replaces_state"));
        let Some(previous) = replaces.and_then(|r| r.as_str()).and_then(|r| ruma::EventId::parse(r).ok())
        else {
            break;
        };
        let Some(previous) = rooms.stored(&previous)? else { break };
        member = previous;
    }
    Ok(member.stream)
}
