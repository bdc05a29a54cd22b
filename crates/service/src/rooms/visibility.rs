//! History visibility: which events and which state a user may read.

use std::sync::Arc;

use estuary_core::{Error, Result};
use ruma::{RoomId, UserId, events::StateEventType};

use super::{RoomRecord, Rooms, StoredPdu, state::StateMap};
use crate::storage_error::StorageResultExt;

impl Rooms {
    pub(super) fn history_visibility(&self, state: &StateMap) -> Result<String> {
        Ok(self
            .state_pdu(state, &StateEventType::RoomHistoryVisibility, "")?
            .and_then(|pdu| pdu.content_value()["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned()))
    }

    fn membership_in(&self, state: &StateMap, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .state_pdu(state, &StateEventType::RoomMember, user_id.as_str())?
            .and_then(|pdu| pdu.content_value()["membership"].as_str().map(str::to_owned)))
    }

    pub fn is_world_readable(&self, room: &RoomRecord) -> Result<bool> {
        Ok(self.history_visibility(&*self.state.load(room.state)?)? == "world_readable")
    }

    /// Whether `viewer` may see `event`, per the history visibility in force
    /// when it was sent and the viewer's membership then (and now, for `shared`).
    pub fn can_see_event(&self, viewer: Option<&UserId>, event: &StoredPdu) -> Result<bool> {
        let joined_since = match viewer {
            Some(viewer) => self.joined_since(viewer, &event.room_id)?,
            None => None,
        };
        self.can_see_room_event(viewer, joined_since, event)
    }

    /// Where the viewer is currently joined to the room: the position of
    /// their latest join. Readers of many events of one room read it once.
    pub fn joined_since(&self, viewer: &UserId, room_id: &RoomId) -> Result<Option<u64>> {
        let key = (viewer.to_string(), room_id.to_string());
        match self.useridroomid_joinstream.get(&key).db()? {
            Some(joined) if self.is_joined(viewer, room_id)? => Ok(Some(joined)),
            _ => Ok(None),
        }
    }

    /// `can_see_event`, with the viewer's `joined_since` for the event's room.
    pub fn can_see_room_event(
        &self,
        viewer: Option<&UserId>,
        joined_since: Option<u64>,
        event: &StoredPdu,
    ) -> Result<bool> {
        // Fast path: a member who is still joined sees everything since their latest join.
        if joined_since.is_some_and(|joined| joined <= event.stream) {
            return Ok(true);
        }
        let before = self.state.load(event.state_before)?;
        let kind = event.kind();
        let state_key = event.state_key();
        // A change of history visibility is seen by whoever may see events
        // under either the old or the new setting (the spec's boundary rule).
        let mut settings = vec![self.history_visibility(&before)?];
        let after = self.state.load(event.state_after)?;
        if kind == Some("m.room.history_visibility") && state_key == Some("") {
            settings.push(self.history_visibility(&after)?);
        }
        if settings.iter().any(|v| v == "world_readable") {
            return Ok(true);
        }
        let Some(viewer) = viewer else { return Ok(false) };
        // Users always see their own membership changes (their leave, their kick).
        if kind == Some("m.room.member") && state_key == Some(viewer.as_str()) {
            return Ok(true);
        }
        // The state after the event, so a user sees their own join.
        let then = self.membership_in(&after, viewer)?;
        for visibility in settings {
            let allowed = match visibility.as_str() {
                "joined" => then.as_deref() == Some("join"),
                "invited" => matches!(then.as_deref(), Some("join" | "invite")),
                // shared: also every event from before the user's latest join.
                _ => then.as_deref() == Some("join") || self.joined_after(viewer, event)?,
            };
            if allowed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether another server may see `event` (Server-Server API, "Restrictions
    /// on events for servers"): always under `world_readable` and `shared`;
    /// under `invited` and `joined` only when one of its users was invited
    /// or joined (only joined, for `joined`) when the event was sent.
    pub fn server_can_see_event(&self, server: &ruma::ServerName, event: &StoredPdu) -> Result<bool> {
        let before = self.state.load(event.state_before)?;
        let visibility = self.history_visibility(&before)?;
        if matches!(visibility.as_str(), "world_readable" | "shared") {
            return Ok(true);
        }
        // The server's users who ever had a membership here, rather than a
        // walk over the whole state at the event (large rooms).
        let after = self.state.load(event.state_after)?;
        let users: Vec<String> = self
            .roomiduserid_membership
            .scan_prefix(&(event.room_id.to_string(),))
            .db()?
            .into_iter()
            .map(|((_, user), _)| user)
            .filter(|user| UserId::parse(user).is_ok_and(|u| u.server_name() == server))
            .collect();
        for user in users {
            let Ok(user) = UserId::parse(&user) else { continue };
            let membership = self.membership_in(&after, &user)?;
            if matches!(
                (membership.as_deref(), visibility.as_str()),
                (Some("join"), _) | (Some("invite"), "invited")
            ) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn joined_after(&self, viewer: &UserId, event: &StoredPdu) -> Result<bool> {
        let key = (viewer.to_string(), event.room_id.to_string());
        Ok(self.useridroomid_joinstream.get(&key).db()?.is_some_and(|joined| joined > event.stream))
    }

    /// The state `viewer` may read: the current state while joined (or when
    /// the room is world-readable), the state when they left otherwise.
    pub fn visible_state(&self, viewer: &UserId, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let room = self.require_room(room_id)?;
        let current = self.state.load(room.state)?;
        let membership = self.membership(viewer, room_id)?;
        if membership.as_deref() == Some("join") || self.history_visibility(&current)? == "world_readable" {
            return Ok(current);
        }
        if matches!(membership.as_deref(), Some("leave" | "ban"))
            && let Some(event_id) =
                self.state_event_id(&current, &StateEventType::RoomMember, viewer.as_str())?
            && let Some(stored) = self.stored(&event_id)?
        {
            return self.state.load(stored.state_after);
        }
        Err(Error::forbidden("You are not in this room"))
    }

    /// The state a client's state and member requests show: as
    /// `visible_state`, but a banned user is refused unless the room is
    /// world-readable (as on Synapse, which clients and SyTest expect: the
    /// ban is not their leaving).
    pub fn state_for_client(&self, viewer: &UserId, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let state = self.visible_state(viewer, room_id)?;
        if self.membership(viewer, room_id)?.as_deref() == Some("ban")
            && self.history_visibility(&state)? != "world_readable"
        {
            return Err(Error::forbidden("You are banned from this room"));
        }
        Ok(state)
    }

    /// Whether `viewer` may read the room's timeline at all.
    pub fn require_readable(&self, viewer: &UserId, room_id: &RoomId) -> Result<()> {
        self.visible_state(viewer, room_id).map(|_| ())
    }
}
