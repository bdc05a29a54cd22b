//! Staging: events written in one batch, each authorised against the state
//! the ones before it leave. A send stages one event; `createRoom` stages a
//! whole room, so a room is stored whole or not at all. Nothing is committed
//! until the end, so every read made while staging looks at the staged
//! events before the database.

use std::{collections::HashMap, sync::Arc};

use estuary_core::Result;
use estuary_events::Pdu;
use estuary_storage::Batch;
use ruma::{EventId, OwnedEventId, events::StateEventType};

use super::{
    RoomRecord, Rooms, StoredPdu,
    state::{StateMap, StateStore},
};

pub(super) struct Staging<'a> {
    store: &'a StateStore,
    pub(super) batch: Batch,
    /// The room as it will be once the staged events are committed.
    pub(super) room: Option<RoomRecord>,
    /// The state after the last staged event.
    pub(super) state: Arc<StateMap>,
    pdus: HashMap<OwnedEventId, Pdu>,
    /// Short IDs of the staged events (not in `short_eventid` until commit),
    /// both ways.
    shorts: HashMap<u64, OwnedEventId>,
    short_of: HashMap<OwnedEventId, u64>,
    pub(super) staged: Vec<Staged>,
    /// State snapshots written by this batch (pending in the state store).
    pub(super) snapshots: Vec<u64>,
    /// Events from before the room's first event here (`/backfill`): they
    /// go into the room's history, not its live timeline, and change
    /// neither its current state nor anyone's membership.
    pub(super) history: bool,
    /// Received events kept outside the timeline (soft-failed or rejected):
    /// their state after, and whether rejected.
    pub(super) unlisted: HashMap<OwnedEventId, (u64, bool)>,
}

/// One staged event and the rows that need its stream position.
pub(super) struct Staged {
    pub(super) pdu: Pdu,
    pub(super) stored: StoredPdu,
    /// The user a join admits (for `useridroomid_joinstream`).
    pub(super) joined_user: Option<String>,
    /// Which servers of the room the event is sent to.
    pub(super) fan_out: FanOut,
}

/// Which servers in the room an event is sent to once committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanOut {
    /// Every other server (our own events).
    All,
    /// Every other server but this one (a join a server sent us to admit:
    /// it has the event already).
    AllBut(ruma::OwnedServerName),
    /// None (a remote event its origin sends to everyone itself).
    None,
}

impl Staging<'_> {
    pub(super) fn note_event(&mut self, short: u64, pdu: &Pdu) {
        self.shorts.insert(short, pdu.event_id.clone());
        self.short_of.insert(pdu.event_id.clone(), short);
        self.pdus.insert(pdu.event_id.clone(), pdu.clone());
    }
}

/// Staged snapshots of a batch that is dropped without committing are
/// forgotten (a commit settles them itself and leaves none here).
impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if !self.snapshots.is_empty() {
            self.store.settle(&self.snapshots, false);
        }
    }
}

impl Rooms {
    /// Start staging events into `room` (`None` for a new room).
    pub(super) fn staging(&self, room: Option<RoomRecord>) -> Result<Staging<'_>> {
        let state = match &room {
            Some(room) => self.state.load(room.state)?,
            None => Arc::new(StateMap::new()),
        };
        Ok(Staging {
            store: &self.state,
            batch: self.db.batch(),
            room,
            state,
            pdus: HashMap::new(),
            shorts: HashMap::new(),
            short_of: HashMap::new(),
            staged: Vec::new(),
            snapshots: Vec::new(),
            history: false,
            unlisted: HashMap::new(),
        })
    }

    /// The short ID of a staged or stored event, created if new.
    pub(super) fn staged_event_short(&self, staging: &mut Staging, event_id: &EventId) -> Result<u64> {
        if let Some(short) = staging.short_of.get(event_id) {
            return Ok(*short);
        }
        let short = self.short.event_short_or_create(event_id, &mut staging.batch)?;
        // A new short ID is only in the batch: remember it for reads.
        staging.shorts.insert(short, event_id.to_owned());
        staging.short_of.insert(event_id.to_owned(), short);
        Ok(short)
    }

    /// An event, staged or stored.
    pub(super) fn staged_pdu(&self, staging: &Staging, event_id: &EventId) -> Result<Option<Pdu>> {
        match staging.pdus.get(event_id) {
            Some(pdu) => Ok(Some(pdu.clone())),
            None => self.pdu(event_id),
        }
    }

    /// A new state snapshot in the batch: `parent` with `changes` set and
    /// `removed` gone (pending in the state store until the commit).
    pub(super) fn stage_snapshot(
        &self,
        staging: &mut Staging,
        parent: Option<u64>,
        changes: Vec<(u64, u64)>,
        removed: Vec<u64>,
    ) -> Result<(u64, Arc<StateMap>)> {
        let id = self.short.allocate();
        let state = self.state.store(id, parent, changes, removed, &mut staging.batch)?;
        staging.snapshots.push(id);
        Ok((id, state))
    }

    /// An event, staged or stored, unless it was rejected: what the
    /// authorization rules may read (a rejected event authorises nothing).
    pub(super) fn staged_accepted_pdu(&self, staging: &Staging, event_id: &EventId) -> Result<Option<Pdu>> {
        if let Some((_, rejected)) = staging.unlisted.get(event_id) {
            return Ok((!rejected).then(|| staging.pdus.get(event_id).cloned()).flatten());
        }
        if let Some(pdu) = staging.pdus.get(event_id) {
            return Ok(Some(pdu.clone()));
        }
        self.stored(event_id)?.filter(|stored| !stored.rejected).map(|stored| stored.pdu()).transpose()
    }

    /// The event ID of `(event_type, state_key)` in the staged state.
    pub(super) fn staged_state_event_id(
        &self,
        staging: &Staging,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let Some(key) = self.short.state_key_short(event_type, state_key)? else { return Ok(None) };
        match staging.state.get(&key) {
            Some(short) => self.staged_event_id(staging, *short),
            None => Ok(None),
        }
    }

    pub(super) fn staged_event_id(&self, staging: &Staging, short: u64) -> Result<Option<OwnedEventId>> {
        match staging.shorts.get(&short) {
            Some(id) => Ok(Some(id.clone())),
            None => self.short.event_id(short),
        }
    }

    /// The event of `(event_type, state_key)` in the staged state.
    pub(super) fn staged_state_pdu(
        &self,
        staging: &Staging,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        match self.staged_state_event_id(staging, event_type, state_key)? {
            Some(id) => self.staged_pdu(staging, &id),
            None => Ok(None),
        }
    }
}
