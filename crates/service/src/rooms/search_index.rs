//! The full-text index, kept in the same batch as the events it indexes:
//! `(room ID, "<field>:<term>", stream) → occurrences`. A search reads one
//! prefix per (room, field, term), newest first, so cost follows the rooms a
//! user is in and how common the words are, not the size of the server.

use estuary_events::Pdu;
use estuary_storage::Batch;
use serde_json::Value as JsonValue;

use super::{Rooms, StoredPdu};

/// The searchable fields: the spec's `keys`, and the letter each is indexed under.
pub const SEARCH_KEYS: [(&str, char); 3] =
    [("content.body", 'b'), ("content.name", 'n'), ("content.topic", 't')];

/// The texts an event contributes, by field letter.
fn searchable<'a>(kind: &str, content: &'a JsonValue) -> Vec<(char, &'a str)> {
    let field = match kind {
        "m.room.message" => ('b', "body"),
        "m.room.name" => ('n', "name"),
        "m.room.topic" => ('t', "topic"),
        _ => return Vec::new(),
    };
    content[field.1].as_str().map(|text| vec![(field.0, text)]).unwrap_or_default()
}

impl Rooms {
    fn index_rows(&self, kind: &str, content: &JsonValue) -> Vec<(String, u64)> {
        searchable(kind, content)
            .into_iter()
            .flat_map(|(field, text)| {
                self.tokenizer
                    .terms(text)
                    .into_iter()
                    .map(move |(term, count)| (format!("{field}:{term}"), count))
            })
            .collect()
    }

    /// Index a new event (called with its stream position known).
    pub(super) fn index_search(&self, pdu: &Pdu, stream: u64, batch: &mut Batch) {
        let room = pdu.room_id.to_string();
        for (term, count) in self.index_rows(pdu.kind.to_string().as_str(), &pdu.content_value()) {
            batch.put(&self.roomidtermstream_count, &(room.clone(), term, stream), &count);
        }
    }

    /// Drop a redacted event from the index: it must not be findable.
    pub(super) fn unindex_search(&self, target: &StoredPdu, batch: &mut Batch) -> estuary_core::Result<()> {
        let pdu = target.pdu()?;
        let room = target.room_id.to_string();
        for (term, _) in self.index_rows(pdu.kind.to_string().as_str(), &pdu.content_value()) {
            batch.delete(&self.roomidtermstream_count, &(room.clone(), term, target.stream));
        }
        Ok(())
    }

    /// The index term of a query word.
    pub fn search_term(&self, word: &str) -> String {
        self.tokenizer.term(word)
    }

    /// Postings of `field:term` in a room, newest first: (stream, occurrences),
    /// at most `limit`, below stream `before` when given.
    pub fn search_postings(
        &self,
        room_id: &ruma::RoomId,
        field_term: &str,
        before: Option<u64>,
        limit: usize,
    ) -> estuary_core::Result<Vec<(u64, u64)>> {
        use estuary_storage::Key;

        use crate::storage_error::StorageResultExt;
        let prefix = (room_id.to_string(), field_term.to_owned()).encode();
        let from = before.map(|b| (room_id.to_string(), field_term.to_owned(), b.saturating_sub(1)).encode());
        if before == Some(0) {
            return Ok(Vec::new());
        }
        // Only the trailing stream position of each key is needed: read it
        // from the encoded key (8 big-endian bytes) instead of decoding.
        let mut postings = Vec::new();
        let table = &self.roomidtermstream_count;
        table
            .visit_from(&prefix, from.as_deref(), true, limit, |key, value| {
                let stream =
                    key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map(u64::from_be_bytes);
                let count = value.try_into().ok().map(u64::from_be_bytes);
                if let (Some(stream), Some(count)) = (stream, count) {
                    postings.push((stream, count));
                }
                Ok(())
            })
            .db()?;
        Ok(postings)
    }
}

impl Rooms {
    /// The event of a room at a stream position.
    pub(crate) fn event_at_stream(
        &self,
        room_id: &ruma::RoomId,
        stream: u64,
    ) -> estuary_core::Result<Option<StoredPdu>> {
        use crate::storage_error::StorageResultExt;
        let Some(event_id) = self.roomidstream_eventid.get(&(room_id.to_string(), stream)).db()? else {
            return Ok(None);
        };
        match ruma::EventId::parse(&event_id) {
            Ok(id) => self.stored(&id),
            Err(_) => Ok(None),
        }
    }
}

impl Rooms {
    /// Occurrences of `field:term` in the event at `stream` (0 if none).
    pub fn search_count(
        &self,
        room_id: &ruma::RoomId,
        field_term: &str,
        stream: u64,
    ) -> estuary_core::Result<u64> {
        use crate::storage_error::StorageResultExt;
        Ok(self
            .roomidtermstream_count
            .get(&(room_id.to_string(), field_term.to_owned(), stream))
            .db()?
            .unwrap_or(0))
    }
}
