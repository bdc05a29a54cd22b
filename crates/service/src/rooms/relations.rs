//! Relations (threads, edits, references, reactions): the index, the
//! `/relations` and `/threads` APIs, and bundled aggregations.

use estuary_core::{Error, Result};
use estuary_events::Pdu;
use estuary_storage::{Batch, Key, codec::Json};
use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{
    ClientEvent, Rooms, StoredPdu,
    read::{Direction, parse_token},
};
use crate::storage_error::StorageResultExt;

/// (rel_type, event type, child event ID, sender).
pub(super) type RelationRow = (String, String, String, String);

/// The relation an event declares: (rel_type, parent).
pub(super) fn relation_of(pdu: &Pdu) -> Option<(String, OwnedEventId)> {
    let content = pdu.content_value();
    let relates_to = content.get("m.relates_to")?;
    let rel_type = relates_to.get("rel_type")?.as_str()?.to_owned();
    let parent = EventId::parse(relates_to.get("event_id")?.as_str()?).ok()?;
    Some((rel_type, parent))
}

/// Cap on related events gathered for one request (recursion included).
const MAX_GATHERED: usize = 5_000;
/// The spec's suggested limit on relation recursion.
const MAX_RECURSION: usize = 3;

pub struct RelationsQuery<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub limit: usize,
    pub dir: Direction,
    pub recurse: bool,
}

pub struct RelationsPage {
    pub chunk: Vec<JsonValue>,
    pub next_batch: Option<String>,
    pub recursion_depth: Option<usize>,
}

impl Rooms {
    /// Index a new event's relation (called with its stream position known).
    pub(super) fn index_relation(&self, pdu: &Pdu, stream: u64, batch: &mut Batch) {
        let Some((rel_type, parent)) = relation_of(pdu) else { return };
        let row: RelationRow =
            (rel_type.clone(), pdu.kind.to_string(), pdu.event_id.to_string(), pdu.sender.to_string());
        batch.put(&self.eventidstream_relation, &(parent.to_string(), stream), &Json(row));
        if rel_type == "m.thread" {
            batch.put(&self.roomidthreadroot_latest, &(pdu.room_id.to_string(), parent.to_string()), &stream);
        }
    }

    /// A redacted event no longer relates to anything.
    pub(super) fn unindex_relation(&self, target: &StoredPdu, batch: &mut Batch) -> Result<()> {
        if let Some((_, parent)) = relation_of(&target.pdu()?) {
            batch.delete(&self.eventidstream_relation, &(parent.to_string(), target.stream));
        }
        Ok(())
    }

    fn children(&self, parent: &EventId) -> Result<Vec<(u64, RelationRow)>> {
        Ok(self.children_of_each(&[parent])?.pop().unwrap_or_default())
    }

    /// The children of each parent, in the parents' order, read in one pass.
    fn children_of_each(&self, parents: &[&EventId]) -> Result<Vec<Vec<(u64, RelationRow)>>> {
        let prefixes: Vec<Vec<u8>> = parents.iter().map(|p| (p.to_string(),).encode()).collect();
        let found = self.eventidstream_relation.scan_prefixes(&prefixes, MAX_GATHERED).db()?;
        Ok(found
            .into_iter()
            .map(|rows| rows.into_iter().map(|((_, stream), Json(row))| (stream, row)).collect())
            .collect())
    }

    /// `/relations`: events relating to `parent`, newest first by default.
    pub fn relations(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        parent: &EventId,
        query: RelationsQuery<'_>,
    ) -> Result<RelationsPage> {
        let stored = self.stored(parent)?.filter(|s| s.room_id == room_id);
        match stored {
            Some(s) if self.can_see_event(Some(viewer), &s)? => {}
            _ => return Err(Error::not_found("Event not found")),
        }
        let mut gathered = Vec::new();
        let mut level = vec![parent.to_owned()];
        let depth_limit = if query.recurse { MAX_RECURSION } else { 1 };
        let mut depth = 0;
        while !level.is_empty() && depth < depth_limit && gathered.len() < MAX_GATHERED {
            depth += 1;
            let mut next = Vec::new();
            for id in &level {
                for (stream, row) in self.children(id)? {
                    if let Ok(child) = EventId::parse(&row.2) {
                        next.push(child);
                    }
                    gathered.push((stream, row));
                }
            }
            level = next;
        }
        gathered.retain(|(_, (rel, kind, _, _))| {
            query.rel_type.is_none_or(|r| r == rel) && query.event_type.is_none_or(|t| t == kind)
        });
        let backwards = query.dir == Direction::Backward;
        gathered.sort_by_key(|(stream, _)| *stream);
        if backwards {
            gathered.reverse();
        }
        let from = query.from.map(parse_token).transpose()?;
        let to = query.to.map(parse_token).transpose()?;
        let in_range = |stream: u64| match backwards {
            true => from.is_none_or(|f| stream < f) && to.is_none_or(|t| stream >= t),
            false => from.is_none_or(|f| stream >= f) && to.is_none_or(|t| stream < t),
        };
        let mut chunk = Vec::new();
        let mut last = None;
        let mut more = false;
        for (stream, (_, _, child, _)) in gathered.into_iter().filter(|(s, _)| in_range(*s)) {
            if chunk.len() >= query.limit.clamp(1, 1000) {
                more = true;
                break;
            }
            let Some(stored) = self.stored(&EventId::parse(&child).map_err(Error::internal)?)? else {
                continue;
            };
            if self.can_see_event(Some(viewer), &stored)? {
                chunk.push(self.client_event(stored, Some((viewer, None)))?.into_json());
                last = Some(stream);
            }
        }
        let next_batch = match (more, last) {
            (true, Some(last)) => Some(format!("s{}", if backwards { last } else { last + 1 })),
            _ => None,
        };
        Ok(RelationsPage { chunk, next_batch, recursion_depth: query.recurse.then_some(depth) })
    }

