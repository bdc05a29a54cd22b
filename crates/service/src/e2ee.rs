//! End-to-end encryption support: device keys, one-time and fallback keys,
//! and device-list changes. The server only stores and relays; it never
//! sees plaintext.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use estuary_core::{Error, Result};
use estuary_storage::{Db, Key, Table, codec::Json};
use ruma::{DeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value as JsonValue, json};

use crate::{accounts::Accounts, rooms::Rooms, storage_error::StorageResultExt, streams::Streams};

/// (key ID, key, used) of a device's fallback key per algorithm.
type FallbackTable = Table<(String, String, String), Json<(String, JsonValue, bool)>>;

pub struct E2ee {
    /// Bridges that encrypt through their transactions hear of device list
    /// changes and their users' key counts (MSC3202).
    appservices: Arc<crate::appservices::Appservices>,
    db: Db,
    config: Arc<estuary_core::Config>,
    /// Our users' device list changes go to the servers sharing a room.
    outgoing: Arc<crate::outgoing::Outgoing>,
    streams: Arc<Streams>,
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    device_keys: Table<(String, String), Json<JsonValue>>,
    one_time_keys: Table<(String, String, String), Json<JsonValue>>,
    fallback_keys: FallbackTable,
    stream_keychange: Table<u64, String>,
    cross_signing: Table<(String, String), Json<JsonValue>>,
}

/// The kinds of cross-signing key, as stored.
pub const CROSS_SIGNING_KINDS: [&str; 3] = ["master", "self_signing", "user_signing"];

