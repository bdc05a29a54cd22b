//! Our users in rooms on other servers: joining through a resident server
//! (`make_join` → sign → `send_join`), and invites other servers send them.

use estuary_core::{Error, Result, error::ErrorKind};
use estuary_events::{
    Pdu,
    builder::{claim_template, sign_object},
    federation as pdus,
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedServerName, RoomId, RoomVersionId, ServerName,
    UserId,
    api::federation::membership::{create_invite, create_join_event, prepare_join_event},
    events::TimelineEventType,
};
use serde_json::value::{RawValue, to_raw_value};

use super::{Federation, FederationError};
use crate::rooms::supported_room_version;

/// A membership event template a resident server answered with.
struct Template<'a> {
    server: &'a ServerName,
    room_id: &'a RoomId,
    user_id: &'a UserId,
    version: &'a RoomVersionId,
    event: &'a RawValue,
}

/// 400 `M_INCOMPATIBLE_ROOM_VERSION` for a room version this server lacks.
pub(super) fn incompatible(version: RoomVersionId) -> Error {
    Error::matrix(
        400,
        ErrorKind::IncompatibleRoomVersion(ruma::api::error::IncompatibleRoomVersionErrorData::new(version)),
        "This server does not support the room's version",
    )
}

/// Now, as an event's `origin_server_ts`.
fn now_ts() -> CanonicalJsonValue {
    CanonicalJsonValue::Integer(ruma::Int::new(estuary_core::time::now_millis() as i64).unwrap_or_default())
}

/// A membership event's content as we fill a template: the membership,
/// and the user's reason if they gave one.
fn membership_content(membership: &str, reason: Option<String>) -> CanonicalJsonObject {
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".into(), membership.into());
    if let Some(reason) = reason {
        content.insert("reason".into(), reason.into());
    }
    content
}

/// The room versions this server can join, as `make_join`'s `ver` lists them.
fn supported_versions() -> Vec<RoomVersionId> {
    (1..=12)
        .filter_map(|v| RoomVersionId::try_from(v.to_string()).ok())
        .filter(supported_room_version)
        .collect()
}

