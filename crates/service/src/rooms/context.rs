//! `/context` and `/timestamp_to_event`.

use estuary_core::{Error, Result};
use estuary_storage::Key;
use ruma::{DeviceId, EventId, OwnedEventId, RoomId, UserId, api::client::filter::RoomEventFilter};

use super::{ClientEvent, Direction, MessagesQuery, Rooms};
use crate::storage_error::StorageResultExt;

pub struct Context {
    pub start: Option<String>,
    pub end: Option<String>,
    pub events_before: Vec<ClientEvent>,
    pub event: ClientEvent,
    pub events_after: Vec<ClientEvent>,
    pub state: Vec<ClientEvent>,
}

impl Rooms {
    /// Events around `event_id`; `limit` is shared by both sides.
    pub fn context(
        &self,
        viewer: &UserId,
        device: Option<&DeviceId>,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: RoomEventFilter,
    ) -> Result<Context> {
        self.require_readable(viewer, room_id)?;
        let not_found = || Error::not_found("Event not found");
        let stored = self.stored(event_id)?.filter(|s| s.room_id == room_id).ok_or_else(not_found)?;
        if !self.can_see_event(Some(viewer), &stored)? {
            return Err(not_found());
        }
        let limit = limit.min(200);
        let before_limit = limit / 2;
        let after_limit = limit - before_limit;
        let page = |dir, from: u64, limit| -> Result<super::MessagesPage> {
            if limit == 0 {
                return Ok(super::MessagesPage {
                    chunk: vec![],
                    start: format!("s{from}"),
                    end: None,
                    state: vec![],
                });
            }
            let query = MessagesQuery {
                from: Some(format!("s{from}")),
                to: None,
                dir,
                limit,
                filter: filter.clone(),
            };
            self.messages(viewer, device, room_id, query)
        };
        let before = page(Direction::Backward, stored.stream, before_limit)?;
        let after = page(Direction::Forward, stored.stream + 1, after_limit)?;
        let mut event = self.client_event(stored.clone(), Some((viewer, device)))?;
        self.bundle_aggregations(viewer, &mut event)?;
        // With lazy loading, only the members who sent the returned events.
        let lazy = !matches!(filter.lazy_load_options, ruma::api::client::filter::LazyLoadOptions::Disabled);
        let senders: std::collections::BTreeSet<&str> = (before.chunk.iter())
            .chain([&event])
            .chain(after.chunk.iter())
            .filter_map(ClientEvent::sender)
            .collect();
        let state = self.state.load(stored.state_after)?;
        let state = self
            .state_pdus(&state)?
            .iter()
            .filter(|pdu| {
                let member = pdu.kind == ruma::events::TimelineEventType::RoomMember;
                !lazy || !member || pdu.state_key.as_deref().is_some_and(|k| senders.contains(k))
            })
            .filter_map(|pdu| self.stored(&pdu.event_id).transpose())
            .map(|s| self.client_event(s?, None))
            .collect::<Result<_>>()?;
        Ok(Context {
            start: Some(before.end.unwrap_or_else(|| format!("s{}", stored.stream))),
            end: Some(after.end.unwrap_or_else(|| format!("s{}", stored.stream + 1))),
            events_before: before.chunk,
            event,
            events_after: after.chunk,
            state,
        })
    }

    /// The visible event closest to `ts` in direction `dir`.
    pub fn event_at_timestamp(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        ts: u64,
        dir: Direction,
    ) -> Result<(OwnedEventId, u64)> {
        self.require_readable(viewer, room_id)?;
        self.event_near_timestamp(room_id, ts, dir, |stored| self.can_see_event(Some(viewer), stored))
    }

    /// The event closest to `ts` in direction `dir` that `visible` lets
    /// through (among the next 100 by time).
    pub fn event_near_timestamp(
        &self,
        room_id: &RoomId,
        ts: u64,
        dir: Direction,
        visible: impl Fn(&super::StoredPdu) -> Result<bool>,
    ) -> Result<(OwnedEventId, u64)> {
        let prefix = (room_id.to_string(),).encode();
        let backwards = dir == Direction::Backward;
        let from = if backwards {
            (room_id.to_string(), ts, u64::MAX).encode()
        } else {
            (room_id.to_string(), ts, 0).encode()
        };
        let rows = self.roomidts_eventid.scan_from(&prefix, Some(&from), backwards, 100).db()?;
        for ((_, event_ts, _), event_id) in rows {
            let Ok(event_id) = EventId::parse(&event_id) else { continue };
            if let Some(stored) = self.stored(&event_id)?
                && visible(&stored)?
            {
                return Ok((event_id, event_ts));
            }
        }
        Err(Error::not_found("No event found in that direction"))
    }
}
