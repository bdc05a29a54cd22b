//! `/sync` (v3): what changed for a user since a token, waiting for the next
//! change when nothing did.
//!
//! Tokens are `s<N>`: the point just before stream position N, so they are
//! also valid `/messages` tokens. Every change of the server has a position
//! (`streams.rs`); an incremental sync reads positions `since..=current`,
//! touching only rooms that changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use estuary_core::{Error, Result};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
    events::StateEventType,
};
use serde_json::{Map, Value as JsonValue, json};

mod bump;
pub mod connections;
mod response;
mod sliding;
mod sliding_extensions;
mod sliding_room;

pub use response::SyncResponse;
use response::{DeviceLists, RoomEntry, RoomUpdates, SyncEvent, SyncRooms, Timeline};
pub use sliding::unknown_pos;

use crate::{
    account_data::AccountData,
    e2ee::E2ee,
    ephemeral::Ephemeral,
    presence::Presence,
    push::PushRules,
    rooms::{ClientEvent, Rooms, StateMap, StoredPdu, parse_token, passes, sender_wanted, type_wanted},
    streams::Streams,
    to_device::ToDevice,
};

pub struct SyncRequest {
    pub since: Option<String>,
    pub filter: FilterDefinition,
    pub full_state: bool,
    pub timeout: Duration,
    pub use_state_after: bool,
    /// `set_presence`: `online` (default), `unavailable` or `offline`.
    pub set_presence: String,
}

/// Member events each device has been sent, per room (lazy loading without
/// redundant members). In memory: after a restart members are sent again.
type SentMembers = HashMap<(OwnedUserId, Option<OwnedDeviceId>), HashMap<String, HashSet<String>>>;

pub struct Sync {
    /// Sliding sync connections (also dropped with their device).
    connections: Arc<connections::Connections>,
    bumps: bump::BumpStamps,
    e2ee: Arc<E2ee>,
    to_device: Arc<ToDevice>,
    sent_members: Mutex<SentMembers>,
    push: Arc<PushRules>,
    presence: Arc<Presence>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    ephemeral: Arc<Ephemeral>,
    streams: Arc<Streams>,
}

/// How lazy members are chosen.
#[derive(Clone, Copy)]
struct LazyMembers {
    /// `include_redundant_members`: send a member event again each time.
    redundant: bool,
    /// A member event in the timeline is not repeated as state (`/sync`);
    /// sliding sync clients read state only from `required_state`.
    skip_in_timeline: bool,
}

/// Where a room goes in the response: `rooms.join`, `invite`, `leave` or `knock`.
enum Section {
    Join,
    Invite,
    Leave,
    Knock,
}

/// Default timeline length when the filter does not set one.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
use crate::rooms::INVITE_STATE;

struct Window<'a> {
    user: &'a UserId,
    device: Option<&'a DeviceId>,
    /// First new position (None: initial sync).
    since: Option<u64>,
    to: u64,
    filter: &'a FilterDefinition,
    full_state: bool,
    use_state_after: bool,
    /// The user's `m.ignored_user_list`: their messages and invites are left out.
    ignored: BTreeSet<String>,
    /// The user's account data changed in the window: read once, when
    /// first needed (see `Sync::account_data_changes`), not once per room.
    account_data: OnceLock<Vec<AccountDataChange>>,
}

/// (room ID or "" for global, type, content).
type AccountDataChange = (String, String, Box<serde_json::value::RawValue>);

/// The services sync reads from.
pub struct SyncSources {
    pub rooms: Arc<Rooms>,
    pub account_data: Arc<AccountData>,
    pub ephemeral: Arc<Ephemeral>,
    pub streams: Arc<Streams>,
    pub push: Arc<PushRules>,
    pub presence: Arc<Presence>,
    pub to_device: Arc<ToDevice>,
    pub e2ee: Arc<E2ee>,
    pub connections: Arc<connections::Connections>,
}

impl Sync {
    pub fn new(sources: SyncSources) -> Self {
        Self {
            connections: sources.connections,
            bumps: bump::BumpStamps::default(),
            e2ee: sources.e2ee,
            to_device: sources.to_device,
            sent_members: Mutex::new(HashMap::new()),
            push: sources.push,
            presence: sources.presence,
            rooms: sources.rooms,
            account_data: sources.account_data,
            ephemeral: sources.ephemeral,
            streams: sources.streams,
        }
    }

