//! Rooms: the event DAG of every room, its state, memberships, and the one
//! append path every event goes through (`append.rs`).
//!
//! - `short`: event IDs and state keys interned to u64.
//! - `state`: state snapshots as shallow layers.
//! - `append`: build (local) → authorise and stage → `persist` the staged
//!   events in one batch → (fan out).
//! - `create`, `membership`, `read`, `directory`: what the client API needs.

mod admin;
mod append;
mod appservice_interest;
mod check;
mod client_event;
mod context;
mod create;
mod directory;
mod erasure;
mod event_cache;
mod history;
#[cfg(test)]
mod history_tests;
mod membership;
mod notify;
mod pdu_json;
mod peeks;
mod purge;
mod read;
mod relations;
mod remote;
mod remote_join;
#[cfg(test)]
mod remote_tests;
mod reports;
mod search_index;
mod short;
mod space;
mod staging;
pub mod state;
mod timeline;
mod unread;
mod upgrade;
mod visibility;

use std::sync::{Arc, Mutex};

use estuary_core::{Config, Error, Result};
use estuary_events::{Pdu, ServerSigningKey};
use estuary_storage::{Batch, Db, Table, codec::Json};
use ruma::{
    EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, events::StateEventType,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

pub use append::{Txn, unsupported_version};
pub use check::ConsistencyReport;
pub use client_event::ClientEvent;
pub use context::Context;
pub use create::{CreateRoom, Preset, supported_room_version};
pub use directory::{PublicRoomsPage, RoomList};
pub use history::{BackfillPoint, PrevWithState, StateAt};
pub use notify::NotificationRow;
pub use pdu_json::PduJson;
pub use purge::HistoryPurge;
pub use read::{Direction, MessagesPage, MessagesQuery, parse_token};
pub(crate) use read::{passes, sender_wanted, type_wanted};
pub use relations::{RelationsPage, RelationsQuery};
pub use remote::Received;
pub use remote_join::{INVITE_STATE, InviteStub};
pub use reports::{Report, ReportQuery};
pub use search_index::SEARCH_KEYS;
pub use staging::FanOut;
pub use state::StateMap;
pub(crate) use timeline::changes_membership;

use crate::{profile::Profiles, storage_error::StorageResultExt, streams::Streams};

/// `eventid_pdu`: an event as stored, with where it sits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// The signed PDU (after redaction, if it was redacted), parsed on demand.
    pub json: PduJson,
    /// Global stream position (orders all events of this server).
    pub stream: u64,
    pub state_before: u64,
    pub state_after: u64,
    /// The sending device and its transaction ID, echoed to that device only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<(OwnedDeviceId, String)>,
    /// Refused by the authorization rules: kept (outside the timeline, its
    /// state after the same as before) so that later events naming it in
    /// `prev_events` can be placed, but never an auth event or state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
    /// Placed with the state another server gave for it (an event before a
    /// gap): that state is the other server's word, so it is never served
    /// as the room's state at this event, as an outlier's is not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub state_from_peer: bool,
}

impl StoredPdu {
    /// The event's type, read without parsing the whole PDU.
    pub fn kind(&self) -> Option<&str> {
        self.json.client().kind.as_deref()
    }

    pub fn state_key(&self) -> Option<&str> {
        self.json.client().state_key.as_deref()
    }

    pub fn sender(&self) -> Option<&str> {
        self.json.client().sender.as_deref()
    }

    pub fn pdu(&self) -> Result<Pdu> {
        Pdu::from_json(self.event_id.clone(), Some(self.room_id.clone()), (*self.json).clone())
            .map_err(|e| Error::internal(format!("stored event {} is corrupt: {e}", self.event_id)))
    }
}

/// `roomid_room`: what the server knows of a room right now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub room_version: RoomVersionId,
    /// Current state snapshot.
    pub state: u64,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
}

/// `global` keys of the server signing key.
const SIGNING_KEY: &str = "signing_key_pkcs8";
const SIGNING_KEY_VERSION: &str = "signing_key_version";

