//! Relations (threads, edits, references, reactions): the index, the
//! `/relations` and `/threads` APIs, and bundled aggregations.

use std::collections::HashMap;

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
    let relates_to: RelatesTo = serde_json::from_str(pdu.content.get()).ok()?;
    let (rel_type, parent) = relates_to.relation()?;
    Some((rel_type.to_owned(), EventId::parse(parent).ok()?))
}

/// An event content's `m.relates_to`, read as a parse of the whole content
/// would read it (the content must be an object; of duplicate keys the last
/// counts) without building the rest: every event persisted passes here.
pub(super) struct RelatesTo(Option<JsonValue>);

impl RelatesTo {
    /// (rel_type, parent event ID), when both are strings.
    pub(super) fn relation(&self) -> Option<(&str, &str)> {
        let relates_to = self.0.as_ref()?;
        Some((relates_to.get("rel_type")?.as_str()?, relates_to.get("event_id")?.as_str()?))
    }

    /// The thread root, for a reply in a thread.
    pub(super) fn thread_root(&self) -> Option<String> {
        self.relation().filter(|(rel_type, _)| *rel_type == "m.thread").map(|(_, root)| root.to_owned())
    }
}

impl<'de> serde::Deserialize<'de> for RelatesTo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Content;
        impl<'de> serde::de::Visitor<'de> for Content {
            type Value = RelatesTo;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event's content (an object)")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RelatesTo, A::Error> {
                let mut relates_to = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "m.relates_to" {
                        relates_to = Some(map.next_value()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(RelatesTo(relates_to))
            }
        }
        deserializer.deserialize_map(Content)
    }
}

/// What a new event's relation indexes: see [`Rooms::new_relation`].
pub(super) struct NewRelation {
    rel_type: String,
    parent: OwnedEventId,
    thread_latest: Option<u64>,
}