    pub async fn sync(
        &self,
        user: &UserId,
        device: Option<&DeviceId>,
        request: SyncRequest,
    ) -> Result<SyncResponse> {
        let since = request.since.as_deref().map(parse_token).transpose()?;
        self.presence.touch(user, &request.set_presence)?;
        let deadline = tokio::time::Instant::now() + request.timeout.min(Duration::from_secs(300));
        let waiter = self.streams.waiter(user);
        loop {
            // Register for wake-ups before reading, so no change slips between.
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let to = match device {
                Some(device) => self.to_device.sync_end(user, device, since, self.streams.current())?,
                None => self.streams.current(),
            };
            let window = Window {
                user,
                device,
                since,
                to,
                filter: &request.filter,
                full_state: request.full_state,
                use_state_after: request.use_state_after,
                ignored: self.ignored_users(user)?,
                account_data: OnceLock::new(),
            };
            let response = self.build(&window)?;
            if since.is_none() || request.full_state || !response.is_empty() {
                return Ok(response);
            }
            tokio::select! {
                _ = &mut notified => continue,
                _ = tokio::time::sleep_until(deadline) => return Ok(response),
            }
        }
    }

    fn build(&self, w: &Window<'_>) -> Result<SyncResponse> {
        let from = w.since.unwrap_or(0);
        let candidates: BTreeSet<_> = match w.since {
            Some(since) if !w.full_state => {
                let mut rooms = self.rooms.rooms_changed(since, w.to)?;
                rooms.extend(self.ephemeral.rooms_changed(since, w.to)?);
                let account_data = self.account_data_changes(w)?;
                rooms.extend(account_data.iter().filter_map(|(r, _, _)| RoomId::parse(r).ok()));
                rooms
            }
            _ => ["join", "invite", "leave", "ban", "knock"]
                .iter()
                .map(|m| self.rooms.rooms_with_membership(w.user, m))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
        };
        let room_filter = &w.filter.room;
        let mut rooms = SyncRooms::default();
        for room_id in candidates.iter() {
            let excluded = room_filter.not_rooms.contains(room_id)
                || room_filter.rooms.as_ref().is_some_and(|only| !only.contains(room_id));
            if excluded {
                continue;
            }
            let Some((section, entry)) = self.room_entry(w, room_id, from)? else { continue };
            let section = match section {
                Section::Join => &mut rooms.join,
                Section::Invite => &mut rooms.invite,
                Section::Leave => &mut rooms.leave,
                Section::Knock => &mut rooms.knock,
            };
            section.insert(room_id.to_string(), entry);
        }
        rooms.peek = self.peeked_rooms(w, &candidates)?;
        let (otk_counts, fallback_types) = match w.device {
            Some(device) => (
                json!(self.e2ee.one_time_key_counts(w.user, device)?),
                json!(self.e2ee.unused_fallback_key_types(w.user, device)?),
            ),
            None => (json!({}), json!([])),
        };
        let (joined_users, parted_users) = match w.since {
            Some(since) => self.member_changes(w.user, since, w.to, &candidates)?,
            None => Default::default(),
        };
        let (device_changes, device_left) = match w.since {
            Some(since) => self.device_lists(w.user, since, w.to, &joined_users, parted_users)?,
            None => (Vec::new(), Vec::new()),
        };
        let to_device = match w.device {
            Some(device) => self.to_device.take(w.user, device, w.since, w.to)?,
            None => Vec::new(),
        };
        let presence = self.presence_events(w, &joined_users)?;
        let account_data = self.global_account_data(w)?;
        Ok(SyncResponse {
            next_batch: format!("s{}", w.to + 1),
            rooms,
            account_data: account_data.into(),
            presence: presence.into(),
            to_device: to_device.into(),
            device_lists: DeviceLists { changed: device_changes, left: device_left },
            device_one_time_keys_count: otk_counts,
            device_unused_fallback_key_types: fallback_types,
        })
    }