pub struct Rooms {
    config: Arc<Config>,
    db: Db,
    key: Arc<ServerSigningKey>,
    /// Events for other servers leave through it (staged with the event).
    outgoing: Arc<crate::outgoing::Outgoing>,
    /// Registered appservices, and which of them each room's events reach.
    appservices: Arc<crate::appservices::Appservices>,
    appservice_interest: appservice_interest::Interest,
    short: short::ShortIds,
    state: state::StateStore,
    profiles: Arc<Profiles>,
    eventid_pdu: Table<String, Json<StoredPdu>>,
    roomidstream_eventid: Table<(String, u64), String>,
    roomidbackfill_eventid: Table<(String, u64), String>,
    stream_roomideventid: Table<u64, Json<(String, String)>>,
    roomid_room: Table<String, Json<RoomRecord>>,
    useridroomid_membership: Table<(String, String), String>,
    roomiduserid_membership: Table<(String, String), String>,
    useridroomid_forgotten: Table<(String, String), String>,
    /// E2ee's cache of other servers' users' devices: dropped here when
    /// sharing a room with them starts again (see `index_membership`).
    remote_device_lists: Table<String, Json<serde_json::Value>>,
    useridroomid_invite: Table<(String, String), Json<remote_join::InviteStub>>,
    useridroomid_joinstream: Table<(String, String), u64>,
    useriddevicetxn_eventid: Table<(String, String, String), String>,
    eventidstream_relation: Table<(String, u64), Json<relations::RelationRow>>,
    useridroomidstream_notification: Table<(String, String, u64), Json<notify::NotificationRow>>,
    useridstream_notification: Table<(String, u64), Json<notify::NotificationRow>>,
    /// Unread counts between syncs (see `unread.rs`).
    unread: unread::UnreadCache,
    /// Recently read stored events.
    events: event_cache::EventCache,
    push: Arc<crate::push::PushRules>,
    roomidthreadroot_latest: Table<(String, String), u64>,
    roomidthreadlatest_root: Table<(String, u64), String>,
    roomidts_eventid: Table<(String, u64, u64), String>,
    reportid_report: Table<u64, Json<reports::Report>>,
    alias_roomid: Table<String, String>,
    roomidalias_creator: Table<(String, String), String>,
    publicroomid: Table<String, String>,
    openroomid: Table<String, String>,
    erasures: erasure::Erasures,
    peeks: peeks::Peeks,
    networkroomid: Table<(String, String), String>,
    roomidtermstream_count: Table<(String, String, u64), u64>,
    tokenizer: crate::search::tokenize::Tokenizer,
    /// One writer per room at a time: prev_events and state stay consistent
    /// (see `Rooms::room_lock`).
    room_locks: crate::locks::KeyedLocks<OwnedRoomId>,
    /// The timestamp of the last create event built (see `create_ts`).
    last_create_ts: std::sync::atomic::AtomicU64,
    /// Aliases being written by a request right now (see `claim_alias`).
    aliases_claimed: Mutex<std::collections::HashSet<ruma::OwnedRoomAliasId>>,
    pub(crate) streams: Arc<Streams>,
    /// Serialises admins' read-modify-writes of `global` rows (blocked rooms).
    admin_lock: Mutex<()>,
}

/// The services rooms use.
pub struct RoomsDeps {
    pub profiles: Arc<Profiles>,
    pub streams: Arc<Streams>,
    pub push: Arc<crate::push::PushRules>,
    pub key: Arc<ServerSigningKey>,
    pub outgoing: Arc<crate::outgoing::Outgoing>,
    pub appservices: Arc<crate::appservices::Appservices>,
}