impl Federation {
    /// Join `room_id` on another server: ask each of `servers` in turn for a
    /// join template until one answers, sign it, and enter the room with
    /// the state its `send_join` returns.
    pub async fn join_remote(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        servers: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<()> {
        self.first_server_that(servers, room_id, "joining", |server| {
            self.join_through(server, room_id, user_id, reason.clone())
        })
        .await?;
        self.share_presence_on_join(room_id, user_id);
        Ok(())
    }

    /// After `user_id` joined `room_id`: a user of ours has their presence
    /// sent to the room's other servers; another server's user has our
    /// members' presence sent to their server. Best effort, logged.
    pub fn share_presence_on_join(&self, room_id: &RoomId, user_id: &UserId) {
        let ours = user_id.server_name() == self.config.server_name;
        share_presence_on_join(&self.rooms, &self.presence, ours, room_id, user_id);
    }

    /// The same for a join this server countersigned (`send_join`), a
    /// moment later: the joining server takes presence only of users it
    /// shares a room with, and it stores the room after our answer.
    pub(super) fn share_presence_after_send_join(&self, room_id: &RoomId, user_id: &UserId) {
        let (rooms, presence) = (self.rooms.clone(), self.presence.clone());
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(SEND_JOIN_PRESENCE_DELAY).await;
            share_presence_on_join(&rooms, &presence, false, &room_id, &user_id);
        });
    }

    /// Try `action` through each of `servers` (not this one) in turn until
    /// one succeeds; each failure is logged, and the last is the answer.
    async fn first_server_that<'a, F, Fut>(
        &self,
        servers: &'a [OwnedServerName],
        room_id: &RoomId,
        what: &str,
        mut action: F,
    ) -> Result<()>
    where
        F: FnMut(&'a ServerName) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut last_error = Error::not_found(format!("No server to go through for {what}"));
        for server in servers.iter().filter(|s| **s != self.config.server_name) {
            match action(server).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(%server, %room_id, "{what} through the server failed: {err}");
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    async fn join_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = supported_versions();
        let answer = self.client.send(server, request).await?;
        let version = answer.room_version.unwrap_or(RoomVersionId::V1);
        if !supported_room_version(&version) {
            return Err(incompatible(version));
        }
        let ours = self.rooms.join_template(user_id, reason)?.content;
        let content: CanonicalJsonObject = serde_json::from_value(ours).map_err(Error::internal)?;
        let template = Template { server, room_id, user_id, version: &version, event: &answer.event };
        let pdu = self.sign_template(template, content)?;
        let raw = to_raw_value(&pdus::outgoing_json(&pdu)).map_err(Error::internal)?;
        let request = create_join_event::v2::Request::new(room_id.to_owned(), pdu.event_id.clone(), raw);
        let room_state = self.client.send(server, request).await?.room_state;
        // A restricted join comes back countersigned by the resident server.
        let join = match &room_state.event {
            Some(event) => self.verified(&version, event).await?,
            None => pdu,
        };
        let state = self.valid_events(server, &version, &room_state.state).await;
        let auth_chain = self.valid_events(server, &version, &room_state.auth_chain).await;
        self.rooms.enter_remote_room(room_id, &version, state, auth_chain, join).await
    }

    /// A resident server's membership template made ours: our `content`
    /// (keeping the authoriser of a restricted join), now as its time, our
    /// event ID where the room version wants one, signed by us. Refused
    /// unless it is `user_id`'s membership event.
    fn sign_template(
        &self,
        template: Template<'_>,
        mut content: CanonicalJsonObject,
    ) -> Result<estuary_events::Pdu> {
        let Template { server, room_id, user_id, version, event } = template;
        let mut object: CanonicalJsonObject = serde_json::from_str(event.get())
            .map_err(|e| Error::bad_json(format!("Invalid membership template from {server}: {e}")))?;
        if let Some(CanonicalJsonValue::Object(theirs)) = object.get("content")
            && let Some(authoriser) = theirs.get("join_authorised_via_users_server")
        {
            content.insert("join_authorised_via_users_server".into(), authoriser.clone());
        }
        object.insert("content".into(), content.into());
        object.insert("origin_server_ts".into(), now_ts());
        claim_template(&mut object, version, &self.config.server_name);
        let pdu =
            sign_object(object, version, Some(room_id), &self.config.server_name, self.client.signing_key())
                .map_err(|e| {
                    Error::bad_json(format!("Cannot sign the membership template from {server}: {e}"))
                })?;
        if pdu.kind != TimelineEventType::RoomMember || pdu.state_key.as_deref() != Some(user_id.as_str()) {
            return Err(Error::bad_json(format!("{server} sent a template for another event")));
        }
        Ok(pdu)
    }

    async fn verified(&self, version: &RoomVersionId, json: &RawValue) -> Result<estuary_events::Pdu> {
        let raw = json.to_owned();
        match self.verify_pdus(version, std::slice::from_ref(&raw)).await.pop() {
            Some(Ok(verified)) => Ok(verified.pdu),
            Some(Err((_, reason))) => {
                Err(Error::forbidden(format!("Invalid event from the resident server: {reason}")))
            }
            None => Err(Error::internal("no event")),
        }
    }

    /// The events whose signatures verify (a bad hash keeps the redacted
    /// form); one that does not is dropped with a warning, as Synapse
    /// does: the join then stands or falls on what remains (a missing
    /// create event or join authorisation still refuses it).
    async fn valid_events(
        &self,
        server: &ServerName,
        version: &RoomVersionId,
        raw: &[Box<RawValue>],
    ) -> Vec<estuary_events::Pdu> {
        let mut events = Vec::with_capacity(raw.len());
        for outcome in self.verify_pdus(version, raw).await {
            match outcome {
                Ok(verified) => events.push(verified.pdu),
                Err((id, reason)) => {
                    let id = id.map(|i| i.to_string()).unwrap_or_default();
                    tracing::warn!(%server, event_id = %id, "dropped an invalid event of a join's state: {reason}");
                }
            }
        }
        events
    }

    /// Knock on `room_id` on another server: ask each of `servers` in turn
    /// for a knock template, sign it and send it; the knock and the room's
    /// stripped state that server answers are kept for the user's sync.
    pub async fn knock_remote(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        servers: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<()> {
        self.first_server_that(servers, room_id, "knocking", |server| {
            self.knock_through(server, room_id, user_id, reason.clone())
        })
        .await
    }

    async fn knock_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        use ruma::api::federation::membership::{create_knock_event, prepare_knock_event};
        let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = supported_versions();
        let answer = self.client.send(server, request).await?;
        let version = answer.room_version;
        if !supported_room_version(&version) {
            return Err(incompatible(version));
        }
        let content = membership_content("knock", reason);
        let template = Template { server, room_id, user_id, version: &version, event: &answer.event };
        let pdu = self.sign_template(template, content)?;
        let raw = to_raw_value(&pdus::outgoing_json(&pdu)).map_err(Error::internal)?;
        let request = create_knock_event::v1::Request::new(room_id.to_owned(), pdu.event_id.clone(), raw);
        let knock_room_state = self.client.send(server, request).await?.knock_room_state;
        let stripped = super::stripped_events(&knock_room_state);
        self.rooms.store_knock(pdu, version, stripped, server.to_owned()).await
    }

    /// Decline an invite to, or retract a knock on, a room on another
    /// server: a leave event through the inviting server, or the one the
    /// knock went through (`make_leave`, sign, `send_leave`). When that
    /// server cannot be reached, the refusal is logged and a leave built
    /// here (after the invite or knock) declines it for this server's user
    /// only. Either way the leave takes its place in the user's sync.
    pub async fn decline_remote_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        let not_found = || Error::not_found("No invite to or knock on this room");
        let stub = self.rooms.pending_out_of_band(user_id, room_id)?.ok_or_else(not_found)?;
        let invite = self.rooms.pdu(&stub.event_id)?.ok_or_else(not_found)?;
        // A knock is retracted where it went; an invite declined where it came from.
        let server = stub.via.clone().unwrap_or_else(|| invite.sender.server_name().to_owned());
        let content = membership_content("leave", reason);
        let sent = match self.enabled() {
            true => self.leave_through(&server, room_id, user_id, content.clone()).await,
            false => Err(Error::forbidden("Federation is disabled")),
        };
        let leave = match sent {
            Ok(leave) => leave,
            Err(err) => {
                tracing::warn!(%server, %room_id, "declining the invite through the server failed: {err}");
                self.out_of_band_leave(&invite, &stub.room_version, content)?
            }
        };
        self.rooms.store_declined_invite(leave).await
    }

    /// A leave that follows the invite, signed here but sent nowhere.
    fn out_of_band_leave(
        &self,
        invite: &estuary_events::Pdu,
        version: &RoomVersionId,
        content: CanonicalJsonObject,
    ) -> Result<estuary_events::Pdu> {
        use estuary_events::builder::{BuildContext, EventRef, PduTemplate, build_pdu, reference_hash};
        let invitee = invite.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let invitee = invitee.ok_or_else(|| Error::bad_json("The invite has no invitee"))?;
        let invite_ref =
            EventRef { event_id: invite.event_id.clone(), sha256: reference_hash(invite, version) };
        let content = serde_json::to_value(content).map_err(Error::internal)?;
        let ctx = BuildContext {
            room_id: Some(&invite.room_id),
            room_version: version,
            sender: invitee.clone(),
            prev_events: vec![invite_ref.clone()],
            auth_events: vec![invite_ref],
            depth: invite.depth + 1,
            origin_server_ts: ruma::MilliSecondsSinceUnixEpoch::now(),
            server_name: &self.config.server_name,
            key: self.client.signing_key(),
        };
        build_pdu(PduTemplate::state("m.room.member", invitee.as_str(), content), ctx)
            .map_err(|e| Error::internal(format!("cannot build the leave: {e}")))
    }

    async fn leave_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        content: CanonicalJsonObject,
    ) -> Result<estuary_events::Pdu> {
        use ruma::api::federation::membership::{create_leave_event, prepare_leave_event};
        let answer = self
            .client
            .send(server, prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned()))
            .await?;
        let version = answer.room_version.unwrap_or(RoomVersionId::V1);
        let template = Template { server, room_id, user_id, version: &version, event: &answer.event };
        let pdu = self.sign_template(template, content)?;
        let raw = to_raw_value(&pdus::outgoing_json(&pdu)).map_err(Error::internal)?;
        self.client
            .send(server, create_leave_event::v2::Request::new(room_id.to_owned(), pdu.event_id.clone(), raw))
            .await?;
        Ok(pdu)
    }

    /// Invite a user of another server into one of our rooms: its server
    /// countersigns the invite (`PUT /v2/invite`; `/v1/invite` for a room
    /// of version 1 or 2 when v2 is answered 400 or 404) before it is
    /// persisted.
    pub async fn invite_remote(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        invitee: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> Result<()> {
        self.rooms.require_not_joined(invitee, room_id)?;
        let template = self.rooms.invite_template(invitee, reason, is_direct)?;
        let server = invitee.server_name().to_owned();
        self.rooms
            .invite_remote(room_id, sender, template, |pdu, version, invite_state| async move {
                let answer = match self.send_invite_v2(&server, &pdu, &version, &invite_state).await {
                    Err(err)
                        if knows_no_v2(&err) && matches!(version, RoomVersionId::V1 | RoomVersionId::V2) =>
                    {
                        self.send_invite_v1(&server, &pdu, &invite_state).await
                    }
                    answer => answer,
                };
                let event = answer.map_err(|e| {
                    tracing::warn!(%server, %room_id, "the invitee's server did not take the invite: {e}");
                    Error::from(e)
                })?;
                serde_json::from_str::<CanonicalJsonObject>(event.get()).map_err(|e| {
                    Error::bad_json(format!("The invitee's server returned an invalid invite: {e}"))
                })
            })
            .await
    }

    /// `PUT /v2/invite`: the countersigned event.
    async fn send_invite_v2(
        &self,
        server: &ServerName,
        pdu: &Pdu,
        version: &RoomVersionId,
        invite_state: &[Pdu],
    ) -> std::result::Result<Box<RawValue>, FederationError> {
        let raw =
            to_raw_value(&pdus::outgoing_json(pdu)).map_err(|e| FederationError::Request(e.to_string()))?;
        let mut request = create_invite::v2::Request::new(
            pdu.room_id.clone(),
            pdu.event_id.clone(),
            version.clone(),
            raw,
            Vec::new(),
        );
        request.invite_room_state = invite_room_state(invite_state);
        Ok(self.client.send(server, request).await?.event)
    }

    /// `PUT /v1/invite`: the body is the event itself, the room's stripped
    /// state in its `unsigned`; the answer is `[200, {"event": …}]`. Ruma's
    /// v1 request holds only some of the event's fields, so it is sent raw.
    async fn send_invite_v1(
        &self,
        server: &ServerName,
        pdu: &Pdu,
        invite_state: &[Pdu],
    ) -> std::result::Result<Box<RawValue>, FederationError> {
        let mut body = serde_json::to_value(pdus::outgoing_json(pdu))
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let stripped = crate::federation::stripped_events(&invite_room_state(invite_state));
        body["unsigned"]["invite_room_state"] = stripped.into();
        let segments = ["_matrix", "federation", "v1", "invite", pdu.room_id.as_str(), pdu.event_id.as_str()];
        let answer = self.client.put_json(server, &segments, &body).await?;
        #[derive(serde::Deserialize)]
        struct Invited {
            event: Box<RawValue>,
        }
        let (_, Invited { event }): (u16, Invited) =
            serde_json::from_slice(&answer).map_err(|e| FederationError::Invalid(e.to_string()))?;
        Ok(event)
    }

    /// `PUT /invite`: another server invites one of our users. Returns the
    /// invite with our signature added; a room this server is not in is kept
    /// as an invite stub the user sees in sync.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        room_version: &RoomVersionId,
        event: &RawValue,
        stripped: Vec<serde_json::Value>,
    ) -> Result<CanonicalJsonObject> {
        if !supported_room_version(room_version) {
            return Err(incompatible(room_version.clone()));
        }
        // A room this server is in: its ACL decides who may invite into it.
        self.require_acl(origin, room_id)?;
        if self.rooms.blocked_by(room_id)?.is_some() {
            return Err(Error::forbidden("This room has been blocked on this server"));
        }
        let pdu = self.verified(room_version, event).await?;
        let invitee = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let valid = pdu.event_id == event_id
            && pdu.room_id == room_id
            && pdu.kind == TimelineEventType::RoomMember
            && pdu.content_value()["membership"] == "invite"
            && pdu.sender.server_name() == origin;
        let Some(invitee) = invitee.filter(|u| valid && u.server_name() == self.config.server_name) else {
            return Err(Error::bad_json("Not an invite of a user of this server"));
        };
        let mut object = pdu.json.clone();
        pdus::add_signature(&mut object, room_version, &self.config.server_name, self.client.signing_key())
            .map_err(|e| Error::internal(e.to_string()))?;
        // A room none of our users is in (any more) gets no events from the
        // inviting server: the invite is kept out of band. When we are in
        // it, the invite comes as an event like any other. An invite of a
        // user who does not exist is signed as Synapse does (the spec lists
        // no error for it) and kept nowhere.
        let out_of_band = self.rooms.room(room_id)?.is_none() || !self.rooms.is_resident(room_id)?;
        if out_of_band && self.accounts.exists(&invitee)? {
            let signed = estuary_events::Pdu::from_json(
                pdu.event_id.clone(),
                Some(room_id.to_owned()),
                object.clone(),
            )
            .map_err(Error::internal)?;
            self.rooms.store_invite_stub(signed, room_version.clone(), stripped).await?;
        }
        object.remove("unsigned");
        Ok(object)
    }
}