    /// A room's entry in the response, and the section it belongs to; none
    /// when the user forgot it, or nothing in it is new to the client.
    fn room_entry(
        &self,
        w: &Window<'_>,
        room_id: &RoomId,
        from: u64,
    ) -> Result<Option<(Section, RoomEntry)>> {
        if self.rooms.is_forgotten(w.user, room_id)? {
            return Ok(None);
        }
        let Some(membership) = self.rooms.membership(w.user, room_id)? else { return Ok(None) };
        // An initial sync shows every room from its start whatever its
        // last membership change.
        let changed_here = w.since.is_none()
            || self
                .rooms
                .membership_change_position(w.user, room_id)?
                .is_some_and(|p| p >= from && p <= w.to);
        let entry = match membership.as_str() {
            "join" => {
                self.joined_room(w, room_id, changed_here, changed_here)?.map(|e| (Section::Join, e.into()))
            }
            "invite" if (w.since.is_none() || changed_here) && !self.invited_by_ignored(w, room_id)? => {
                let state = self.stripped_state(w.user, room_id)?;
                Some((Section::Invite, RoomEntry::Json(json!({"invite_state": {"events": state}}))))
            }
            "knock" if w.since.is_none() || changed_here => {
                let state = self.stripped_state(w.user, room_id)?;
                Some((Section::Knock, RoomEntry::Json(json!({"knock_state": {"events": state}}))))
            }
            "leave" | "ban"
                if (w.since.is_some() && changed_here)
                    || (w.since.is_none() && w.filter.room.include_leave) =>
            {
                if let Some(entry) = self.declined_invite(w, room_id)? {
                    return Ok(Some((Section::Leave, RoomEntry::Json(entry))));
                }
                // A room joined and left within the window is new to the
                // client: it gets the room's state as on a join.
                let new_to_client = match w.since {
                    None => true,
                    Some(since) => !self.was_joined_at(w.user, room_id, since)?,
                };
                self.joined_room(w, room_id, true, new_to_client)?.map(|e| (Section::Leave, e.into()))
            }
            _ => None,
        };
        Ok(entry)
    }

    /// `/keys/changes`: the device-list changes between two sync positions.
    pub fn key_changes(&self, user: &UserId, from: u64, to: u64) -> Result<(Vec<String>, Vec<String>)> {
        let rooms = self.rooms.rooms_changed(from, to)?;
        let (joined, parted) = self.member_changes(user, from, to, &rooms)?;
        self.device_lists(user, from, to, &joined, parted)
    }

    /// Users who joined a room with the syncing user in the window (all
    /// members of a room the user joined) or were invited to one, and users
    /// who left one. `rooms` are those with events in the window.
    fn member_changes(
        &self,
        user: &UserId,
        since: u64,
        to: u64,
        rooms: &BTreeSet<OwnedRoomId>,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let (mut joined, mut parted) = (BTreeSet::new(), BTreeSet::new());
        for room_id in rooms {
            // Only rooms the user is or was in: who comes and goes elsewhere
            // on the server is not theirs to learn.
            if self.rooms.membership(user, room_id)?.is_none() {
                continue;
            }
            for change in self.rooms.member_changes(room_id, since, to)? {
                let affected = if change.user_id == user {
                    self.rooms.members_with_membership(room_id, "join")?
                } else {
                    vec![change.user_id]
                };
                let target = if change.is_joined || change.is_invited { &mut joined } else { &mut parted };
                target.extend(affected.into_iter().map(|u| u.to_string()));
            }
        }
        Ok((joined, parted))
    }

    /// `device_lists`: users whose keys changed or who now share a room with
    /// the syncing user (`changed`), and users who no longer share any (`left`).
    fn device_lists(
        &self,
        user: &UserId,
        since: u64,
        to: u64,
        joined: &BTreeSet<String>,
        parted: BTreeSet<String>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let changed = self.e2ee.key_changes_between(user, since, to)?;
        if changed.is_empty() && joined.is_empty() && parted.is_empty() {
            // The common case: nothing to narrow, so no room-mate scan.
            return Ok((Vec::new(), Vec::new()));
        }
        let mates: BTreeSet<String> =
            self.rooms.room_mates(user)?.into_iter().map(|u| u.to_string()).collect();
        let left: Vec<String> = parted.into_iter().filter(|u| !mates.contains(u)).collect();
        // Key changes of those sharing a room; and everyone who newly shares
        // one or is newly invited to one (not yet a room-mate).
        let mut changed: BTreeSet<String> = changed.into_iter().filter(|u| mates.contains(u)).collect();
        changed.extend(joined.iter().cloned());
        Ok((changed.into_iter().filter(|u| !left.contains(u)).collect(), left))
    }

