//! Reading rooms: events, state, members and the timeline (`/messages`).

use estuary_core::{Error, Result, time::now_millis};
use ruma::{
    DeviceId, EventId, OwnedUserId, RoomId, UserId,
    api::client::filter::{LazyLoadOptions, RoomEventFilter, UrlFilter},
    events::StateEventType,
};
use serde_json::{Value as JsonValue, json};

use super::{ClientEvent, Rooms, StoredPdu, history};
use crate::storage_error::StorageResultExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

#[derive(Clone)]
pub struct MessagesQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub dir: Direction,
    pub limit: usize,
    pub filter: RoomEventFilter,
}

pub struct MessagesPage {
    pub chunk: Vec<ClientEvent>,
    pub start: String,
    pub end: Option<String>,
    pub state: Vec<ClientEvent>,
}

/// Pagination tokens are stream positions: `s<N>` is the point just before
/// the event at position N.
pub fn parse_token(token: &str) -> Result<u64> {
    token
        .strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid_param("Invalid pagination token"))
}

/// A `*` glob as event type filters use.
fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head) && {
                let rest = &text[head.len()..];
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob_match(tail, &rest[i..]))
            }
        }
    }
}

/// Whether an event type passes a filter's `types` and `not_types` (globs).
pub(crate) fn type_wanted(types: &Option<Vec<String>>, not_types: &[String], kind: &str) -> bool {
    !not_types.iter().any(|p| glob_match(p, kind))
        && types.as_ref().is_none_or(|t| t.iter().any(|p| glob_match(p, kind)))
}

/// Whether a sender passes a filter's `senders` and `not_senders`.
pub(crate) fn sender_wanted(
    senders: &Option<Vec<OwnedUserId>>,
    not_senders: &[OwnedUserId],
    sender: &str,
) -> bool {
    !not_senders.iter().any(|s| s.as_str() == sender)
        && senders.as_ref().is_none_or(|s| s.iter().any(|u| u.as_str() == sender))
}

pub(crate) fn passes(filter: &RoomEventFilter, event: &ClientEvent) -> bool {
    let kind = event.kind().unwrap_or_default();
    let sender = event.sender().unwrap_or_default();
    if !type_wanted(&filter.types, &filter.not_types, kind)
        || !sender_wanted(&filter.senders, &filter.not_senders, sender)
    {
        return false;
    }
    // The content is read only for a filter on URLs.
    let has_url = || event.stored().json.client().content_value()["url"].is_string();
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => has_url(),
        Some(UrlFilter::EventsWithoutUrl) => !has_url(),
        _ => true,
    }
}

impl Rooms {
    /// An event as a client sees it: `age`, and the transaction ID for the
    /// device that sent it; as an erased sender's events look to `viewer`.
    pub fn client_event(
        &self,
        stored: StoredPdu,
        viewer: Option<(&UserId, Option<&DeviceId>)>,
    ) -> Result<ClientEvent> {
        let stored = match viewer {
            Some((user, _)) => self.erased_for(&stored, user)?.unwrap_or(stored),
            None => stored,
        };
        let txn_id = match (&stored.txn, viewer) {
            (Some((device, txn_id)), Some((user, Some(viewer_device))))
                if stored.sender() == Some(user.as_str()) && device.as_str() == viewer_device.as_str() =>
            {
                Some(txn_id.clone())
            }
            _ => None,
        };
        let mut event = ClientEvent::new(stored, now_millis());
        if let Some(txn_id) = txn_id {
            event.set_unsigned("transaction_id", txn_id.into());
        }
        Ok(event)
    }

