//! Rooms this server learns of from another server: a room one of our
//! users joins through a resident server (`send_join` gives its state and
//! auth chain, stored as outliers: known, not in the timeline), and an
//! invite to a room this server is not in yet (kept with the stripped state
//! the inviting server sent, until the user joins or declines; a declined
//! invite leaves the leave event in its place, so the user's sync shows
//! the room as left).

use estuary_core::{Error, Result};
use estuary_events::Pdu;
use estuary_storage::codec::Json;
use ruma::{RoomId, RoomVersionId, UserId, events::StateEventType};
use serde::{Deserialize, Serialize};

use super::{
    RoomRecord, Rooms, StoredPdu,
    remote::{PrevEvents, Received},
    staging::{FanOut, Staging},
};
use crate::storage_error::StorageResultExt;

/// State shown to an invitee before joining (stripped, or as PDUs over
/// federation).
pub const INVITE_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
    // Beyond the spec's list: tells an invited guest's server whether
    // guests may join.
    "m.room.guest_access",
];

/// A user's membership in a room this server is not in (an "out-of-band"
/// membership): an invite, a knock, or the leave that declined or
/// retracted one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteStub {
    /// The invite, the knock, or the leave that ended one.
    pub event_id: ruma::OwnedEventId,
    pub room_version: RoomVersionId,
    /// The stripped state the other server sent (name, avatar, …).
    pub stripped: Vec<serde_json::Value>,
    /// `invite`, `knock`, or `leave` (older stubs are invites).
    #[serde(default = "invite_membership")]
    pub membership: String,
    /// For a knock: the server it went through (where a retraction goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<ruma::OwnedServerName>,
}

fn invite_membership() -> String {
    "invite".to_owned()
}