/// Cap on related events gathered for one request (recursion included).
const MAX_GATHERED: usize = 5_000;
/// The spec's suggested limit on relation recursion.
const MAX_RECURSION: usize = 3;
/// Thread roots one `/threads` request looks at before it answers (with a
/// `next_batch`), however few of them a `participated` filter keeps.
const MAX_THREADS_EXAMINED: usize = 1_000;

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
    /// A new event's relation, with what indexing it needs read before the
    /// commit (under the room's lock): for a thread reply, the thread's
    /// latest position so far.
    pub(super) fn new_relation(&self, pdu: &Pdu) -> Result<Option<NewRelation>> {
        let Some((rel_type, parent)) = relation_of(pdu) else { return Ok(None) };
        let thread_latest = match rel_type.as_str() {
            "m.thread" => {
                self.roomidthreadroot_latest.get(&(pdu.room_id.to_string(), parent.to_string())).db()?
            }
            _ => None,
        };
        Ok(Some(NewRelation { rel_type, parent, thread_latest }))
    }

    /// Index a new event's relation (called with its stream position known).
    /// `moved`: the threads this commit has already moved on, to where.
    pub(super) fn index_relation(
        &self,
        pdu: &Pdu,
        stream: u64,
        relation: &NewRelation,
        moved: &mut HashMap<OwnedEventId, u64>,
        batch: &mut Batch,
    ) {
        let NewRelation { rel_type, parent, thread_latest } = relation;
        let row: RelationRow =
            (rel_type.clone(), pdu.kind.to_string(), pdu.event_id.to_string(), pdu.sender.to_string());
        batch.put(&self.eventidstream_relation, &(parent.to_string(), stream), &Json(row));
        if rel_type == "m.thread" {
            // Both directions: root → latest, and latest → root in the order
            // `/threads` lists them, whose entry at the previous latest goes
            // (a second reply in one commit moves on from the first).
            let room = pdu.room_id.to_string();
            if let Some(previous) = moved.insert(parent.clone(), stream).or(*thread_latest) {
                batch.delete(&self.roomidthreadlatest_root, &(room.clone(), previous));
            }
            batch.put(&self.roomidthreadroot_latest, &(room.clone(), parent.to_string()), &stream);
            batch.put(&self.roomidthreadlatest_root, &(room, stream), &parent.to_string());
        }
    }

    /// Build the ordered thread index of a database written before it
    /// existed (once: afterwards it is never empty while threads exist).
    pub(super) fn index_threads_by_latest(&self) -> Result<()> {
        if !self.roomidthreadlatest_root.is_empty().db()? {
            return Ok(());
        }
        let mut batch = self.db.batch();
        let mut threads = 0;
        self.roomidthreadroot_latest
            .for_each(&[], |(room, root), latest| {
                batch.put(&self.roomidthreadlatest_root, &(room, latest), &root);
                threads += 1;
            })
            .db()?;
        batch.commit().db()?;
        if threads > 0 {
            tracing::info!(threads, "indexed thread roots by their latest event");
        }
        Ok(())
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
        let limit = limit.clamp(1, 100);
        let mut roots = self.thread_roots_newest_first(room_id, before).peekable();
        let mut chunk = Vec::new();
        // Roots a viewer cannot see, or (`participated`) did not take part
        // in, are left out, so read a page's worth at a time until the page
        // is full, their aggregations bundled in one pass over the relations.
        let mut examined = 0;
        while chunk.len() < limit && examined < MAX_THREADS_EXAMINED && roots.peek().is_some() {
            let mut events = Vec::new();
            for thread in roots.by_ref().take(limit - chunk.len()) {
                examined += 1;
                events.extend(self.visible_client_event(viewer, &thread?.1)?);
            }
            self.bundle_aggregations_all(viewer, &mut events)?;
            chunk.extend(
                events
                    .into_iter()
                    .filter(|event| {
                        !participated_only
                            || event
                                .unsigned("m.relations")
                                .is_some_and(|r| r["m.thread"]["current_user_participated"] == true)
                    })
                    .map(ClientEvent::into_json),
            );
        }
        let next = roots.next().transpose()?.map(|(latest, _)| format!("s{}", latest + 1));
        Ok((chunk, next))
    }

    /// (latest stream position, root) of the room's threads whose latest
    /// event is before `before`, newest first. An entry left at a position
    /// its thread has moved on from (a write that did not remove it, as a
    /// version before the ordered index could leave) is passed over.
    fn thread_roots_newest_first<'a>(
        &'a self,
        room_id: &'a RoomId,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, String)>> + 'a {
        self.thread_index_newest_first(room_id, before).filter_map(move |entry| {
            let (latest, root) = match entry {
                Ok(entry) => entry,
                Err(err) => return Some(Err(err)),
            };
            match self.roomidthreadroot_latest.get(&(room_id.to_string(), root.clone())).db() {
                Ok(Some(current)) if current != latest => None,
                Ok(_) => Some(Ok((latest, root))),
                Err(err) => Some(Err(err)),
            }
        })
    }

    /// The ordered thread index from `before` back, read a page at a time.
    fn thread_index_newest_first<'a>(
        &'a self,
        room_id: &'a RoomId,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, String)>> + 'a {
        let prefix = (room_id.to_string(),).encode();
        let mut from = before.map(|b| (room_id.to_string(), b.saturating_sub(1)).encode());
        let mut page = Vec::new().into_iter();
        let mut done = before == Some(0);
        std::iter::from_fn(move || {
            loop {
                if let Some(((_, latest), root)) = page.next() {
                    return Some(Ok((latest, root)));
                }
                if done {
                    return None;
                }
                let rows =
                    match self.roomidthreadlatest_root.scan_from(&prefix, from.as_deref(), true, 50).db() {
                        Ok(rows) => rows,
                        Err(err) => {
                            done = true;
                            return Some(Err(err));
                        }
                    };
                done = rows.len() < 50;
                let oldest = rows.last().map(|((_, latest), _)| *latest);
                match oldest {
                    Some(0) | None => done = true,
                    Some(latest) => from = Some((room_id.to_string(), latest - 1).encode()),
                }
                page = rows.into_iter();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use estuary_core::Config;
    use estuary_events::PduTemplate;
    use estuary_storage::Db;
    use ruma::{OwnedEventId, RoomId, UserId};
    use serde_json::json;

    use crate::{
        Services,
        rooms::{CreateRoom, Preset},
    };

    /// `m.relates_to` is read as a parse of the whole content reads it.
    #[test]
    fn relates_to_reads_only_an_object_and_the_last_of_duplicate_keys() {
        let read = |content: &str| {
            serde_json::from_str::<super::RelatesTo>(content)
                .ok()
                .and_then(|r| r.relation().map(|(t, e)| (t.to_owned(), e.to_owned())))
        };
        let thread = Some(("m.thread".to_owned(), "$root".to_owned()));
        assert_eq!(
            read(r#"{"body": [1, {"x": 2}], "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}"#),
            thread
        );
        assert_eq!(
            read(r#"{"m.relates\u005fto": {"rel_type": "m.thread", "event_id": "$root"}}"#),
            thread,
            "escaped key"
        );
        let twice = r#"{"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a"}, "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}"#;
        assert_eq!(read(twice), thread, "the last of duplicate keys");
        assert_eq!(read(r#"{"m.relates_to": ["m.thread", "$root"]}"#), None, "a list is not a relation");
        assert_eq!(read(r#"[{"rel_type": "m.thread", "event_id": "$root"}]"#), None, "content is an object");
        assert_eq!(read(r#"{"m.relates_to": {"rel_type": 5, "event_id": "$root"}}"#), None);
        assert_eq!(read(r#"{"m.relates_to": null}"#), None);
    }

    fn services(dir: &tempfile::TempDir) -> Services {
        let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
        Services::build(Arc::new(Config::default()), db).unwrap()
    }

    fn text(body: &str, thread: Option<&OwnedEventId>) -> PduTemplate {
        let mut content = json!({"msgtype": "m.text", "body": body});
        if let Some(root) = thread {
            content["m.relates_to"] = json!({"rel_type": "m.thread", "event_id": root});
        }
        PduTemplate::message("m.room.message", content)
    }

    /// Two roots; thread `a` gets the latest reply.
    async fn two_threads(services: &Services, alice: &UserId) -> (ruma::OwnedRoomId, [OwnedEventId; 2]) {
        let create = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
        let room = services.rooms.create_room(alice, create).await.unwrap();
        let send = |t| services.rooms.send(&room, alice, t, None);
        let a = send(text("a", None)).await.unwrap().event_id;
        let b = send(text("b", None)).await.unwrap().event_id;
        send(text("a1", Some(&a))).await.unwrap();
        send(text("b1", Some(&b))).await.unwrap();
        send(text("a2", Some(&a))).await.unwrap();
        (room, [a, b])
    }

    fn listed(services: &Services, alice: &UserId, room: &RoomId) -> Vec<String> {
        let (chunk, _) = services.rooms.threads(alice, room, false, None, 10).unwrap();
        chunk.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
    }

    #[tokio::test]
    async fn a_reply_moves_its_thread_to_the_front_once() {
        let dir = tempfile::tempdir().unwrap();
        let services = services(&dir);
        let alice = UserId::parse("@alice:localhost").unwrap();
        let (room, [a, b]) = two_threads(&services, &alice).await;
        assert_eq!(listed(&services, &alice, &room), [a.to_string(), b.to_string()]);
        let index = services.rooms.roomidthreadlatest_root.scan_prefix(&(room.to_string(),)).unwrap();
        assert_eq!(index.len(), 2, "a's earlier position is gone: {index:?}");

        // An entry left behind at a position the thread moved on from is
        // passed over.
        let latest_a =
            services.rooms.roomidthreadroot_latest.get(&(room.to_string(), a.to_string())).unwrap();
        let stale = latest_a.unwrap() - 2; // a1's position
        services.rooms.roomidthreadlatest_root.put(&(room.to_string(), stale), &a.to_string()).unwrap();
        assert_eq!(listed(&services, &alice, &room), [a.to_string(), b.to_string()]);
    }

    #[tokio::test]
    async fn a_database_from_before_the_ordered_index_gets_it_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let (room, [a, b]) = {
            let services = services(&dir);
            let threads = two_threads(&services, &alice).await;
            let index = &services.rooms.roomidthreadlatest_root;
            for (key, _) in index.scan_prefix(&(threads.0.to_string(),)).unwrap() {
                index.delete(&key).unwrap();
            }
            assert_eq!(listed(&services, &alice, &threads.0), Vec::<String>::new());
            threads
        };
        let services = services(&dir);
        assert_eq!(listed(&services, &alice, &room), [a.to_string(), b.to_string()]);
    }
}
