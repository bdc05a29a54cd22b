//! Simplified sliding sync (MSC4186), as Element X and matrix-rust-sdk use
//! it: room lists ordered by recency, each room with the state and timeline
//! its list asks for, and the extensions (to-device, E2EE, account data,
//! receipts, typing).
//!
//! Each answer is computed from what the connection already has (its state
//! at the request's `pos`, `connections.rs`) and the server's streams, with
//! `/sync`'s own readers: the same timeline (history visibility, ignored
//! users, bundled aggregations), lazy members, unread counts and summary.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use estuary_core::{Error, Result, error::ErrorKind};
use ruma::{
    DeviceId, OwnedRoomId, RoomId, UInt, UserId,
    api::client::{
        filter::FilterDefinition,
        sync::sync_events::v5::{self, request},
    },
    directory::RoomTypeFilter,
    events::StateEventType,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Sync, Window, bump::membership_position, connections::ConnectionState, object, sliding_extensions::Scope,
};
use crate::rooms::StoredPdu;

/// The longest timeline a list or subscription may ask for.
const MAX_TIMELINE_LIMIT: usize = 1000;

/// A room the user may see in lists, with its place in them.
pub(super) struct ListEntry {
    pub room_id: OwnedRoomId,
    pub membership: String,
    pub bump_stamp: u64,
}

/// What the lists and subscriptions that include a room ask of it, merged.
/// A list's configuration is built once and shared by its rooms.
pub(super) struct RoomConfig {
    required_state: BTreeSet<(String, String)>,
    /// `required_state` as a test, for the syncing user.
    pub(super) required: RequiredState,
    pub(super) timeline_limit: usize,
    /// A hash of both: a room whose configuration changes starts over.
    pub(super) fingerprint: u64,
}

impl RoomConfig {
    fn new(user: &UserId, required_state: &[(StateEventType, String)], timeline_limit: UInt) -> Self {
        let required_state = required_state.iter().map(|(t, k)| (t.to_string(), k.clone())).collect();
        let timeline_limit = (u64::from(timeline_limit) as usize).min(MAX_TIMELINE_LIMIT);
        Self::hashed(user, required_state, timeline_limit)
    }

    fn hashed(user: &UserId, required_state: BTreeSet<(String, String)>, timeline_limit: usize) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        required_state.hash(&mut hasher);
        timeline_limit.hash(&mut hasher);
        let required = RequiredState::new(&required_state, user);
        Self { required_state, required, timeline_limit, fingerprint: hasher.finish() }
    }

    /// The union of two configurations (the longer timeline).
    fn merged(&self, user: &UserId, other: &RoomConfig) -> Self {
        let required_state = self.required_state.union(&other.required_state).cloned().collect();
        Self::hashed(user, required_state, self.timeline_limit.max(other.timeline_limit))
    }
}

/// Add `config` for the room at `index` of the list entries.
fn want(
    wanted: &mut BTreeMap<usize, Arc<RoomConfig>>,
    user: &UserId,
    index: usize,
    config: &Arc<RoomConfig>,
) {
    match wanted.get_mut(&index) {
        None => {
            wanted.insert(index, config.clone());
        }
        Some(existing) if Arc::ptr_eq(existing, config) => {}
        Some(existing) => *existing = Arc::new(existing.merged(user, config)),
    }
}

/// `required_state` as a test on (type, state key); `$ME` is the user and
/// `$LAZY` (for members) the senders of the timeline.
pub(super) struct RequiredState {
    pairs: HashSet<(String, String)>,
    any_key: HashSet<String>,
    any_type: HashSet<String>,
    everything: bool,
    pub lazy_members: bool,
}

impl RequiredState {
    fn new(required_state: &BTreeSet<(String, String)>, user: &UserId) -> Self {
        let mut wanted = Self {
            pairs: HashSet::new(),
            any_key: HashSet::new(),
            any_type: HashSet::new(),
            everything: false,
            lazy_members: false,
        };
        for (kind, key) in required_state {
            match (kind.as_str(), key.as_str()) {
                ("*", "*") => wanted.everything = true,
                ("m.room.member", "$LAZY") => wanted.lazy_members = true,
                ("*", key) => {
                    wanted.any_type.insert(if key == "$ME" { user.to_string() } else { key.to_owned() });
                }
                (kind, "*") => {
                    wanted.any_key.insert(kind.to_owned());
                }
                (kind, "$ME") => {
                    wanted.pairs.insert((kind.to_owned(), user.to_string()));
                }
                (kind, key) => {
                    wanted.pairs.insert((kind.to_owned(), key.to_owned()));
                }
            }
        }
        wanted
    }