    /// `m.presence` events: changes in the window, and the presence of
    /// everyone who newly shares a room with the user (offline when unknown),
    /// through the presence filter.
    fn presence_events(&self, w: &Window<'_>, newcomers: &BTreeSet<String>) -> Result<Vec<JsonValue>> {
        let filter = &w.filter.presence;
        if !type_wanted(&filter.types, &filter.not_types, "m.presence") {
            return Ok(Vec::new());
        }
        let mut events = self.presence.events(w.user, w.since, w.to)?;
        let newcomers = newcomers.iter().filter(|u| *u != w.user.as_str());
        let missing: Vec<&String> =
            newcomers.filter(|u| !events.iter().any(|e| e["sender"] == u.as_str())).collect();
        events.extend(self.presence.of_everyone(missing.into_iter().map(String::as_str))?);
        events.retain(|e| {
            sender_wanted(&filter.senders, &filter.not_senders, e["sender"].as_str().unwrap_or_default())
        });
        Ok(events)
    }

    /// The user's global account data changed in the window (all of it
    /// initially, with the push rules even if never stored).
    fn global_account_data(&self, w: &Window<'_>) -> Result<Vec<JsonValue>> {
        let mut account_data: Vec<JsonValue> = self.account_data_events(w, None)?;
        let filter = &w.filter.account_data;
        if w.since.is_none()
            && type_wanted(&filter.types, &filter.not_types, "m.push_rules")
            && !account_data.iter().any(|e| e["type"] == "m.push_rules")
        {
            account_data.push(json!({"type": "m.push_rules", "content": self.push.content(w.user)?}));
        }
        Ok(account_data)
    }

    /// The user's account data changed in the window (all of it without
    /// `since` or with `full_state`).
    fn account_data_changes<'w>(&self, w: &'w Window<'_>) -> Result<&'w [AccountDataChange]> {
        if let Some(changes) = w.account_data.get() {
            return Ok(changes);
        }
        let from = if w.full_state { 0 } else { w.since.unwrap_or(0) };
        let changes = self.account_data.changes(w.user, from, w.to)?;
        Ok(w.account_data.get_or_init(|| changes))
    }

    fn account_data_events(&self, w: &Window<'_>, room: Option<&RoomId>) -> Result<Vec<JsonValue>> {
        let want = room.map(|r| r.to_string()).unwrap_or_default();
        let (types, not_types) = match room {
            Some(_) => (&w.filter.room.account_data.types, &w.filter.room.account_data.not_types),
            None => (&w.filter.account_data.types, &w.filter.account_data.not_types),
        };
        Ok(self
            .account_data_changes(w)?
            .iter()
            .filter(|(r, kind, _)| *r == want && type_wanted(types, not_types, kind))
            .map(|(_, kind, content)| {
                json!({"type": kind, "content": serde_json::from_str::<JsonValue>(content.get()).unwrap_or_default()})
            })
            .collect())
    }

