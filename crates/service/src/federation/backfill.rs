//! Backfill: history of a room from before this server's first event in it,
//! fetched from the room's other servers when a client pages back past
//! what is here (`/messages`). Each event is verified (signatures, hashes)
//! and authorised against the state before it (`Rooms::receive_history`);
//! the oldest one's state comes from the same server (`/state`).

use std::time::{Duration, Instant};

use estuary_core::Result;
use estuary_events::Pdu;
use ruma::{
    OwnedEventId, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::{backfill::get_backfill, event::get_room_state},
};

use super::Federation;
use crate::rooms::{BackfillPoint, Received, StateAt};

/// Events asked for per `/backfill` request.
const BACKFILL_LIMIT: u32 = 100;
/// Servers asked in turn before giving up for this request.
const SERVERS_TRIED: usize = 3;
/// How long one server has to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a backfill that brought nothing, the room's servers are not asked
/// again for this long: paging clients must not wait on a dead server
/// every time.
const MISS_COOLDOWN: Duration = Duration::from_secs(60);
/// Rooms remembered for the cooldown, at most.
const MISSES_KEPT: usize = 10_000;

/// Rooms whose last backfill brought nothing, and when.
#[derive(Default)]
pub struct Misses(std::sync::Mutex<std::collections::HashMap<ruma::OwnedRoomId, Instant>>);

impl Misses {
    fn recent(&self, room_id: &RoomId) -> bool {
        let misses = self.0.lock().expect("backfill misses");
        misses.get(room_id).is_some_and(|at| at.elapsed() < MISS_COOLDOWN)
    }

    fn record(&self, room_id: &RoomId, added: usize) {
        let mut misses = self.0.lock().expect("backfill misses");
        if added > 0 {
            misses.remove(room_id);
            return;
        }
        if misses.len() >= MISSES_KEPT {
            misses.retain(|_, at| at.elapsed() < MISS_COOLDOWN);
        }
        if misses.len() < MISSES_KEPT {
            misses.insert(room_id.to_owned(), Instant::now());
        }
    }
}

impl Federation {
    /// Fetch older history of the room from another server in it, when the
    /// room's history here stops short of its creation. Returns how many
    /// events were added; a failure of one server is logged and the next
    /// one asked.
    pub async fn backfill_from_servers(&self, room_id: &RoomId) -> Result<usize> {
        if !self.enabled() || self.backfill_misses.recent(room_id) {
            return Ok(0);
        }
        let Some(point) = self.rooms.backfill_point(room_id)? else { return Ok(0) };
        let added = self.backfill_point_from_servers(room_id, &point).await?;
        self.backfill_misses.record(room_id, added);
        Ok(added)
    }

    async fn backfill_point_from_servers(&self, room_id: &RoomId, point: &BackfillPoint) -> Result<usize> {
        let version = self.rooms.require_room(room_id)?.room_version;
        let mut servers = self.rooms.joined_servers(room_id)?;
        if let Some(creator) = room_id.server_name().filter(|s| *s != self.config.server_name) {
            servers.push(creator.to_owned());
        }
        servers.dedup();
        for server in servers.iter().take(SERVERS_TRIED) {
            match self.backfill_from(server, room_id, &version, point).await {
                Ok(added) => return Ok(added),
                Err(reason) => tracing::warn!(%server, %room_id, "backfill failed: {reason}"),
            }
        }
        Ok(0)
    }

    async fn backfill_from(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        point: &BackfillPoint,
    ) -> std::result::Result<usize, String> {
        let request = get_backfill::v1::Request::new(
            room_id.to_owned(),
            point.prev_events.clone(),
            UInt::from(BACKFILL_LIMIT),
        );
        let answer = self.ask(server, request).await?;
        let pdus = self.verified_in_room(server, room_id, version, &answer.pdus).await;
        if pdus.is_empty() {
            return Err("no usable events".into());
        }
        let state_at =
            match oldest_with_unknown_past(&pdus, |id| self.rooms.has_state_after(id).unwrap_or(false)) {
                Some(event_id) => Some(self.remote_state_at(server, room_id, version, event_id).await?),
                None => None,
            };
        let outcomes =
            self.rooms.receive_history(room_id, pdus, state_at).await.map_err(|e| e.to_string())?;
        Ok(outcomes.iter().filter(|(_, outcome)| *outcome == Received::Accepted).count())
    }

