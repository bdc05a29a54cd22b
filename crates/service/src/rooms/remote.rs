//! Events from other servers enter the same append path as local ones
//! (`stage_event`, then `persist`), after their own checks: auth against
//! their auth events and against the state before them (resolved from
//! their `prev_events` when the DAG forked), then a soft-fail check against
//! the current state. A room with several forward extremities has as its
//! current state the resolution of their states.
//!
//! Also what a joining server asks of a resident one: the `make_join`
//! template, and the state and auth chain at an event.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use estuary_core::{Error, Result};
use estuary_events::{Pdu, PduTemplate, auth, builder::event_object, resolve};
use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::json;

use super::{
    RoomRecord, Rooms, StoredPdu,
    append::unsupported_version,
    staging::{FanOut, Staging},
    state::StateMap,
};

/// What became of a received PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Accepted,
    /// Already stored (a retried transaction).
    Known,
    /// Valid against the state before it but not against the current state:
    /// not added to the room (the spec's soft failure).
    SoftFailed(String),
    /// Refused by the authorization rules (or malformed).
    Rejected(String),
    /// Some `prev_events` are unknown: fetch them first.
    MissingPrevs(Vec<OwnedEventId>),
}

/// Why a received event is kept outside the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unlisted {
    /// Refused by the rules: its state after is the state before.
    Rejected,
    /// Allowed by the state before it, not by the current state.
    SoftFailed,
    /// An event before a gap, allowed by the state another server gave.
    BeforeGap,
}

/// How a received event's `prev_events` are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PrevEvents {
    /// Each must be known here (else the caller fetches the gap).
    MustBeKnown,
    /// Our own join from `send_join`: the state the resident server returned
    /// stands for them, and the room's extremities are set to them.
    StandForState,
}