impl Rooms {
    pub fn new(config: Arc<Config>, db: &Db, deps: RoomsDeps) -> Result<Self> {
        let RoomsDeps { profiles, streams, push, key, outgoing, appservices } = deps;
        let stream_roomideventid: Table<u64, Json<(String, String)>> =
            db.table("stream_roomideventid").db()?;
        let rooms = Self {
            key,
            outgoing,
            appservices,
            appservice_interest: Default::default(),
            short: short::ShortIds::new(db)?,
            state: state::StateStore::new(db, config.memory_budget().state_cache)?,
            profiles,
            eventid_pdu: db.table("eventid_pdu").db()?,
            roomidstream_eventid: db.table("roomidstream_eventid").db()?,
            roomidbackfill_eventid: db.table("roomidbackfill_eventid").db()?,
            stream_roomideventid,
            roomid_room: db.table("roomid_room").db()?,
            useridroomid_membership: db.table("useridroomid_membership").db()?,
            roomiduserid_membership: db.table("roomiduserid_membership").db()?,
            useridroomid_forgotten: db.table("useridroomid_forgotten").db()?,
            remote_device_lists: db.table("remoteuserid_devicelist").db()?,
            useridroomid_invite: db.table("useridroomid_invite").db()?,
            useridroomid_joinstream: db.table("useridroomid_joinstream").db()?,
            useriddevicetxn_eventid: db.table("useriddevicetxn_eventid").db()?,
            eventidstream_relation: db.table("eventidstream_relation").db()?,
            useridroomidstream_notification: db.table("useridroomidstream_notification").db()?,
            useridstream_notification: db.table("useridstream_notification").db()?,
            push,
            roomidthreadroot_latest: db.table("roomidthreadroot_latest").db()?,
            roomidthreadlatest_root: db.table("roomidthreadlatest_root").db()?,
            roomidts_eventid: db.table("roomidts_eventid").db()?,
            reportid_report: db.table("reportid_report").db()?,
            admin_lock: Mutex::new(()),
            // Half of the other caches' share; push rules have the other half.
            unread: unread::UnreadCache::new(config.memory_budget().other_caches / 2),
            events: event_cache::EventCache::new(config.memory_budget().event_cache),
            alias_roomid: db.table("alias_roomid").db()?,
            roomidalias_creator: db.table("roomidalias_creator").db()?,
            publicroomid: db.table("publicroomid").db()?,
            openroomid: db.table("openroomid").db()?,
            erasures: erasure::Erasures::new(db)?,
            peeks: peeks::Peeks::new(db)?,
            networkroomid: db.table("networkroomid").db()?,
            roomidtermstream_count: db.table("roomidtermstream_count").db()?,
            tokenizer: crate::search::tokenize::Tokenizer::new(&config.search_language),
            room_locks: Default::default(),
            aliases_claimed: Mutex::default(),
            last_create_ts: Default::default(),
            streams,
            config,
            db: db.clone(),
        };
        rooms.index_threads_by_latest()?;
        Ok(rooms)
    }

    /// The highest stream position stored in the room tables.
    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: Table<u64, Json<(String, String)>> = db.table("stream_roomideventid").db()?;
        Ok(table.last().db()?.map(|(k, _)| k).unwrap_or(0))
    }

    /// State snapshots in memory: how many, and their bytes.
    pub fn state_cache_usage(&self) -> (usize, usize) {
        self.state.cache_usage()
    }

    pub fn signing_key(&self) -> &ServerSigningKey {
        &self.key
    }

    /// The write lock of a room. Locks nobody holds or waits for are
    /// dropped when the map doubles, so it grows with the rooms being
    /// written now, not with every room ever written.
    fn room_lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.room_locks.get(room_id)
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        Ok(self.roomid_room.get(&room_id.to_string()).db()?.map(|Json(r)| r))
    }

    pub fn require_room(&self, room_id: &RoomId) -> Result<RoomRecord> {
        self.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))
    }

    pub fn stored(&self, event_id: &EventId) -> Result<Option<StoredPdu>> {
        Ok(self.stored_many(&[event_id.to_string()])?.pop())
    }

    /// Several stored events, from the event cache or in one batched read,
    /// in the IDs' order; an ID with no stored event is left out.
    pub(crate) fn stored_many(&self, event_ids: &[String]) -> Result<Vec<StoredPdu>> {
        let mut found = self.events.get_many(event_ids);
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let epoch = self.events.epoch();
            let rows = self.eventid_pdu.multi_get(missing.iter().map(|&i| &event_ids[i])).db()?;
            for (&i, row) in missing.iter().zip(rows) {
                found[i] = row.map(|Json(stored)| stored);
            }
            let read: Vec<&StoredPdu> = missing.iter().filter_map(|&i| found[i].as_ref()).collect();
            self.events.keep(epoch, &read);
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// Write a stored event (new, or rewritten by a redaction) in `batch`.
    pub(crate) fn put_stored(&self, batch: &mut Batch, stored: StoredPdu) {
        let event_id = stored.event_id.to_string();
        batch.put(&self.eventid_pdu, &event_id, &Json(stored));
        self.events.forget_on_commit(batch, event_id);
    }

    /// Delete a stored event in `batch`.
    pub(crate) fn delete_stored(&self, batch: &mut Batch, event_id: &str) {
        batch.delete(&self.eventid_pdu, &event_id.to_owned());
        self.events.forget_on_commit(batch, event_id.to_owned());
    }

    /// Events held by the event cache, and their bytes.
    pub fn event_cache_usage(&self) -> (usize, usize) {
        self.events.usage()
    }

    pub fn pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        self.stored(event_id)?.map(|s| s.pdu()).transpose()
    }

    /// The event of `(event_type, state_key)` in snapshot `state`.
    /// Whether the event is the one a state snapshot holds for its
    /// (type, state key).
    pub fn is_in_state(&self, state: &state::StateMap, stored: &StoredPdu) -> Result<bool> {
        let (Some(kind), Some(state_key)) = (stored.kind(), stored.state_key()) else {
            return Ok(false);
        };
        let id = self.state_event_id(state, &StateEventType::from(kind), state_key)?;
        Ok(id.as_deref() == Some(&*stored.event_id))
    }

    pub fn state_event_id(
        &self,
        state: &state::StateMap,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let Some(key) = self.short.state_key_short(event_type, state_key)? else { return Ok(None) };
        match state.get(&key) {
            Some(short) => self.short.event_id(*short),
            None => Ok(None),
        }
    }

    pub fn state_pdu(
        &self,
        state: &state::StateMap,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        match self.state_event_id(state, event_type, state_key)? {
            Some(id) => self.pdu(&id),
            None => Ok(None),
        }
    }

    /// The current state of a room.
    pub fn current_state(&self, room: &RoomRecord) -> Result<Arc<state::StateMap>> {
        self.state.load(room.state)
    }

    /// Every event of a state snapshot.
    pub fn state_pdus(&self, state: &state::StateMap) -> Result<Vec<Pdu>> {
        let mut pdus = Vec::with_capacity(state.len());
        for short in state.values() {
            if let Some(id) = self.short.event_id(*short)?
                && let Some(pdu) = self.pdu(&id)?
            {
                pdus.push(pdu);
            }
        }
        pdus.sort_by(|a, b| (&a.kind, &a.state_key).cmp(&(&b.kind, &b.state_key)));
        Ok(pdus)
    }
}