    pub fn wants(&self, kind: &str, key: &str) -> bool {
        self.everything
            || self.any_key.contains(kind)
            || self.any_type.contains(key)
            || self.pairs.contains(&(kind.to_owned(), key.to_owned()))
    }

    /// Whether no (type, state key) is asked for (`$LAZY` aside).
    pub(super) fn matches_nothing(&self) -> bool {
        !self.everything && self.pairs.is_empty() && self.any_key.is_empty() && self.any_type.is_empty()
    }
}

/// One sliding sync request, as the service reads it.
pub(super) struct Answer<'a> {
    pub w: Window<'a>,
    pub device: &'a DeviceId,
    pub base: &'a ConnectionState,
    pub request: &'a v5::Request,
    /// Rooms with events after the connection's last answer, and rooms
    /// with receipts or typing (both empty on a new connection, where
    /// every room is new).
    pub changed_events: HashSet<OwnedRoomId>,
    pub changed_ephemeral: HashSet<OwnedRoomId>,
}

impl Answer<'_> {
    /// Whether anything happened in the room after the last answer.
    pub fn changed(&self, room_id: &RoomId) -> bool {
        self.changed_events.contains(room_id) || self.changed_ephemeral.contains(room_id)
    }
}

pub fn unknown_pos() -> Error {
    Error::matrix(400, ErrorKind::UnknownPos, "Unknown position: start the connection again")
}

