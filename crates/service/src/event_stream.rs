//! The legacy event stream (`GET /events` without a room) and the global
//! `GET /initialSync`: deprecated in the spec, still called by older
//! clients and by SyTest's fixtures. Built from the same stream positions
//! and sources as `/sync`; tokens are `/sync`'s (`s<N>`).
//!
//! Events are in the old client format: the client event with its
//! `room_id` and the sender repeated as `user_id`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use estuary_core::Result;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{
    account_data::AccountData, ephemeral::Ephemeral, peek::Peek, presence::Presence, rooms::Rooms,
    streams::Streams,
};

/// Stream rows one `/events` call reads at most (events of other users'
/// rooms included), so a call on a busy server stays bounded.
const MAX_ROWS: usize = 2_000;
/// Events one `/events` call returns without a `limit`.
const DEFAULT_LIMIT: usize = 100;

/// The services the legacy endpoints read.
pub struct EventStreamSources {
    pub rooms: Arc<Rooms>,
    pub streams: Arc<Streams>,
    pub account_data: Arc<AccountData>,
    pub ephemeral: Arc<Ephemeral>,
    pub presence: Arc<Presence>,
    pub peek: Arc<Peek>,
}

pub struct EventStream {
    s: EventStreamSources,
}

impl EventStream {
    pub fn new(sources: EventStreamSources) -> Self {
        Self { s: sources }
    }

