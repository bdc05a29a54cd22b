//! The append path. Every event, local or remote (`remote.rs`), goes through it:
//! build (for local events), authorise against the room version's rules,
//! stage the event, its state snapshot and every index into a batch
//! (`staging.rs`), then `persist` the staged events in one commit, in
//! stream order.

use std::sync::Arc;

use estuary_core::{Error, Result, error::ErrorKind, time::now_millis};
use estuary_events::{
    Pdu, PduTemplate, auth,
    builder::{BuildContext, BuildError, EventRef, build_pdu, reference_hash},
};
use estuary_storage::codec::Json;
use ruma::{
    CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, RoomId, RoomVersionId, UInt,
    UserId,
    events::{
        StateEventType, TimelineEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
};

use super::{
    RoomRecord, Rooms, StoredPdu,
    staging::{FanOut, Staged, Staging},
    state::StateMap,
};
use crate::{federation::server_of, storage_error::StorageResultExt};

/// A client transaction: sends with the same one are idempotent.
#[derive(Clone, Debug)]
pub struct Txn {
    pub device_id: OwnedDeviceId,
    pub txn_id: String,
}

impl Rooms {
    /// A transaction is scoped to its device and endpoint, and the endpoint
    /// path names the room and event type: the same transaction ID in
    /// another room is another request (as Synapse keys it, by path).
    fn txn_key(
        sender: &UserId,
        room_id: &RoomId,
        kind: &TimelineEventType,
        txn: &Txn,
    ) -> (String, String, String) {
        (sender.to_string(), txn.device_id.to_string(), format!("{room_id}/{kind}/{}", txn.txn_id))
    }

    /// The event an earlier request with this transaction created.
    fn txn_event(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &TimelineEventType,
        txn: &Txn,
    ) -> Result<Option<OwnedEventId>> {
        Ok(self
            .useriddevicetxn_eventid
            .get(&Self::txn_key(sender, room_id, kind, txn))
            .db()?
            .and_then(|id| ruma::EventId::parse(id).ok()))
    }

    /// Send a new event from a local user into an existing room.
    pub async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: PduTemplate,
        txn: Option<Txn>,
    ) -> Result<Pdu> {
        if let Some(txn) = &txn
            && let Some(existing) = self.txn_event(sender, room_id, &template.kind, txn)?
        {
            return self
                .pdu(&existing)?
                .ok_or_else(|| Error::internal("transaction points to a missing event"));
        }
        validate_content(&template)?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let mut staging = self.staging(Some(room))?;
        if let Some(existing) = self.same_state(&staging, sender, &template)? {
            return Ok(existing);
        }
        let pdu = self.build_local(&staging, room_id, sender, template)?;
        self.stage(&mut staging, pdu.clone(), txn)?;
        self.persist(staging).await?;
        Ok(pdu)
    }

    /// Setting state to what it already is (same sender, same content) is a no-op.
    pub(super) fn same_state(
        &self,
        staging: &Staging,
        sender: &UserId,
        template: &PduTemplate,
    ) -> Result<Option<Pdu>> {
        let Some(state_key) = &template.state_key else { return Ok(None) };
        let kind = StateEventType::from(template.kind.to_string());
        let current = self.staged_state_pdu(staging, &kind, state_key)?;
        Ok(current.filter(|pdu| pdu.sender == sender && pdu.content_value() == template.content))
    }

    /// A local event on top of the staged room: its auth events from the
    /// staged state, the room's extremities as `prev_events`.
    pub(super) fn build_local(
        &self,
        staging: &Staging,
        room_id: &RoomId,
        sender: &UserId,
        template: PduTemplate,
    ) -> Result<Pdu> {
        self.with_local_context(staging, room_id, sender, template, |template, ctx| {
            build_pdu(template, ctx).map_err(build_error)
        })
    }

    /// Call `build` with the context of a new event from `sender` on top of
    /// the staged room.
    pub(super) fn with_local_context<T>(
        &self,
        staging: &Staging,
        room_id: &RoomId,
        sender: &UserId,
        template: PduTemplate,
        build: impl FnOnce(PduTemplate, BuildContext<'_>) -> Result<T>,
    ) -> Result<T> {
        let room = staging.room.as_ref().ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = room.room_version.rules().ok_or_else(unsupported_version)?;
        let content = serde_json::value::to_raw_value(&template.content)?;
        let keys = auth::auth_types(
            &template.kind,
            sender,
            template.state_key.as_deref(),
            &content,
            &rules.authorization,
        )
        .map_err(Error::bad_json)?;
        let mut auth_ids = Vec::new();
        for (event_type, state_key) in &keys {
            if let Some(id) = self.staged_state_event_id(staging, event_type, state_key)? {
                auth_ids.push(id);
            }
        }
        auth_ids.sort();
        let ctx = BuildContext {
            room_id: Some(room_id),
            room_version: &room.room_version,
            sender: sender.to_owned(),
            prev_events: self.event_refs(staging, &room.extremities, &room.room_version)?,
            auth_events: self.event_refs(staging, &auth_ids, &room.room_version)?,
            depth: room.depth + 1,
            origin_server_ts: template.origin_server_ts.unwrap_or_else(now_ts),
            server_name: &self.config.server_name,
            key: &self.key,
        };
        build(template, ctx)
    }

    /// References to events; rooms v1 and v2 also carry their hashes.
    fn event_refs(
        &self,
        staging: &Staging,
        ids: &[OwnedEventId],
        version: &RoomVersionId,
    ) -> Result<Vec<EventRef>> {
        let needs_hash = matches!(version, RoomVersionId::V1 | RoomVersionId::V2);
        ids.iter()
            .map(|id| {
                let sha256 = match needs_hash {
                    true => self.staged_pdu(staging, id)?.and_then(|pdu| reference_hash(&pdu, version)),
                    false => None,
                };
                Ok(EventRef { event_id: id.clone(), sha256 })
            })
            .collect()
    }

    /// The authorization rules against the staged state (the state before
    /// the event), reading only this room's events.
    pub(super) fn authorize(&self, staging: &Staging, pdu: &Pdu, version: &RoomVersionId) -> Result<()> {
        let rules = version.rules().ok_or_else(unsupported_version)?;
        let fetch_event = |id: &ruma::EventId| {
            self.staged_accepted_pdu(staging, id).ok().flatten().filter(|event| event.room_id == pdu.room_id)
        };
        let fetch_state = |t: &StateEventType, k: &str| self.staged_state_pdu(staging, t, k).ok().flatten();
        auth::check(pdu, &rules.authorization, fetch_event, fetch_state)
            .map_err(|reason| Error::forbidden(format!("Event is not allowed: {reason}")))
    }

    /// Authorise a local `pdu` against the staged state and add it, with
    /// everything derived from it, to the staged batch: it becomes the
    /// room's only forward extremity. Nothing rejected is staged.
    pub(super) fn stage(&self, staging: &mut Staging, pdu: Pdu, txn: Option<Txn>) -> Result<()> {
        let version = match &staging.room {
            Some(room) => room.room_version.clone(),
            None => self.first_event_version(&pdu)?,
        };
        self.authorize(staging, &pdu, &version)?;
        let before = (staging.room.as_ref().map(|r| r.state), staging.state.clone());
        let (event_id, depth) = (pdu.event_id.clone(), pdu.depth);
        let (after_id, after) = self.stage_event(staging, pdu, txn, &version, before, FanOut::All)?;
        let depth = staging.room.as_ref().map_or(0, |r| r.depth).max(depth);
        staging.state = after;
        staging.room =
            Some(RoomRecord { room_version: version, state: after_id, extremities: vec![event_id], depth });
        Ok(())
    }

    /// Add an authorised `pdu` whose state before is `before` (snapshot ID
    /// and map) to the staged batch: its state snapshot, indexes and stored
    /// row. Returns the state after it; the caller moves the room on.
    pub(super) fn stage_event(
        &self,
        staging: &mut Staging,
        mut pdu: Pdu,
        txn: Option<Txn>,
        version: &RoomVersionId,
        before: (Option<u64>, Arc<StateMap>),
        fan_out: FanOut,
    ) -> Result<(u64, Arc<StateMap>)> {
        let (state_before_id, state_before) = before;
        let event_short = self.staged_event_short(staging, &pdu.event_id)?;
        let batch = &mut staging.batch;
        let (state_after_id, state_after) = match &pdu.state_key {
            None => (
                state_before_id.ok_or_else(|| Error::internal("a room's first event must be state"))?,
                state_before.clone(),
            ),
            Some(state_key) => {
                let event_type = StateEventType::from(pdu.kind.to_string());
                let key = self.short.state_key_short_or_create(&event_type, state_key, batch)?;
                if let Some(previous) = state_before.get(&key) {
                    let previous = self.staged_event_id(staging, *previous)?;
                    if let Some(previous) = previous.map(|id| self.staged_pdu(staging, &id)).transpose()? {
                        add_replaces_state(&mut pdu, previous.as_ref());
                    }
                }
                self.stage_snapshot(staging, state_before_id, vec![(key, event_short)], Vec::new())?
            }
        };
        let opens =
            matches!(pdu.kind, TimelineEventType::RoomJoinRules | TimelineEventType::RoomHistoryVisibility);
        // History changes neither who is in the room nor how open it is now.
        let live = !staging.history;
        if live && opens && pdu.state_key.as_deref() == Some("") {
            self.index_open_room(staging, &pdu, &state_after)?;
        }
        let batch = &mut staging.batch;
        if live && pdu.kind == TimelineEventType::RoomMember {
            self.index_membership(&pdu, batch)?;
        }
        if pdu.kind == TimelineEventType::RoomRedaction {
            self.apply_redaction(&pdu, version, &state_before, batch)?;
        }
        if let Some(txn) = &txn {
            batch.put(
                &self.useriddevicetxn_eventid,
                &Self::txn_key(&pdu.sender, &pdu.room_id, &pdu.kind, txn),
                &pdu.event_id.to_string(),
            );
        }
        staging.note_event(event_short, &pdu);
        let joined_user = (pdu.kind == TimelineEventType::RoomMember
            && pdu.content_value()["membership"] == "join")
            .then(|| pdu.state_key.clone().unwrap_or_default());
        let stored = StoredPdu {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            json: pdu.json.clone().into(),
            stream: 0,
            // 0 is the empty snapshot: what a room's first event sees.
            state_before: state_before_id.unwrap_or(0),
            state_after: state_after_id,
            txn: txn.map(|t| (t.device_id, t.txn_id)),
            rejected: false,
            state_from_peer: false,
        };
        staging.staged.push(Staged { pdu, stored, joined_user, fan_out });
        Ok((state_after_id, state_after))
    }

    /// The room version a room's first event (its create event) declares;
    /// a room that already exists cannot be created again.
    fn first_event_version(&self, pdu: &Pdu) -> Result<RoomVersionId> {
        if pdu.kind != TimelineEventType::RoomCreate {
            return Err(Error::internal("a room's first event must be its create event"));
        }
        if self.room(&pdu.room_id)?.is_some() {
            return Err(Error::matrix(400, ErrorKind::RoomInUse, "The room already exists"));
        }
        let version = pdu.content_value()["room_version"].as_str().unwrap_or("1").to_owned();
        RoomVersionId::try_from(version).map_err(|_| unsupported_version())
    }

    /// Commit the staged events in one batch, with consecutive stream
    /// positions, then wake the room and evaluate push rules.
    pub(super) async fn persist(&self, staging: Staging<'_>) -> Result<()> {
        let mut staging = staging;
        if staging.history {
            return self.persist_history(staging);
        }
        let snapshots = std::mem::take(&mut staging.snapshots);
        let batch = std::mem::replace(&mut staging.batch, self.db.batch());
        let mut staged = std::mem::take(&mut staging.staged);
        let (Some(room), Some(first)) = (staging.room.take(), staged.first()) else {
            // Nothing for the timeline; events kept outside it (soft-failed
            // or rejected) are still written.
            let committed = if batch.is_empty() { Ok(()) } else { batch.commit().db() };
            self.state.settle(&snapshots, committed.is_ok());
            return committed;
        };
        let room_id = first.pdu.room_id.clone();
        let room_key = room_id.to_string();
        let mut batch = batch;
        let sent = self.stage_fan_out(&room_id, &staged, &mut batch)?
            | self.stage_appservice_fan_out(&room_id, &staged, &mut batch)?;
        // Read before the commit: the closure runs under the stream lock.
        let relations =
            staged.iter().map(|event| self.new_relation(&event.pdu)).collect::<Result<Vec<_>>>()?;
        let committed = self.streams.commit_many(batch, staged.len(), |first, batch| {
            batch.put(&self.roomid_room, &room_key, &Json(room));
            let mut threads_moved = std::collections::HashMap::new();
            for (offset, (event, relation)) in staged.iter_mut().zip(&relations).enumerate() {
                let stream = first + offset as u64;
                event.stored.stream = stream;
                self.stage_stream_rows(event, stream, batch);
                if let Some(relation) = relation {
                    self.index_relation(&event.pdu, stream, relation, &mut threads_moved, batch);
                }
            }
        });
        self.state.settle(&snapshots, committed.is_ok());
        committed?;
        metrics::counter!("synapse_storage_events_persisted_events_total").increment(staged.len() as u64);
        if sent {
            self.outgoing.wake();
        }
        if staged.iter().any(|event| event.pdu.kind == TimelineEventType::RoomMember) {
            self.forget_appservice_interest(&room_id);
        }
        // Notifications first, then the wake-up: a sync woken by the event
        // must find its unread counts already written.
        for event in &staged {
            if let Err(err) = self.notify_members(&event.stored).await {
                tracing::warn!(event_id = %event.pdu.event_id, "push rule evaluation failed: {err}");
            }
        }
        self.wake_room(&room_id, staged.iter().map(|event| &event.pdu))?;
        Ok(())
    }

    /// Commit staged history (oldest first) in one batch: each event below
    /// the room's oldest, in the room's history order. Nothing is sent,
    /// pushed or woken: it is the past.
    fn persist_history(&self, mut staging: Staging<'_>) -> Result<()> {
        let snapshots = std::mem::take(&mut staging.snapshots);
        let mut batch = std::mem::replace(&mut staging.batch, self.db.batch());
        let staged = std::mem::take(&mut staging.staged);
        if let Some(first) = staged.first() {
            let room_key = first.pdu.room_id.to_string();
            let oldest = self.oldest_history_order(&first.pdu.room_id)?;
            for (newer, event) in staged.iter().enumerate() {
                // The first staged is the oldest: the highest order.
                let order = oldest + (staged.len() - newer) as u64;
                let event_id = event.pdu.event_id.to_string();
                self.put_stored(&mut batch, event.stored.clone());
                batch.put(&self.roomidbackfill_eventid, &(room_key.clone(), order), &event_id);
            }
        }
        let committed = batch.commit().db();
        self.state.settle(&snapshots, committed.is_ok());
        committed
    }

    /// Queue the staged events for the other servers in the room, in the
    /// same batch: an event is committed together with its delivery.
    /// Returns whether anything was queued.
    fn stage_fan_out(
        &self,
        room_id: &RoomId,
        staged: &[Staged],
        batch: &mut estuary_storage::Batch,
    ) -> Result<bool> {
        if !self.config.allow_federation || staged.iter().all(|e| e.fan_out == FanOut::None) {
            return Ok(false);
        }
        let mut servers = self.joined_servers(room_id)?;
        // A membership event also reaches its target's server (a kick, a
        // rescinded invite), and a join brings its server in for what
        // follows. An invite does not: the invitee's server countersigned it
        // (`/invite`) and is not in the room.
        let is_invite = |e: &&Staged| e.pdu.content_value()["membership"] == "invite";
        let memberships = staged.iter().filter(|e| e.pdu.kind == TimelineEventType::RoomMember);
        for event in memberships.filter(|e| !is_invite(e)) {
            if let Some(server) = event.pdu.state_key.as_deref().and_then(crate::federation::server_of)
                && server != self.config.server_name
            {
                servers.push(server.to_owned());
            }
        }
        servers.sort();
        servers.dedup();
        let mut sent = false;
        for event in staged {
            let except = match &event.fan_out {
                FanOut::None => continue,
                FanOut::All => None,
                FanOut::AllBut(server) => Some(server),
            };
            let json = serde_json::to_value(estuary_events::federation::outgoing_json(&event.pdu))?;
            for server in servers.iter().filter(|s| Some(*s) != except) {
                let job = crate::outgoing::Job::Pdu { pdu: json.clone() };
                self.outgoing.stage(batch, &crate::outgoing::server_destination(server), job);
                sent = true;
            }
        }
        Ok(sent)
    }

    /// The rows keyed by an event's stream position.
    fn stage_stream_rows(&self, event: &Staged, stream: u64, batch: &mut estuary_storage::Batch) {
        let (pdu, room_key) = (&event.pdu, event.pdu.room_id.to_string());
        let event_id = pdu.event_id.to_string();
        self.put_stored(batch, event.stored.clone());
        batch.put(&self.roomidstream_eventid, &(room_key.clone(), stream), &event_id);
        batch.put(&self.stream_roomideventid, &stream, &Json((room_key.clone(), event_id.clone())));
        self.index_search(pdu, stream, batch);
        let ts = u64::from(pdu.origin_server_ts.0);
        batch.put(&self.roomidts_eventid, &(room_key.clone(), ts, stream), &event_id);
        if let Some(target) = &event.joined_user {
            batch.put(&self.useridroomid_joinstream, &(target.clone(), room_key), &stream);
        }
    }

    /// Wake the syncs of everyone in the room and of the membership events'
    /// targets: once for all the events of a commit.
    fn wake_room<'a>(&self, room_id: &RoomId, pdus: impl Iterator<Item = &'a Pdu>) -> Result<()> {
        let mut users = self.members_with_membership(room_id, "join")?;
        users.extend(self.peeks.peekers(room_id));
        for pdu in pdus {
            if let Some(target) =
                pdu.state_key.as_deref().filter(|_| pdu.kind == TimelineEventType::RoomMember)
                && let Ok(target) = UserId::parse(target)
            {
                users.push(target);
            }
        }
        self.streams.notify(users.iter().map(|u| &**u));
        Ok(())
    }

    pub(super) fn index_membership(&self, pdu: &Pdu, batch: &mut estuary_storage::Batch) -> Result<()> {
        let Some(target) = pdu.state_key.as_deref() else { return Ok(()) };
        let membership = pdu.content_value()["membership"].as_str().unwrap_or("leave").to_owned();
        let room = pdu.room_id.to_string();
        let row = (target.to_owned(), room.clone());
        if membership == "join" && self.useridroomid_membership.get(&row).db()?.as_deref() != Some("join") {
            self.forget_remote_devices(target, batch);
            if server_of(target).is_some_and(|s| s == self.config.server_name) {
                // Our first member: this server shares the room again.
                let members = self.members_with_membership(&pdu.room_id, "join")?;
                if !members.iter().any(|m| m.server_name() == self.config.server_name) {
                    members.iter().for_each(|m| self.forget_remote_devices(m.as_str(), batch));
                }
            }
        }
        // The room's own events now say the membership: an out-of-band
        // invite, knock or leave kept while we were not in it is done with.
        batch.delete(&self.useridroomid_invite, &row);
        batch.put(&self.useridroomid_membership, &(target.to_owned(), room.clone()), &membership);
        batch.put(&self.roomiduserid_membership, &(room.clone(), target.to_owned()), &membership);
        if membership == "join" || membership == "invite" || membership == "knock" {
            batch.delete(&self.useridroomid_forgotten, &(target.to_owned(), room));
        }
        Ok(())
    }

    /// Another server's user who joins a room with us, or is in a room we
    /// (re)join, may have changed devices while no room was shared, and
    /// their server told us nothing: their cached devices are fetched again.
    pub(super) fn forget_remote_devices(&self, user_id: &str, batch: &mut estuary_storage::Batch) {
        if server_of(user_id).is_some_and(|s| s != self.config.server_name) {
            batch.delete(&self.remote_device_lists, &user_id.to_owned());
        }
    }

    /// A redaction that passed auth strips its target in storage, when the
    /// sender may redact it (their own event, or enough power).
    fn apply_redaction(
        &self,
        redaction: &Pdu,
        version: &RoomVersionId,
        state: &StateMap,
        batch: &mut estuary_storage::Batch,
    ) -> Result<()> {
        let Some(target_id) = &redaction.redacts else { return Ok(()) };
        let Some(mut target) = self.stored(target_id)? else { return Ok(()) };
        if target.room_id != redaction.room_id {
            return Ok(());
        }
        let target_pdu = target.pdu()?;
        let allowed = target_pdu.sender == redaction.sender
            || self.power_levels(state, version)?.user_can_redact_event_of_other(&redaction.sender);
        if !allowed {
            return Ok(());
        }
        self.unindex_relation(&target, batch)?;
        self.unindex_search(&target, batch)?;
        let redacted = target_pdu.redact(version, redaction).map_err(Error::internal)?;
        target.json = redacted.json.into();
        self.put_stored(batch, target);
        Ok(())
    }

    /// Power levels of a state snapshot, with the creators as v12 defines them.
    pub fn power_levels(&self, state: &StateMap, version: &RoomVersionId) -> Result<RoomPowerLevels> {
        let rules = version.rules().ok_or_else(unsupported_version)?;
        let content = self
            .state_pdu(state, &StateEventType::RoomPowerLevels, "")?
            .map(|pdu| serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get()))
            .transpose()
            .map_err(Error::internal)?;
        let mut creators = Vec::new();
        if let Some(create) = self.state_pdu(state, &StateEventType::RoomCreate, "")? {
            creators.push(create.sender.clone());
            if let Some(extra) = create.content_value()["additional_creators"].as_array() {
                creators
                    .extend(extra.iter().filter_map(|u| u.as_str()).filter_map(|u| UserId::parse(u).ok()));
            }
        }
        Ok(RoomPowerLevels::new(RoomPowerLevelsSource::from(content), &rules.authorization, creators))
    }
}