/// The room state an invite carries, as full PDUs (spec v1.16).
fn invite_room_state(state: &[Pdu]) -> Vec<ruma::api::federation::membership::RawStrippedState> {
    let pdus = crate::federation::raw_pdus(state).into_iter();
    pdus.map(ruma::api::federation::membership::RawStrippedState::Pdu).collect()
}

/// How long after answering a `send_join` our members' presence follows.
const SEND_JOIN_PRESENCE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

fn share_presence_on_join(
    rooms: &crate::rooms::Rooms,
    presence: &crate::presence::Presence,
    user_is_ours: bool,
    room_id: &RoomId,
    user_id: &UserId,
) {
    let result = if user_is_ours {
        rooms.joined_servers(room_id).and_then(|servers| {
            let user = [user_id.to_owned()];
            servers.iter().try_for_each(|server| presence.share_with(server, &user))
        })
    } else {
        rooms
            .members_with_membership(room_id, "join")
            .and_then(|members| presence.share_with(user_id.server_name(), &members))
    };
    if let Err(err) = result {
        tracing::warn!(%room_id, %user_id, "could not share presence after a join: {err}");
    }
}

/// Whether a server's answer to `/v2/invite` calls for `/v1/invite`: a
/// 400 or a 404, as the spec says (the server may be older).
fn knows_no_v2(err: &FederationError) -> bool {
    matches!(err, FederationError::Status { status: 400 | 404, .. })
}

#[cfg(test)]
mod tests {
    use super::{FederationError, knows_no_v2};

    #[test]
    fn a_400_or_404_sends_an_invite_through_v1() {
        let status = |status, body: &str| FederationError::Status { status, body: body.to_owned() };
        assert!(knows_no_v2(&status(404, "")));
        assert!(knows_no_v2(&status(400, r#"{"errcode":"M_UNRECOGNIZED"}"#)));
        assert!(!knows_no_v2(&status(403, r#"{"errcode":"M_FORBIDDEN"}"#)));
        assert!(!knows_no_v2(&FederationError::Unreachable("down".into())));
    }
}