impl E2ee {
    pub fn new(
        config: Arc<estuary_core::Config>,
        db: &Db,
        streams: Arc<Streams>,
        accounts: Arc<Accounts>,
        rooms: Arc<Rooms>,
        outgoing: Arc<crate::outgoing::Outgoing>,
        appservices: Arc<crate::appservices::Appservices>,
    ) -> Result<Self> {
        Ok(Self {
            appservices,
            db: db.clone(),
            config,
            outgoing,
            streams,
            accounts,
            rooms,
            device_keys: db.table("useriddeviceid_devicekeys").db()?,
            one_time_keys: db.table("useriddevicekeyid_onetimekey").db()?,
            fallback_keys: db.table("useriddevicealgorithm_fallbackkey").db()?,
            stream_keychange: db.table("stream_keychange").db()?,
            cross_signing: db.table("useridkind_crosssigningkey").db()?,
        })
    }

    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: Table<u64, String> = db.table("stream_keychange").db()?;
        Ok(table.last().db()?.map(|(k, _)| k).unwrap_or(0))
    }

    /// Record that a user's devices or keys changed, and wake those who care.
    /// For one of our users, the servers sharing a room with them hear of
    /// it too (`m.device_list_update`, in the same write); with no previous
    /// stream IDs, they fetch the whole list from `/user/devices`.
    pub fn device_list_changed(&self, user_id: &UserId) -> Result<()> {
        let table = &self.stream_keychange;
        let mates = self.rooms.room_mates(user_id)?;
        let local = user_id.server_name() == self.config.server_name;
        let mut servers: Vec<ruma::OwnedServerName> = mates
            .iter()
            .map(|u| u.server_name().to_owned())
            .filter(|s| local && self.config.allow_federation && *s != self.config.server_name)
            .collect();
        servers.sort();
        servers.dedup();
        let device = self.accounts.devices(user_id)?.into_iter().next().map(|(id, _)| id.to_string());
        let bridges: Vec<_> = self
            .rooms
            .appservices_seeing(user_id)?
            .into_iter()
            .filter(|a| a.device_extensions && a.registration.url.is_some())
            .collect();
        self.streams.commit(self.db.batch(), |position, batch| {
            batch.put(table, &position, &user_id.to_string());
            let edu = json!({"edu_type": "m.device_list_update", "content": {
                "user_id": user_id, "device_id": device.clone().unwrap_or_default(),
                "stream_id": position, "prev_id": [], "deleted": false,
            }});
            for server in &servers {
                let job = crate::outgoing::Job::Edu { edu: edu.clone() };
                self.outgoing.stage(batch, &crate::outgoing::server_destination(server), job);
            }
            for appservice in &bridges {
                let job =
                    crate::outgoing::Job::AppserviceDeviceList { as_device_list_changed: user_id.to_owned() };
                self.outgoing.stage(batch, &appservice.destination(), job);
            }
        })?;
        if !servers.is_empty() || !bridges.is_empty() {
            self.outgoing.wake();
        }
        self.streams.notify(mates.iter().map(|u| &**u));
        Ok(())
    }

    /// The position of the latest device or key change (`/user/devices`' stream ID).
    pub fn latest_key_change(&self) -> u64 {
        self.stream_keychange.last().ok().flatten().map_or(0, |(k, _)| k)
    }

    /// `/keys/upload`. Returns the one-time key counts of the device.
    pub fn upload(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_keys: Option<JsonValue>,
        one_time_keys: Vec<(String, JsonValue)>,
        fallback_keys: Vec<(String, JsonValue)>,
    ) -> Result<BTreeMap<String, u64>> {
        let mut batch = self.db.batch();
        let mut changed = false;
        if let Some(keys) = device_keys {
            if keys["user_id"] != user_id.as_str() || keys["device_id"] != device_id.as_str() {
                return Err(Error::invalid_param(
                    "device_keys must be for the authenticated user and device",
                ));
            }
            if !keys["keys"].is_object() || !keys["algorithms"].is_array() || !keys["signatures"].is_object()
            {
                return Err(Error::bad_json("device_keys needs algorithms, keys and signatures"));
            }
            let key = (user_id.to_string(), device_id.to_string());
            changed = self.device_keys.get(&key).db()?.is_none_or(|Json(old)| old != keys);
            batch.put(&self.device_keys, &key, &Json(keys));
        }
        for (key_id, key) in one_time_keys {
            let row = (user_id.to_string(), device_id.to_string(), key_id);
            // A key ID already uploaded keeps its first value (the spec forbids reuse).
            if !self.one_time_keys.contains(&row).db()? {
                batch.put(&self.one_time_keys, &row, &Json(key));
            }
        }
        for (key_id, key) in fallback_keys {
            let algorithm = key_id.split(':').next().unwrap_or_default().to_owned();
            let row = (user_id.to_string(), device_id.to_string(), algorithm);
            batch.put(&self.fallback_keys, &row, &Json((key_id, key, false)));
        }
        batch.commit().db()?;
        if changed {
            self.device_list_changed(user_id)?;
        }
        self.key_counts_to_bridge(user_id, device_id)?;
        self.one_time_key_counts(user_id, device_id)
    }

    /// A device's key counts changed: tell its user's bridge, if that bridge
    /// encrypts through its transactions (MSC3202).
    fn key_counts_to_bridge(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let Some(appservice) = self.appservices.encrypting_for(user_id) else { return Ok(()) };
        let as_key_counts = crate::outgoing::KeyCounts {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            one_time_keys: self.one_time_key_counts(user_id, device_id)?,
            unused_fallback_keys: self.unused_fallback_key_types(user_id, device_id)?,
        };
        self.outgoing
            .enqueue(&appservice.destination(), crate::outgoing::Job::AppserviceKeyCounts { as_key_counts })
    }

    pub fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for ((_, _, key_id), _) in
            self.one_time_keys.scan_prefix(&(user_id.to_string(), device_id.to_string())).db()?
        {
            let algorithm = key_id.split(':').next().unwrap_or_default().to_owned();
            *counts.entry(algorithm).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Algorithms with a fallback key the device has not had used yet.
    pub fn unused_fallback_key_types(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<String>> {
        Ok(self
            .fallback_keys
            .scan_prefix(&(user_id.to_string(), device_id.to_string()))
            .db()?
            .into_iter()
            .filter(|(_, Json((_, _, used)))| !used)
            .map(|((_, _, algorithm), _)| algorithm)
            .collect())
    }

    /// `/keys/query` for local users: device keys with their display names,
    /// and cross-signing keys (a user-signing key only for its owner).
    pub fn query(&self, requester: &UserId, requests: Vec<(OwnedUserId, Vec<String>)>) -> Result<JsonValue> {
        let mut device_keys = Map::new();
        let mut failures = Map::new();
        let mut cross: [Map<String, JsonValue>; 3] = Default::default();
        for (user, devices) in requests {
            if !self.accounts.is_local(&user) {
                failures.insert(
                    user.server_name().to_string(),
                    json!({"errcode": "M_UNAVAILABLE", "error": "Keys of users on other servers are not fetched yet"}),
                );
                continue;
            }
            let mut per_device = Map::new();
            for ((_, device), Json(mut keys)) in self.device_keys.scan_prefix(&(user.to_string(),)).db()? {
                if !devices.is_empty() && !devices.contains(&device) {
                    continue;
                }
                let device_id: &DeviceId = device.as_str().into();
                let Some(stored) = self.accounts.device(&user, device_id)? else { continue };
                keys["unsigned"] = match stored.display_name {
                    Some(name) => json!({"device_display_name": name}),
                    None => json!({}),
                };
                per_device.insert(device, keys);
            }
            device_keys.insert(user.to_string(), JsonValue::Object(per_device));
            for (i, kind) in CROSS_SIGNING_KINDS.iter().enumerate() {
                if *kind == "user_signing" && user != requester {
                    continue;
                }
                if let Some(Json(key)) =
                    self.cross_signing.get(&(user.to_string(), (*kind).to_owned())).db()?
                {
                    cross[i].insert(user.to_string(), key);
                }
            }
        }
        let [master, self_signing, user_signing] = cross;
        Ok(json!({
            "device_keys": device_keys, "failures": failures, "master_keys": master,
            "self_signing_keys": self_signing, "user_signing_keys": user_signing,
        }))
    }

    /// Whether the user has a master cross-signing key (later uploads need UIA).
    pub fn has_cross_signing(&self, user_id: &UserId) -> Result<bool> {
        self.cross_signing.contains(&(user_id.to_string(), "master".to_owned())).db()
    }

    /// Whether uploading these keys changes nothing (then no UIA is needed).
    pub fn cross_signing_unchanged(&self, user_id: &UserId, keys: &[(&str, JsonValue)]) -> Result<bool> {
        for (kind, key) in keys {
            let stored = self.cross_signing.get(&(user_id.to_string(), (*kind).to_owned())).db()?;
            if stored.map(|Json(k)| k).as_ref() != Some(key) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Store cross-signing keys (`kind`, key JSON) after checking their shape.
    pub fn upload_cross_signing(&self, user_id: &UserId, keys: Vec<(&str, JsonValue)>) -> Result<()> {
        // Self- and user-signing keys are signed by the master key: one must exist.
        let has_master = keys.iter().any(|(kind, _)| *kind == "master") || self.has_cross_signing(user_id)?;
        if !keys.is_empty() && !has_master {
            return Err(Error::missing_param("Upload a master key before the other cross-signing keys"));
        }
        let mut batch = self.db.batch();
        for (kind, key) in keys {
            if key["user_id"] != user_id.as_str() || !key["keys"].is_object() || !key["usage"].is_array() {
                return Err(Error::bad_json(format!("Invalid {kind} key")));
            }
            batch.put(&self.cross_signing, &(user_id.to_string(), kind.to_owned()), &Json(key));
        }
        batch.commit().db()?;
        self.device_list_changed(user_id)
    }

    /// `/keys/signatures/upload`: merge signatures into the signed device or
    /// cross-signing keys. Returns failures per user and key.
    pub fn upload_signatures(
        &self,
        signer: &UserId,
        signed: Vec<(OwnedUserId, String, JsonValue)>,
    ) -> Result<JsonValue> {
        let mut failures: Map<String, JsonValue> = Map::new();
        let mut changed = Vec::new();
        for (user, key_id, object) in signed {
            let fail = |failures: &mut Map<String, JsonValue>, message: &str| {
                let entry = failures.entry(user.to_string()).or_insert_with(|| json!({}));
                entry[&key_id] = json!({"errcode": "M_INVALID_SIGNATURE", "error": message});
            };
            let Some(new_signatures) = object["signatures"][signer.as_str()].as_object().cloned() else {
                fail(&mut failures, "No signatures by the uploader");
                continue;
            };
            let device_key = (user.to_string(), key_id.clone());
            let target = match self.device_keys.get(&device_key).db()? {
                Some(Json(keys)) => Some((keys, true)),
                None => CROSS_SIGNING_KINDS
                    .iter()
                    .filter_map(|kind| {
                        self.cross_signing.get(&(user.to_string(), (*kind).to_owned())).ok().flatten()
                    })
                    .map(|Json(k)| k)
                    .find(|k| {
                        k["keys"]
                            .as_object()
                            .is_some_and(|m| m.keys().any(|id| id.ends_with(&format!(":{key_id}"))))
                    })
                    .map(|k| (k, false)),
            };
            let Some((mut keys, is_device)) = target else {
                fail(&mut failures, "Unknown key");
                continue;
            };
            let entry = keys["signatures"]
                .as_object_mut()
                .map(|s| s.entry(signer.to_string()).or_insert_with(|| json!({})));
            if let Some(JsonValue::Object(existing)) = entry {
                existing.extend(new_signatures);
            } else {
                keys["signatures"] = json!({signer.as_str(): new_signatures});
            }
            if is_device {
                self.device_keys.put(&device_key, &Json(keys)).db()?;
            } else {
                let kind = CROSS_SIGNING_KINDS
                    .iter()
                    .find(|kind| {
                        self.cross_signing
                            .get(&(user.to_string(), (**kind).to_owned()))
                            .ok()
                            .flatten()
                            .is_some_and(|Json(k)| k["keys"] == keys["keys"])
                    })
                    .copied()
                    .unwrap_or("master");
                self.cross_signing.put(&(user.to_string(), kind.to_owned()), &Json(keys)).db()?;
            }
            changed.push(user);
        }
        changed.sort();
        changed.dedup();
        for user in changed {
            self.device_list_changed(&user)?;
        }
        Ok(json!({"failures": failures}))
    }

    /// `/keys/claim`: a one-time key per requested device, else its fallback key.
    pub fn claim(&self, requests: Vec<(OwnedUserId, String, String)>) -> Result<JsonValue> {
        let mut claimed: Map<String, JsonValue> = Map::new();
        for (user, device, algorithm) in requests {
            let prefix = (user.to_string(), device.clone()).encode();
            let mut found = None;
            for ((u, d, key_id), Json(key)) in self.one_time_keys.scan_raw_prefix(&prefix, usize::MAX).db()? {
                if key_id.starts_with(&format!("{algorithm}:")) {
                    self.one_time_keys.delete(&(u, d, key_id.clone())).db()?;
                    found = Some((key_id, key));
                    break;
                }
            }
            if found.is_none() {
                let row = (user.to_string(), device.clone(), algorithm.clone());
                if let Some(Json((key_id, key, _))) = self.fallback_keys.get(&row).db()? {
                    self.fallback_keys.put(&row, &Json((key_id.clone(), key.clone(), true))).db()?;
                    found = Some((key_id, key));
                }
            }
            if let Some((key_id, key)) = found {
                let user_entry = claimed.entry(user.to_string()).or_insert_with(|| json!({}));
                user_entry[&device][&key_id] = key;
                self.key_counts_to_bridge(&user, device.as_str().into())?;
            }
        }
        Ok(json!({"one_time_keys": claimed, "failures": {}}))
    }

    /// Users whose devices or keys changed at positions `from..=to`; callers
    /// narrow them to those sharing a room with the viewer.
    pub fn key_changes_between(&self, from: u64, to: u64) -> Result<BTreeSet<String>> {
        Ok(self
            .stream_keychange
            .scan_from(&[], Some(&from.encode()), false, usize::MAX)
            .db()?
            .into_iter()
            .take_while(|(position, _)| *position <= to)
            .map(|(_, user)| user)
            .collect())
    }

    /// Forget a deleted device's keys.
    pub fn delete_device_keys(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let mut batch = self.db.batch();
        let prefix = (user_id.to_string(), device_id.to_string());
        batch.delete(&self.device_keys, &prefix);
        for (key, _) in self.one_time_keys.scan_prefix(&prefix).db()? {
            batch.delete(&self.one_time_keys, &key);
        }
        for (key, _) in self.fallback_keys.scan_prefix(&prefix).db()? {
            batch.delete(&self.fallback_keys, &key);
        }
        batch.commit().db()?;
        self.device_list_changed(user_id)
    }
}
