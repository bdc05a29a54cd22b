//! Gaps in a room's DAG: an event from another server whose `prev_events`
//! this server never received. The origin is asked for the missing events
//! once (`/get_missing_events`, up to 20). A fetched event whose past is
//! still unknown gets the state before each unknown `prev_event` from the
//! origin (`/state_ids`, and `/event` for what is not here), and is placed
//! with their states resolved (`Rooms::receive_across_gap`). The event the
//! origin sent itself is refused if its past stays unknown, as Synapse
//! does: a server that will not divulge an event's past gets no state
//! taken on its word for it.
//!
//! An event whose auth events are unknown here first gets them from the
//! origin (`/event_auth`): kept as outliers, each checked against its own
//! auth events, those of another room dropped.

use estuary_events::Pdu;
use ruma::{
    OwnedEventId, RoomId, RoomVersionId, ServerName,
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_missing_events, get_room_state_ids},
    },
};

use super::{Federation, inbound::outcome_result};
use crate::rooms::{PrevWithState, Received};

/// Events asked for per `/get_missing_events`.
const MISSING_EVENTS_LIMIT: u64 = 20;
/// Unknown `prev_events` of one event whose state is asked for, at most.
const PREVS_WITH_STATE: usize = 5;
/// Events fetched one by one (`/event`) for one state, at most: a bigger
/// unknown state is not taken from a gap.
const STATE_EVENTS_FETCHED: usize = 500;
/// The longest auth chain taken from `/event_auth` for one event.
const AUTH_CHAIN_FETCHED: usize = 2_000;

impl Federation {
    /// Receive one event; when its `prev_events` are unknown, fetch the gap
    /// from the origin once and retry, and take the state of what is still
    /// missing from the origin.
    pub(super) async fn receive_with_gap_fill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        pdu: Pdu,
    ) -> std::result::Result<(), String> {
        let event_id = pdu.event_id.clone();
        self.fetch_missing_auth_events(origin, room_id, room_version, &pdu).await;
        let outcome = self.receive_one(room_id, pdu.clone()).await?;
        let Received::MissingPrevs(_) = outcome else { return outcome_result(outcome) };
        let extremities = self.rooms.room(room_id).ok().flatten().map(|r| r.extremities).unwrap_or_default();
        let mut request =
            get_missing_events::v1::Request::new(room_id.to_owned(), extremities, vec![event_id.clone()]);
        request.limit = MISSING_EVENTS_LIMIT.try_into().unwrap_or_default();
        let events = match self.ask(origin, request).await {
            Ok(response) => response.events,
            Err(reason) => {
                tracing::warn!(%origin, %room_id, "fetching missing events failed: {reason}");
                Vec::new()
            }
        };
        let mut gap = self.verified_in_room(origin, room_id, room_version, &events).await;
        gap.sort_by_key(|p| p.depth);
        for earlier in gap {
            let _ = self.receive_placing(origin, room_id, room_version, earlier).await;
        }
        outcome_result(self.receive_one(room_id, pdu).await?)
    }

    /// Receive an event, and when its `prev_events` are still unknown, ask
    /// the origin for the state before each of them.
    async fn receive_placing(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        pdu: Pdu,
    ) -> std::result::Result<Received, String> {
        self.fetch_missing_auth_events(origin, room_id, room_version, &pdu).await;
        let outcome = self.receive_one(room_id, pdu.clone()).await?;
        let Received::MissingPrevs(missing) = outcome else { return Ok(outcome) };
        let mut prevs = Vec::new();
        for prev in missing.into_iter().take(PREVS_WITH_STATE) {
            match self.prev_with_state(origin, room_id, room_version, prev).await {
                Ok(with_state) => prevs.push(with_state),
                Err(reason) => {
                    tracing::warn!(%origin, %room_id, "fetching the state at a missing event failed: {reason}");
                    return Ok(Received::MissingPrevs(Vec::new()));
                }
            }
        }
        self.rooms.receive_across_gap(room_id, pdu, prevs).await.map_err(|e| {
            tracing::error!(%room_id, "storing a received event failed: {e}");
            "internal error".to_owned()
        })
    }

    /// A missing event and the state before it, from `origin`.
    async fn prev_with_state(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        prev: OwnedEventId,
    ) -> std::result::Result<PrevWithState, String> {
        let ids =
            self.ask(origin, get_room_state_ids::v1::Request::new(prev.clone(), room_id.to_owned())).await?;
        if ids.pdu_ids.len() > STATE_EVENTS_FETCHED {
            return Err(format!("a state of {} events is too large to fetch", ids.pdu_ids.len()));
        }
        let mut state = Vec::with_capacity(ids.pdu_ids.len());
        for id in &ids.pdu_ids {
            match self.rooms.pdu(id).map_err(|e| e.to_string())? {
                Some(known) => state.push(known),
                None => state.push(self.fetch_event(origin, room_version, id.clone()).await?),
            }
        }
        let prev = self.fetch_event(origin, room_version, prev).await?;
        if prev.room_id != room_id || state.iter().any(|p| p.room_id != room_id) {
            return Err("events of another room".into());
        }
        Ok(PrevWithState { prev, state })
    }

    /// The auth events of `pdu` this server lacks, from `origin`'s
    /// `/event_auth`, kept as outliers. Failures are logged: the event is
    /// then refused for its unknown auth events, as before.
    async fn fetch_missing_auth_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        pdu: &Pdu,
    ) {
        match self.rooms.unknown_events(&pdu.auth_events) {
            Ok(missing) if !missing.is_empty() => {}
            _ => return,
        }
        let request = get_event_authorization::v1::Request::new(room_id.to_owned(), pdu.event_id.clone());
        let chain = match self.ask(origin, request).await {
            Ok(answer) if answer.auth_chain.len() <= AUTH_CHAIN_FETCHED => answer.auth_chain,
            Ok(answer) => {
                tracing::warn!(%origin, %room_id, "an auth chain of {} events is too long", answer.auth_chain.len());
                return;
            }
            Err(reason) => {
                tracing::warn!(%origin, %room_id, "fetching missing auth events failed: {reason}");
                return;
            }
        };
        let chain = self.verified_in_room(origin, room_id, room_version, &chain).await;
        if let Err(err) = self.rooms.receive_auth_chain(room_id, chain).await {
            tracing::warn!(%origin, %room_id, "storing fetched auth events failed: {err}");
        }
    }

    /// One event from `origin` (`/event`), verified.
    async fn fetch_event(
        &self,
        origin: &ServerName,
        room_version: &RoomVersionId,
        event_id: OwnedEventId,
    ) -> std::result::Result<Pdu, String> {
        let answer = self.ask(origin, get_event::v1::Request::new(event_id.clone())).await?;
        match self.verify_pdus(room_version, std::slice::from_ref(&answer.pdu)).await.pop() {
            Some(Ok(verified)) if verified.pdu.event_id == event_id => Ok(verified.pdu),
            Some(Ok(_)) => Err(format!("asked for {event_id}, got another event")),
            Some(Err((_, reason))) => Err(format!("{event_id} is invalid: {reason}")),
            None => Err(format!("no event {event_id}")),
        }
    }
}
