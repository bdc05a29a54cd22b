//! Presence: a user's online state and status message, shared with the
//! users they share a room with.

use std::sync::Arc;

use estuary_core::{Config, Error, Result, time::now_millis};
use estuary_storage::{Db, Key, Table, codec::Json};
use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use crate::{
    outgoing::{Job, Outgoing},
    rooms::Rooms,
    storage_error::StorageResultExt,
    streams::Streams,
};

/// Online users idle for longer than this show as `unavailable`.
const IDLE_AFTER_MS: u64 = 5 * 60 * 1000;
/// Activity this recent counts as `currently_active`.
const ACTIVE_WITHIN_MS: u64 = 60 * 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    presence: String,
    status_msg: Option<String>,
    last_active_ts: u64,
}

pub struct Presence {
    config: Arc<Config>,
    db: Db,
    streams: Arc<Streams>,
    rooms: Arc<Rooms>,
    /// Presence reaches appservices that asked for ephemeral data through it.
    outgoing: Arc<Outgoing>,
    userid_presence: Table<String, Json<Record>>,
    stream_presence: Table<u64, String>,
}

impl Presence {
    pub fn new(
        config: Arc<Config>,
        db: &Db,
        streams: Arc<Streams>,
        rooms: Arc<Rooms>,
        outgoing: Arc<Outgoing>,
    ) -> Result<Self> {
        Ok(Self {
            config,
            db: db.clone(),
            streams,
            rooms,
            outgoing,
            userid_presence: db.table("userid_presence").db()?,
            stream_presence: db.table("stream_presence").db()?,
        })
    }

    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: Table<u64, String> = db.table("stream_presence").db()?;
        Ok(table.last().db()?.map(|(k, _)| k).unwrap_or(0))
    }

    /// Set a user's presence (`online`, `unavailable`, `offline`) and status message.
    pub fn set(&self, user_id: &UserId, presence: &str, status_msg: Option<String>) -> Result<()> {
        if !matches!(presence, "online" | "unavailable" | "offline") {
            return Err(Error::invalid_param("presence must be online, unavailable or offline"));
        }
        if !self.config.presence {
            return Ok(());
        }
        let record = Record { presence: presence.to_owned(), status_msg, last_active_ts: now_millis() };
        self.store(user_id, record)
    }

    /// A presence update from another server (an `m.presence` EDU) for one
    /// of its users who shares a room with ours; others are ignored.
    pub fn receive_remote(&self, user_id: &UserId, update: &JsonValue) -> Result<()> {
        if !self.config.presence
            || self.rooms.room_mates(user_id)?.iter().all(|u| u.server_name() != self.config.server_name)
        {
            return Ok(());
        }
        let presence = update["presence"].as_str().unwrap_or("offline");
        if !matches!(presence, "online" | "unavailable" | "offline") {
            return Err(Error::invalid_param("unknown presence"));
        }
        let ago = update["last_active_ago"].as_u64().unwrap_or(0);
        let record = Record {
            presence: presence.to_owned(),
            status_msg: update["status_msg"].as_str().map(|s| s.chars().take(1_000).collect()),
            last_active_ts: now_millis().saturating_sub(ago),
        };
        self.store(user_id, record)
    }

    fn store(&self, user_id: &UserId, record: Record) -> Result<()> {
        let mut batch = self.db.batch();
        let for_appservices = self.stage_for_appservices(user_id, &record, &mut batch)?;
        let for_servers = self.stage_for_servers(user_id, &record, &mut batch)?;
        batch.put(&self.userid_presence, &user_id.to_string(), &Json(record));
        self.streams.commit(batch, |position, batch| {
            batch.put(&self.stream_presence, &position, &user_id.to_string())
        })?;
        if for_appservices || for_servers {
            self.outgoing.wake();
        }
        let audience = self.rooms.room_mates(user_id)?;
        self.streams.notify(audience.iter().map(|u| &**u));
        Ok(())
    }

    /// Queue a local user's new presence for the other servers in their
    /// rooms (an `m.presence` EDU), in the batch that stores it.
    fn stage_for_servers(
        &self,
        user_id: &UserId,
        record: &Record,
        batch: &mut estuary_storage::Batch,
    ) -> Result<bool> {
        if !self.config.allow_federation || user_id.server_name() != self.config.server_name {
            return Ok(false);
        }
        let mut servers = std::collections::BTreeSet::new();
        for room_id in self.rooms.rooms_with_membership(user_id, "join")? {
            servers.extend(self.rooms.joined_servers(&room_id)?);
        }
        servers.remove(&self.config.server_name);
        if servers.is_empty() {
            return Ok(false);
        }
        let edu =
            json!({"edu_type": "m.presence", "content": {"push": [federation_update(user_id, record)]}});
        for server in &servers {
            self.outgoing.stage(
                batch,
                &crate::outgoing::server_destination(server),
                Job::Edu { edu: edu.clone() },
            );
        }
        Ok(true)
    }

    /// Send `server` the presence of those of `users` that are ours and
    /// have one (when a room newly joins our users and theirs, neither
    /// side waits for the next change to see the other).
    pub fn share_with(&self, server: &ServerName, users: &[OwnedUserId]) -> Result<()> {
        if !self.config.presence || !self.config.allow_federation || server == self.config.server_name {
            return Ok(());
        }
        let mut push = Vec::new();
        for user_id in users.iter().filter(|u| u.server_name() == self.config.server_name) {
            if let Some(Json(record)) = self.userid_presence.get(&user_id.to_string()).db()? {
                push.push(federation_update(user_id, &record));
            }
        }
        if push.is_empty() {
            return Ok(());
        }
        let edu = json!({"edu_type": "m.presence", "content": {"push": push}});
        let mut batch = self.db.batch();
        self.outgoing.stage(&mut batch, &crate::outgoing::server_destination(server), Job::Edu { edu });
        batch.commit().db()?;
        self.outgoing.wake();
        Ok(())
    }

    /// Queue the user's new presence for the appservices that receive
    /// ephemeral data and see this user, in the batch that stores it.
    fn stage_for_appservices(
        &self,
        user_id: &UserId,
        record: &Record,
        batch: &mut estuary_storage::Batch,
    ) -> Result<bool> {
        let receivers = self.rooms.appservices_seeing(user_id)?;
        let receivers = receivers.iter().filter(|a| a.receive_ephemeral && a.registration.url.is_some());
        let mut queued = false;
        for appservice in receivers {
            let as_ephemeral = json!({"type": "m.presence", "sender": user_id, "content": render(record)});
            self.outgoing.stage(batch, &appservice.destination(), Job::AppserviceEphemeral { as_ephemeral });
            queued = true;
        }
        Ok(queued)
    }

    /// A sync with `set_presence`: mark the user active, announcing only changes of state.
    pub fn touch(&self, user_id: &UserId, presence: &str) -> Result<()> {
        if !self.config.presence || presence == "offline" {
            return Ok(());
        }
        let current = self.userid_presence.get(&user_id.to_string()).db()?.map(|Json(r)| r);
        let stale = current.as_ref().is_none_or(|r| {
            r.presence != presence || now_millis().saturating_sub(r.last_active_ts) > ACTIVE_WITHIN_MS
        });
        if stale {
            let status_msg = current.and_then(|r| r.status_msg);
            self.store(
                user_id,
                Record { presence: presence.to_owned(), status_msg, last_active_ts: now_millis() },
            )?;
        }
        Ok(())
    }

    /// The presence content of a user, as clients see it.
    pub fn content(&self, user_id: &UserId) -> Result<JsonValue> {
        let Some(Json(record)) =
            self.userid_presence.get(&user_id.to_string()).db()?.filter(|_| self.config.presence)
        else {
            return Ok(json!({"presence": "offline"}));
        };
        Ok(render(&record))
    }

    /// `m.presence` events for `viewer`: changes in `from..=to` (or, initially, everyone known) of
    /// users sharing a room with them, and their own.
    pub fn events(&self, viewer: &UserId, from: Option<u64>, to: u64) -> Result<Vec<JsonValue>> {
        if !self.config.presence {
            return Ok(Vec::new());
        }
        let shared = self.rooms.room_mates(viewer)?;
        match from {
            None => self.of_users(shared.iter().map(|u| u.as_str())),
            Some(from) => self.changes(&shared, from, to),
        }
    }

    /// `m.presence` events of those of `users` whose presence changed in `from..=to`.
    pub fn changes(&self, users: &[ruma::OwnedUserId], from: u64, to: u64) -> Result<Vec<JsonValue>> {
        if !self.config.presence {
            return Ok(Vec::new());
        }
        let rows = self.stream_presence.scan_from(&[], Some(&from.encode()), false, usize::MAX).db()?;
        let mut changed: Vec<String> =
            rows.into_iter().take_while(|(p, _)| *p <= to).map(|(_, u)| u).collect();
        changed.sort();
        changed.dedup();
        changed.retain(|u| users.iter().any(|s| s.as_str() == u));
        self.of_users(changed.iter().map(String::as_str))
    }

    /// The `m.presence` events of `users`, offline for those never seen.
    pub fn of_everyone<'a>(&self, users: impl Iterator<Item = &'a str>) -> Result<Vec<JsonValue>> {
        if !self.config.presence {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        for user in users {
            let Ok(user_id) = UserId::parse(user) else { continue };
            events.push(json!({"type": "m.presence", "sender": user, "content": self.content(&user_id)?}));
        }
        Ok(events)
    }

    /// The `m.presence` events of those of `users` with a presence stored.
    fn of_users<'a>(&self, users: impl Iterator<Item = &'a str>) -> Result<Vec<JsonValue>> {
        let mut known = Vec::new();
        for user in users {
            if self.userid_presence.contains(&user.to_owned()).db()? {
                known.push(user);
            }
        }
        self.of_everyone(known.into_iter())
    }
}

/// A presence record as clients see it, now.
/// A user's presence as an `m.presence` EDU's `push` carries it.
fn federation_update(user_id: &UserId, record: &Record) -> JsonValue {
    let mut update = render(record);
    update["user_id"] = user_id.as_str().into();
    update
}

fn render(record: &Record) -> JsonValue {
    let ago = now_millis().saturating_sub(record.last_active_ts);
    let presence =
        if record.presence == "online" && ago > IDLE_AFTER_MS { "unavailable" } else { &record.presence };
    let mut content = json!({
        "presence": presence,
        "last_active_ago": ago,
        "currently_active": presence == "online" && ago < ACTIVE_WITHIN_MS,
    });
    if let Some(msg) = &record.status_msg {
        content["status_msg"] = msg.clone().into();
    }
    content
}
