//! A room's history from before its first event here, fetched from other
//! servers with `/backfill` (a user joins a room with years of history and
//! pages back into it). Backfilled events go through the append path in
//! history mode (`Staging::history`): authorised against the state before
//! them, stored with their state snapshots, but kept out of the live
//! stream, the current state and the membership indexes. They are ordered
//! in `roomidbackfill_eventid`, below the room's live timeline.
//!
//! `/messages` walks both as one line: live positions count up from 1, and
//! history orders count down from 0 (order `-k` for the k-th backfilled
//! event, newest first). A token is the point just before an order: `s<N>`
//! for N ≥ 1 and `b<K>` for the point `1 - K` (so `b1` is the boundary).

use std::sync::Arc;

use estuary_core::{Error, Result};
use estuary_events::Pdu;
use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId,
    events::{StateEventType, TimelineEventType},
};

use super::{
    Rooms,
    remote::{Received, Unlisted},
    staging::{FanOut, Staging},
    state::StateMap,
};
use crate::storage_error::StorageResultExt;

/// Where to backfill from: the oldest event here, and those of its
/// `prev_events` this server has no state for.
pub struct BackfillPoint {
    pub oldest: OwnedEventId,
    pub prev_events: Vec<OwnedEventId>,
}

/// The state a remote server gave for the oldest event of a backfilled
/// batch (`/state?event_id=`), whose `prev_events` are unknown here.
pub struct StateAt {
    pub event_id: OwnedEventId,
    pub state: Vec<Pdu>,
    pub auth_chain: Vec<Pdu>,
}

/// A `prev_event` this server never received and could not fetch the gap
/// to: the event itself and the state before it, as a remote server gave
/// them (`/state_ids`, `/event`).
pub struct PrevWithState {
    pub prev: Pdu,
    pub state: Vec<Pdu>,
}

/// A point in a room's timeline for `/messages`: just before `order`.
pub(super) fn point_of_token(token: &str) -> Result<i64> {
    let invalid = || Error::invalid_param("Invalid pagination token");
    if let Some(history) = token.strip_prefix('b') {
        let k: i64 = history.parse().map_err(|_| invalid())?;
        return if k >= 1 { Ok(1 - k) } else { Err(invalid()) };
    }
    let live: u64 = token.strip_prefix('s').and_then(|n| n.parse().ok()).ok_or_else(invalid)?;
    i64::try_from(live).map_err(|_| invalid())
}

pub(super) fn token_of_point(point: i64) -> String {
    if point >= 1 { format!("s{point}") } else { format!("b{}", 1 - point) }
}

impl Rooms {
    /// The highest history order of the room (0 without history).
    pub(super) fn oldest_history_order(&self, room_id: &RoomId) -> Result<u64> {
        let prefix = (room_id.to_string(),);
        let prefix = estuary_storage::Key::encode(&prefix);
        let last = self.roomidbackfill_eventid.scan_from(&prefix, None, true, 1).db()?;
        Ok(last.first().map_or(0, |((_, order), _)| *order))
    }

