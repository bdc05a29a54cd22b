//! Timeline ranges by stream position, for sync.

use std::{collections::BTreeSet, sync::Arc};

use estuary_core::{Error, Result};
use estuary_storage::{Key, codec::Json};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};

use super::{Rooms, StoredPdu, state::StateMap};
use crate::storage_error::StorageResultExt;

impl Rooms {
    /// Rooms with events at positions `from..=to`.
    pub(crate) fn rooms_changed(&self, from: u64, to: u64) -> Result<BTreeSet<OwnedRoomId>> {
        let start = from.encode();
        let mut rooms = BTreeSet::new();
        for (position, Json((room, _))) in
            self.stream_roomideventid.scan_from(&[], Some(&start), false, usize::MAX).db()?
        {
            if position > to {
                break;
            }
            if let Ok(room) = RoomId::parse(room) {
                rooms.insert(room);
            }
        }
        Ok(rooms)
    }

    /// Events at positions `from..=to`, oldest first, at most `limit`, with
    /// their rooms.
    pub(crate) fn stream_event_ids(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedRoomId, OwnedEventId)>> {
        let start = from.encode();
        let mut events = Vec::new();
        for (position, Json((room, event_id))) in
            self.stream_roomideventid.scan_from(&[], Some(&start), false, limit).db()?
        {
            if position > to {
                break;
            }
            let event_id = EventId::parse(&event_id).map_err(Error::internal)?;
            if let Ok(room) = RoomId::parse(room) {
                events.push((position, room, event_id));
            }
        }
        Ok(events)
    }

    /// Events of every room at positions `from..=to`, oldest first, at most
    /// `limit` (the legacy event stream reads the server's whole stream).
    pub(crate) fn stream_events(&self, from: u64, to: u64, limit: usize) -> Result<Vec<StoredPdu>> {
        let mut events = Vec::new();
        for (_, _, event_id) in self.stream_event_ids(from, to, limit)? {
            if let Some(stored) = self.stored(&event_id)? {
                events.push(stored);
            }
        }
        Ok(events)
    }

