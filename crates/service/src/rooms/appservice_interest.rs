//! Which appservices receive which events, decided in the append path: an
//! event is queued for an appservice in the batch that stores it, so it is
//! delivered if and only if it was committed.
//!
//! An appservice is interested in every event of a room where one of its
//! users is joined, whose ID is in its rooms namespace or that has an alias
//! in its aliases namespace (cached per room, since every event of the room
//! asks); and in any event one of its users sends or whose membership
//! changes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use estuary_core::Result;
use estuary_events::Pdu;
use estuary_storage::Batch;
use ruma::{OwnedRoomId, RoomId, UserId, events::TimelineEventType};

use super::{Rooms, StoredPdu, staging::Staged};
use crate::{
    appservices::{Appservice, Registry},
    outgoing::Job,
};

/// Above this many rooms the cache starts over (it refills on demand).
const MAX_CACHED_ROOMS: usize = 10_000;

/// The appservices interested in each room, for one registry generation.
#[derive(Default)]
pub(super) struct InterestCache {
    generation: u64,
    rooms: HashMap<OwnedRoomId, Arc<[Arc<Appservice>]>>,
}

pub(super) type Interest = Mutex<InterestCache>;

impl Rooms {
    /// The appservices interested in every event of `room_id`.
    pub fn appservices_in_room(&self, room_id: &RoomId) -> Result<Arc<[Arc<Appservice>]>> {
        let registry = self.appservices.registry();
        if registry.all.is_empty() {
            return Ok(Arc::from([]));
        }
        let generation = self.appservices.generation();
        {
            let cache = self.appservice_interest.lock().expect("appservice interest");
            if cache.generation == generation
                && let Some(found) = cache.rooms.get(room_id)
            {
                return Ok(found.clone());
            }
        }
        let found = self.compute_interest(&registry, room_id)?;
        let mut cache = self.appservice_interest.lock().expect("appservice interest");
        if cache.generation != generation || cache.rooms.len() >= MAX_CACHED_ROOMS {
            *cache = InterestCache { generation, rooms: HashMap::new() };
        }
        cache.rooms.insert(room_id.to_owned(), found.clone());
        Ok(found)
    }

    fn compute_interest(&self, registry: &Registry, room_id: &RoomId) -> Result<Arc<[Arc<Appservice>]>> {
        let members = self.members_with_membership(room_id, "join")?;
        let local_members: Vec<_> =
            members.iter().filter(|m| m.server_name() == self.config.server_name).collect();
        let aliases = self.room_aliases(room_id)?;
        Ok(registry
            .all
            .iter()
            .filter(|a| {
                a.is_room_in_namespace(room_id)
                    || aliases.iter().any(|alias| a.is_alias_in_namespace(alias))
                    || local_members.iter().any(|m| a.is_user_in_namespace(m))
            })
            .cloned()
            .collect())
    }

    /// The appservices that see `user_id`'s presence: those interested in a
    /// room the user is joined to, and those whose namespace holds the user.
    pub fn appservices_seeing(&self, user_id: &UserId) -> Result<Vec<Arc<Appservice>>> {
        let registry = self.appservices.registry();
        if registry.all.is_empty() {
            return Ok(Vec::new());
        }
        let mut seeing: Vec<Arc<Appservice>> =
            registry.all.iter().filter(|a| a.is_user_in_namespace(user_id)).cloned().collect();
        for room in self.rooms_with_membership(user_id, "join")? {
            for appservice in self.appservices_in_room(&room)?.iter() {
                if !seeing.iter().any(|a| a.id() == appservice.id()) {
                    seeing.push(appservice.clone());
                }
            }
        }
        Ok(seeing)
    }

    /// A room's members or aliases changed: work its interest out again.
    pub(super) fn forget_appservice_interest(&self, room_id: &RoomId) {
        self.appservice_interest.lock().expect("appservice interest").rooms.remove(room_id);
    }

    /// Queue the staged events for the appservices interested in them, in
    /// the events' batch. Returns whether anything was queued.
    pub(super) fn stage_appservice_fan_out(
        &self,
        room_id: &RoomId,
        staged: &[Staged],
        batch: &mut Batch,
    ) -> Result<bool> {
        let registry = self.appservices.registry();
        if registry.all.is_empty() {
            return Ok(false);
        }
        let in_room = self.appservices_in_room(room_id)?;
        let mut queued = false;
        for event in staged {
            let interested: Vec<_> = (registry.all.iter())
                .filter(|a| a.registration.url.is_some())
                .filter(|a| in_room.iter().any(|r| r.id() == a.id()) || self.involves(a, &event.pdu))
                .collect();
            if interested.is_empty() {
                continue;
            }
            let as_event = self.client_event(event.stored.clone(), None)?.into_json();
            for appservice in interested {
                let job = Job::AppserviceEvent { as_event: as_event.clone() };
                self.outgoing.stage(batch, &appservice.destination(), job);
                queued = true;
            }
        }
        Ok(queued)
    }

    /// An invite from another server to a room this server is not in (kept
    /// as a stub, outside the append path): queued for the appservice of
    /// the invitee, with the room's stripped state as clients get it.
    pub(super) fn stage_invite_for_appservices(
        &self,
        invite: &StoredPdu,
        stripped: &[serde_json::Value],
        batch: &mut Batch,
    ) -> Result<bool> {
        let pdu = invite.pdu()?;
        let mut as_event = self.client_event(invite.clone(), None)?.into_json();
        as_event["unsigned"]["invite_room_state"] = serde_json::Value::from(stripped.to_vec());
        let mut queued = false;
        for appservice in self.appservices.registry().all.iter().filter(|a| a.registration.url.is_some()) {
            if self.involves(appservice, &pdu) {
                let job = Job::AppserviceEvent { as_event: as_event.clone() };
                self.outgoing.stage(batch, &appservice.destination(), job);
                queued = true;
            }
        }
        Ok(queued)
    }

    /// Whether one of the appservice's (local) users sent the event or is
    /// the member it is about.
    fn involves(&self, appservice: &Appservice, pdu: &Pdu) -> bool {
        let ours = |user: &UserId| {
            user.server_name() == self.config.server_name && appservice.is_user_in_namespace(user)
        };
        ours(&pdu.sender)
            || (pdu.kind == TimelineEventType::RoomMember
                && pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()).is_some_and(|u| ours(&u)))
    }
}