impl Rooms {
    /// Receive verified PDUs of one room, in order, under the room's lock;
    /// the accepted ones are persisted in one commit.
    pub async fn receive(
        &self,
        room_id: &RoomId,
        pdus: Vec<Pdu>,
        fan_out: FanOut,
    ) -> Result<Vec<(OwnedEventId, Received)>> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let mut staging = self.staging(Some(room))?;
        let mut outcomes = Vec::with_capacity(pdus.len());
        for pdu in pdus {
            let event_id = pdu.event_id.clone();
            let outcome = self.stage_remote(&mut staging, pdu, fan_out.clone())?;
            if let Received::Rejected(reason) | Received::SoftFailed(reason) = &outcome {
                tracing::info!(%room_id, %event_id, "received event not added: {reason}");
            }
            outcomes.push((event_id, outcome));
        }
        self.persist(staging).await?;
        Ok(outcomes)
    }

    /// Check a received PDU and stage it if it passes.
    pub(super) fn stage_remote(&self, staging: &mut Staging, pdu: Pdu, fan_out: FanOut) -> Result<Received> {
        self.stage_remote_checked(staging, pdu, fan_out, PrevEvents::MustBeKnown)
    }

    pub(super) fn stage_remote_checked(
        &self,
        staging: &mut Staging,
        pdu: Pdu,
        fan_out: FanOut,
        prev_events: PrevEvents,
    ) -> Result<Received> {
        let room = staging.room.clone().ok_or_else(|| Error::not_found("Unknown room"))?;
        if pdu.room_id != self.room_of(staging)? {
            return Ok(Received::Rejected("the event belongs to another room".into()));
        }
        if self.staged_pdu(staging, &pdu.event_id)?.is_some() {
            return Ok(Received::Known);
        }
        if pdu.kind == TimelineEventType::RoomCreate {
            return Ok(Received::Rejected("the room already has a create event".into()));
        }
        let mut missing = Vec::new();
        for prev in pdu.prev_events.iter().filter(|_| prev_events == PrevEvents::MustBeKnown) {
            if self.staged_pdu(staging, prev)?.is_none() {
                missing.push(prev.clone());
            }
        }
        if !missing.is_empty() {
            return Ok(Received::MissingPrevs(missing));
        }
        let version = room.room_version.clone();
        let (before_id, before) = self.state_before(staging, &room, &pdu)?;
        if let Some(reason) = self.auth_refusal(staging, &pdu, &version, &before)? {
            self.stage_unlisted(staging, &pdu, before_id, Unlisted::Rejected)?;
            return Ok(Received::Rejected(reason));
        }
        if before_id != room.state
            && let Err(reason) = self.check_against(staging, &pdu, &version, &staging.state.clone())?
        {
            self.stage_unlisted(staging, &pdu, before_id, Unlisted::SoftFailed)?;
            return Ok(Received::SoftFailed(format!("not allowed by the current state: {reason}")));
        }
        let (event_id, depth) = (pdu.event_id.clone(), pdu.depth);
        let covered = self.covered_events(staging, &pdu.prev_events)?;
        let after = self.stage_event(staging, pdu, None, &version, (Some(before_id), before), fan_out)?;
        let mut extremities: Vec<OwnedEventId> =
            room.extremities.iter().filter(|e| !covered.contains(*e)).cloned().collect();
        let (state_id, state) = if extremities.is_empty() {
            after
        } else {
            // The event left other branches open: the room's state is the
            // resolution of theirs and its own.
            self.resolve_snapshots(staging, &version, &[room.state, after.0])?
        };
        extremities.push(event_id);
        staging.state = state;
        staging.room = Some(RoomRecord {
            room_version: version,
            state: state_id,
            extremities,
            depth: room.depth.max(depth),
        });
        Ok(Received::Accepted)
    }

    /// The events an event with these `prev_events` follows: them, and
    /// through any kept outside the timeline (soft-failed, rejected), their
    /// own `prev_events`, so that an extremity only such events followed
    /// stops being one.
    fn covered_events(&self, staging: &Staging, prevs: &[OwnedEventId]) -> Result<HashSet<OwnedEventId>> {
        let mut covered: HashSet<OwnedEventId> = prevs.iter().cloned().collect();
        let mut walk: Vec<OwnedEventId> = prevs.to_vec();
        // Bounded: a long run of unlisted events is cut short.
        for _ in 0..100 {
            let Some(id) = walk.pop() else { break };
            let unlisted = match staging.unlisted.contains_key(&id) {
                true => true,
                false => {
                    self.stored(&id)?.is_some_and(|s| s.stream == 0 && (s.rejected || s.state_after != 0))
                }
            };
            if !unlisted {
                continue;
            }
            if let Some(pdu) = self.staged_pdu(staging, &id)? {
                for prev in pdu.prev_events {
                    if covered.insert(prev.clone()) {
                        walk.push(prev);
                    }
                }
            }
        }
        Ok(covered)
    }

    /// Keep a received event outside the timeline: soft-failed (its state
    /// after as if accepted, so events after it can be placed) or rejected
    /// (its state after the same as before). It changes neither the room's
    /// state nor its extremities, and nobody sees it.
    pub(super) fn stage_unlisted(
        &self,
        staging: &mut Staging,
        pdu: &Pdu,
        before_id: u64,
        unlisted: Unlisted,
    ) -> Result<()> {
        let rejected = unlisted == Unlisted::Rejected;
        let short = self.staged_event_short(staging, &pdu.event_id)?;
        let after_id = match (&pdu.state_key, rejected) {
            (Some(state_key), false) => {
                let kind = StateEventType::from(pdu.kind.to_string());
                let key = self.short.state_key_short_or_create(&kind, state_key, &mut staging.batch)?;
                let parent = (before_id != 0).then_some(before_id);
                self.stage_snapshot(staging, parent, vec![(key, short)], Vec::new())?.0
            }
            _ => before_id,
        };
        let stored = StoredPdu {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            json: pdu.json.clone().into(),
            stream: 0,
            state_before: before_id,
            state_after: after_id,
            txn: None,
            rejected,
            state_from_peer: unlisted == Unlisted::BeforeGap,
        };
        self.put_stored(&mut staging.batch, stored);
        staging.note_event(short, pdu);
        staging.unlisted.insert(pdu.event_id.clone(), (after_id, rejected));
        Ok(())
    }

    /// The room being staged (from its create event's room).
    pub(super) fn room_of(&self, staging: &Staging) -> Result<ruma::OwnedRoomId> {
        let create = self
            .staged_state_pdu(staging, &StateEventType::RoomCreate, "")?
            .ok_or_else(|| Error::internal("staged room without a create event"))?;
        Ok(create.room_id)
    }

    /// Why the authorization rules refuse a received event, by its own auth
    /// events or by the state before it; `None` when they allow it.
    pub(super) fn auth_refusal(
        &self,
        staging: &Staging,
        pdu: &Pdu,
        version: &RoomVersionId,
        before: &StateMap,
    ) -> Result<Option<String>> {
        if let Err(reason) = self.check_against_auth_events(staging, pdu, version)? {
            return Ok(Some(reason));
        }
        // A redaction names its target by ID only: one in another room is a
        // forgery (no server may redact across rooms), whatever the rules say.
        if pdu.kind == TimelineEventType::RoomRedaction
            && let Some(target) =
                pdu.redacts.as_ref().map(|id| self.staged_pdu(staging, id)).transpose()?.flatten()
            && target.room_id != pdu.room_id
        {
            return Ok(Some("it redacts an event of another room".to_owned()));
        }
        let refused = self.check_against(staging, pdu, version, before)?.err();
        Ok(refused.map(|reason| format!("not allowed by the state before it: {reason}")))
    }

    /// Which of these events are not stored here at all.
    pub fn unknown_events(&self, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
        let mut unknown = Vec::new();
        for id in event_ids {
            if self.stored(id)?.is_none() {
                unknown.push(id.clone());
            }
        }
        Ok(unknown)
    }

    /// Events of another server's auth chain (`/event_auth`), kept as
    /// outliers, oldest first, each only if its own auth events allow it:
    /// they let later events be checked against their auth events.
    pub async fn receive_auth_chain(&self, room_id: &RoomId, mut chain: Vec<Pdu>) -> Result<()> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let version = room.room_version.clone();
        let mut staging = self.staging(Some(room))?;
        chain.sort_by_key(|pdu| pdu.depth);
        for pdu in chain {
            if pdu.room_id != room_id || self.staged_pdu(&staging, &pdu.event_id)?.is_some() {
                continue;
            }
            let allowed = match pdu.kind {
                // A create event has no auth events: the room's own is known.
                TimelineEventType::RoomCreate => Err("a second create event".to_owned()),
                _ => self.check_against_auth_events(&staging, &pdu, &version)?,
            };
            match allowed {
                Ok(()) => self.stage_outlier(&mut staging, &pdu)?,
                Err(reason) => {
                    tracing::info!(%room_id, event_id = %pdu.event_id, "fetched auth event refused: {reason}")
                }
            }
        }
        self.persist(staging).await?;
        Ok(())
    }

    /// The authorization rules with the event's own auth events as state;
    /// each must be known and belong to the same room.
    pub(super) fn check_against_auth_events(
        &self,
        staging: &Staging,
        pdu: &Pdu,
        version: &RoomVersionId,
    ) -> Result<std::result::Result<(), String>> {
        let rules = version.rules().ok_or_else(unsupported_version)?;
        let mut auth_state = HashMap::new();
        for id in &pdu.auth_events {
            let Some(event) = self.staged_accepted_pdu(staging, id)? else {
                return Ok(Err(format!("unknown or rejected auth event {id}")));
            };
            if event.room_id != pdu.room_id {
                return Ok(Err(format!("auth event {id} is in another room")));
            }
            if let Some(key) = &event.state_key {
                auth_state.insert((StateEventType::from(event.kind.to_string()), key.clone()), event);
            }
        }
        // From room version 12 the create event is no auth event: the room
        // ID names it.
        if rules.authorization.room_create_event_id_as_room_id
            && let Some(create) = self.staged_state_pdu(staging, &StateEventType::RoomCreate, "")?
        {
            auth_state.insert((StateEventType::RoomCreate, String::new()), create);
        }
        let fetch_event = |id: &EventId| {
            self.staged_accepted_pdu(staging, id).ok().flatten().filter(|event| event.room_id == pdu.room_id)
        };
        Ok(auth::check(pdu, &rules.authorization, fetch_event, |t, k| {
            auth_state.get(&(t.clone(), k.to_owned())).cloned()
        }))
    }

    /// The authorization rules against a state snapshot.
    fn check_against(
        &self,
        staging: &Staging,
        pdu: &Pdu,
        version: &RoomVersionId,
        state: &StateMap,
    ) -> Result<std::result::Result<(), String>> {
        let rules = version.rules().ok_or_else(unsupported_version)?;
        let fetch_event = |id: &EventId| {
            self.staged_accepted_pdu(staging, id).ok().flatten().filter(|event| event.room_id == pdu.room_id)
        };
        let fetch_state = |t: &StateEventType, k: &str| {
            let key = self.short.state_key_short(t, k).ok().flatten()?;
            let id = self.staged_event_id(staging, *state.get(&key)?).ok().flatten()?;
            self.staged_pdu(staging, &id).ok().flatten()
        };
        Ok(auth::check(pdu, &rules.authorization, fetch_event, fetch_state))
    }

    /// The state before an event: the current state when it extends every
    /// forward extremity, else the resolution of its `prev_events`' states.
    fn state_before(
        &self,
        staging: &mut Staging,
        room: &RoomRecord,
        pdu: &Pdu,
    ) -> Result<(u64, Arc<StateMap>)> {
        let (mut prevs, mut extremities) = (pdu.prev_events.clone(), room.extremities.clone());
        prevs.sort();
        extremities.sort();
        if prevs == extremities {
            return Ok((room.state, staging.state.clone()));
        }
        let mut snapshots = Vec::with_capacity(prevs.len());
        for prev in &prevs {
            snapshots.push(self.staged_state_after(staging, prev)?);
        }
        self.state_after_all(staging, &room.room_version, snapshots)
    }

    /// The state after all of `snapshots` (the states after an event's
    /// `prev_events`): the one, their resolution when they differ, empty
    /// when there is none (before a create event).
    pub(super) fn state_after_all(
        &self,
        staging: &mut Staging,
        version: &RoomVersionId,
        mut snapshots: Vec<u64>,
    ) -> Result<(u64, Arc<StateMap>)> {
        snapshots.sort_unstable();
        snapshots.dedup();
        match snapshots.as_slice() {
            [] => Ok((0, Arc::new(StateMap::new()))),
            [one] => Ok((*one, self.state.load(*one)?)),
            _ => self.resolve_snapshots(staging, version, &snapshots),
        }
    }

    /// The state snapshot after a staged or stored event.
    fn staged_state_after(&self, staging: &Staging, event_id: &EventId) -> Result<u64> {
        if let Some(staged) = staging.staged.iter().rev().find(|s| s.pdu.event_id == event_id) {
            return Ok(staged.stored.state_after);
        }
        if let Some((after, _)) = staging.unlisted.get(event_id) {
            return Ok(*after);
        }
        self.stored(event_id)?
            .map(|stored| stored.state_after)
            .ok_or_else(|| Error::internal(format!("no state after {event_id}")))
    }

    /// State resolution v2 over several snapshots, stored as a new one.
    pub(super) fn resolve_snapshots(
        &self,
        staging: &mut Staging,
        version: &RoomVersionId,
        snapshots: &[u64],
    ) -> Result<(u64, Arc<StateMap>)> {
        let mut states = Vec::with_capacity(snapshots.len());
        for id in snapshots {
            let mut map = ruma::state_res::StateMap::new();
            for (key, event) in self.state.load(*id)?.iter() {
                let (Some((kind, state_key)), Some(event_id)) =
                    (self.short.state_key_of(*key)?, self.staged_event_id(staging, *event)?)
                else {
                    continue;
                };
                map.insert((StateEventType::from(kind), state_key), event_id);
            }
            states.push(map);
        }
        let resolved = resolve::resolve(version, &states, |id| self.staged_pdu(staging, id).ok().flatten())
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        let parent = snapshots[0];
        let parent_state = self.state.load(parent)?;
        let mut full = StateMap::new();
        for ((kind, state_key), event_id) in &resolved {
            let key = self.short.state_key_short_or_create(kind, state_key, &mut staging.batch)?;
            let event = self.staged_event_short(staging, event_id)?;
            full.insert(key, event);
        }
        let changes: Vec<(u64, u64)> =
            full.iter().filter(|(k, v)| parent_state.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
        let removed: Vec<u64> = parent_state.keys().filter(|k| !full.contains_key(k)).copied().collect();
        self.stage_snapshot(staging, Some(parent), changes, removed)
    }

    /// The `make_join` answer: an unsigned join event for `user_id` on top
    /// of the room as it is now, which the joining server signs. Refused
    /// when the authorization rules would refuse the join.
    pub fn make_join(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.make_membership(room_id, user_id, "join")
    }

    /// The `make_leave` answer, like `make_join`.
    pub fn make_leave(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.make_membership(room_id, user_id, "leave")
    }

    /// A membership template (`make_join`, `make_leave`, `make_knock`).
    pub fn make_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let room = self.require_room(room_id)?;
        let version = room.room_version.clone();
        let staging = self.staging(Some(room))?;
        let mut template =
            PduTemplate::state("m.room.member", user_id.as_str(), json!({"membership": membership}));
        // A restricted room's join is vouched for by one of our members when
        // the user is in an allowed room; `send_join` then signs it here.
        if membership == "join"
            && let Some(authoriser) = self.restricted_join_authoriser(room_id, user_id)?
        {
            template.content["join_authorised_via_users_server"] = authoriser.to_string().into();
        }
        let mut object = self.with_local_context(&staging, room_id, user_id, template, |template, ctx| {
            event_object(template, &ctx).map_err(super::append::build_error)
        })?;
        // The rules read no signature: check the unsigned template as the
        // join will be checked, so a join that cannot pass is refused now.
        let id = EventId::parse("$make_membership_template").map_err(Error::internal)?;
        let pdu = Pdu::from_json(id, Some(room_id.to_owned()), object.clone()).map_err(Error::internal)?;
        if let Err(reason) = self.check_against(&staging, &pdu, &version, &staging.state.clone())? {
            return Err(Error::forbidden(format!("You are not allowed to {membership} this room: {reason}")));
        }
        // In room versions 1 and 2 the joining server names the event.
        object.remove("event_id");
        Ok((version, object))
    }

    /// The state before `event_id` and its auth chain (with the event's
    /// own auth events), as `send_join`, `/state` and `/state_ids` answer.
    pub fn state_and_auth_chain(&self, event_id: &EventId) -> Result<(Vec<Pdu>, Vec<Pdu>)> {
        let stored = self.stored(event_id)?.ok_or_else(|| Error::not_found("Unknown event"))?;
        let state = self.state_pdus(&*self.state.load(stored.state_before)?)?;
        let fetch = |id: &EventId| self.pdu(id).ok().flatten();
        let mut start: Vec<OwnedEventId> = state.iter().map(|p| p.event_id.clone()).collect();
        start.push(event_id.to_owned());
        let mut chain: Vec<Pdu> =
            resolve::auth_chain(start, &fetch).iter().filter_map(|id| fetch(id)).collect();
        chain.sort_by_key(|p| p.depth);
        Ok((state, chain))
    }

    /// The room's key state as a user outside it sees it (an invite, a
    /// knock): name, avatar, join rules, encryption and the like.
    pub fn stripped_state_pdus(&self, room_id: &RoomId) -> Result<Vec<Pdu>> {
        let state = self.current_state(&self.require_room(room_id)?)?;
        let mut events = Vec::new();
        for kind in super::INVITE_STATE {
            if let Some(event) = self.state_pdu(&state, &StateEventType::from(*kind), "")? {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Whether one of our users is joined to the room: only then does the
    /// room's state here follow the room (other servers send us its events).
    pub fn is_resident(&self, room_id: &RoomId) -> Result<bool> {
        let ours = &self.config.server_name;
        Ok(self.members_with_membership(room_id, "join")?.iter().any(|u| u.server_name() == ours))
    }

    /// The other servers with a joined member in the room.
    pub fn joined_servers(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> = self
            .members_with_membership(room_id, "join")?
            .into_iter()
            .map(|user| user.server_name().to_owned())
            .filter(|server| *server != self.config.server_name)
            .collect();
        servers.sort();
        servers.dedup();
        Ok(servers)
    }
}