    /// The state before `event_id` as `server` gives it (`/state`), verified.
    async fn remote_state_at(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: OwnedEventId,
    ) -> std::result::Result<StateAt, String> {
        let request = get_room_state::v1::Request::new(event_id.clone(), room_id.to_owned());
        let answer = self.ask(server, request).await?;
        let state = self.verified_in_room(server, room_id, version, &answer.pdus).await;
        let auth_chain = self.verified_in_room(server, room_id, version, &answer.auth_chain).await;
        Ok(StateAt { event_id, state, auth_chain })
    }

    /// A signed request to `server`, bounded in time; failures as text.
    pub(super) async fn ask<R>(
        &self,
        server: &ServerName,
        request: R,
    ) -> std::result::Result<R::IncomingResponse, String>
    where
        R: ruma::api::OutgoingRequest<
                Authentication = ruma::api::federation::authentication::ServerSignatures,
            >,
        for<'a> R::PathBuilder: ruma::api::path_builder::PathBuilder<Input<'a> = ()>,
    {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.send(server, request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// The events that verify and belong to the room; the others are logged.
    pub(super) async fn verified_in_room(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        raw: &[Box<serde_json::value::RawValue>],
    ) -> Vec<Pdu> {
        let mut pdus = Vec::with_capacity(raw.len());
        for outcome in self.verify_pdus(version, raw).await {
            match outcome {
                Ok(verified) if verified.pdu.room_id == room_id => pdus.push(verified.pdu),
                Ok(verified) => {
                    tracing::warn!(%server, event_id = %verified.pdu.event_id, "dropped an event of another room");
                }
                Err((id, reason)) => tracing::warn!(%server, ?id, "dropped an invalid event: {reason}"),
            }
        }
        pdus
    }
}

/// The oldest event of a batch with a `prev_event` neither in the batch nor
/// known here with its state: the one whose state must be asked for.
fn oldest_with_unknown_past(pdus: &[Pdu], known: impl Fn(&ruma::EventId) -> bool) -> Option<OwnedEventId> {
    let in_batch: std::collections::HashSet<&ruma::EventId> = pdus.iter().map(|p| &*p.event_id).collect();
    let mut by_depth: Vec<&Pdu> = pdus.iter().collect();
    by_depth.sort_by_key(|p| p.depth);
    by_depth
        .into_iter()
        .find(|p| p.prev_events.iter().any(|prev| !in_batch.contains(&**prev) && !known(prev)))
        .map(|p| p.event_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(id: &str, depth: u64, prevs: &[&str]) -> Pdu {
        let json = serde_json::json!({
            "type": "m.room.message", "room_id": "!r:remote.test", "sender": "@bob:remote.test",
            "content": {}, "depth": depth, "origin_server_ts": 1,
            "prev_events": prevs, "auth_events": [],
        });
        let object = serde_json::from_value(json).unwrap();
        Pdu::from_json(ruma::EventId::parse(id).unwrap(), None, object).unwrap()
    }

    #[test]
    fn the_oldest_event_with_an_unknown_past_needs_state() {
        let batch = [pdu("$c", 5, &["$b"]), pdu("$b", 4, &["$a"]), pdu("$a", 3, &["$gap"])];
        let known = |id: &ruma::EventId| id.as_str() == "$known";
        assert_eq!(oldest_with_unknown_past(&batch, known).unwrap(), "$a");
        let reaching_known = [pdu("$b", 4, &["$a"]), pdu("$a", 3, &["$known"])];
        assert_eq!(oldest_with_unknown_past(&reaching_known, known), None);
    }
}