    /// `/rooms/{roomId}/event/{eventId}`: 404 for events the viewer cannot see.
    pub fn get_event(
        &self,
        viewer: &UserId,
        device: Option<&DeviceId>,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<JsonValue> {
        let not_found = || Error::not_found("Event not found");
        let stored = self.stored(event_id)?.ok_or_else(not_found)?;
        if stored.room_id != room_id || stored.rejected || !self.can_see_event(Some(viewer), &stored)? {
            return Err(not_found());
        }
        let mut event = self.client_event(stored, Some((viewer, device)))?;
        self.bundle_aggregations(viewer, &mut event)?;
        Ok(event.into_json())
    }

    pub(super) fn stored_client_events(&self, pdus: Vec<estuary_events::Pdu>) -> Result<Vec<JsonValue>> {
        pdus.iter()
            .filter_map(|pdu| self.stored(&pdu.event_id).transpose())
            .map(|stored| Ok(self.client_event(stored?, None)?.into_json()))
            .collect()
    }

    /// The whole visible state of a room, as client events.
    pub fn room_state(&self, viewer: &UserId, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let state = self.state_for_client(viewer, room_id)?;
        self.stored_client_events(self.state_pdus(&state)?)
    }

    /// One state event, as a client event.
    pub fn room_state_event(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<JsonValue> {
        let state = self.state_for_client(viewer, room_id)?;
        let pdu = self
            .state_pdu(&state, event_type, state_key)?
            .ok_or_else(|| Error::not_found("No such state event"))?;
        let stored = self.stored(&pdu.event_id)?.ok_or_else(|| Error::internal("state event not stored"))?;
        Ok(self.client_event(stored, None)?.into_json())
    }

    /// Member events of the visible state (or the state at token `at`), filtered.
    pub fn room_members(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        at: Option<&str>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<JsonValue>> {
        let mut state = self.state_for_client(viewer, room_id)?;
        if let Some(at) = at {
            let position = parse_token(at)?;
            let prefix = (room_id.to_string(),);
            let from = (room_id.to_string(), position).encode_key();
            let before = self
                .roomidstream_eventid
                .scan_from(&estuary_storage::Key::encode(&prefix), Some(&from), true, 2)
                .db()?;
            if let Some(((_, _), event_id)) = before.into_iter().find(|((_, s), _)| *s < position)
                && let Some(stored) = self.stored(&EventId::parse(&event_id).map_err(Error::internal)?)?
                && self.can_see_event(Some(viewer), &stored)?
            {
                state = self.state.load(stored.state_after)?;
            }
        }
        let members = self
            .state_pdus(&state)?
            .into_iter()
            .filter(|pdu| pdu.kind.to_string() == "m.room.member")
            .filter(|pdu| {
                let m = pdu.content_value()["membership"].as_str().unwrap_or_default().to_owned();
                membership.is_none_or(|want| want == m) && not_membership.is_none_or(|not| not != m)
            })
            .collect();
        self.stored_client_events(members)
    }

    /// `/joined_members`: user ID → display name and avatar.
    pub fn joined_members(&self, viewer: &UserId, room_id: &RoomId) -> Result<Vec<(String, JsonValue)>> {
        let room = self.require_room(room_id)?;
        if !self.is_joined(viewer, room_id)? && !self.is_world_readable(&room)? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let state = self.state.load(room.state)?;
        let mut members = Vec::new();
        for user in self.members_with_membership(room_id, "join")? {
            let content = self
                .state_pdu(&state, &StateEventType::RoomMember, user.as_str())?
                .map(|pdu| pdu.content_value())
                .unwrap_or_default();
            members.push((
                user.to_string(),
                json!({"display_name": content["displayname"], "avatar_url": content["avatar_url"]}),
            ));
        }
        Ok(members)
    }

    /// `/messages`: a page of the timeline in either direction.
    pub fn messages(
        &self,
        viewer: &UserId,
        device: Option<&DeviceId>,
        room_id: &RoomId,
        query: MessagesQuery,
    ) -> Result<MessagesPage> {
        self.require_readable(viewer, room_id)?;
        self.messages_for(Some((viewer, device)), room_id, query)
    }

    /// `/messages` for a server admin (the admin API): every event of the
    /// room, whatever its history visibility.
    pub fn messages_as_admin(&self, room_id: &RoomId, query: MessagesQuery) -> Result<MessagesPage> {
        self.require_room(room_id)?;
        self.messages_for(None, room_id, query)
    }

    /// A page of the room's history as `reader` sees it (`None`: all of it).
    fn messages_for(
        &self,
        reader: Option<(&UserId, Option<&DeviceId>)>,
        room_id: &RoomId,
        query: MessagesQuery,
    ) -> Result<MessagesPage> {
        let limit = query.limit.clamp(1, 1000);
        let backwards = query.dir == Direction::Backward;
        let from = query.from.as_deref().map(history::point_of_token).transpose()?;
        let to = query.to.as_deref().map(history::point_of_token).transpose()?;
        let now = i64::try_from(self.streams.current() + 1).map_err(Error::internal)?;
        let start = match (from, backwards) {
            (Some(from), _) => from,
            (None, true) => now,
            // Forwards without a token: from the oldest history here.
            (None, false) => -i64::try_from(self.oldest_history_order(room_id)?).map_err(Error::internal)?,
        };
        let mut chunk = Vec::new();
        let mut cursor = start;
        let mut exhausted = false;
        let joined_since = match reader {
            Some((viewer, _)) => self.joined_since(viewer, room_id)?,
            None => None,
        };
        // Bounded: at most 20 batches of candidates per page.
        for _ in 0..20 {
            // A few more than the page, for events the viewer may not see.
            let rows = self.timeline_rows(room_id, cursor, backwards, limit - chunk.len() + 8)?;
            if rows.is_empty() {
                exhausted = true;
                break;
            }
            for (order, event_id) in rows {
                let beyond = match (to, backwards) {
                    (Some(to), true) => order < to,
                    (Some(to), false) => order >= to,
                    _ => false,
                };
                if beyond {
                    exhausted = true;
                    break;
                }
                cursor = if backwards { order } else { order + 1 };
                let Some(stored) = self.stored(&EventId::parse(&event_id).map_err(Error::internal)?)? else {
                    continue;
                };
                if let Some((viewer, _)) = reader
                    && !self.can_see_room_event(Some(viewer), joined_since, &stored)?
                {
                    continue;
                }
                let event = self.client_event(stored, reader)?;
                if passes(&query.filter, &event) {
                    chunk.push(event);
                    if chunk.len() >= limit {
                        break;
                    }
                }
            }
            if chunk.len() >= limit || exhausted {
                break;
            }
        }
        let state = match reader {
            Some((viewer, _)) => {
                self.bundle_aggregations_all(viewer, &mut chunk)?;
                self.lazy_members(viewer, room_id, &query.filter, &chunk)?
            }
            None => Vec::new(),
        };
        let end = (!exhausted || !chunk.is_empty()).then(|| history::token_of_point(cursor));
        Ok(MessagesPage { chunk, start: history::token_of_point(start), end, state })
    }

    /// With lazy loading, the member events of the senders on the page.
    fn lazy_members(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        filter: &RoomEventFilter,
        chunk: &[ClientEvent],
    ) -> Result<Vec<ClientEvent>> {
        if matches!(filter.lazy_load_options, LazyLoadOptions::Disabled) {
            return Ok(Vec::new());
        }
        let state = self.visible_state(viewer, room_id)?;
        let mut senders: Vec<&str> = chunk.iter().filter_map(ClientEvent::sender).collect();
        senders.sort_unstable();
        senders.dedup();
        let mut members = Vec::new();
        for sender in senders {
            if let Some(pdu) = self.state_pdu(&state, &StateEventType::RoomMember, sender)?
                && let Some(stored) = self.stored(&pdu.event_id)?
            {
                members.push(self.client_event(stored, None)?);
            }
        }
        Ok(members)
    }
}

trait EncodeKey {
    fn encode_key(&self) -> Vec<u8>;
}

impl EncodeKey for (String, u64) {
    fn encode_key(&self) -> Vec<u8> {
        estuary_storage::Key::encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn type_globs() {
        assert!(glob_match("m.room.*", "m.room.message"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("m.*.message", "m.room.message"));
        assert!(!glob_match("m.room.*", "m.reaction"));
        assert!(glob_match("m.room.message", "m.room.message"));
        assert!(!glob_match("m.room.message", "m.room.messages"));
    }
}
