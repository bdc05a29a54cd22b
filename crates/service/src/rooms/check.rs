//! The consistency check an admin runs (`estuary check`, or
//! `GET /_estuary/admin/v1/consistency`): it walks every room and verifies
//! that state snapshots, extremities and indexes agree with the stored
//! events. It only reads.

use std::collections::{HashMap, HashSet};

use estuary_core::Result;
use estuary_storage::codec::Json;
use ruma::{EventId, OwnedEventId, RoomId};
use serde::Serialize;

use super::{RoomRecord, Rooms, StoredPdu, state::StateMap};
use crate::storage_error::StorageResultExt;

/// Problems past this many are counted, not listed.
const MAX_LISTED: usize = 100;

#[derive(Debug, Default, Serialize)]
pub struct ConsistencyReport {
    pub rooms: u64,
    pub events: u64,
    pub snapshots: u64,
    /// What is wrong, one line each (at most `MAX_LISTED`).
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl ConsistencyReport {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        }
    }

    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }
}

impl Rooms {
    /// Walk every room: its current state, extremities, timeline, the
    /// snapshots of its events, and the membership and stream indexes.
    pub fn check_consistency(&self) -> Result<ConsistencyReport> {
        let mut report = ConsistencyReport::default();
        let mut rooms = Vec::new();
        self.roomid_room.for_each(&[], |room_id, Json(record)| rooms.push((room_id, record))).db()?;
        for (room_id, record) in &rooms {
            report.rooms += 1;
            match RoomId::parse(room_id) {
                Ok(room_id) => self.check_room(&room_id, record, &mut report)?,
                Err(_) => report.problem(format!("room record under an invalid room ID {room_id:?}")),
            }
        }
        self.check_stream_index(&mut report)?;
        Ok(report)
    }

    fn check_room(
        &self,
        room_id: &RoomId,
        record: &RoomRecord,
        report: &mut ConsistencyReport,
    ) -> Result<()> {
        let mut checked = HashSet::new();
        let Some(current) = self.check_snapshot(room_id, record.state, &mut checked, report)? else {
            return Ok(());
        };
        if self.state_event_id(&current, &ruma::events::StateEventType::RoomCreate, "")?.is_none() {
            report.problem(format!("{room_id}: current state has no m.room.create"));
        }
        self.check_extremities(room_id, record, &current, report)?;
        self.check_membership_index(room_id, &current, report)?;
        let prefix = estuary_storage::Key::encode(&(room_id.to_string(),));
        let mut timeline = Vec::new();
        self.roomidstream_eventid.for_each(&prefix, |(_, stream), id| timeline.push((stream, id))).db()?;
        for (stream, event_id) in timeline {
            report.events += 1;
            let Some(stored) = self.stored_checked(room_id, &event_id, report)? else { continue };
            if stored.stream != stream {
                report.problem(format!(
                    "{room_id}: {event_id} indexed at {stream} but stored at {}",
                    stored.stream
                ));
            }
            self.check_snapshot(room_id, stored.state_before, &mut checked, report)?;
            self.check_snapshot(room_id, stored.state_after, &mut checked, report)?;
            self.check_auth_events(room_id, &stored, report)?;
        }
        report.snapshots += checked.len() as u64;
        Ok(())
    }

    /// A stored event that an index names: it exists and is in this room.
    fn stored_checked(
        &self,
        room_id: &RoomId,
        event_id: &str,
        report: &mut ConsistencyReport,
    ) -> Result<Option<StoredPdu>> {
        let stored = match EventId::parse(event_id) {
            Ok(id) => self.stored(&id)?,
            Err(_) => None,
        };
        match stored {
            None => {
                report.problem(format!("{room_id}: indexed event {event_id} is not stored"));
                Ok(None)
            }
            Some(stored) if stored.room_id != room_id => {
                report.problem(format!("{room_id}: indexed event {event_id} belongs to {}", stored.room_id));
                Ok(None)
            }
            Some(stored) => Ok(Some(stored)),
        }
    }

    /// Every entry of a snapshot resolves to a stored event of this room
    /// with that type and state key. Each snapshot is checked once.
    fn check_snapshot(
        &self,
        room_id: &RoomId,
        snapshot: u64,
        checked: &mut HashSet<u64>,
        report: &mut ConsistencyReport,
    ) -> Result<Option<std::sync::Arc<StateMap>>> {
        let state = match self.state.load(snapshot) {
            Ok(state) => state,
            Err(err) => {
                report.problem(format!("{room_id}: state snapshot {snapshot} does not load: {err}"));
                return Ok(None);
            }
        };
        if !checked.insert(snapshot) {
            return Ok(Some(state));
        }
        for (key, short) in state.iter() {
            let Some(event_id) = self.short.event_id(*short)? else {
                report
                    .problem(format!("{room_id}: snapshot {snapshot} names unknown event short ID {short}"));
                continue;
            };
            let Some(stored) = self.stored(&event_id)? else {
                report
                    .problem(format!("{room_id}: snapshot {snapshot} names {event_id}, which is not stored"));
                continue;
            };
            if stored.room_id != room_id {
                report.problem(format!(
                    "{room_id}: snapshot {snapshot} holds {event_id} of another room, {}",
                    stored.room_id
                ));
                continue;
            }
            let pdu = stored.pdu()?;
            let actual = (pdu.kind.to_string(), pdu.state_key.clone().unwrap_or_default());
            if self.short.state_key_of(*key)?.as_ref() != Some(&actual) {
                report
                    .problem(format!("{room_id}: snapshot {snapshot} files {event_id} under the wrong key"));
            }
        }
        Ok(Some(state))
    }