    /// Add `unsigned.m.relations` (threads, references, the latest edit) to a served event.
    pub fn bundle_aggregations(&self, viewer: &UserId, event: &mut ClientEvent) -> Result<()> {
        self.bundle_aggregations_all(viewer, std::slice::from_mut(event))
    }

    /// [`Self::bundle_aggregations`] for a page of events, their relations
    /// read in one pass.
    pub fn bundle_aggregations_all(&self, viewer: &UserId, events: &mut [ClientEvent]) -> Result<()> {
        let parents: Vec<&EventId> = events.iter().map(ClientEvent::event_id).collect();
        let children = self.children_of_each(&parents)?;
        for (event, children) in events.iter_mut().zip(children) {
            if !children.is_empty() {
                self.bundle(viewer, event, children)?;
            }
        }
        Ok(())
    }

    fn bundle(
        &self,
        viewer: &UserId,
        event: &mut ClientEvent,
        children: Vec<(u64, RelationRow)>,
    ) -> Result<()> {
        let sender = event.sender().unwrap_or_default().to_owned();
        let mut relations = serde_json::Map::new();
        let threads: Vec<_> = children.iter().filter(|(_, r)| r.0 == "m.thread").collect();
        if let Some((_, latest)) = threads.last() {
            let latest = self.visible_client_event(viewer, &latest.2)?;
            let participated =
                sender == viewer.as_str() || threads.iter().any(|(_, r)| r.3 == viewer.as_str());
            if let Some(latest) = latest {
                relations.insert(
                    "m.thread".into(),
                    json!({"latest_event": latest, "count": threads.len(), "current_user_participated": participated}),
                );
            }
        }
        let references: Vec<JsonValue> = children
            .iter()
            .filter(|(_, r)| r.0 == "m.reference")
            .map(|(_, r)| json!({"event_id": r.2}))
            .collect();
        if !references.is_empty() {
            relations.insert("m.reference".into(), json!({"chunk": references}));
        }
        let mut latest_edit: Option<ClientEvent> = None;
        for (_, row) in children.iter().filter(|(_, r)| r.0 == "m.replace" && r.3 == sender) {
            if let Some(edit) = self.visible_client_event(viewer, &row.2)? {
                let newer = latest_edit.as_ref().is_none_or(|cur| {
                    (edit.origin_server_ts(), edit.event_id()) > (cur.origin_server_ts(), cur.event_id())
                });
                if newer {
                    latest_edit = Some(edit);
                }
            }
        }
        if let Some(edit) = latest_edit {
            relations.insert("m.replace".into(), edit.into_json());
        }
        if !relations.is_empty() {
            event.set_unsigned("m.relations", JsonValue::Object(relations));
        }
        Ok(())
    }

    fn visible_client_event(&self, viewer: &UserId, event_id: &str) -> Result<Option<ClientEvent>> {
        let Ok(id) = EventId::parse(event_id) else { return Ok(None) };
        match self.stored(&id)? {
            Some(stored) if self.can_see_event(Some(viewer), &stored)? => {
                Ok(Some(self.client_event(stored, Some((viewer, None)))?))
            }
            _ => Ok(None),
        }
    }

    /// `/threads`: thread roots by latest activity, newest first.
    pub fn threads(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        participated_only: bool,
        from: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<JsonValue>, Option<String>)> {
        self.require_readable(viewer, room_id)?;
        let before = from.map(parse_token).transpose()?;
        let mut roots: Vec<(u64, String)> = self
            .roomidthreadroot_latest
            .scan_prefix(&(room_id.to_string(),))
            .db()?
            .into_iter()
            .map(|((_, root), latest)| (latest, root))
            .filter(|(latest, _)| before.is_none_or(|b| *latest < b))
            .collect();
        roots.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut chunk = Vec::new();
        let mut next = None;
        for (latest, root) in roots {
            if chunk.len() >= limit.clamp(1, 100) {
                next = Some(format!("s{}", latest + 1));
                break;
            }
            let Some(mut event) = self.visible_client_event(viewer, &root)? else { continue };
            self.bundle_aggregations(viewer, &mut event)?;
            let participated = event
                .unsigned("m.relations")
                .is_some_and(|r| r["m.thread"]["current_user_participated"] == true);
            if !participated_only || participated {
                chunk.push(event.into_json());
            }
        }
        Ok((chunk, next))
    }
}