impl Rooms {
    /// Enter a room through a resident server's `send_join` answer: the
    /// state before our join and its auth chain become outliers, the state
    /// the room's snapshot here, and our join its next event. The join's
    /// `prev_events` are the resident server's latest events, which this
    /// server need not have (a room it never was in, or one it left): the
    /// returned state stands for them, and they become the extremities the
    /// join extends. A rejoin works the same way on the existing room.
    pub async fn enter_remote_room(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
        join: Pdu,
    ) -> Result<()> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let existing = self.room(room_id)?;
        if existing.is_some() && self.stored(&join.event_id)?.is_some() {
            return Ok(());
        }
        if !state.iter().any(|p| p.kind == ruma::events::TimelineEventType::RoomCreate) {
            return Err(Error::forbidden("The resident server's state has no create event"));
        }
        let mut staging = self.staging(None)?;
        let (id, snapshot) = self.stage_given_state(&mut staging, room_id, &state, &auth_chain)?;
        staging.state = snapshot;
        let mut depth = 0;
        for pdu in &state {
            depth = depth.max(pdu.depth);
            if let (ruma::events::TimelineEventType::RoomMember, Some(member)) = (&pdu.kind, &pdu.state_key) {
                self.index_membership(pdu, &mut staging.batch)?;
                // While we were out, their servers sent us no device updates.
                self.forget_remote_devices(member, &mut staging.batch);
            }
        }
        staging.room = Some(RoomRecord {
            room_version: room_version.clone(),
            state: id,
            extremities: join.prev_events.clone(),
            depth: existing.map_or(depth, |room| room.depth.max(depth)),
        });
        let user = join.state_key.clone().unwrap_or_default();
        match self.stage_remote_join(&mut staging, join)? {
            Received::Accepted => {}
            other => return Err(Error::forbidden(format!("The join was refused: {other:?}"))),
        }
        staging.batch.delete(&self.useridroomid_invite, &(user, room_id.to_string()));
        self.persist(staging).await
    }

    fn stage_remote_join(&self, staging: &mut Staging, join: Pdu) -> Result<Received> {
        // The resident server sends our join to the room's other servers.
        self.stage_remote_checked(staging, join, FanOut::None, PrevEvents::StandForState)
    }

    /// An event known but not in the timeline (no stream position).
    pub(super) fn stage_outlier(&self, staging: &mut Staging, pdu: &Pdu) -> Result<()> {
        if self.staged_pdu(staging, &pdu.event_id)?.is_some() {
            return Ok(());
        }
        let short = self.staged_event_short(staging, &pdu.event_id)?;
        let stored = StoredPdu {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            json: pdu.json.clone().into(),
            stream: 0,
            state_before: 0,
            state_after: 0,
            txn: None,
            rejected: false,
            state_from_peer: false,
        };
        self.put_stored(&mut staging.batch, stored);
        staging.note_event(short, pdu);
        Ok(())
    }

    /// Keep an invite of one of our users to a room this server is not in:
    /// the membership, the stub with the stripped state, and the invite
    /// event in the stream so the user's sync shows it.
    pub async fn store_invite_stub(
        &self,
        invite: Pdu,
        room_version: RoomVersionId,
        stripped: Vec<serde_json::Value>,
    ) -> Result<()> {
        let stub = InviteStub {
            event_id: invite.event_id.clone(),
            room_version,
            stripped,
            membership: invite_membership(),
            via: None,
        };
        self.store_out_of_band_membership(invite, stub).await
    }

    /// Keep one of our users' knock on a room this server is not in, sent
    /// through `via`, with the stripped state that server answered.
    pub async fn store_knock(
        &self,
        knock: Pdu,
        room_version: RoomVersionId,
        stripped: Vec<serde_json::Value>,
        via: ruma::OwnedServerName,
    ) -> Result<()> {
        let event_id = knock.event_id.clone();
        let stub =
            InviteStub { event_id, room_version, stripped, membership: "knock".to_owned(), via: Some(via) };
        self.store_out_of_band_membership(knock, stub).await
    }

    /// Decline an invite to (or retract a knock on) a room this server is
    /// not in: `leave` (sent to the other server, or built here when it
    /// could not be reached) takes its place, and the user's sync shows the
    /// room as left.
    pub async fn store_declined_invite(&self, leave: Pdu) -> Result<()> {
        let user = UserId::parse(leave.state_key.clone().unwrap_or_default())
            .map_err(|e| Error::bad_json(e.to_string()))?;
        let stub = self.pending_out_of_band(&user, &leave.room_id)?;
        let stub = stub.ok_or_else(|| Error::not_found("No invite to or knock on this room"))?;
        let stub = InviteStub { event_id: leave.event_id.clone(), membership: "leave".to_owned(), ..stub };
        self.store_out_of_band_membership(leave, stub).await
    }

    /// The user's membership event in a room this server is not in: the
    /// membership index, the stub, and the event in the stream.
    async fn store_out_of_band_membership(&self, event: Pdu, stub: InviteStub) -> Result<()> {
        let room_id = event.room_id.clone();
        let lock = self.room_lock(&room_id);
        let _guard = lock.lock().await;
        let user = event.state_key.clone().unwrap_or_default();
        let mut batch = self.db.batch();
        self.index_membership(&event, &mut batch)?;
        let invite_state = (stub.membership == "invite").then(|| stub.stripped.clone());
        batch.put(&self.useridroomid_invite, &(user.clone(), room_id.to_string()), &Json(stub));
        let room_key = room_id.to_string();
        let event_id = event.event_id.to_string();
        let mut stored = StoredPdu {
            event_id: event.event_id.clone(),
            room_id: room_id.clone(),
            json: event.json.clone().into(),
            stream: 0,
            state_before: 0,
            state_after: 0,
            txn: None,
            rejected: false,
            state_from_peer: false,
        };
        let for_appservices = match &invite_state {
            Some(stripped) => self.stage_invite_for_appservices(&stored, stripped, &mut batch)?,
            None => false,
        };
        self.streams.commit_many(batch, 1, |stream, batch| {
            stored.stream = stream;
            self.put_stored(batch, stored.clone());
            batch.put(&self.roomidstream_eventid, &(room_key.clone(), stream), &event_id);
            batch.put(&self.stream_roomideventid, &stream, &Json((room_key.clone(), event_id.clone())));
        })?;
        if for_appservices {
            self.outgoing.wake();
        }
        if let Ok(user) = UserId::parse(&user) {
            self.streams.notify(std::iter::once(&*user));
        }
        Ok(())
    }

    /// Invite a user of another server: the invite is built and authorised
    /// here, then `countersign` asks the invitee's server to sign it (with
    /// the room's key state as PDUs for its user to see), and the signed
    /// event is persisted. The room's lock is held throughout, so the
    /// invite's place in the DAG stays valid.
    pub async fn invite_remote<F, Fut>(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: estuary_events::PduTemplate,
        countersign: F,
    ) -> Result<()>
    where
        F: FnOnce(Pdu, RoomVersionId, Vec<Pdu>) -> Fut,
        Fut: std::future::Future<Output = Result<ruma::CanonicalJsonObject>>,
    {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self.require_room(room_id)?;
        let version = room.room_version.clone();
        let mut staging = self.staging(Some(room))?;
        let pdu = self.build_local(&staging, room_id, sender, template)?;
        self.authorize(&staging, &pdu, &version)?;
        let mut invite_state = Vec::new();
        for kind in INVITE_STATE {
            if let Some(event) = self.staged_state_pdu(&staging, &StateEventType::from(*kind), "")? {
                invite_state.push(event);
            }
        }
        if let Some(member) = self.staged_state_pdu(&staging, &StateEventType::RoomMember, sender.as_str())? {
            invite_state.push(member);
        }
        let signed = countersign(pdu.clone(), version.clone(), invite_state).await?;
        // The invitee's server may only add its signature: the same event ID
        // means the same event.
        let event_id = estuary_events::federation::event_id(&signed, &version)
            .map_err(|e| Error::bad_json(format!("The invitee's server returned an invalid invite: {e}")))?;
        if event_id != pdu.event_id {
            return Err(Error::forbidden("The invitee's server altered the invite"));
        }
        let mut signed =
            Pdu::from_json(event_id, Some(room_id.to_owned()), signed).map_err(Error::bad_json)?;
        signed.json.remove("unsigned");
        self.stage(&mut staging, signed, None)?;
        self.persist(staging).await
    }

    /// The pending invite of a user to a room this server is not in.
    pub fn invite_stub(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<InviteStub>> {
        Ok(self.out_of_band_membership(user_id, room_id)?.filter(|stub| stub.membership == "invite"))
    }

    /// Whether the room state of the user's invite to a room this server is
    /// not in lets guests join (`m.room.guest_access` `can_join`).
    pub fn invited_guests_can_join(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        let Some(stub) = self.invite_stub(user_id, room_id)? else { return Ok(false) };
        Ok(stub.stripped.iter().any(|event| {
            event["type"] == "m.room.guest_access" && event["content"]["guest_access"] == "can_join"
        }))
    }

    /// The user's pending invite to, or knock on, a room this server is not in.
    pub fn pending_out_of_band(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<InviteStub>> {
        let stub = self.out_of_band_membership(user_id, room_id)?;
        Ok(stub.filter(|stub| stub.membership == "invite" || stub.membership == "knock"))
    }

    /// The user's out-of-band membership of a room this server is not in,
    /// pending or ended.
    pub fn out_of_band_membership(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<InviteStub>> {
        Ok(self.useridroomid_invite.get(&(user_id.to_string(), room_id.to_string())).db()?.map(|Json(s)| s))
    }
}
