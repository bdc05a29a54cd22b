//! One room of a sliding sync answer: everything on its first appearance
//! on a connection (`initial`), then only what changed since the client's
//! copy (`connections::RoomSent::sent_to`).

use std::{collections::HashSet, sync::Arc};

use estuary_core::Result;
use ruma::{RoomId, UserId, events::StateEventType};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Sync,
    connections::{ConnectionState, RoomSent},
    sliding::{Answer, ListEntry, RoomConfig},
};
use crate::rooms::{ClientEvent, StateMap, StoredPdu};

impl Sync {
    /// The room's entry in the answer, or `None` when the client is up to
    /// date. Records what was sent in `state`.
    pub(super) fn sliding_room(
        &self,
        a: &Answer<'_>,
        state: &mut ConnectionState,
        entry: &ListEntry,
        config: &RoomConfig,
        is_dm: bool,
    ) -> Result<Option<JsonValue>> {
        let (user, room_id) = (a.w.user, &entry.room_id);
        let fingerprint = config.fingerprint;
        let sent = a.base.rooms.get(room_id);
        // A new configuration, or a membership that needs the room afresh
        // (an invite accepted, a room rejoined), starts the room over.
        let initial = sent.is_none_or(|sent| {
            sent.config != fingerprint
                || (sent.membership != entry.membership
                    && matches!(entry.membership.as_str(), "join" | "invite"))
        });
        let membership_changed = sent.is_some_and(|s| s.membership != entry.membership);
        if let Some(sent) = sent
            && !initial
            && !membership_changed
            && sent.sent_to >= a.base.stream
            && !a.changed(room_id)
        {
            // Nothing happened in the room since the client's copy: the
            // cheap answer for most rooms of a long list.
            let record = RoomSent { sent_to: a.w.to, ..sent.clone() };
            state.rooms.insert(room_id.clone(), record);
            return Ok(None);
        }
        if entry.membership == "invite" {
            if !initial {
                return Ok(None);
            }
            state
                .rooms
                .insert(room_id.clone(), sent_record(a.w.to, entry, fingerprint, (0, 0), Arc::default()));
            return Ok(Some(self.invited_room(user, room_id, entry, is_dm)?));
        }
        let left = entry.membership != "join";
        if left && !initial && !membership_changed {
            // Out of the room (left, kicked, banned) and already told:
            // nothing after that is the user's to see.
            if let Some(sent) = sent {
                state.rooms.insert(room_id.clone(), RoomSent { sent_to: a.w.to, ..sent.clone() });
            }
            return Ok(None);
        }
        let own_member = match left || membership_changed {
            true => self.rooms.own_member_event(user, room_id)?,
            false => None,
        };
        // Out of the room, what the user sees ends at their own leave.
        let left_at = own_member.as_ref().filter(|_| left);
        if left && self.rooms.room(room_id)?.is_none() {
            // A refused invite to a room this server is not in: the leave alone.
            state
                .rooms
                .insert(room_id.clone(), sent_record(a.w.to, entry, fingerprint, (0, 0), Arc::default()));
            let leave = own_member
                .iter()
                .map(|m| self.rooms.client_event(m.clone(), None))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Some(
                json!({"required_state": leave, "timeline": [], "bump_stamp": entry.bump_stamp}),
            ));
        }
        let to = left_at.map_or(a.w.to, |m| m.stream.min(a.w.to));
        let from = sent.filter(|_| !initial).map_or(0, |s| s.sent_to + 1);
        let (timeline, limited) = self.timeline(&a.w, room_id, from, to, config.timeline_limit)?;
        let now = self.visible_state(room_id, left_at, a.w.to)?;
        let required = &config.required;
        let base_state = match sent.filter(|_| !initial) {
            Some(sent) => self.rooms.state_at_position(room_id, sent.sent_to)?,
            None => None,
        };
        let mut state_events = match required.matches_nothing() {
            true => Vec::new(),
            false => self.rooms.state_matching(&now, base_state.as_deref(), |k, s| required.wants(k, s))?,
        };
        if membership_changed
            && let Some(member) = &own_member
            && !state_events.iter().any(|s| s.event_id == member.event_id)
        {
            // The client learns its new membership from its own member event.
            state_events.push(member.clone());
        }
        let mut lazy = sent.filter(|_| !initial).map(|s| s.lazy_members.clone()).unwrap_or_default();
        if required.lazy_members && !timeline.is_empty() {
            let lazy = Arc::make_mut(&mut lazy);
            let rules = super::LazyMembers { redundant: false, skip_in_timeline: false };
            self.add_sender_members(&now, &timeline, &mut state_events, lazy, rules)?;
        }
        let (unread, _) = self.unread(&a.w, room_id)?;
        let counts = (
            unread["notification_count"].as_u64().unwrap_or(0),
            unread["highlight_count"].as_u64().unwrap_or(0),
        );
        let record = sent_record(a.w.to, entry, fingerprint, counts, lazy);
        let unchanged = timeline.is_empty() && state_events.is_empty() && !membership_changed;
        if !initial && unchanged && sent.is_some_and(|s| s.unread == counts) {
            state.rooms.insert(room_id.clone(), record);
            return Ok(None);
        }
        state.rooms.insert(room_id.clone(), record);
        let mut room = Map::new();
        if initial {
            room.insert("initial".into(), true.into());
            room.insert("is_dm".into(), is_dm.into());
        }
        let live_after = a.base.stream;
        let num_live = if live_after == 0 {
            0
        } else {
            timeline.iter().filter(|e| e.stored().stream > live_after).count()
        };
        let changed = |kind: &str| {
            initial
                || state_events.iter().any(|s| is_kind(s, kind))
                || timeline.iter().any(|e| e.kind() == Some(kind) && e.state_key().is_some())
        };
        if changed("m.room.member") || membership_changed {
            self.add_member_summary(&mut room, user, room_id, &now)?;
        }
        if changed("m.room.name") {
            let name = self.state_content(&now, StateEventType::RoomName)?["name"].clone();
            if name.as_str().is_some_and(|n| !n.is_empty()) {
                room.insert("name".into(), name);
            }
        }
        if changed("m.room.avatar") {
            let url = self.state_content(&now, StateEventType::RoomAvatar)?["url"].clone();
            if url.is_string() || !initial {
                room.insert("avatar".into(), if url.is_string() { url } else { JsonValue::Null });
            }
        }
        let required_state: Vec<JsonValue> = state_events
            .iter()
            .map(|s| Ok(self.rooms.client_event(s.clone(), None)?.without_replaced_content().into_json()))
            .collect::<Result<_>>()?;
        room.insert("required_state".into(), required_state.into());
        if let Some(first) = timeline.first() {
            room.insert("prev_batch".into(), format!("s{}", first.stored().stream).into());
        }
        let events: Vec<JsonValue> = timeline.into_iter().map(ClientEvent::into_json).collect();
        room.insert("timeline".into(), events.into());
        room.insert("limited".into(), limited.into());
        room.insert("num_live".into(), num_live.into());
        room.insert("bump_stamp".into(), entry.bump_stamp.into());
        room.insert("notification_count".into(), counts.0.into());
        room.insert("highlight_count".into(), counts.1.into());
        Ok(Some(JsonValue::Object(room)))
    }

    /// An invite: the stripped state the inviter's server shared.
    fn invited_room(
        &self,
        user: &UserId,
        room_id: &RoomId,
        entry: &ListEntry,
        is_dm: bool,
    ) -> Result<JsonValue> {
        let invite_state = self.stripped_state(user, room_id)?;
        let mut room = json!({
            "initial": true,
            "invite_state": invite_state,
            "bump_stamp": entry.bump_stamp,
            "is_dm": is_dm,
        });
        let name =
            invite_state.iter().find(|e| e["type"] == "m.room.name").map(|e| e["content"]["name"].clone());
        if let Some(name) = name.filter(|n| n.as_str().is_some_and(|n| !n.is_empty())) {
            room["name"] = name;
        }
        Ok(room)
    }

    /// Member counts, and heroes (with their names and avatars) for a room
    /// with no name to show, from `/sync`'s summary.
    fn add_member_summary(
        &self,
        room: &mut Map<String, JsonValue>,
        user: &UserId,
        room_id: &RoomId,
        state: &StateMap,
    ) -> Result<()> {
        let summary = self.summary(user, room_id)?;
        room.insert("joined_count".into(), summary["m.joined_member_count"].clone());
        room.insert("invited_count".into(), summary["m.invited_member_count"].clone());
        let Some(heroes) = summary["m.heroes"].as_array() else { return Ok(()) };
        let mut out = Vec::new();
        for hero in heroes.iter().filter_map(|h| h.as_str()) {
            let mut entry = json!({"user_id": hero});
            if let Some(member) = self.rooms.state_pdu(state, &StateEventType::RoomMember, hero)? {
                let content = member.content_value();
                for field in ["displayname", "avatar_url"] {
                    if content[field].is_string() {
                        entry[field] = content[field].clone();
                    }
                }
            }
            out.push(entry);
        }
        room.insert("heroes".into(), out.into());
        Ok(())
    }

    /// The room's state as the user may see it: as of their leave (or ban)
    /// when `left_at` is it, else now.
    fn visible_state(&self, room_id: &RoomId, left_at: Option<&StoredPdu>, to: u64) -> Result<Arc<StateMap>> {
        if let Some(member) = left_at
            && !member.rejected
        {
            return self.rooms.load_state(member.state_after);
        }
        match self.rooms.state_at_position(room_id, to)? {
            Some(state) => Ok(state),
            None => self.rooms.current_state(&self.rooms.require_room(room_id)?),
        }
    }

    /// The content of a state event (type, "") in `state`, or `null`.
    fn state_content(&self, state: &StateMap, kind: StateEventType) -> Result<JsonValue> {
        Ok(self.rooms.state_pdu(state, &kind, "")?.map(|p| p.content_value()).unwrap_or_default())
    }
}

fn sent_record(
    sent_to: u64,
    entry: &ListEntry,
    config: u64,
    unread: (u64, u64),
    lazy_members: Arc<HashSet<String>>,
) -> RoomSent {
    let membership = match entry.membership.as_str() {
        "join" => "join",
        "invite" => "invite",
        "ban" => "ban",
        _ => "leave",
    };
    RoomSent { sent_to, membership, config, unread, lazy_members }
}

/// Whether a stored event is of `kind`.
fn is_kind(stored: &StoredPdu, kind: &str) -> bool {
    stored.kind() == Some(kind)
}
