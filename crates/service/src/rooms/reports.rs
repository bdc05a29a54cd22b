//! Reports of events, rooms and users (`/report`), kept for the server's
//! admins, who list and resolve them through the admin API.

use estuary_core::{Error, Result, time::now_millis};
use estuary_storage::codec::Json;
use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use super::Rooms;
use crate::storage_error::StorageResultExt;

/// `reportid_report`: one report, as a client made it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub reporter: OwnedUserId,
    /// The room reported, or the room of the reported event; none for a
    /// report of a user.
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    #[serde(default)]
    pub event_id: Option<OwnedEventId>,
    /// The user reported (`/users/{userId}/report`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<OwnedUserId>,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub received_ts: u64,
}

/// What `GET /_synapse/admin/v1/event_reports` asks for.
#[derive(Debug, Default)]
pub struct ReportQuery {
    pub from: usize,
    pub limit: usize,
    pub oldest_first: bool,
    /// Reporters whose ID contains this.
    pub reporter: Option<String>,
    /// Rooms whose ID contains this.
    pub room_id: Option<String>,
    /// Senders of the reported event whose ID contains this.
    pub event_sender: Option<String>,
}

/// At most this many reports are considered by one listing: a bound on the
/// work an admin page costs, far above what moderators read.
const REPORTS_SCANNED: usize = 100_000;

impl Rooms {
    /// Store a report of an event (or, without an event, of the room).
    /// The reporter must be able to see the event.
    pub fn report(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: Option<&EventId>,
        reason: Option<String>,
    ) -> Result<()> {
        self.require_room(room_id)?;
        if let Some(event_id) = event_id {
            let visible = match self.stored(event_id)?.filter(|s| s.room_id == room_id) {
                Some(stored) => self.can_see_event(Some(reporter), &stored)?,
                None => false,
            };
            if !visible {
                return Err(Error::not_found("Event not found"));
            }
        }
        tracing::info!(%reporter, %room_id, event_id = ?event_id, "content reported");
        self.store_report(Report {
            reporter: reporter.to_owned(),
            room_id: Some(room_id.to_owned()),
            event_id: event_id.map(ToOwned::to_owned),
            user_id: None,
            reason,
            score: None,
            received_ts: now_millis(),
        })
    }

    /// Store a report of a user (whose existence the caller has checked).
    pub fn report_user(&self, reporter: &UserId, user_id: &UserId, reason: String) -> Result<()> {
        tracing::info!(%reporter, reported = %user_id, "user reported");
        self.store_report(Report {
            reporter: reporter.to_owned(),
            room_id: None,
            event_id: None,
            user_id: Some(user_id.to_owned()),
            reason: Some(reason),
            score: None,
            received_ts: now_millis(),
        })
    }

    fn store_report(&self, report: Report) -> Result<()> {
        let id = self.short.allocate();
        self.reportid_report.put(&id, &Json(report)).db()
    }

    /// A page of reports and how many match in all.
    pub fn reports(&self, query: &ReportQuery) -> Result<(Vec<(u64, Report)>, usize)> {
        let contains = |filter: &Option<String>, value: Option<&str>| match filter {
            Some(wanted) => value.is_some_and(|v| v.contains(wanted.as_str())),
            None => true,
        };
        let mut matching = Vec::new();
        // Scanned in the listing's order, so the bound drops the far end.
        let newest_first = !query.oldest_first;
        for (id, Json(report)) in
            self.reportid_report.scan_from(&[], None, newest_first, REPORTS_SCANNED).db()?
        {
            if !contains(&query.reporter, Some(report.reporter.as_str()))
                || !contains(&query.room_id, report.room_id.as_ref().map(|r| r.as_str()))
            {
                continue;
            }
            if query.event_sender.is_some() {
                let sender = self.reported_sender(&report)?;
                if !contains(&query.event_sender, sender.as_deref()) {
                    continue;
                }
            }
            matching.push((id, report));
        }
        let total = matching.len();
        let page = matching.into_iter().skip(query.from).take(query.limit).collect();
        Ok((page, total))
    }

    pub fn stored_report(&self, id: u64) -> Result<Option<Report>> {
        Ok(self.reportid_report.get(&id).db()?.map(|Json(r)| r))
    }

    /// Delete a report (an admin resolved it); false when there was none.
    pub fn delete_report(&self, id: u64) -> Result<bool> {
        if self.reportid_report.get(&id).db()?.is_none() {
            return Ok(false);
        }
        self.reportid_report.delete(&id).db()?;
        Ok(true)
    }

    /// A report as Synapse's admin API shows it: the room's name and alias,
    /// the sender of the reported event (the reported user for a report of
    /// a user) and, with `with_event`, the event itself.
    pub fn report_view(&self, id: u64, report: &Report, with_event: bool) -> Result<JsonValue> {
        let summary = match &report.room_id {
            Some(room_id) => self.room_summary(room_id).unwrap_or_default(),
            None => JsonValue::Null,
        };
        let mut view = json!({
            "id": id,
            "received_ts": report.received_ts,
            "room_id": report.room_id,
            "name": summary.get("name"),
            "canonical_alias": summary.get("canonical_alias"),
            "event_id": report.event_id,
            "user_id": report.reporter,
            "sender": self.reported_sender(report)?,
            "reason": report.reason,
            "score": report.score,
        });
        if with_event {
            let event = match &report.event_id {
                Some(event_id) => self.stored(event_id)?.and_then(|s| serde_json::to_value(&s.json).ok()),
                None => None,
            };
            view["event_json"] = event.unwrap_or(JsonValue::Null);
        }
        Ok(view)
    }

    fn reported_sender(&self, report: &Report) -> Result<Option<String>> {
        if let Some(user_id) = &report.user_id {
            return Ok(Some(user_id.to_string()));
        }
        let Some(event_id) = &report.event_id else { return Ok(None) };
        Ok(self.stored(event_id)?.and_then(|s| s.sender().map(str::to_owned)))
    }
}