    /// Whether this server has the state after the event (it is in the
    /// room's timeline or history, not just known as an outlier).
    pub fn has_state_after(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.stored(event_id)?.is_some_and(|stored| stored.state_after != 0))
    }

    /// Where history is missing: the room's oldest event here, when some of
    /// its `prev_events` have no state here. `None` once the room's
    /// history is complete (its create event, or a known past).
    pub fn backfill_point(&self, room_id: &RoomId) -> Result<Option<BackfillPoint>> {
        let Some(oldest) = self.oldest_event(room_id)? else { return Ok(None) };
        let Some(pdu) = self.pdu(&oldest)? else { return Ok(None) };
        let mut prev_events = Vec::new();
        for prev in &pdu.prev_events {
            if !self.has_state_after(prev)? {
                prev_events.push(prev.clone());
            }
        }
        Ok((!prev_events.is_empty()).then_some(BackfillPoint { oldest, prev_events }))
    }

    /// The oldest event of the room's history, else of its live timeline.
    fn oldest_event(&self, room_id: &RoomId) -> Result<Option<OwnedEventId>> {
        let prefix = estuary_storage::Key::encode(&(room_id.to_string(),));
        let mut rows = self.roomidbackfill_eventid.scan_from(&prefix, None, true, 1).db()?;
        if rows.is_empty() {
            rows = self.roomidstream_eventid.scan_from(&prefix, None, false, 1).db()?;
        }
        Ok(rows.pop().and_then(|(_, id)| EventId::parse(id).ok()))
    }

    /// Store backfilled events (any order) under the room's lock: oldest
    /// first, each authorised against the state before it, which is the
    /// state after its `prev_events` or, for the one `state_at` names, the
    /// state the remote server gave. Events whose past is unknown are left
    /// out; those refused by the rules are not stored.
    pub async fn receive_history(
        &self,
        room_id: &RoomId,
        mut pdus: Vec<Pdu>,
        state_at: Option<StateAt>,
    ) -> Result<Vec<(OwnedEventId, Received)>> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let mut staging = self.staging(Some(room))?;
        staging.history = true;
        let mut supplied = match state_at {
            Some(given) => {
                let state = self.stage_given_state(&mut staging, room_id, &given.state, &given.auth_chain)?;
                Some((given.event_id, state))
            }
            None => None,
        };
        pdus.sort_by_key(|pdu| pdu.depth);
        let mut outcomes = Vec::with_capacity(pdus.len());
        for pdu in pdus {
            let event_id = pdu.event_id.clone();
            let state = supplied.take_if(|(id, _)| *id == event_id).map(|(_, state)| state);
            let outcome = self.stage_history(&mut staging, pdu, state)?;
            if let Received::Rejected(reason) = &outcome {
                tracing::info!(%room_id, %event_id, "backfilled event refused: {reason}");
            }
            outcomes.push((event_id, outcome));
        }
        self.persist(staging).await?;
        Ok(outcomes)
    }

    /// Receive an event across a gap `get_missing_events` did not fill: each
    /// unknown `prev_event` is kept outside the timeline with the state a
    /// remote server gave for it, and the event is then placed as usual,
    /// its state before resolved from its `prev_events`' states.
    pub async fn receive_across_gap(
        &self,
        room_id: &RoomId,
        pdu: Pdu,
        prevs: Vec<PrevWithState>,
    ) -> Result<Received> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let version = room.room_version.clone();
        let mut staging = self.staging(Some(room))?;
        for PrevWithState { prev, state } in prevs {
            if !pdu.prev_events.contains(&prev.event_id)
                || self.staged_pdu(&staging, &prev.event_id)?.is_some()
            {
                continue;
            }
            if prev.room_id != room_id {
                return Err(Error::forbidden("The remote server sent events of another room"));
            }
            let state = self.without_refused_state(&staging, &version, state)?;
            let (before_id, before) = self.stage_given_state(&mut staging, room_id, &state, &[])?;
            // The state is the other server's word; the event must still be
            // allowed by it and by its own auth events (of this room).
            let refused = self.auth_refusal(&staging, &prev, &version, &before)?;
            if let Some(reason) = &refused {
                tracing::info!(%room_id, event_id = %prev.event_id, "event before a gap refused: {reason}");
            }
            let unlisted = if refused.is_some() { Unlisted::Rejected } else { Unlisted::BeforeGap };
            self.stage_unlisted(&mut staging, &prev, before_id, unlisted)?;
        }
        let outcome = self.stage_remote(&mut staging, pdu, FanOut::None)?;
        self.persist(staging).await?;
        Ok(outcome)
    }

    /// A state another server gave, where an event its own auth events
    /// (all known here) refuse counts for nothing, as a rejected event: a
    /// forged power level slipped into it gives way to the one it claimed
    /// to replace (its auth event of the same type and key), else to the
    /// room's current one. Power levels and join rules whose auth events
    /// are not all here are treated so too (a forger could name an unknown
    /// one to escape the check); other events that cannot be judged stay.
    fn without_refused_state(
        &self,
        staging: &Staging,
        version: &RoomVersionId,
        state: Vec<Pdu>,
    ) -> Result<Vec<Pdu>> {
        let mut kept: Vec<Pdu> = Vec::with_capacity(state.len());
        for pdu in state {
            let mut auth_events = Vec::with_capacity(pdu.auth_events.len());
            for id in &pdu.auth_events {
                auth_events.push(self.staged_accepted_pdu(staging, id)?);
            }
            let all_known = auth_events.iter().all(Option::is_some);
            let verdict = match pdu.kind {
                TimelineEventType::RoomCreate => Ok(()),
                _ if all_known => self.check_against_auth_events(staging, &pdu, version)?,
                TimelineEventType::RoomPowerLevels | TimelineEventType::RoomJoinRules => {
                    Err("some of its auth events are unknown here".to_owned())
                }
                _ => Ok(()),
            };
            let Err(reason) = verdict else {
                kept.push(pdu);
                continue;
            };
            tracing::info!(room_id = %pdu.room_id, event_id = %pdu.event_id, "a state event another server gave is refused: {reason}");
            let kind = StateEventType::from(pdu.kind.to_string());
            let state_key = pdu.state_key.as_deref().unwrap_or_default();
            let replaced = match auth_events
                .into_iter()
                .flatten()
                .find(|a| a.kind == pdu.kind && a.state_key == pdu.state_key)
            {
                Some(auth_event) => Some(auth_event),
                None => self.staged_state_pdu(staging, &kind, state_key)?,
            };
            kept.extend(replaced);
        }
        Ok(kept)
    }

    /// The state a remote server gave: its events (and their auth chain)
    /// kept as outliers, the state as one snapshot. Refused whole when any
    /// event is of another room.
    pub(super) fn stage_given_state(
        &self,
        staging: &mut Staging,
        room_id: &RoomId,
        state: &[Pdu],
        auth_chain: &[Pdu],
    ) -> Result<(u64, Arc<StateMap>)> {
        for pdu in auth_chain.iter().chain(state) {
            if pdu.room_id != room_id {
                return Err(Error::forbidden("The remote server sent events of another room"));
            }
            self.stage_outlier(staging, pdu)?;
        }
        self.stage_state_snapshot(staging, state)
    }

    fn stage_history(
        &self,
        staging: &mut Staging,
        pdu: Pdu,
        supplied: Option<(u64, Arc<StateMap>)>,
    ) -> Result<Received> {
        let room = staging.room.clone().ok_or_else(|| Error::not_found("Unknown room"))?;
        if pdu.room_id != self.room_of(staging)? {
            return Ok(Received::Rejected("the event belongs to another room".into()));
        }
        let staged = staging.staged.iter().any(|s| s.pdu.event_id == pdu.event_id);
        if staged || self.has_state_after(&pdu.event_id)? {
            return Ok(Received::Known);
        }
        let mut snapshots = Vec::with_capacity(pdu.prev_events.len());
        let mut missing = Vec::new();
        for prev in &pdu.prev_events {
            match staging.staged.iter().rev().find(|s| s.pdu.event_id == *prev) {
                Some(staged) => snapshots.push(staged.stored.state_after),
                None => match self.stored(prev)?.filter(|stored| stored.state_after != 0) {
                    Some(stored) => snapshots.push(stored.state_after),
                    None => missing.push(prev.clone()),
                },
            }
        }
        // The given state stands only for a past that is not here.
        let before = match (supplied, missing.is_empty()) {
            (Some(state), false) => state,
            (_, true) => self.state_after_all(staging, &room.room_version, snapshots)?,
            (None, false) => return Ok(Received::MissingPrevs(missing)),
        };
        let version = room.room_version.clone();
        if let Some(reason) = self.auth_refusal(staging, &pdu, &version, &before.1)? {
            return Ok(Received::Rejected(reason));
        }
        // Snapshot 0 is the empty state before a create event.
        let before_id = (before.0 != 0).then_some(before.0);
        self.stage_event(staging, pdu, None, &version, (before_id, before.1), FanOut::None)?;
        Ok(Received::Accepted)
    }

    /// A snapshot holding exactly the given state events.
    fn stage_state_snapshot(&self, staging: &mut Staging, state: &[Pdu]) -> Result<(u64, Arc<StateMap>)> {
        let mut changes = Vec::with_capacity(state.len());
        for pdu in state {
            let Some(state_key) = &pdu.state_key else { continue };
            let kind = StateEventType::from(pdu.kind.to_string());
            let key = self.short.state_key_short_or_create(&kind, state_key, &mut staging.batch)?;
            let event = self.staged_event_short(staging, &pdu.event_id)?;
            changes.push((key, event));
        }
        self.stage_snapshot(staging, None, changes, Vec::new())
    }

    /// Up to `limit` event IDs of the room's timeline and history, as one
    /// line, from the point `point`: older ones first when `backwards`.
    /// Each comes with its order.
    pub(super) fn timeline_rows(
        &self,
        room_id: &RoomId,
        point: i64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(i64, String)>> {
        let room_key = room_id.to_string();
        let prefix = estuary_storage::Key::encode(&(room_key.clone(),));
        let mut rows = Vec::new();
        let live = |from: u64, reverse: bool, n: usize| {
            let start = estuary_storage::Key::encode(&(room_key.clone(), from));
            self.roomidstream_eventid.scan_from(&prefix, Some(&start), reverse, n).db()
        };
        let history = |from: u64, reverse: bool, n: usize| {
            let start = estuary_storage::Key::encode(&(room_key.clone(), from));
            self.roomidbackfill_eventid.scan_from(&prefix, Some(&start), reverse, n).db()
        };
        if backwards {
            // Live events before the point, newest first, then history.
            if point > 1 {
                for ((_, position), id) in live(point as u64 - 1, true, limit)? {
                    rows.push((position as i64, id));
                }
            }
            if rows.len() < limit {
                let first = (1 - point.min(0)) as u64;
                for ((_, order), id) in history(first, false, limit - rows.len())? {
                    rows.push((-(order as i64), id));
                }
            }
        } else {
            // History from the point, oldest first, then live events.
            if point <= 0 {
                for ((_, order), id) in history((-point) as u64, true, limit)? {
                    if order >= 1 {
                        rows.push((-(order as i64), id));
                    }
                }
            }
            if rows.len() < limit {
                for ((_, position), id) in live(point.max(0) as u64, false, limit - rows.len())? {
                    rows.push((position as i64, id));
                }
            }
        }
        Ok(rows)
    }
}