    /// A room's events at positions `from..=to`, newest first, at most
    /// `limit`; and whether older ones in the range were left out.
    pub(crate) fn room_events_between(
        &self,
        room_id: &RoomId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<(Vec<StoredPdu>, bool)> {
        self.room_events_in(room_id, from, to, limit, true)
    }

    /// A room's events at positions `from..=to`, oldest first, at most
    /// `limit`; and whether newer ones in the range were left out.
    pub(crate) fn room_events_after(
        &self,
        room_id: &RoomId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<(Vec<StoredPdu>, bool)> {
        self.room_events_in(room_id, from, to, limit, false)
    }

    fn room_events_in(
        &self,
        room_id: &RoomId,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<(Vec<StoredPdu>, bool)> {
        let prefix = (room_id.to_string(),).encode();
        let start = (room_id.to_string(), if newest_first { to } else { from }).encode();
        let rows =
            self.roomidstream_eventid.scan_from(&prefix, Some(&start), newest_first, limit + 1).db()?;
        let mut event_ids: Vec<String> = rows
            .into_iter()
            .take_while(|((_, position), _)| (from..=to).contains(position))
            .map(|(_, id)| id)
            .collect();
        let more = event_ids.len() > limit;
        event_ids.truncate(limit);
        Ok((self.stored_many(&event_ids)?, more))
    }

    /// The room's state after its last event at or before `position`.
    pub(crate) fn state_at_position(&self, room_id: &RoomId, position: u64) -> Result<Option<Arc<StateMap>>> {
        match self.room_events_between(room_id, 0, position, 1)?.0.pop() {
            Some(stored) => Ok(Some(self.state.load(stored.state_after)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn load_state(&self, id: u64) -> Result<Arc<StateMap>> {
        self.state.load(id)
    }

    /// Position of the user's current membership event, if it changed the
    /// membership (a profile change of a joined member is not a new join).
    pub(crate) fn membership_change_position(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<u64>> {
        // An invite to a room this server is not in (or its refusal): that event's position.
        if let Some(stub) = self.out_of_band_membership(user_id, room_id)? {
            return Ok(self.stored(&stub.event_id)?.map(|stored| stored.stream));
        }
        let member = self.room_member_event(user_id, room_id)?;
        Ok(member.filter(changes_membership).map(|stored| stored.stream))
    }

    /// The user's current member event in the room: the stub of an invite
    /// to (or leave of) a room this server is not in, or the one in the
    /// room's current state.
    pub(crate) fn own_member_event(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<StoredPdu>> {
        match self.out_of_band_membership(user_id, room_id)? {
            Some(stub) => self.stored(&stub.event_id),
            None => self.room_member_event(user_id, room_id),
        }
    }

    /// The user's member event in the room's current state.
    fn room_member_event(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<StoredPdu>> {
        let Some(room) = self.room(room_id)? else { return Ok(None) };
        let state = self.state.load(room.state)?;
        match self.state_event_id(&state, &ruma::events::StateEventType::RoomMember, user_id.as_str())? {
            Some(id) => self.stored(&id),
            None => Ok(None),
        }
    }

    /// Events of a snapshot that differ from `base` (all of them without
    /// one) and whose (type, state key) `wanted` accepts, oldest first.
    pub(crate) fn state_matching(
        &self,
        state: &StateMap,
        base: Option<&StateMap>,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<StoredPdu>> {
        self.changed_state(state, base, Some(&wanted))
    }

    /// Events of a snapshot that differ from `base` (all of them without one).
    pub(crate) fn state_delta(&self, state: &StateMap, base: Option<&StateMap>) -> Result<Vec<StoredPdu>> {
        self.changed_state(state, base, None)
    }

    fn changed_state(
        &self,
        state: &StateMap,
        base: Option<&StateMap>,
        wanted: Option<StateKeyTest<'_>>,
    ) -> Result<Vec<StoredPdu>> {
        let mut shorts = Vec::new();
        for (key, short) in state {
            if base.is_some_and(|b| b.get(key) == Some(short)) {
                continue;
            }
            // The key is read only to be tested.
            if let Some(wanted) = wanted {
                let Some((kind, state_key)) = self.short.state_key_of(*key)? else { continue };
                if !wanted(&kind, &state_key) {
                    continue;
                }
            }
            shorts.push(*short);
        }
        let mut out = self.stored_many(&self.short.event_ids(&shorts)?)?;
        out.sort_by_key(|s| s.stream);
        Ok(out)
    }
}

/// Whether a member event changes the membership (not just a profile):
/// its `membership` differs from the one it replaced.
pub(crate) fn changes_membership(stored: &StoredPdu) -> bool {
    let fields = stored.json.client();
    fields.membership() != fields.previous_membership()
}

/// A test on a state event's (type, state key).
type StateKeyTest<'a> = &'a dyn Fn(&str, &str) -> bool;

/// A user whose membership of a room changed in a sync window.
pub struct MemberChange {
    pub user_id: ruma::OwnedUserId,
    pub is_joined: bool,
    /// Newly invited: their devices matter to whoever may encrypt for them.
    pub is_invited: bool,
}

impl Rooms {
    /// Members whose joined-ness changed between the state before position
    /// `from` and the state at `to`, and those newly invited (device lists
    /// follow joins, invites and leaves).
    pub(crate) fn member_changes(&self, room_id: &RoomId, from: u64, to: u64) -> Result<Vec<MemberChange>> {
        let last_event =
            |position| Ok::<_, Error>(self.room_events_between(room_id, 0, position, 1)?.0.pop());
        let Some(now) = last_event(to)? else { return Ok(Vec::new()) };
        let before = last_event(from.saturating_sub(1))?;
        if before.as_ref().is_some_and(|b| b.state_after == now.state_after) {
            // Only messages in the window: no state diff to walk.
            return Ok(Vec::new());
        }
        let now = self.state.load(now.state_after)?;
        let base = before.map(|b| self.state.load(b.state_after)).transpose()?;
        let joined = |pdu: &estuary_events::Pdu| pdu.content_value()["membership"] == "join";
        let mut changes = Vec::new();
        for stored in self.state_delta(&now, base.as_deref())? {
            let pdu = stored.pdu()?;
            if pdu.kind != ruma::events::TimelineEventType::RoomMember {
                continue;
            }
            let Some(user_id) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else {
                continue;
            };
            let was = match &base {
                Some(base) => {
                    self.state_pdu(base, &ruma::events::StateEventType::RoomMember, user_id.as_str())?
                }
                None => None,
            };
            let was_joined = was.as_ref().is_some_and(joined);
            let is_joined = joined(&pdu);
            let is_invited = pdu.content_value()["membership"] == "invite"
                && was.as_ref().is_none_or(|p| p.content_value()["membership"] != "invite");
            // Left and joined again within the window: as good as new (their
            // devices may have changed meanwhile, unannounced).
            let rejoined = is_joined
                && was_joined
                && stored.json.client().previous_membership().as_deref() != Some("join");
            if was_joined != is_joined || rejoined || is_invited {
                changes.push(MemberChange { user_id, is_joined, is_invited });
            }
        }
        Ok(changes)
    }
}