/// `unsigned.replaces_state`, `prev_content` and `prev_sender` for clients.
fn add_replaces_state(pdu: &mut Pdu, previous: Option<&Pdu>) {
    let Some(previous) = previous else { return };
    let unsigned = match pdu
        .json
        .entry("unsigned".to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(Default::default()))
    {
        CanonicalJsonValue::Object(map) => map,
        _ => return,
    };
    unsigned.insert("replaces_state".into(), previous.event_id.to_string().into());
    if let Some(content) = previous.json.get("content") {
        unsigned.insert("prev_content".into(), content.clone());
    }
    unsigned.insert("prev_sender".into(), previous.sender.to_string().into());
}

pub(super) fn now_ts() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new(now_millis()).unwrap_or_default())
}

pub fn unsupported_version() -> Error {
    Error::matrix(400, ErrorKind::UnsupportedRoomVersion, "Unsupported room version")
}

pub(super) fn build_error(err: BuildError) -> Error {
    match err {
        BuildError::TooLarge => Error::too_large("Event is larger than 65536 bytes"),
        BuildError::UnsupportedRoomVersion => unsupported_version(),
        BuildError::Invalid(e) => Error::bad_json(format!("Invalid event: {e}")),
    }
}

/// Content must be an object, and the state the authorization rules read
/// (membership, power levels, join rules) must have the spec's shape. Any
/// other content is stored as sent, as other homeservers do: clients send
/// forms the spec does not know yet (matrix-js-sdk sends `m.topic` as an
/// MSC3765 array) and read what they get leniently.
pub(super) fn validate_content(template: &PduTemplate) -> Result<()> {
    use ruma::events::room::{join_rules::RoomJoinRulesEventContent, member::RoomMemberEventContent};
    if !template.content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object"));
    }
    if template.state_key.is_none() {
        return Ok(());
    }
    fn check<T: serde::de::DeserializeOwned>(content: &serde_json::Value, what: &str) -> Result<()> {
        serde_json::from_value::<T>(content.clone())
            .map(|_| ())
            .map_err(|e| Error::bad_json(format!("Invalid {what} content: {e}")))
    }
    let content = &template.content;
    match template.kind.to_string().as_str() {
        "m.room.power_levels" => check::<RoomPowerLevelsEventContent>(content, "power levels"),
        "m.room.join_rules" => check::<RoomJoinRulesEventContent>(content, "join rules"),
        "m.room.member" => check::<RoomMemberEventContent>(content, "membership"),
        _ => Ok(()),
    }
}
