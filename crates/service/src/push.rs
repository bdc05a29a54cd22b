//! Push rules: each user's ruleset (the spec's defaults until they change
//! it), stored as the global account data `m.push_rules`.

use std::sync::Arc;

use estuary_core::{Error, Result, time::now_millis};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{UserId, push::Ruleset};
use serde_json::{Value as JsonValue, json};

use crate::{
    account_data::AccountData,
    outgoing::{Job, Outgoing, PushJob},
    storage_error::StorageResultExt,
};

/// The path every HTTP pusher URL must have (Push Gateway API).
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Where a stored pusher remembers the device that created it (never shown
/// to clients): signing that device out removes its pushers.
const DEVICE_FIELD: &str = "estuary.device_id";

pub struct PushRules {
    account_data: Arc<AccountData>,
    /// Parsed rulesets: every event is evaluated against every member's rules.
    cache: std::sync::Mutex<std::collections::HashMap<ruma::OwnedUserId, Arc<Ruleset>>>,
    /// Rulesets kept in memory, from the memory budget.
    max_cached: usize,
    pushers: Table<(String, String, String), Json<JsonValue>>,
    outgoing: Arc<Outgoing>,
}

/// About what one user's ruleset (the default rules) costs in memory.
const RULESET_BYTES: usize = 16 << 10;

impl PushRules {
    pub fn new(
        account_data: Arc<AccountData>,
        db: &Db,
        outgoing: Arc<Outgoing>,
        config: &estuary_core::Config,
    ) -> Result<Self> {
        Ok(Self {
            account_data,
            cache: Default::default(),
            max_cached: (config.memory_budget().other_caches / 2 / RULESET_BYTES).max(16),
            pushers: db.table("useridappidpushkey_pusher").db()?,
            outgoing,
        })
    }

    /// The user's pushers, as clients set them.
    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<JsonValue>> {
        let mut pushers = self.stored_pushers(user_id)?;
        for pusher in &mut pushers {
            pusher.as_object_mut().map(|p| p.remove(DEVICE_FIELD));
        }
        Ok(pushers)
    }

    fn stored_pushers(&self, user_id: &UserId) -> Result<Vec<JsonValue>> {
        Ok(self
            .pushers
            .scan_prefix(&(user_id.to_string(),))
            .db()?
            .into_iter()
            .map(|(_, Json(p))| p)
            .collect())
    }

    /// Remove the pushers these devices created (a device signed out, or
    /// every other device after a password change).
    pub fn delete_device_pushers(&self, user_id: &UserId, device_ids: &[ruma::OwnedDeviceId]) -> Result<()> {
        for pusher in self.stored_pushers(user_id)? {
            let created_by = pusher[DEVICE_FIELD].as_str();
            if created_by.is_some_and(|d| device_ids.iter().any(|id| id.as_str() == d)) {
                let app_id = pusher["app_id"].as_str().unwrap_or_default();
                self.delete_pusher(user_id, app_id, pusher["pushkey"].as_str().unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// Add or replace a pusher. Without `append`, the same app ID and pushkey
    /// registered by other users is removed.
    pub fn set_pusher(
        &self,
        user_id: &UserId,
        device_id: Option<&ruma::DeviceId>,
        mut pusher: JsonValue,
        append: bool,
    ) -> Result<()> {
        let app_id = pusher["app_id"].as_str().unwrap_or_default().to_owned();
        let pushkey = pusher["pushkey"].as_str().unwrap_or_default().to_owned();
        if pusher["kind"] == "http" {
            let url = pusher["data"]["url"].as_str().unwrap_or_default();
            let valid = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.path() == NOTIFY_PATH);
            if !valid {
                return Err(Error::invalid_param(format!(
                    "data.url must be an http(s) URL ending in {NOTIFY_PATH}"
                )));
            }
        }
        // The Push Gateway API gives `pushkey_ts` in seconds.
        pusher["pushkey_ts"] = (now_millis() / 1000).into();
        if let Some(device_id) = device_id {
            pusher[DEVICE_FIELD] = device_id.as_str().into();
        }
        if !append {
            for ((user, app, key), _) in self.pushers.scan_raw_prefix(&[], usize::MAX).db()? {
                if app == app_id && key == pushkey && user != user_id.as_str() {
                    self.pushers.delete(&(user, app, key)).db()?;
                }
            }
        }
        self.pushers.put(&(user_id.to_string(), app_id, pushkey), &Json(pusher)).db()
    }

    pub fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        self.pushers.delete(&(user_id.to_string(), app_id.to_owned(), pushkey.to_owned())).db()
    }

    /// Queue a notification to each of the user's HTTP pushers.
    pub fn push(&self, user_id: &UserId, event: &JsonValue, notification: &PushNotification) -> Result<()> {
        for pusher in self.pushers(user_id)? {
            let Some((url, mut device)) = gateway_device(&pusher) else { continue };
            device["tweaks"] = notification.tweaks.clone();
            // `id` is the field's old name, still read by older gateways
            // (Synapse sends both).
            let mut body = json!({
                "event_id": event["event_id"], "id": event["event_id"], "room_id": event["room_id"],
                "counts": {"unread": notification.unread},
                "prio": if notification.highlight { "high" } else { "low" },
                "devices": [device],
            });
            if pusher["data"]["format"] != "event_id_only" {
                body["type"] = event["type"].clone();
                body["sender"] = event["sender"].clone();
                body["content"] = event["content"].clone();
                if let Some(name) = &notification.sender_display_name {
                    body["sender_display_name"] = name.clone().into();
                }
                if let Some(name) = &notification.room_name {
                    body["room_name"] = name.clone().into();
                }
                if event["type"] == "m.room.member" {
                    body["user_is_target"] = (event["state_key"] == user_id.as_str()).into();
                    body["membership"] = event["content"]["membership"].clone();
                }
                if let Some(alias) = &notification.room_alias {
                    body["room_alias"] = alias.clone().into();
                }
            }
            self.enqueue(user_id, url, &pusher, json!({"notification": body}))?;
        }
        Ok(())
    }

    /// A badge update after the user read something: the new unread count
    /// and no event, to each HTTP pusher.
    pub fn push_badge(&self, user_id: &UserId, unread: u64) -> Result<()> {
        for pusher in self.pushers(user_id)? {
            let Some((url, device)) = gateway_device(&pusher) else { continue };
            // The spec omits zero counts, but a badge going to zero is the
            // news here: gateways (and Synapse) send `unread: 0`.
            let body =
                json!({"notification": {"counts": {"unread": unread}, "devices": [device], "prio": "low"}});
            self.enqueue(user_id, url, &pusher, body)?;
        }
        Ok(())
    }

    fn enqueue(&self, user_id: &UserId, url: &str, pusher: &JsonValue, body: JsonValue) -> Result<()> {
        let job = PushJob {
            url: url.to_owned(),
            body,
            user_id: user_id.to_string(),
            app_id: pusher["app_id"].as_str().unwrap_or_default().to_owned(),
            pushkey: pusher["pushkey"].as_str().unwrap_or_default().to_owned(),
        };
        self.outgoing.enqueue(&format!("push {url}"), Job::Push(job))
    }

    /// Rulesets in memory now.
    pub fn cached_count(&self) -> usize {
        self.cache.lock().expect("ruleset cache").len()
    }

    /// The user's ruleset, cached.
    pub fn cached_ruleset(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(hit) = self.cache.lock().expect("ruleset cache").get(user_id) {
            return Ok(hit.clone());
        }
        let ruleset = Arc::new(self.ruleset(user_id)?);
        let mut cache = self.cache.lock().expect("ruleset cache");
        if cache.len() >= self.max_cached {
            cache.clear();
        }
        cache.insert(user_id.to_owned(), ruleset.clone());
        Ok(ruleset)
    }

    /// The user's ruleset: stored, or the server default.
    pub fn ruleset(&self, user_id: &UserId) -> Result<Ruleset> {
        match self.account_data.get(user_id, None, "m.push_rules") {
            Ok(raw) => {
                let value: serde_json::Value = serde_json::from_str(raw.get())?;
                serde_json::from_value(value["global"].clone()).map_err(Error::internal)
            }
            Err(Error::Matrix { status: 404, .. }) => Ok(Ruleset::server_default(user_id)),
            Err(err) => Err(err),
        }
    }

    /// Store a changed ruleset (and so deliver it through sync).
    pub fn save(&self, user_id: &UserId, ruleset: &Ruleset) -> Result<()> {
        let content = serde_json::value::to_raw_value(&json!({"global": ruleset}))?;
        self.account_data.set_internal(user_id, None, "m.push_rules", content)?;
        self.cache.lock().expect("ruleset cache").remove(user_id);
        Ok(())
    }

    /// A room rule for `old` (a muted room, say) is added for `new` too.
    pub fn copy_room_rule(&self, user_id: &UserId, old: &ruma::RoomId, new: &ruma::RoomId) -> Result<()> {
        let mut ruleset = self.ruleset(user_id)?;
        let Some(rule) = ruleset.room.iter().find(|r| r.rule_id == old).cloned() else { return Ok(()) };
        if ruleset.room.iter().any(|r| r.rule_id == new) {
            return Ok(());
        }
        let mut copy = rule;
        copy.rule_id = new.to_owned();
        ruleset.room.insert(copy);
        self.save(user_id, &ruleset)
    }

    /// `m.push_rules` as account data content, for an initial sync.
    pub fn content(&self, user_id: &UserId) -> Result<serde_json::Value> {
        Ok(json!({"global": self.ruleset(user_id)?}))
    }
}

/// An HTTP pusher's gateway URL and its `devices` entry (its `data`
/// without the URL); `None` for other kinds.
fn gateway_device(pusher: &JsonValue) -> Option<(&str, JsonValue)> {
    let url = pusher["data"]["url"].as_str().filter(|_| pusher["kind"] == "http")?;
    let mut data = pusher["data"].clone();
    data.as_object_mut().map(|d| d.remove("url"));
    let device = json!({
        "app_id": pusher["app_id"], "pushkey": pusher["pushkey"], "pushkey_ts": pusher["pushkey_ts"],
        "data": data,
    });
    Some((url, device))
}

/// What a push carries besides the event.
pub struct PushNotification {
    pub unread: u64,
    pub highlight: bool,
    pub tweaks: JsonValue,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
}
