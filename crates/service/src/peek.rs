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
    rooms::{Direction, MessagesQuery, Rooms},
    streams::Streams,
};

/// Events one `/events` call returns at most.
const EVENTS_LIMIT: usize = 100;

pub struct Peek {
    rooms: Arc<Rooms>,
    streams: Arc<Streams>,
    account_data: Arc<AccountData>,
}

impl Peek {
    pub fn new(rooms: Arc<Rooms>, streams: Arc<Streams>, account_data: Arc<AccountData>) -> Self {
        Self { rooms, streams, account_data }
    }

    /// `GET /rooms/{roomId}/initialSync`. 403 when the user may not read the room.
    pub fn initial_sync(&self, viewer: &UserId, room_id: &RoomId, limit: usize) -> Result<JsonValue> {
        self.require_peekable(viewer, room_id)?;
        let query = MessagesQuery {
            from: None,
            to: None,
            dir: Direction::Backward,
            limit,
            filter: Default::default(),
        };
        let mut page = self.rooms.messages(viewer, None, room_id, query)?;
        page.chunk.reverse();
        // The legacy format also named the sender `user_id`.
        let mut state = self.rooms.room_state(viewer, room_id)?;
        for event in &mut state {
            event["user_id"] = event["sender"].clone();
        }
        let account_data: Vec<JsonValue> = self
            .account_data
            .of_user(viewer, Some(room_id))?
            .into_iter()
            .map(|(_, kind, content)| json!({"type": kind, "content": content}))
            .collect();
        let end = format!("s{}", self.streams.current() + 1);
        let mut response = json!({
            "room_id": room_id,
            "messages": {"chunk": page.chunk, "start": page.end.unwrap_or_else(|| "s0".to_owned()), "end": end},
            "state": state,
            "presence": [],
            "receipts": [],
            "account_data": account_data,
            "visibility": if self.rooms.is_public(room_id)? { "public" } else { "private" },
        });
        if let Some(membership) = self.rooms.membership(viewer, room_id)? {
            response["membership"] = membership.into();
        }
        Ok(response)
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
                chunk.push(self.rooms.client_event(stored, None)?);
            }
        }
        Ok((chunk, end))
    }
}