/// `global` key of the keys this server signed with before a rotation:
/// JSON `{key ID: {"key": public key, "expired_ts": ms}}`.
const OLD_VERIFY_KEYS: &str = "old_verify_keys";

/// The keys this server signed with before (`old_verify_keys` of its key
/// response), so others still verify events it signed with them.
pub fn old_verify_keys(db: &Db) -> Result<serde_json::Map<String, JsonValue>> {
    let global: Table<String, String> = db.table("global").db()?;
    Ok(global
        .get(&OLD_VERIFY_KEYS.to_owned())
        .db()?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default())
}

/// Replace the signing key with a new one (run with the server stopped):
/// the old key's public half joins `old_verify_keys`, expired now.
/// Returns the old and the new key IDs.
pub fn rotate_signing_key(db: &Db) -> Result<(String, String)> {
    use base64::Engine;
    let old = load_or_create_signing_key(db)?;
    let mut old_keys = old_verify_keys(db)?;
    old_keys.insert(
        old.key_id(),
        json!({"key": old.public_key_base64(), "expired_ts": estuary_core::time::now_millis()}),
    );
    let version = format!("a_{}", crate::accounts::tokens::random_token(4));
    let key = ServerSigningKey::generate(&version).map_err(Error::internal)?;
    let global: Table<String, String> = db.table("global").db()?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut batch = db.batch();
    batch.put(&global, &SIGNING_KEY.to_owned(), &engine.encode(key.pkcs8()));
    batch.put(&global, &SIGNING_KEY_VERSION.to_owned(), &version);
    batch.put(&global, &OLD_VERIFY_KEYS.to_owned(), &JsonValue::Object(old_keys).to_string());
    batch.commit().db()?;
    tracing::info!(old = %old.key_id(), new = %key.key_id(), "rotated the server signing key");
    Ok((old.key_id(), key.key_id()))
}

pub fn load_or_create_signing_key(db: &Db) -> Result<ServerSigningKey> {
    use base64::Engine;
    let global: Table<String, String> = db.table("global").db()?;
    let engine = base64::engine::general_purpose::STANDARD;
    if let (Some(pkcs8), Some(version)) =
        (global.get(&SIGNING_KEY.to_owned()).db()?, global.get(&SIGNING_KEY_VERSION.to_owned()).db()?)
    {
        let bytes = engine.decode(pkcs8).map_err(|e| Error::internal(format!("stored signing key: {e}")))?;
        return ServerSigningKey::from_pkcs8(bytes, &version).map_err(Error::internal);
    }
    let version = format!("a_{}", crate::accounts::tokens::random_token(4));
    let key = ServerSigningKey::generate(&version).map_err(Error::internal)?;
    let mut batch = db.batch();
    batch.put(&global, &SIGNING_KEY.to_owned(), &engine.encode(key.pkcs8()));
    batch.put(&global, &SIGNING_KEY_VERSION.to_owned(), &version);
    batch.commit().db()?;
    tracing::info!(key_id = %key.key_id(), "generated the server signing key");
    Ok(key)
}
