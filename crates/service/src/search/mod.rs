//! `POST /search` (room events): full-text search over the index
//! `rooms/search_index.rs` keeps, in the rooms the user is in, honouring
//! history visibility at each event.

pub mod tokenize;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use estuary_core::{Error, Result};
use ruma::{OwnedRoomId, RoomId, UserId, api::client::filter::RoomEventFilter, events::StateEventType};
use serde_json::{Value as JsonValue, json};

use crate::rooms::{ClientEvent, Direction, MessagesQuery, Rooms, SEARCH_KEYS, StoredPdu, passes};
use tokenize::Tokenizer;

/// Postings read per (room, field, term): bounds a search over very common
/// words; ranking then covers the newest matches.
const POSTINGS_CAP: usize = 5000;

/// A term with at most this many postings in a room is read whole and
/// drives the search; beyond it, it is "common".
const PROBE: usize = 256;

/// Postings read at a time when only the newest matches are wanted.
const PAGE: usize = 512;

pub struct SearchRequest {
    pub term: String,
    /// `content.body`, `content.name`, `content.topic`; empty means all.
    pub keys: Vec<String>,
    pub filter: RoomEventFilter,
    pub order_by_rank: bool,
    pub next_batch: Option<String>,
    /// (before_limit, after_limit, include_profile).
    pub event_context: Option<(usize, usize, bool)>,
    pub include_state: bool,
    pub group_by_room: bool,
    pub group_by_sender: bool,
}

struct Hit {
    room_id: OwnedRoomId,
    stream: u64,
    rank: u64,
}

pub struct Search {
    rooms: Arc<Rooms>,
}

impl Search {
    pub fn new(rooms: Arc<Rooms>) -> Self {
        Self { rooms }
    }

    pub fn search(&self, user: &UserId, request: &SearchRequest) -> Result<JsonValue> {
        let words: Vec<String> = {
            let mut seen = BTreeSet::new();
            Tokenizer::words(&request.term).into_iter().filter(|w| seen.insert(w.clone())).collect()
        };
        let fields = self.fields(&request.keys)?;
        let limit = request.filter.limit.map_or(10, |l| u64::from(l) as usize).clamp(1, 100);
        let skip = parse_batch(request.next_batch.as_deref())?;
        let rooms = self.searchable_rooms(user, &request.filter)?;
        let mut hits = Vec::new();
        if !words.is_empty() {
            let terms: BTreeSet<String> = words.iter().map(|w| self.rooms.search_term(w)).collect();
            // Recency needs only each room's newest matches (with room for
            // some to be invisible); rank needs them all.
            let wanted = (!request.order_by_rank).then(|| 2 * (skip + limit) + 10);
            for room_id in &rooms {
                hits.extend(self.room_hits(room_id, &terms, &fields, wanted)?);
            }
        }
        if request.order_by_rank {
            hits.sort_by(|a, b| b.rank.cmp(&a.rank).then(b.stream.cmp(&a.stream)));
        } else {
            hits.sort_by_key(|h| std::cmp::Reverse(h.stream));
        }
        // Check events only until the page is full (and one more shows a next
        // page); the rest of the candidates count unchecked, as the spec's
        // "approximate count" allows.
        let mut results = Vec::new();
        let mut count = 0usize;
        let mut checked = 0usize;
        for hit in &hits {
            if count > skip + results.len() {
                break;
            }
            checked += 1;
            let Some(stored) = self.rooms.event_at_stream(&hit.room_id, hit.stream)? else { continue };
            if !self.rooms.can_see_event(Some(user), &stored)? {
                continue;
            }
            let event = self.rooms.client_event(stored.clone(), None)?;
            if !passes(&request.filter, &event) {
                continue;
            }
            count += 1;
            if count > skip && results.len() < limit {
                results.push((hit, stored, event.into_json()));
            }
        }
        let count = count + (hits.len() - checked);
        let next_batch = (count > skip + results.len()).then(|| (skip + results.len()).to_string());
        self.respond(user, request, &words, results, count, next_batch)
    }