    /// A joined (or newly left) room's section. A room the user just joined
    /// is synced like an initial sync: the latest events and the state before them.
    fn joined_room(
        &self,
        w: &Window<'_>,
        room_id: &RoomId,
        membership_changed: bool,
        from_start: bool,
    ) -> Result<Option<RoomUpdates>> {
        let timeline_filter: &RoomEventFilter = &w.filter.room.timeline;
        let limit = timeline_filter.limit.map_or(DEFAULT_TIMELINE_LIMIT, |l| u64::from(l) as usize).min(500);
        let from = if from_start { 0 } else { w.since.unwrap_or(0) };
        let (timeline, mut limited) = self.timeline(w, room_id, from, w.to, limit)?;
        if from_start && w.since.is_some() && !limited {
            // A room new to the client in an incremental sync: its timeline
            // does not continue anything the client has, unless it starts
            // at the room's creation.
            limited = timeline.first().is_some_and(|e| e.kind() != Some("m.room.create"));
        }
        let account_data = self.account_data_events(w, Some(room_id))?;
        let since_for_ephemeral = if w.full_state { None } else { w.since };
        let ephemeral: Vec<JsonValue> = [
            self.ephemeral.typing_event(room_id, since_for_ephemeral, w.to),
            self.ephemeral.receipt_event(w.user, room_id, since_for_ephemeral, w.to)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        if w.since.is_some()
            && timeline.is_empty()
            && !limited
            && account_data.is_empty()
            && ephemeral.is_empty()
            && !membership_changed
            && !w.full_state
        {
            return Ok(None);
        }
        let room = self.rooms.require_room(room_id)?;
        let start_state: Arc<StateMap> = match timeline.first() {
            Some(first) => self.rooms.load_state(first.stored().state_before)?,
            None => self.rooms.state_at_position(room_id, w.to)?.unwrap_or(self.rooms.current_state(&room)?),
        };
        let full = w.since.is_none() || from_start || w.full_state;
        let base = match (full, w.since) {
            (false, Some(since)) => self.rooms.state_at_position(room_id, since.saturating_sub(1))?,
            _ => None,
        };
        let state_events =
            if full || limited { self.rooms.state_delta(&start_state, base.as_deref())? } else { Vec::new() };
        let senders: BTreeSet<String> =
            timeline.iter().filter_map(|e| e.sender().map(str::to_owned)).collect();
        let state_events =
            self.with_lazy_members(w, room_id, state_events, &start_state, &timeline, &senders, full)?;
        let prev_batch = timeline.first().map_or(from, |e| e.stored().stream);
        let (unread, unread_threads) = self.unread(w, room_id)?;
        // `state_after` needs the timeline's last event, which the entry takes.
        let end_state = match (w.use_state_after, timeline.last()) {
            (false, _) => None,
            (true, Some(last)) => Some(self.rooms.load_state(last.stored().state_after)?),
            (true, None) => Some(start_state.clone()),
        };
        let mut entry = RoomUpdates {
            timeline: Timeline {
                events: timeline.into_iter().map(|e| in_format(w, e)).collect(),
                limited,
                prev_batch: format!("s{prev_batch}"),
            },
            state: None,
            state_after: None,
            account_data: account_data.into(),
            ephemeral: ephemeral.into(),
            unread_notifications: unread,
            unread_thread_notifications: w
                .filter
                .room
                .timeline
                .unread_thread_notifications
                .then_some(unread_threads),
            summary: self.summary(w.user, room_id)?,
        };
        if let Some(end_state) = end_state {
            let mut after = self.rooms.state_delta(&end_state, if full { None } else { base.as_deref() })?;
            if full {
                self.trim_lazy_members(w, &mut after, &senders);
            }
            entry.state_after = Some(self.state_json(w, after)?.into());
        } else {
            entry.state = Some(self.state_json(w, state_events)?.into());
        }
        Ok(Some(entry))
    }

    /// The room's latest events in `from..=to` that the user may see and
    /// the timeline filter passes, oldest first, at most `limit`, with their
    /// bundled aggregations; and whether older ones were left out.
    fn timeline(
        &self,
        w: &Window<'_>,
        room_id: &RoomId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<(Vec<ClientEvent>, bool)> {
        let timeline_filter: &RoomEventFilter = &w.filter.room.timeline;
        let mut timeline = Vec::new();
        let mut limited = false;
        let mut upper = to;
        // Read only when an event is hidden: the room's current state, if the user is joined.
        let mut current_state: Option<Option<Arc<StateMap>>> = None;
        // Bounded: at most 50 pages of candidates; a longer gap counts as limited.
        let mut page_size = limit + 1;
        let joined_since = self.rooms.joined_since(w.user, room_id)?;
        for page in 0..50 {
            // Start with just enough events; grow the pages when a filter drops many.
            let (candidates, more) = self.rooms.room_events_between(room_id, from, upper, page_size)?;
            page_size = (page_size * 2).min(200);
            let read = candidates.len();
            for stored in candidates {
                upper = stored.stream.saturating_sub(1);
                // A joined member always sees the room's current state, also
                // where history visibility hides the moment it was set.
                if !self.rooms.can_see_room_event(Some(w.user), joined_since, &stored)? {
                    if current_state.is_none() {
                        current_state = Some(self.joined_current_state(w.user, room_id)?);
                    }
                    let current = current_state.as_ref().and_then(|s| s.as_deref());
                    if !current.is_some_and(|state| self.rooms.is_in_state(state, &stored).unwrap_or(false)) {
                        continue;
                    }
                }
                if stored.state_key().is_none() && stored.sender().is_some_and(|s| w.ignored.contains(s)) {
                    continue;
                }
                let event = self.rooms.client_event(stored, Some((w.user, w.device)))?;
                if !passes(timeline_filter, &event) {
                    continue;
                }
                if timeline.len() == limit {
                    limited = true;
                    break;
                }
                timeline.push(event);
            }
            if limited || !more || read == 0 || upper < from {
                break;
            }
            if page == 49 {
                limited = true;
            }
        }
        timeline.reverse();
        self.rooms.bundle_aggregations_all(w.user, &mut timeline)?;
        Ok((timeline, limited))
    }

    /// With lazy loading, a full state (initial sync, a newly joined room)
    /// holds only the members of the timeline's senders and the user; an
    /// incremental one keeps every membership change of the gap, as the
    /// client's member list is maintained by them. The member events of the
    /// timeline's senders (as of the timeline's start) are added either way,
    /// once per device unless `include_redundant_members`.
    #[allow(clippy::too_many_arguments)]
    fn with_lazy_members(
        &self,
        w: &Window<'_>,
        room_id: &RoomId,
        mut events: Vec<StoredPdu>,
        start_state: &StateMap,
        timeline: &[ClientEvent],
        timeline_senders: &BTreeSet<String>,
        full: bool,
    ) -> Result<Vec<StoredPdu>> {
        let redundant = match w.filter.room.state.lazy_load_options {
            LazyLoadOptions::Disabled => return Ok(events),
            LazyLoadOptions::Enabled { include_redundant_members } => include_redundant_members,
        };
        if full {
            self.trim_lazy_members(w, &mut events, timeline_senders);
        }
        let device_key = (w.user.to_owned(), w.device.map(|d| d.to_owned()));
        let mut sent = self.sent_members.lock().expect("sent members");
        if w.since.is_none() {
            sent.remove(&device_key);
        }
        if sent.len() > 10_000 {
            sent.clear();
        }
        let already = sent.entry(device_key).or_default();
        let known_here = already.entry(room_id.to_string()).or_default();
        let rules = LazyMembers { redundant, skip_in_timeline: true };
        self.add_sender_members(start_state, timeline, &mut events, known_here, rules)?;
        Ok(events)
    }

    /// Add to `events` the member events (in `state`) of the timeline's
    /// senders that the client lacks: not among `events`, nor (as `rules`
    /// say) in the timeline or, unless redundant ones are wanted, in `known`
    /// (the member events it was sent before). Everything the client now
    /// has is added to `known`.
    fn add_sender_members(
        &self,
        state: &StateMap,
        timeline: &[ClientEvent],
        events: &mut Vec<StoredPdu>,
        known: &mut HashSet<String>,
        rules: LazyMembers,
    ) -> Result<()> {
        let in_timeline: BTreeSet<&str> = match rules.skip_in_timeline {
            true => timeline.iter().map(|e| e.event_id().as_str()).collect(),
            false => BTreeSet::new(),
        };
        // Only member events are looked up here, so only they are kept.
        let is_member = |e: &ClientEvent| e.kind() == Some("m.room.member");
        for stored in events.iter().filter(|s| s.kind() == Some("m.room.member")) {
            known.insert(stored.event_id.to_string());
        }
        for event in timeline.iter().filter(|e| rules.skip_in_timeline && is_member(e)) {
            known.insert(event.event_id().to_string());
        }
        let senders: BTreeSet<&str> = timeline.iter().filter_map(ClientEvent::sender).collect();
        for sender in senders {
            let Some(pdu) = self.rooms.state_pdu(state, &StateEventType::RoomMember, sender)? else {
                continue;
            };
            let have = events.iter().any(|s| s.event_id == pdu.event_id);
            let sent_before = !rules.redundant && known.contains(pdu.event_id.as_str());
            if !have
                && !sent_before
                && !in_timeline.contains(pdu.event_id.as_str())
                && let Some(stored) = self.rooms.stored(&pdu.event_id)?
            {
                known.insert(stored.event_id.to_string());
                events.push(stored);
            }
        }
        Ok(())
    }

    /// With lazy loading, drop the member events of anyone but the user and
    /// the timeline's senders.
    fn trim_lazy_members(&self, w: &Window<'_>, events: &mut Vec<StoredPdu>, senders: &BTreeSet<String>) {
        if matches!(w.filter.room.state.lazy_load_options, LazyLoadOptions::Disabled) {
            return;
        }
        events.retain(|stored| {
            let is_member = stored.kind() == Some("m.room.member");
            let key = stored.state_key().unwrap_or_default();
            !is_member || key == w.user.as_str() || senders.contains(key)
        });
    }

    /// State events through the state filter, in the filter's format.
    fn state_json(&self, w: &Window<'_>, events: Vec<StoredPdu>) -> Result<Vec<SyncEvent>> {
        let mut out = Vec::new();
        for stored in events {
            let event = self.rooms.client_event(stored, None)?.without_replaced_content();
            if passes(&w.filter.room.state, &event) {
                out.push(in_format(w, event));
            }
        }
        Ok(out)
    }

    /// Notification and highlight counts since the user's read receipt,
    /// split by thread when the filter asks for it.
    fn unread(&self, w: &Window<'_>, room_id: &RoomId) -> Result<(JsonValue, JsonValue)> {
        let read = self.ephemeral.read_position(w.user, room_id)?;
        let split = w.filter.room.timeline.unread_thread_notifications;
        let mut main = (0u64, 0u64);
        let mut threads: Map<String, JsonValue> = Map::new();
        for (thread, (notifications, highlights)) in self.rooms.unread_counts(w.user, room_id, read)?.iter() {
            match thread.as_ref().filter(|_| split) {
                Some(root) => {
                    let counts = json!({"notification_count": notifications, "highlight_count": highlights});
                    threads.insert(root.clone(), counts);
                }
                None => {
                    main.0 += notifications;
                    main.1 += highlights;
                }
            }
        }
        Ok((json!({"notification_count": main.0, "highlight_count": main.1}), JsonValue::Object(threads)))
    }

    /// `rooms.peek` (MSC2753): the syncing device's peeks into rooms it is
    /// not in, like joined rooms; a peek new to the client gets the room
    /// from its latest events.
    fn peeked_rooms(
        &self,
        w: &Window<'_>,
        candidates: &BTreeSet<OwnedRoomId>,
    ) -> Result<BTreeMap<String, RoomEntry>> {
        let mut peek = BTreeMap::new();
        let Some(device) = w.device else { return Ok(peek) };
        for (room_id, started) in self.rooms.device_peeks(w.user, device)? {
            if self.rooms.membership(w.user, &room_id)?.as_deref() == Some("join") {
                continue;
            }
            let new_peek = w.since.is_none_or(|since| started >= since);
            if !new_peek && !candidates.contains(&room_id) {
                continue;
            }
            if let Some(entry) = self.joined_room(w, &room_id, new_peek, new_peek)? {
                peek.insert(room_id.to_string(), entry.into());
            }
        }
        Ok(peek)
    }

    /// A declined invite to a room this server is not in: the leave alone.
    fn declined_invite(&self, w: &Window<'_>, room_id: &RoomId) -> Result<Option<JsonValue>> {
        let Some(stub) = self.rooms.out_of_band_membership(w.user, room_id)? else { return Ok(None) };
        let Some(stored) = self.rooms.stored(&stub.event_id)? else { return Ok(None) };
        let prev_batch = format!("s{}", stored.stream);
        let event = in_format(w, self.rooms.client_event(stored, Some((w.user, w.device)))?);
        Ok(Some(json!({
            "timeline": {"events": [event], "limited": false, "prev_batch": prev_batch},
            "state": {"events": []},
            "account_data": {"events": []},
        })))
    }

    /// The room's current state, when the user is joined to it.
    fn joined_current_state(&self, user: &UserId, room_id: &RoomId) -> Result<Option<Arc<StateMap>>> {
        if self.rooms.membership(user, room_id)?.as_deref() != Some("join") {
            return Ok(None);
        }
        Ok(Some(self.rooms.current_state(&self.rooms.require_room(room_id)?)?))
    }

    /// Whether the user was joined to the room just before stream position `position`.
    fn was_joined_at(&self, user: &UserId, room_id: &RoomId, position: u64) -> Result<bool> {
        let Some(state) = self.rooms.state_at_position(room_id, position.saturating_sub(1))? else {
            return Ok(false);
        };
        let member = self.rooms.state_pdu(&state, &StateEventType::RoomMember, user.as_str())?;
        Ok(member.is_some_and(|m| m.content_value()["membership"] == "join"))
    }

    /// The users `user` ignores (`m.ignored_user_list` account data).
    fn ignored_users(&self, user: &UserId) -> Result<BTreeSet<String>> {
        let Ok(raw) = self.account_data.get(user, None, "m.ignored_user_list") else {
            return Ok(BTreeSet::new());
        };
        let list: JsonValue = serde_json::from_str(raw.get()).unwrap_or_default();
        Ok(list["ignored_users"].as_object().map(|users| users.keys().cloned().collect()).unwrap_or_default())
    }

    /// Whether the user's pending invite to the room came from someone they ignore.
    fn invited_by_ignored(&self, w: &Window<'_>, room_id: &RoomId) -> Result<bool> {
        if w.ignored.is_empty() {
            return Ok(false);
        }
        let invite = match (self.rooms.invite_stub(w.user, room_id)?, self.rooms.room(room_id)?) {
            (Some(stub), _) => self.rooms.pdu(&stub.event_id)?,
            (None, Some(room)) => {
                let state = self.rooms.current_state(&room)?;
                let member = ruma::events::StateEventType::RoomMember;
                self.rooms.state_pdu(&state, &member, w.user.as_str())?
            }
            (None, None) => None,
        };
        Ok(invite.is_some_and(|invite| w.ignored.contains(invite.sender.as_str())))
    }

    /// Member counts, and heroes (up to five other members, by user ID) for
    /// a room with neither a name nor a canonical alias to show.
    fn summary(&self, user: &UserId, room_id: &RoomId) -> Result<JsonValue> {
        let [joined, invited, left] = self.rooms.joined_invited_and_left(room_id)?;
        let counts = (joined.len(), invited.len());
        let mut summary = json!({"m.joined_member_count": counts.0, "m.invited_member_count": counts.1});
        if !self.rooms.is_named(room_id)? {
            let others = |members: Vec<ruma::OwnedUserId>| members.into_iter().filter(|u| u != user);
            let mut heroes: Vec<_> = others(joined).chain(others(invited)).collect();
            if heroes.is_empty() {
                // Everyone else left: the room is named after those who did.
                heroes = others(left).collect();
            }
            heroes.sort();
            heroes.truncate(5);
            summary["m.heroes"] = json!(heroes);
        }
        Ok(summary)
    }

    /// Stripped state for an invite or knock: the room's key state and the user's membership.
    fn stripped_state(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        // An invite to (or knock on) a room this server is not in: what its server sent.
        if let Some(stub) = self.rooms.pending_out_of_band(user, room_id)? {
            let mut events = stub.stripped;
            if let Some(invite) = self.rooms.pdu(&stub.event_id)? {
                events.push(json!({"type": "m.room.member", "state_key": invite.state_key, "content": invite.content_value(), "sender": invite.sender}));
            }
            return Ok(events);
        }
        let Some(room) = self.rooms.room(room_id)? else { return Ok(Vec::new()) };
        let state = self.rooms.current_state(&room)?;
        let mut events = Vec::new();
        let keys = INVITE_STATE
            .iter()
            .map(|t| (StateEventType::from(*t), String::new()))
            .chain([(StateEventType::RoomMember, user.to_string())]);
        for (kind, key) in keys {
            if let Some(pdu) = self.rooms.state_pdu(&state, &kind, &key)? {
                events.push(json!({"type": pdu.kind.to_string(), "state_key": pdu.state_key, "content": pdu.content_value(), "sender": pdu.sender}));
            }
        }
        Ok(events)
    }
}

/// A JSON object of `fields`, moved in: `json!` would deep-copy each
/// interpolated value (it goes through `to_value`), and a sync answer is
/// mostly such values.
pub(crate) fn object<const N: usize>(fields: [(&str, JsonValue); N]) -> JsonValue {
    JsonValue::Object(fields.into_iter().map(|(key, value)| (key.to_owned(), value)).collect())
}

/// An event in the filter's `event_format`: as clients see it, or as the
/// PDU servers exchange (with its ID, and the client form's `unsigned`).
fn in_format(w: &Window<'_>, client: ClientEvent) -> SyncEvent {
    if w.filter.event_format != ruma::api::client::filter::EventFormat::Federation {
        // Sync's events are `ClientEventWithoutRoomID`: the room is the key
        // they are listed under.
        return SyncEvent::Client(client.without_room_id());
    }
    let stored = client.stored();
    let mut pdu = serde_json::to_value(&stored.json).unwrap_or_default();
    pdu["event_id"] = stored.event_id.as_str().into();
    pdu["room_id"] = stored.room_id.as_str().into();
    pdu["unsigned"] = client.into_json()["unsigned"].take();
    SyncEvent::Federation(pdu)
}

/// A filter ID or inline definition, resolved.
pub fn unknown_filter() -> Error {
    Error::not_found("Unknown filter")
}
