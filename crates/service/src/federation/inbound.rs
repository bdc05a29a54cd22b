//! What the Server-Server API handlers call: joins, transactions, and the
//! room history other servers ask for. Every call names the authenticated
//! origin; rooms are served only to servers with a member in them.

use std::{
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet},
    time::Duration,
};

use estuary_core::{Error, Result};
use estuary_events::Pdu;
use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::transactions::edu::Edu, events::TimelineEventType, serde::Raw,
};
use serde_json::value::RawValue;

use super::{Federation, pdus};
use crate::rooms::{FanOut, Received, StoredPdu};

/// An event as stored (its place, for visibility) and parsed.
type Event = (StoredPdu, Pdu);

impl Federation {
    /// `make_join`: the unsigned join event for `user_id` of `origin`.
    pub fn make_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.admit_template(origin, room_id, user_id, supported, "join")
    }

    /// `make_knock`: the unsigned knock event for `user_id` of `origin`.
    pub fn make_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.admit_template(origin, room_id, user_id, supported, "knock")
    }

    /// A join or knock template, when the origin's user may ask for one here.
    fn admit_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
        membership: &str,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("The user is not from the requesting server"));
        }
        let room = self.rooms.require_room(room_id)?;
        self.require_acl(origin, room_id)?;
        // A room none of our users is in any more is not ours to admit to.
        if !self.rooms.is_resident(room_id)? {
            return Err(Error::not_found("This server has no member in the room"));
        }
        let supported_here = supported.is_empty() && room.room_version == RoomVersionId::V1;
        if !supported_here && !supported.contains(&room.room_version) {
            return Err(super::membership::incompatible(room.room_version.clone()));
        }
        self.rooms.make_membership(room_id, user_id, membership)
    }

    /// `send_knock`: a knock another server signed for one of its users,
    /// entered into the room; returns the room's stripped state for the
    /// knocking user to see.
    pub async fn send_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        json: &RawValue,
    ) -> Result<Vec<Pdu>> {
        self.send_membership(origin, room_id, event_id, json, "knock").await?;
        self.rooms.stripped_state_pdus(room_id)
    }

    /// `make_leave`: the unsigned leave event for `user_id` of `origin`.
    pub fn make_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("The user is not from the requesting server"));
        }
        self.require_acl(origin, room_id)?;
        self.rooms.make_leave(room_id, user_id)
    }

    /// A join to a restricted room that one of our members vouches for
    /// (`join_authorised_via_users_server`, put there by our `make_join`)
    /// must carry our signature: added when the joining user may still join
    /// through an allowed room. Any other event is returned as it came.
    fn countersign_restricted_join(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        json: &RawValue,
    ) -> Result<Box<RawValue>> {
        let mut object = pdus::canonical_pdu(json).map_err(|e| Error::bad_json(e.0))?;
        let authoriser = object
            .get("content")
            .and_then(|c| c.as_object())
            .and_then(|c| c.get("join_authorised_via_users_server"))
            .and_then(|a| a.as_str())
            .and_then(|a| UserId::parse(a).ok());
        let Some(authoriser) = authoriser.filter(|a| a.server_name() == self.config.server_name) else {
            return Ok(json.to_owned());
        };
        let sender = object.get("sender").and_then(|s| s.as_str()).and_then(|s| UserId::parse(s).ok());
        let sender = sender.ok_or_else(|| Error::bad_json("The join has no valid sender"))?;
        if self.rooms.restricted_join_authoriser(room_id, &sender)?.is_none() {
            return Err(Error::forbidden(format!("{authoriser} cannot vouch for this join")));
        }
        pdus::add_signature(&mut object, room_version, &self.config.server_name, self.client.signing_key())
            .map_err(|e| Error::internal(e.0))?;
        serde_json::value::to_raw_value(&object).map_err(Error::internal)
    }

    /// `send_join` / `send_leave`: a membership event another server signed
    /// for one of its users, entered into the room and sent on to the other
    /// servers. Returns the event.
    pub async fn send_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        json: &RawValue,
        membership: &str,
    ) -> Result<Pdu> {
        let room = self.rooms.require_room(room_id)?;
        self.require_acl(origin, room_id)?;
        let json = match membership {
            "join" => self.countersign_restricted_join(room_id, &room.room_version, json)?,
            _ => json.to_owned(),
        };
        let verified = self
            .verify_pdus(&room.room_version, std::slice::from_ref(&json))
            .await
            .pop()
            .ok_or_else(|| Error::internal("no PDU"))?
            .map_err(|(_, reason)| Error::bad_json(format!("Invalid event: {reason}")))?;
        let pdu = verified.pdu;
        let content = pdu.content_value();
        let sender_ok =
            pdu.sender.server_name() == origin && pdu.state_key.as_deref() == Some(pdu.sender.as_str());
        if pdu.event_id != event_id
            || pdu.room_id != room_id
            || pdu.kind != TimelineEventType::RoomMember
            || content["membership"] != membership
            || !sender_ok
        {
            return Err(Error::bad_json(format!(
                "Not a {membership} event of a user of {origin} for this room"
            )));
        }
        let outcome =
            self.rooms.receive(room_id, vec![pdu.clone()], FanOut::AllBut(origin.to_owned())).await?;
        match outcome.into_iter().next().map(|(_, o)| o) {
            Some(Received::Accepted) if membership == "join" => {
                self.share_presence_after_send_join(room_id, &pdu.sender);
                Ok(pdu)
            }
            Some(Received::Accepted | Received::Known) => Ok(pdu),
            Some(Received::MissingPrevs(_)) => {
                Err(Error::bad_json("The event's prev_events are unknown here"))
            }
            Some(Received::Rejected(reason) | Received::SoftFailed(reason)) => Err(Error::forbidden(reason)),
            None => Err(Error::internal("no outcome")),
        }
    }

    /// The state before an event and its auth chain, for `origin`.
    pub fn state_at(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<Pdu>, Vec<Pdu>)> {
        self.require_in_room(origin, room_id)?;
        // Outliers have no state here, a rejected event's is none of the
        // room's, and one before a gap has only another server's word.
        let placed = |s: &crate::rooms::StoredPdu| {
            s.room_id == room_id && s.state_after != 0 && !s.rejected && !s.state_from_peer
        };
        if !self.rooms.stored(event_id)?.is_some_and(|s| placed(&s)) {
            return Err(Error::not_found("Unknown event in this room, or no state is known at it"));
        }
        self.rooms.state_and_auth_chain(event_id)
    }

    /// `/event_auth`: the auth chain of an event, for a server in its room.
    pub fn event_auth_chain(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Pdu>> {
        self.require_in_room(origin, room_id)?;
        let pdu = self.rooms.pdu(event_id)?.filter(|p| p.room_id == room_id);
        let pdu = pdu.ok_or_else(|| Error::not_found("Unknown event in this room"))?;
        let fetch = |id: &EventId| self.rooms.pdu(id).ok().flatten();
        let mut ids = estuary_events::resolve::auth_chain([pdu.event_id], &fetch);
        // From room version 12 the create event is no listed auth event, but
        // every auth chain still rests on it.
        let room = self.rooms.require_room(room_id)?;
        let state = self.rooms.current_state(&room)?;
        if let Some(create) =
            self.rooms.state_event_id(&state, &ruma::events::StateEventType::RoomCreate, "")?
        {
            ids.insert(create);
        }
        let mut chain: Vec<Pdu> = ids.iter().filter_map(|id| fetch(id)).collect();
        chain.sort_by_key(|p| p.depth);
        Ok(chain)
    }

    /// One event, for a server in its room (redacted when the room's
    /// history visibility hides it from that server).
    pub fn event(&self, origin: &ServerName, event_id: &EventId) -> Result<Pdu> {
        // A rejected event is kept only to place what follows it: not served.
        let stored = self.rooms.stored(event_id)?.filter(|s| !s.rejected);
        let stored = stored.ok_or_else(|| Error::not_found("Unknown event"))?;
        let room_id = stored.room_id.clone();
        self.require_in_room(origin, &room_id)?;
        let pdu = stored.pdu()?;
        self.for_server(origin, &room_id, vec![(stored, pdu)])?
            .pop()
            .ok_or_else(|| Error::not_found("Unknown event"))
    }

    /// Events as `origin` may see them: those its users could not see when
    /// they were sent are redacted (the DAG stays walkable, the content is
    /// withheld), as the spec asks.
    fn for_server(&self, origin: &ServerName, room_id: &RoomId, events: Vec<Event>) -> Result<Vec<Pdu>> {
        let mut redaction = None;
        let mut shown = Vec::with_capacity(events.len());
        for (stored, pdu) in events {
            if self.rooms.server_can_see_event(origin, &stored)? {
                shown.push(pdu);
                continue;
            }
            let rules = match &redaction {
                Some(rules) => rules,
                None => {
                    let version = self.rooms.require_room(room_id)?.room_version;
                    let rules = version.rules().ok_or_else(|| Error::internal("unsupported room version"))?;
                    redaction.insert(rules.redaction)
                }
            };
            let redacted = ruma::canonical_json::redact(pdu.json, rules, None).map_err(Error::internal)?;
            shown.push(Pdu::from_json(pdu.event_id, Some(pdu.room_id), redacted).map_err(Error::internal)?);
        }
        Ok(shown)
    }

    /// Events before `from` (following `prev_events`), newest first.
    pub fn backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Pdu>> {
        self.require_in_room(origin, room_id)?;
        let events = self.walk_back(room_id, from, HashSet::new(), limit)?;
        self.for_server(origin, room_id, events)
    }

    /// `/timestamp_to_event` for a server in the room: the closest event its
    /// users may see.
    pub fn event_at_timestamp(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        ts: u64,
        dir: crate::rooms::Direction,
    ) -> Result<(OwnedEventId, u64)> {
        self.require_in_room(origin, room_id)?;
        self.rooms
            .event_near_timestamp(room_id, ts, dir, |stored| self.rooms.server_can_see_event(origin, stored))
    }

    /// `get_missing_events`: events between `earliest` and `latest`, oldest first.
    pub fn missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Pdu>> {
        self.require_in_room(origin, room_id)?;
        let mut start = Vec::new();
        for id in latest {
            if let Some(pdu) = self.rooms.pdu(id)? {
                start.extend(pdu.prev_events);
            }
        }
        let mut events = self.walk_back(room_id, &start, earliest.iter().cloned().collect(), limit)?;
        events.sort_by_key(|(_, pdu)| pdu.depth);
        self.for_server(origin, room_id, events)
    }

    /// Walk back through `prev_events` from `start` (deepest first), over
    /// this room's events not in `seen`, collecting at most `limit` (≤ 100).
    fn walk_back(
        &self,
        room_id: &RoomId,
        start: &[OwnedEventId],
        mut seen: HashSet<OwnedEventId>,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let (heap, found) = (BinaryHeap::new(), HashMap::new());
        type Frontier = (BinaryHeap<(u64, OwnedEventId)>, HashMap<OwnedEventId, Event>);
        let mut visit = |id: &OwnedEventId, (heap, found): &mut Frontier| -> Result<()> {
            if seen.insert(id.clone())
                && let Some(stored) = self.rooms.stored(id)?.filter(|s| s.room_id == room_id)
            {
                let pdu = stored.pdu()?;
                heap.push((pdu.depth, id.clone()));
                found.insert(id.clone(), (stored, pdu));
            }
            Ok(())
        };
        let mut frontier: Frontier = (heap, found);
        for id in start {
            visit(id, &mut frontier)?;
        }
        let mut events = Vec::new();
        while let Some((_, id)) = frontier.0.pop() {
            if events.len() >= limit.min(100) {
                break;
            }
            let Some(event) = frontier.1.remove(&id) else { continue };
            for prev in &event.1.prev_events {
                visit(prev, &mut frontier)?;
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Whether the room's `m.room.server_acl` lets `server` take part.
    pub fn acl_allows(&self, server: &ServerName, room_id: &RoomId) -> Result<bool> {
        use ruma::events::{StateEventType, room::server_acl::RoomServerAclEventContent};
        let Some(room) = self.rooms.room(room_id)? else { return Ok(true) };
        let state = self.rooms.current_state(&room)?;
        let Some(acl) = self.rooms.state_pdu(&state, &StateEventType::RoomServerAcl, "")? else {
            return Ok(true);
        };
        // An ACL that does not parse bans no one (as other servers read it).
        Ok(serde_json::from_str::<RoomServerAclEventContent>(acl.content.get())
            .map_or(true, |acl| acl.is_allowed(server)))
    }

    /// Refuse a server the room's ACL bans.
    pub fn require_acl(&self, server: &ServerName, room_id: &RoomId) -> Result<()> {
        if self.acl_allows(server, room_id)? {
            return Ok(());
        }
        tracing::info!(%server, %room_id, "refused a server the room's ACL bans");
        Err(Error::forbidden("Your server is banned from this room by its server ACL"))
    }

    /// Rooms are served only to servers that have a member in them.
    fn require_in_room(&self, origin: &ServerName, room_id: &RoomId) -> Result<()> {
        self.require_acl(origin, room_id)?;
        if self.rooms.joined_servers(room_id)?.iter().any(|s| s == origin) {
            return Ok(());
        }
        tracing::info!(%origin, %room_id, "refused room data to a server without members in the room");
        Err(Error::forbidden("Your server has no member in this room"))
    }

    /// A `/send` transaction: PDUs grouped by room (each room in order under
    /// its lock; rooms in parallel, so one room's trouble holds up no
    /// other), then EDUs. Returns each PDU's outcome.
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        pdus: &[Box<RawValue>],
        edus: &[Raw<Edu>],
    ) -> BTreeMap<OwnedEventId, std::result::Result<(), String>> {
        let mut by_room: BTreeMap<OwnedRoomId, Vec<Box<RawValue>>> = BTreeMap::new();
        for pdu in pdus {
            #[derive(serde::Deserialize)]
            struct RoomOf {
                room_id: OwnedRoomId,
            }
            match serde_json::from_str::<RoomOf>(pdu.get()) {
                Ok(RoomOf { room_id }) => by_room.entry(room_id).or_default().push(pdu.clone()),
                Err(_) => tracing::info!(%origin, "dropped a PDU without a valid room_id"),
            }
        }
        let rooms = by_room
            .into_iter()
            .map(|(room_id, pdus)| async move { self.receive_room_pdus(origin, &room_id, &pdus).await });
        let mut results = BTreeMap::new();
        for outcome in futures::future::join_all(rooms).await {
            results.extend(outcome);
        }
        for edu in edus {
            self.receive_edu(origin, edu).await;
        }
        results
    }

    async fn receive_room_pdus(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        raw: &[Box<RawValue>],
    ) -> Vec<(OwnedEventId, std::result::Result<(), String>)> {
        let room = match self.rooms.room(room_id) {
            Ok(Some(room)) => room,
            _ => {
                tracing::info!(%origin, %room_id, "dropped events of a room this server is not in");
                return Vec::new();
            }
        };
        if !self.acl_allows(origin, room_id).unwrap_or(false) {
            tracing::info!(%origin, %room_id, "refused events from a server the room's ACL bans");
            // Each PDU is answered with the refusal (no key is fetched for it).
            let ids = raw.iter().filter_map(|json| {
                let object = pdus::canonical_pdu(json).ok()?;
                pdus::event_id(&object, &room.room_version).ok()
            });
            return ids.map(|id| (id, Err("The room's server ACL bans this server".to_owned()))).collect();
        }
        let mut results = Vec::new();
        let mut verified = Vec::new();
        for outcome in self.verify_pdus(&room.room_version, raw).await {
            match outcome {
                Ok(v) => verified.push(v.pdu),
                Err((Some(id), reason)) => {
                    tracing::warn!(%origin, event_id = %id, "refused an event: {reason}");
                    results.push((id, Err(reason)));
                }
                Err((None, reason)) => tracing::warn!(%origin, %room_id, "refused an event: {reason}"),
            }
        }
        verified.sort_by_key(|p| p.depth);
        let mut guest_access_changed = false;
        for pdu in verified {
            let event_id = pdu.event_id.clone();
            let is_guest_access = pdu.kind == TimelineEventType::RoomGuestAccess;
            let joined = (pdu.kind == TimelineEventType::RoomMember
                && pdu.content_value()["membership"] == "join")
                .then(|| pdu.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()))
                .flatten()
                // A profile change is no new join.
                .filter(|user| {
                    self.rooms.membership(user, room_id).ok().flatten().as_deref() != Some("join")
                });
            let outcome = self.receive_with_gap_fill(origin, room_id, &room.room_version, pdu).await;
            guest_access_changed |= is_guest_access && outcome.is_ok();
            // A refused join (also answered `Ok`) shares nothing.
            if let Some(joined) = joined
                .filter(|user| self.rooms.membership(user, room_id).ok().flatten().as_deref() == Some("join"))
            {
                self.share_presence_on_join(room_id, &joined);
            }
            results.push((event_id, outcome));
        }
        if guest_access_changed
            && let Err(err) = crate::guests::remove_revoked(&self.rooms, &self.accounts, room_id).await
        {
            tracing::warn!(%room_id, "could not remove guests after guest access changed: {err}");
        }
        results
    }

    pub(super) async fn receive_one(
        &self,
        room_id: &RoomId,
        pdu: Pdu,
    ) -> std::result::Result<Received, String> {
        let outcome = self.rooms.receive(room_id, vec![pdu], FanOut::None).await.map_err(|e| {
            tracing::error!(%room_id, "storing a received event failed: {e}");
            "internal error".to_owned()
        })?;
        let outcome = outcome.into_iter().next().map_or(Received::Known, |(_, o)| o);
        tracing::debug!(%room_id, ?outcome, "received an event");
        Ok(outcome)
    }

    /// Ephemeral news from the origin's users: typing, receipts, presence,
    /// to-device messages, device and signing key changes.
    async fn receive_edu(&self, origin: &ServerName, edu: &Raw<Edu>) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(edu.json().get()) else { return };
        let content = &value["content"];
        match value["edu_type"].as_str() {
            Some("m.typing") => {
                let (Some(room_id), Some(user_id)) = (
                    content["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()),
                    content["user_id"].as_str().and_then(|u| UserId::parse(u).ok()),
                ) else {
                    return;
                };
                if user_id.server_name() != origin || !self.acl_allows(origin, &room_id).unwrap_or(false) {
                    return;
                }
                let typing = content["typing"].as_bool().unwrap_or(false).then_some(Duration::from_secs(30));
                if let Err(err) = self.ephemeral.set_typing(&room_id, &user_id, typing) {
                    tracing::debug!(%origin, "typing notification ignored: {err}");
                }
            }
            Some("m.receipt") => {
                let Some(rooms) = content.as_object() else { return };
                for (room_id, receipts) in rooms {
                    let Ok(room_id) = RoomId::parse(room_id) else { continue };
                    if !self.acl_allows(origin, &room_id).unwrap_or(false) {
                        continue;
                    }
                    let Some(users) = receipts["m.read"].as_object() else { continue };
                    for (user_id, receipt) in users {
                        let Ok(user_id) = UserId::parse(user_id) else { continue };
                        if user_id.server_name() != origin {
                            continue;
                        }
                        let thread = receipt["data"]["thread_id"].as_str();
                        for event_id in receipt["event_ids"].as_array().into_iter().flatten() {
                            let Some(event_id) = event_id.as_str().and_then(|e| EventId::parse(e).ok())
                            else {
                                continue;
                            };
                            if let Err(err) =
                                self.ephemeral.set_receipt(&room_id, &user_id, "m.read", &event_id, thread)
                            {
                                tracing::debug!(%origin, "receipt ignored: {err}");
                            }
                        }
                    }
                }
            }
            Some("m.presence") => {
                for update in content["push"].as_array().into_iter().flatten().take(1_000) {
                    let Some(user_id) = update["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else {
                        continue;
                    };
                    if user_id.server_name() != origin {
                        continue;
                    }
                    if let Err(err) = self.presence.receive_remote(&user_id, update) {
                        tracing::debug!(%origin, "presence update ignored: {err}");
                    }
                }
            }
            Some("m.direct_to_device") => self.receive_to_device(origin, content),
            Some("m.device_list_update") => self.receive_device_list_update(origin, content).await,
            Some("m.signing_key_update") => self.receive_signing_key_update(origin, content).await,
            _ => {}
        }
    }
}

/// What the `/send` answer says of a PDU: an event that was processed is
/// a success even when the rules refused it (it was checked, and logged;
/// servers answer so, and a sender cannot do better by retrying); only one
/// that could not be processed is an error.
pub(super) fn outcome_result(outcome: Received) -> std::result::Result<(), String> {
    match outcome {
        Received::Accepted | Received::Known | Received::SoftFailed(_) | Received::Rejected(_) => Ok(()),
        Received::MissingPrevs(_) => Err("missing prev_events".into()),
    }
}