    /// `GET /events`: what changed for the user after `from` (or from now),
    /// waiting up to `timeout` for something.
    pub async fn events(
        &self,
        user: &UserId,
        from: Option<u64>,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<JsonValue> {
        // Reading the legacy stream shows the user is online, as `/sync` does by default.
        self.s.presence.touch(user, "online")?;
        let start = from.unwrap_or_else(|| self.s.streams.current() + 1);
        let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 1_000);
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(60));
        let waiter = self.s.streams.waiter(user);
        loop {
            // Register for wake-ups before reading, so no change slips between.
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let to = self.s.streams.current();
            let (chunk, end) = self.collect(user, start, to, limit)?;
            if !chunk.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(json!({"chunk": chunk, "start": format!("s{start}"), "end": format!("s{end}")}));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The user's changes at positions `from..=to`, at most `limit` room
    /// events, and the position to go on from.
    fn collect(&self, user: &UserId, from: u64, to: u64, limit: usize) -> Result<(Vec<JsonValue>, u64)> {
        let rows = self.s.rooms.stream_events(from, to, MAX_ROWS)?;
        let mut end =
            if rows.len() == MAX_ROWS { rows.last().map_or(to + 1, |e| e.stream + 1) } else { to + 1 };
        let mut member_of: HashMap<OwnedRoomId, bool> = HashMap::new();
        let mut chunk = Vec::new();
        for stored in &rows {
            if chunk.len() == limit {
                end = stored.stream;
                break;
            }
            let joined = match member_of.get(&stored.room_id) {
                Some(joined) => *joined,
                None => {
                    let joined = self.s.rooms.membership(user, &stored.room_id)?.as_deref() == Some("join");
                    member_of.insert(stored.room_id.clone(), joined);
                    joined
                }
            };
            let about_user = stored.state_key() == Some(user.as_str());
            if (joined || about_user) && self.s.rooms.can_see_event(Some(user), stored)? {
                chunk
                    .push(legacy(self.s.rooms.client_event(stored.clone(), Some((user, None)))?.into_json()));
            }
        }
        // The rest of the stream up to where the events stopped.
        let last = end - 1;
        if from <= last {
            chunk.extend(self.ephemeral(user, from, last)?);
            chunk.extend(self.s.presence.events(user, Some(from), last)?.into_iter().map(legacy));
            chunk.extend(self.account_data(user, from, last)?);
        }
        Ok((chunk, end))
    }

    /// Typing and receipts of the user's joined rooms that changed.
    fn ephemeral(&self, user: &UserId, from: u64, to: u64) -> Result<Vec<JsonValue>> {
        let mut events = Vec::new();
        for room_id in self.s.ephemeral.rooms_changed(from, to)? {
            if self.s.rooms.membership(user, &room_id)?.as_deref() != Some("join") {
                continue;
            }
            let typing = self.s.ephemeral.typing_event(&room_id, Some(from), to);
            let receipts = self.s.ephemeral.receipt_event(user, &room_id, Some(from), to)?;
            events.extend(typing.into_iter().chain(receipts).map(|e| in_room(e, &room_id)));
        }
        Ok(events)
    }

    /// Account data that changed: global as `{type, content}`, a room's
    /// with its `room_id` (tags as `m.tag`).
    fn account_data(&self, user: &UserId, from: u64, to: u64) -> Result<Vec<JsonValue>> {
        let changes = self.s.account_data.changes(user, from, to)?;
        Ok(changes
            .into_iter()
            .map(|(room, kind, content)| {
                let event = account_data_event(&kind, &content);
                match RoomId::parse(&room) {
                    Ok(room_id) => in_room(event, &room_id),
                    Err(_) => event,
                }
            })
            .collect())
    }

    /// `GET /initialSync`: every room of the user (left ones too with
    /// `archived`), with `limit` messages each, their presence, receipts and
    /// account data, and the `/events` token to go on from.
    pub fn initial_sync(&self, user: &UserId, limit: usize, archived: bool) -> Result<JsonValue> {
        // Like the legacy stream, it shows the user is online.
        self.s.presence.touch(user, "online")?;
        let end = self.s.streams.current() + 1;
        let mut memberships = vec!["join", "invite"];
        if archived {
            memberships.extend(["leave", "ban"]);
        }
        let mut rooms = Vec::new();
        let mut receipts = Vec::new();
        for membership in memberships {
            for room_id in self.s.rooms.rooms_with_membership(user, membership)? {
                if self.s.rooms.is_forgotten(user, &room_id)? {
                    continue;
                }
                if membership == "invite" {
                    rooms.push(json!({"room_id": room_id, "membership": "invite"}));
                    continue;
                }
                rooms.push(self.s.peek.room_snapshot(user, &room_id, limit)?);
                if membership == "join" {
                    receipts.extend(self.s.peek.receipts(user, &room_id)?);
                }
            }
        }
        let mut presence = self.s.presence.events(user, None, end - 1)?;
        if !presence.iter().any(|p| p["sender"] == user.as_str()) {
            presence.push(
                json!({"type": "m.presence", "sender": user, "content": self.s.presence.content(user)?}),
            );
        }
        let account_data: Vec<JsonValue> = self
            .s
            .account_data
            .of_user(user, None)?
            .into_iter()
            .filter(|(room, _, _)| room.is_empty())
            .map(|(_, kind, content)| account_data_event(&kind, &content))
            .collect();
        Ok(json!({
            "rooms": rooms,
            "presence": presence.into_iter().map(legacy).collect::<Vec<_>>(),
            "account_data": account_data,
            "receipts": receipts,
            "end": format!("s{end}"),
        }))
    }
}

/// An event in the legacy format: the sender repeated as `user_id`
/// (presence names its user in `content.user_id`).
pub(crate) fn legacy(mut event: JsonValue) -> JsonValue {
    if let Some(sender) = event.get("sender").cloned() {
        if event["type"] == "m.presence" {
            event["content"]["user_id"] = sender.clone();
        }
        event["user_id"] = sender;
    }
    event
}

/// An account data event as the legacy endpoints show it.
pub(crate) fn account_data_event(kind: &str, content: &serde_json::value::RawValue) -> JsonValue {
    json!({"type": kind, "content": serde_json::from_str::<JsonValue>(content.get()).unwrap_or_default()})
}

pub(crate) fn in_room(mut event: JsonValue, room_id: &RoomId) -> JsonValue {
    event["room_id"] = room_id.as_str().into();
    event
}
