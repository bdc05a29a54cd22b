//! Peeking: a room's current state and latest messages (`/rooms/{id}/initialSync`)
//! and new events in one room (`/events?room_id=`), for rooms the user is in
//! or that are world-readable. Element previews a room with these before its
//! first `/sync` returns.

use std::{sync::Arc, time::Duration};

use estuary_core::{Error, Result};
use ruma::{RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{
    account_data::AccountData,
    ephemeral::Ephemeral,
    event_stream::{account_data_event, in_room, legacy},
    presence::Presence,
    rooms::{Direction, MessagesQuery, Rooms},
    streams::Streams,
};

/// Events one `/events` call returns at most.
const EVENTS_LIMIT: usize = 100;

/// The services peeking reads.
pub struct PeekSources {
    pub rooms: Arc<Rooms>,
    pub streams: Arc<Streams>,
    pub account_data: Arc<AccountData>,
    pub presence: Arc<Presence>,
    pub ephemeral: Arc<Ephemeral>,
}

pub struct Peek {
    rooms: Arc<Rooms>,
    streams: Arc<Streams>,
    account_data: Arc<AccountData>,
    presence: Arc<Presence>,
    ephemeral: Arc<Ephemeral>,
}

impl Peek {
    pub fn new(sources: PeekSources) -> Self {
        let PeekSources { rooms, streams, account_data, presence, ephemeral } = sources;
        Self { rooms, streams, account_data, presence, ephemeral }
    }

    /// `GET /rooms/{roomId}/initialSync`. 403 when the user may not read the room.
    /// With the room's snapshot come its members' presence and receipts
    /// (none for a member who left).
    pub fn initial_sync(&self, viewer: &UserId, room_id: &RoomId, limit: usize) -> Result<JsonValue> {
        self.require_peekable(viewer, room_id)?;
        let mut response = self.room_snapshot(viewer, room_id, limit)?;
        let departed = matches!(response["membership"].as_str(), Some("leave" | "ban"));
        response["presence"] = if departed { Vec::new() } else { self.members_presence(room_id)? }.into();
        response["receipts"] = if departed { Vec::new() } else { self.receipts(viewer, room_id)? }.into();
        Ok(response)
    }

    /// A room as `initialSync` shows it: its state, its latest `limit`
    /// messages, the viewer's account data for it. A member who left sees
    /// it as it was when they left.
    pub fn room_snapshot(&self, viewer: &UserId, room_id: &RoomId, limit: usize) -> Result<JsonValue> {
        let membership = self.rooms.membership(viewer, room_id)?;
        let departed = matches!(membership.as_deref(), Some("leave" | "ban"));
        let left_at = if departed { self.rooms.membership_change_position(viewer, room_id)? } else { None };
        let end = format!("s{}", left_at.unwrap_or_else(|| self.streams.current()) + 1);
        let (chunk, start) = if limit == 0 {
            (Vec::new(), end.clone())
        } else {
            let query = MessagesQuery {
                from: Some(end.clone()),
                to: None,
                dir: Direction::Backward,
                limit,
                filter: Default::default(),
            };
            let mut page = self.rooms.messages(viewer, None, room_id, query)?;
            page.chunk.reverse();
            (page.chunk, page.end.unwrap_or_else(|| "s0".to_owned()))
        };
        let state: Vec<JsonValue> = match left_at {
            Some(position) => {
                let at_leave = self.rooms.state_at_position(room_id, position)?.unwrap_or_default();
                let delta = self.rooms.state_delta(&at_leave, None)?;
                delta
                    .into_iter()
                    .map(|s| Ok(self.rooms.client_event(s, None)?.into_json()))
                    .collect::<Result<_>>()?
            }
            None => self.rooms.room_state(viewer, room_id)?,
        };
        let mut response = json!({
            "room_id": room_id,
            "messages": {"chunk": chunk.into_iter().map(|e| legacy(e.into_json())).collect::<Vec<_>>(), "start": start, "end": end},
            "state": state.into_iter().map(legacy).collect::<Vec<_>>(),
            "account_data": self.room_account_data(viewer, room_id)?,
            "visibility": if self.rooms.is_public(room_id)? { "public" } else { "private" },
        });
        if let Some(membership) = membership {
            response["membership"] = membership.into();
        }
        Ok(response)
    }

    /// The presence of every joined member (offline when never set).
    fn members_presence(&self, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let members = self.rooms.members_with_membership(room_id, "join")?;
        members
            .iter()
            .map(|m| {
                Ok(legacy(json!({"type": "m.presence", "sender": m, "content": self.presence.content(m)?})))
            })
            .collect()
    }

    /// The room's `m.receipt` event as the viewer sees it, with its `room_id`.
    pub(crate) fn receipts(&self, viewer: &UserId, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let event = self.ephemeral.receipt_event(viewer, room_id, None, self.streams.current())?;
        Ok(event.into_iter().map(|e| in_room(e, room_id)).collect())
    }

    /// The viewer's account data of the room, tags (`m.tag`) first.
    fn room_account_data(&self, viewer: &UserId, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let mut events: Vec<JsonValue> = self
            .account_data
            .of_user(viewer, Some(room_id))?
            .into_iter()
            .map(|(_, kind, content)| account_data_event(&kind, &content))
            .collect();
        events.sort_by_key(|e| e["type"] != "m.tag");
        Ok(events)
    }

    /// `GET /events?room_id=`: events after `from` (or from now), waiting up
    /// to `timeout` for the first one.
    pub async fn events(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        from: Option<u64>,
        timeout: Duration,
    ) -> Result<JsonValue> {
        self.require_peekable(viewer, room_id)?;
        let start = from.unwrap_or_else(|| self.streams.current() + 1);
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(60));
        loop {
            let changed = self.streams.any_change().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let to = self.streams.current();
            let (chunk, end) = self.new_events(viewer, room_id, start, to)?;
            if !chunk.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(json!({"chunk": chunk, "start": format!("s{start}"), "end": format!("s{end}")}));
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Clients expect 403 for any room they may not peek, known or not.
    fn require_peekable(&self, viewer: &UserId, room_id: &RoomId) -> Result<()> {
        if self.rooms.room(room_id)?.is_none() {
            return Err(Error::forbidden("You cannot peek into this room"));
        }
        self.rooms.require_readable(viewer, room_id)
    }

    /// Visible events at positions `from..=to`, oldest first, and the token
    /// position after the last one looked at.
    fn new_events(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        from: u64,
        to: u64,
    ) -> Result<(Vec<JsonValue>, u64)> {
        let (candidates, more) = self.rooms.room_events_after(room_id, from, to, EVENTS_LIMIT)?;
        let end = match (more, candidates.last()) {
            (true, Some(last)) => last.stream + 1,
            _ => to + 1,
        };
        let mut chunk = Vec::new();
        for stored in &candidates {
            if self.rooms.can_see_event(Some(viewer), stored)? {
                chunk.push(legacy(self.rooms.client_event(stored.clone(), None)?.into_json()));
            }
        }
        // Then what else changed in the room up to there: typing, receipts,
        // its members' presence.
        let last = end - 1;
        if from <= last {
            let typing = self.ephemeral.typing_event(room_id, Some(from), last);
            let receipts = self.ephemeral.receipt_event(viewer, room_id, Some(from), last)?;
            chunk.extend(typing.into_iter().chain(receipts).map(|e| in_room(e, room_id)));
            let members = self.rooms.members_with_membership(room_id, "join")?;
            let presence = self.presence.changes(&members, from, last)?;
            chunk.extend(presence.into_iter().map(legacy));
        }
        Ok((chunk, end))
    }
}