    /// The field letters to search, from the request's `keys`.
    fn fields(&self, keys: &[String]) -> Result<Vec<char>> {
        if keys.is_empty() {
            return Ok(SEARCH_KEYS.iter().map(|(_, f)| *f).collect());
        }
        keys.iter()
            .map(|key| {
                SEARCH_KEYS
                    .iter()
                    .find(|(name, _)| name == key)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| Error::invalid_param(format!("Cannot search key {key}")))
            })
            .collect()
    }

    /// Rooms the user is in, narrowed by the filter's `rooms`/`not_rooms`.
    fn searchable_rooms(&self, user: &UserId, filter: &RoomEventFilter) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .rooms
            .rooms_with_membership(user, "join")?
            .into_iter()
            .filter(|r| !filter.not_rooms.contains(r))
            .filter(|r| filter.rooms.as_ref().is_none_or(|only| only.contains(r)))
            .collect())
    }

    /// A term's postings across the searched fields, newest first, at most `limit`.
    fn postings(
        &self,
        room_id: &RoomId,
        term: &str,
        fields: &[char],
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<(u64, u64)>> {
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        for field in fields {
            for (stream, count) in
                self.rooms.search_postings(room_id, &format!("{field}:{term}"), before, limit)?
            {
                *merged.entry(stream).or_default() += count;
            }
        }
        Ok(merged.into_iter().rev().take(limit).collect())
    }

    /// Occurrences of a term in one event, across the searched fields.
    fn occurrences(&self, room_id: &RoomId, term: &str, fields: &[char], stream: u64) -> Result<u64> {
        let mut total = 0;
        for field in fields {
            total += self.rooms.search_count(room_id, &format!("{field}:{term}"), stream)?;
        }
        Ok(total)
    }

    /// Events of one room holding every term (in any searched field), ranked
    /// by how often the terms occur. The rarest term drives: its postings
    /// are the candidates and the other terms are point lookups. In recency
    /// order only the newest `wanted` matches are needed from each room.
    fn room_hits(
        &self,
        room_id: &RoomId,
        terms: &BTreeSet<String>,
        fields: &[char],
        wanted: Option<usize>,
    ) -> Result<Vec<Hit>> {
        let mut probes = Vec::new();
        for term in terms {
            let probe = self.postings(room_id, term, fields, PROBE + 1, None)?;
            if probe.is_empty() {
                return Ok(Vec::new());
            }
            probes.push((term, probe));
        }
        probes.sort_by_key(|(_, p)| p.len());
        let (driver, probe) = probes.remove(0);
        // The other terms: whole posting maps when small (or when ranking
        // many candidates), else point lookups per candidate.
        let bulk = wanted.is_none() && probe.len() > PROBE;
        let mut others = Vec::new();
        for (term, probe) in probes {
            let map: Option<HashMap<u64, u64>> = if probe.len() <= PROBE {
                Some(probe.into_iter().collect())
            } else if bulk {
                Some(self.postings(room_id, term, fields, POSTINGS_CAP, None)?.into_iter().collect())
            } else {
                None
            };
            others.push((term, map));
        }
        let mut hits = Vec::new();
        let mut cursor = None;
        let mut read = 0;
        let mut page = if probe.len() <= PROBE { probe } else { Vec::new() };
        let complete = !page.is_empty();
        loop {
            if page.is_empty() && !complete {
                let size = if wanted.is_some() { PAGE } else { POSTINGS_CAP };
                page = self.postings(room_id, driver, fields, size, cursor)?;
            }
            if page.is_empty() {
                break;
            }
            read += page.len();
            cursor = page.last().map(|(stream, _)| *stream);
            'candidates: for (stream, mut rank) in page.drain(..) {
                for (term, map) in &others {
                    let count = match map {
                        Some(map) => map.get(&stream).copied().unwrap_or(0),
                        None => self.occurrences(room_id, term, fields, stream)?,
                    };
                    if count == 0 {
                        continue 'candidates;
                    }
                    rank += count;
                }
                hits.push(Hit { room_id: room_id.to_owned(), stream, rank });
                if wanted.is_some_and(|w| hits.len() >= w) {
                    return Ok(hits);
                }
            }
            if complete || wanted.is_none() || read >= POSTINGS_CAP {
                break;
            }
        }
        Ok(hits)
    }

    fn respond(
        &self,
        user: &UserId,
        request: &SearchRequest,
        words: &[String],
        results: Vec<(&Hit, StoredPdu, JsonValue)>,
        count: usize,
        next_batch: Option<String>,
    ) -> Result<JsonValue> {
        let mut out_results = Vec::new();
        let mut by_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (hit, stored, event) in &results {
            let mut entry = json!({"rank": hit.rank, "result": event});
            if let Some((before, after, profiles)) = request.event_context {
                entry["context"] = self.context(user, stored, before, after, profiles)?;
            }
            let event_id = stored.event_id.to_string();
            by_room.entry(stored.room_id.to_string()).or_default().push(event_id.clone());
            by_sender
                .entry(event["sender"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(event_id);
            out_results.push(entry);
        }
        let mut room_events = json!({
            "results": out_results,
            "count": count,
            "highlights": words,
        });
        if let Some(next_batch) = next_batch {
            room_events["next_batch"] = next_batch.into();
        }
        if request.include_state {
            let mut state = serde_json::Map::new();
            for room_id in by_room.keys() {
                if let Ok(room_id) = RoomId::parse(room_id) {
                    state.insert(room_id.to_string(), self.rooms.room_state(user, &room_id)?.into());
                }
            }
            room_events["state"] = state.into();
        }
        let mut groups = serde_json::Map::new();
        for (enabled, key, grouped) in
            [(request.group_by_room, "room_id", &by_room), (request.group_by_sender, "sender", &by_sender)]
        {
            if enabled {
                let group: serde_json::Map<String, JsonValue> = grouped
                    .iter()
                    .enumerate()
                    .map(|(order, (id, events))| (id.clone(), json!({"results": events, "order": order})))
                    .collect();
                groups.insert(key.to_owned(), group.into());
            }
        }
        if !groups.is_empty() {
            room_events["groups"] = groups.into();
        }
        Ok(json!({"search_categories": {"room_events": room_events}}))
    }

    /// `event_context`: visible events around a result, and the profiles of
    /// their senders as the room's current state has them.
    fn context(
        &self,
        user: &UserId,
        stored: &StoredPdu,
        before: usize,
        after: usize,
        profiles: bool,
    ) -> Result<JsonValue> {
        let page = |dir, from: u64, limit: usize| -> Result<(Vec<JsonValue>, Option<String>)> {
            if limit == 0 {
                return Ok((Vec::new(), None));
            }
            let query = MessagesQuery {
                from: Some(format!("s{from}")),
                to: None,
                dir,
                limit,
                filter: Default::default(),
            };
            let page = self.rooms.messages(user, None, &stored.room_id, query)?;
            Ok((page.chunk.into_iter().map(ClientEvent::into_json).collect::<Vec<_>>(), page.end))
        };
        let (events_before, start) = page(Direction::Backward, stored.stream, before.min(50))?;
        let (events_after, end) = page(Direction::Forward, stored.stream + 1, after.min(50))?;
        let mut context = json!({
            "events_before": events_before,
            "events_after": events_after,
            "start": start.unwrap_or_else(|| format!("s{}", stored.stream)),
            "end": end.unwrap_or_else(|| format!("s{}", stored.stream + 1)),
        });
        if profiles {
            let senders: BTreeSet<String> = events_before
                .iter()
                .chain(&events_after)
                .filter_map(|e| e["sender"].as_str().map(str::to_owned))
                .chain(stored.sender().map(str::to_owned))
                .collect();
            let room = self.rooms.require_room(&stored.room_id)?;
            let state = self.rooms.current_state(&room)?;
            let mut profile_info = serde_json::Map::new();
            for sender in senders {
                let content = self
                    .rooms
                    .state_pdu(&state, &StateEventType::RoomMember, &sender)?
                    .map(|pdu| pdu.content_value())
                    .unwrap_or_default();
                let mut profile = serde_json::Map::new();
                for key in ["displayname", "avatar_url"] {
                    if let Some(value) = content.get(key).filter(|v| v.is_string()) {
                        profile.insert(key.to_owned(), value.clone());
                    }
                }
                profile_info.insert(sender, profile.into());
            }
            context["profile_info"] = profile_info.into();
        }
        Ok(context)
    }
}

/// `next_batch` is the number of results already returned.
fn parse_batch(token: Option<&str>) -> Result<usize> {
    token.map_or(Ok(0), |t| t.parse().map_err(|_| Error::invalid_param("Invalid next_batch")))
}