impl Sync {
    /// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
    pub async fn sliding_sync(
        &self,
        user: &UserId,
        device: &DeviceId,
        request: v5::Request,
    ) -> Result<JsonValue> {
        check_bounds(&request)?;
        let key = (user.to_owned(), device.to_owned());
        let conn_id = request.conn_id.clone().unwrap_or_default();
        let pos = request.pos.as_deref();
        let base = self.connections.resume(&key, &conn_id, pos).ok_or_else(unknown_pos)?;
        self.presence.touch(user, request.set_presence.as_str())?;
        // A new connection answers at once; so does `timeout=0`.
        let timeout = match pos {
            None => Duration::ZERO,
            Some(_) => request.timeout.unwrap_or(Duration::ZERO).min(Duration::from_secs(300)),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let waiter = self.streams.waiter(user);
        let filter = FilterDefinition::default();
        loop {
            // Register for wake-ups before reading, so no change slips between.
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let w = Window {
                user,
                device: Some(device),
                since: (base.stream > 0).then_some(base.stream + 1),
                to: self.streams.current(),
                filter: &filter,
                full_state: false,
                use_state_after: false,
                ignored: self.ignored_users(user)?,
                account_data: Default::default(),
            };
            let (changed_events, changed_ephemeral) = self.rooms_changed_after(&w)?;
            let answer =
                Answer { w, device, base: &base, request: &request, changed_events, changed_ephemeral };
            let (mut response, state, updates) = self.sliding_answer(&answer)?;
            if updates || tokio::time::Instant::now() >= deadline {
                let position = self.connections.store(&key, &conn_id, state);
                response["pos"] = position.to_string().into();
                if let Some(txn_id) = &request.txn_id {
                    response["txn_id"] = txn_id.as_str().into();
                }
                return Ok(response);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The answer, the connection's state after it, and whether it carries
    /// anything new.
    fn sliding_answer(&self, a: &Answer<'_>) -> Result<(JsonValue, ConnectionState, bool)> {
        let user = a.w.user;
        // A connection of extensions only (Element X's encryption sync) needs no rooms.
        let entries = match a.request.lists.is_empty() && a.request.room_subscriptions.is_empty() {
            true => Vec::new(),
            false => self.list_entries(a)?,
        };
        let dm_rooms = self.dm_rooms(user)?;
        // Rooms wanted, by their index in `entries`.
        let mut wanted: BTreeMap<usize, Arc<RoomConfig>> = BTreeMap::new();
        let mut scope = Scope { list_rooms: BTreeMap::new(), subscribed: BTreeSet::new() };
        let mut lists = Map::new();
        let mut list_counts = BTreeMap::new();
        for (name, list) in &a.request.lists {
            let mut matching = Vec::new();
            for (index, entry) in entries.iter().enumerate() {
                if self.passes_list_filters(user, list.filters.as_ref(), entry, &dm_rooms)? {
                    matching.push(index);
                }
            }
            let details = &list.room_details;
            let config = Arc::new(RoomConfig::new(user, &details.required_state, details.timeline_limit));
            // Overlapping ranges name a room once.
            let mut in_ranges: BTreeSet<usize> = BTreeSet::new();
            for (start, end) in &list.ranges {
                let start = usize::try_from(u64::from(*start)).unwrap_or(usize::MAX);
                let end = usize::try_from(u64::from(*end)).unwrap_or(usize::MAX).min(matching.len());
                in_ranges.extend(matching.iter().skip(start).take((end + 1).saturating_sub(start)).copied());
            }
            for index in &in_ranges {
                want(&mut wanted, user, *index, &config);
            }
            let rooms_in_ranges = in_ranges.iter().map(|i| entries[*i].room_id.clone()).collect();
            scope.list_rooms.insert(name.clone(), rooms_in_ranges);
            lists.insert(name.clone(), json!({"count": matching.len()}));
            list_counts.insert(name.clone(), matching.len() as u64);
        }
        let by_room: HashMap<&RoomId, usize> =
            entries.iter().enumerate().map(|(index, e)| (&*e.room_id, index)).collect();
        for (room_id, subscription) in &a.request.room_subscriptions {
            // Only rooms the user is in, was invited to or may still see.
            if let Some(index) = by_room.get(&**room_id) {
                let config = Arc::new(RoomConfig::new(
                    user,
                    &subscription.required_state,
                    subscription.timeline_limit,
                ));
                want(&mut wanted, user, *index, &config);
                scope.subscribed.insert(room_id.clone());
            }
        }
        let mut state = ConnectionState { stream: a.w.to, rooms: a.base.rooms.clone(), list_counts };
        let mut rooms = Map::new();
        for (index, config) in &wanted {
            let entry = &entries[*index];
            let is_dm = self.is_dm(user, entry, &dm_rooms)?;
            if let Some(room) = self.sliding_room(a, &mut state, entry, config, is_dm)? {
                rooms.insert(entry.room_id.to_string(), room);
            }
        }
        let (extensions, extension_updates) = self.sliding_extensions(a, &rooms, &scope)?;
        let updates = !rooms.is_empty() || a.base.list_counts != state.list_counts || extension_updates;
        let answer = object([
            ("lists", JsonValue::Object(lists)),
            ("rooms", JsonValue::Object(rooms)),
            ("extensions", extensions),
        ]);
        Ok((answer, state, updates))
    }

    /// Rooms with events, and rooms with receipts or typing, in the window.
    fn rooms_changed_after(&self, w: &Window<'_>) -> Result<(HashSet<OwnedRoomId>, HashSet<OwnedRoomId>)> {
        let Some(since) = w.since else { return Ok(Default::default()) };
        let events = self.rooms.rooms_changed(since, w.to)?.into_iter().collect();
        let ephemeral = self.ephemeral.rooms_changed(since, w.to)?.into_iter().collect();
        Ok((events, ephemeral))
    }

    /// The rooms the user's lists are drawn from, newest `bump_stamp` first:
    /// joined rooms, invites (not from ignored users), bans and kicks, and
    /// a room the user left until the connection has seen the leave.
    fn list_entries(&self, a: &Answer<'_>) -> Result<Vec<ListEntry>> {
        let user = a.w.user;
        let (mut joined, mut others) = (Vec::new(), Vec::new());
        for (room_id, membership) in self.rooms.memberships(user)? {
            match membership.as_str() {
                "join" => joined.push(room_id),
                "invite" | "leave" | "ban" => others.push((room_id, membership)),
                _ => {}
            }
        }
        let stamps = self.bumps.joined(&self.rooms, user, &joined, a.w.to)?;
        let mut entries: Vec<ListEntry> = joined
            .into_iter()
            .zip(stamps)
            .map(|(room_id, bump_stamp)| ListEntry { room_id, membership: "join".into(), bump_stamp })
            .collect();
        for (room_id, membership) in others {
            if self.rooms.is_forgotten(user, &room_id)? {
                continue;
            }
            // Read once: whether a leave was a kick, and the recency.
            let member = self.rooms.own_member_event(user, &room_id)?;
            let shown = match membership.as_str() {
                "invite" => !self.invited_by_ignored(&a.w, &room_id)?,
                "leave" => {
                    a.base.rooms.get(&room_id).is_some_and(|sent| sent.membership != "leave")
                        || member.as_ref().is_some_and(|m| is_kick(m, user))
                }
                _ => true,
            };
            if shown {
                let bump_stamp =
                    member.map(|m| membership_position(&self.rooms, m)).transpose()?.unwrap_or(0);
                entries.push(ListEntry { room_id, membership, bump_stamp });
            }
        }
        entries.sort_by(|a, b| b.bump_stamp.cmp(&a.bump_stamp).then_with(|| a.room_id.cmp(&b.room_id)));
        Ok(entries)
    }

    /// Rooms named in the user's `m.direct` account data.
    fn dm_rooms(&self, user: &UserId) -> Result<HashSet<String>> {
        let Ok(raw) = self.account_data.get(user, None, "m.direct") else { return Ok(HashSet::new()) };
        let direct: JsonValue = serde_json::from_str(raw.get()).unwrap_or_default();
        let rooms = direct.as_object().into_iter().flat_map(|m| m.values()).filter_map(|v| v.as_array());
        Ok(rooms.flatten().filter_map(|r| r.as_str().map(str::to_owned)).collect())
    }

    fn passes_list_filters(
        &self,
        user: &UserId,
        filters: Option<&request::ListFilters>,
        entry: &ListEntry,
        dm_rooms: &HashSet<String>,
    ) -> Result<bool> {
        let Some(filters) = filters else { return Ok(true) };
        if filters.is_invite.is_some_and(|want| want != (entry.membership == "invite")) {
            return Ok(false);
        }
        if let Some(want) = filters.is_dm
            && want != self.is_dm(user, entry, dm_rooms)?
        {
            return Ok(false);
        }
        if let Some(want) = filters.is_encrypted
            && want != self.room_state_content(user, entry, "m.room.encryption")?.is_some()
        {
            return Ok(false);
        }
        if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
            let create = self.room_state_content(user, entry, "m.room.create")?.unwrap_or_default();
            let room_type = create["type"].as_str();
            let is = |f: &RoomTypeFilter| f.as_str() == room_type;
            if !filters.room_types.is_empty() && !filters.room_types.iter().any(is) {
                return Ok(false);
            }
            if filters.not_room_types.iter().any(is) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A DM is a room in `m.direct`, or an invite marked `is_direct`.
    fn is_dm(&self, user: &UserId, entry: &ListEntry, dm_rooms: &HashSet<String>) -> Result<bool> {
        if dm_rooms.contains(entry.room_id.as_str()) {
            return Ok(true);
        }
        if entry.membership != "invite" {
            return Ok(false);
        }
        let invite = self.rooms.own_member_event(user, &entry.room_id)?;
        Ok(invite.is_some_and(|m| {
            m.json.get("content").and_then(|c| c.as_object()).and_then(|c| c.get("is_direct"))
                == Some(&ruma::CanonicalJsonValue::Bool(true))
        }))
    }

    /// The content of the room's state event of `kind` (state key ""): from
    /// the invite's stripped state for an invite.
    fn room_state_content(&self, user: &UserId, entry: &ListEntry, kind: &str) -> Result<Option<JsonValue>> {
        if entry.membership == "invite" {
            let stripped = self.stripped_state(user, &entry.room_id)?;
            return Ok(stripped
                .into_iter()
                .find(|e| e["type"] == kind && e["state_key"] == "")
                .map(|e| e["content"].clone()));
        }
        let Some(room) = self.rooms.room(&entry.room_id)? else { return Ok(None) };
        let state = self.rooms.current_state(&room)?;
        Ok(self.rooms.state_pdu(&state, &StateEventType::from(kind), "")?.map(|p| p.content_value()))
    }
}

/// Limits on one request's size, so that its work stays bounded.
const MAX_LISTS: usize = 100;
const MAX_RANGES: usize = 100;
const MAX_SUBSCRIPTIONS: usize = 1000;
const MAX_REQUIRED_STATE: usize = 1000;

fn check_bounds(request: &v5::Request) -> Result<()> {
    let too_many = |what: &str, limit: usize| Err(Error::invalid_param(format!("At most {limit} {what}")));
    if request.lists.len() > MAX_LISTS {
        return too_many("lists", MAX_LISTS);
    }
    if request.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return too_many("room subscriptions", MAX_SUBSCRIPTIONS);
    }
    for list in request.lists.values() {
        if list.ranges.len() > MAX_RANGES {
            return too_many("ranges per list", MAX_RANGES);
        }
        if list.room_details.required_state.len() > MAX_REQUIRED_STATE {
            return too_many("required_state entries", MAX_REQUIRED_STATE);
        }
    }
    if request.room_subscriptions.values().any(|s| s.required_state.len() > MAX_REQUIRED_STATE) {
        return too_many("required_state entries", MAX_REQUIRED_STATE);
    }
    Ok(())
}

/// Whether a leave was someone else's doing (a kick).
fn is_kick(member: &StoredPdu, user: &UserId) -> bool {
    member.sender() != Some(user.as_str())
}