    /// The extremities are stored events of this room, and the current state
    /// is the state after them (one extremity: exactly its state).
    fn check_extremities(
        &self,
        room_id: &RoomId,
        record: &RoomRecord,
        current: &StateMap,
        report: &mut ConsistencyReport,
    ) -> Result<()> {
        if record.extremities.is_empty() {
            report.problem(format!("{room_id}: no forward extremities"));
        }
        for extremity in &record.extremities {
            let Some(stored) = self.stored_checked(room_id, extremity.as_str(), report)? else { continue };
            if record.extremities.len() == 1 && *self.state.load(stored.state_after)? != *current {
                report.problem(format!("{room_id}: current state is not the state after {extremity}"));
            }
        }
        Ok(())
    }

    /// Both membership indexes agree with the member events of the state.
    fn check_membership_index(
        &self,
        room_id: &RoomId,
        current: &StateMap,
        report: &mut ConsistencyReport,
    ) -> Result<()> {
        let mut from_state = HashMap::new();
        for pdu in self.state_pdus(current)? {
            if pdu.kind == ruma::events::TimelineEventType::RoomMember {
                let membership = pdu.content_value()["membership"].as_str().unwrap_or("leave").to_owned();
                from_state.insert(pdu.state_key.clone().unwrap_or_default(), membership);
            }
        }
        let mut indexed = HashMap::new();
        let prefix = estuary_storage::Key::encode(&(room_id.to_string(),));
        self.roomiduserid_membership.for_each(&prefix, |(_, user), m| drop(indexed.insert(user, m))).db()?;
        if indexed != from_state {
            report.problem(format!("{room_id}: membership index differs from the room's member events"));
        }
        for (user, membership) in &from_state {
            let mirrored = self.useridroomid_membership.get(&(user.clone(), room_id.to_string())).db()?;
            if mirrored.as_ref() != Some(membership) {
                report.problem(format!(
                    "{room_id}: user index of {user} says {mirrored:?}, state {membership}"
                ));
            }
        }
        Ok(())
    }

    /// Auth events exist and belong to the same room.
    fn check_auth_events(
        &self,
        room_id: &RoomId,
        stored: &StoredPdu,
        report: &mut ConsistencyReport,
    ) -> Result<()> {
        let pdu = stored.pdu()?;
        for auth in &pdu.auth_events {
            self.stored_checked(room_id, auth.as_str(), report)?;
        }
        Ok(())
    }

    /// Every row of the server-wide event stream names a stored event.
    fn check_stream_index(&self, report: &mut ConsistencyReport) -> Result<()> {
        let mut rows: Vec<(u64, String, OwnedEventId)> = Vec::new();
        let mut bad = Vec::new();
        self.stream_roomideventid
            .for_each(&[], |stream, Json((room, event))| match EventId::parse(&event) {
                Ok(id) => rows.push((stream, room, id)),
                Err(_) => bad.push(stream),
            })
            .db()?;
        for stream in bad {
            report.problem(format!("event stream row {stream} holds an invalid event ID"));
        }
        for (stream, room, event_id) in rows {
            match self.stored(&event_id)? {
                Some(stored) if stored.room_id == room && stored.stream == stream => {}
                Some(_) => report.problem(format!("event stream row {stream} disagrees with {event_id}")),
                None => report.problem(format!("event stream row {stream} names {event_id}, not stored")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use estuary_core::Config;
    use estuary_storage::Db;
    use ruma::UserId;

    use crate::{Services, rooms::CreateRoom};

    /// A healthy room checks clean; a lost event and a snapshot naming
    /// another room's event are both found.
    #[tokio::test]
    async fn finds_a_lost_event_and_a_foreign_state_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let services = Services::build(Arc::new(Config::default()), db).unwrap();
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let named = CreateRoom { name: Some("one".into()), ..Default::default() };
        let first = rooms.create_room(&alice, named.clone()).await.unwrap();
        let second = rooms.create_room(&alice, named).await.unwrap();
        let report = rooms.check_consistency().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.rooms, report.events), (2, 14));

        // The second room's current state now claims the first room's
        // create event, and one of the first room's events is lost.
        let mut record = rooms.require_room(&second).unwrap();
        let foreign = rooms.require_room(&first).unwrap();
        record.state = foreign.state;
        rooms.roomid_room.put(&second.to_string(), &estuary_storage::codec::Json(record)).unwrap();
        let lost = rooms.require_room(&first).unwrap().extremities[0].to_string();
        let mut batch = rooms.db.batch();
        rooms.delete_stored(&mut batch, &lost);
        batch.commit().unwrap();

        let report = rooms.check_consistency().unwrap();
        let problems = report.problems.join("\n");
        assert!(problems.contains(&format!("{lost}, which is not stored")), "{problems}");
        assert!(problems.contains("of another room"), "{problems}");
        assert!(!report.is_clean());
    }
}
