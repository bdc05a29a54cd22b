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
    /// Our user → the stream ID of their last `m.device_list_update`.
    userid_devicelistid: Table<String, u64>,
    /// Another server's user → their devices and keys, kept up to date by
    /// that server's updates while we share a room with them.
    remote_device_lists: Table<String, Json<RemoteDeviceList>>,
}

/// Builds a key change's EDU from its stream position and the user's
/// previous `m.device_list_update`.
type EduOf<'a> = dyn Fn(u64, Option<u64>) -> Result<JsonValue> + 'a;

/// Another server's user's device list, as this server caches it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemoteDeviceList {
    /// The stream ID of the last update applied (or of the resync): updates
    /// up to it are in here.
    pub stream_id: u64,
    /// Device ID → device keys, with `unsigned.device_display_name`.
    pub devices: BTreeMap<String, JsonValue>,
    pub master_key: Option<JsonValue>,
    pub self_signing_key: Option<JsonValue>,
}

/// A cross-signing key as `requester` may see it: another user's signature
/// on it was made with that user's user-signing key, which only they see.
fn visible_signatures(mut key: JsonValue, owner: &UserId, requester: &UserId) -> JsonValue {
    if let Some(signatures) = key.get_mut("signatures").and_then(JsonValue::as_object_mut) {
        signatures.retain(|signer, _| signer == owner.as_str() || signer == requester.as_str());
    }
    key
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
            userid_devicelistid: db.table("userid_devicelistid").db()?,
            remote_device_lists: db.table("remoteuserid_devicelist").db()?,
        })
    }

    pub fn highest_stream(db: &Db) -> Result<u64> {
        let table: Table<u64, String> = db.table("stream_keychange").db()?;
        Ok(table.last().db()?.map(|(k, _)| k).unwrap_or(0))
    }

    /// Record that one of a user's devices changed (new, renamed, new keys
    /// or signatures, deleted), and wake those who care. For one of our
    /// users, the servers sharing a room with them hear of it in the same
    /// write: an `m.device_list_update` whose `prev_id` is the user's
    /// previous update, so a server that missed one resyncs.
    pub fn device_changed(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let edu = |position: u64, prev: Option<u64>| -> Result<JsonValue> {
            let device = self.accounts.device(user_id, device_id)?;
            let mut content = json!({
                "user_id": user_id, "device_id": device_id, "stream_id": position,
                "prev_id": prev.into_iter().collect::<Vec<_>>(), "deleted": device.is_none(),
            });
            if let Some(name) = device.and_then(|d| d.display_name) {
                content["device_display_name"] = json!(name);
            }
            if let Some(Json(keys)) =
                self.device_keys.get(&(user_id.to_string(), device_id.to_string())).db()?
            {
                content["keys"] = keys;
            }
            Ok(json!({"edu_type": "m.device_list_update", "content": content}))
        };
        self.key_change(user_id, Some(&edu), |_| {})
    }

    /// Record that a user's cross-signing keys changed; for one of our users,
    /// servers sharing a room hear of it (`m.signing_key_update`).
    pub fn cross_signing_changed(&self, user_id: &UserId) -> Result<()> {
        let edu = |_: u64, _: Option<u64>| -> Result<JsonValue> {
            let mut content = json!({"user_id": user_id});
            for (kind, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
                if let Some(Json(key)) =
                    self.cross_signing.get(&(user_id.to_string(), kind.to_owned())).db()?
                {
                    content[field] = key;
                }
            }
            Ok(json!({"edu_type": "m.signing_key_update", "content": content}))
        };
        self.key_change(user_id, Some(&edu), |_| {})
    }

    /// Record a key change: in the stream (sync's `device_lists`), to the
    /// bridges that see the user, and, for one of our users, as the EDU
    /// `edu(position, previous update)` builds to the servers sharing a room;
    /// `stage` adds the change itself to the same write.
    fn key_change(
        &self,
        user_id: &UserId,
        edu: Option<&EduOf<'_>>,
        stage: impl FnOnce(&mut estuary_storage::Batch),
    ) -> Result<()> {
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
        let bridges: Vec<_> = self
            .rooms
            .appservices_seeing(user_id)?
            .into_iter()
            .filter(|a| a.device_extensions && a.registration.url.is_some())
            .collect();
        let last_update = self.userid_devicelistid.get(&user_id.to_string()).db()?;
        let mut failed = None;
        self.streams.commit(self.db.batch(), |position, batch| {
            batch.put(table, &position, &user_id.to_string());
            stage(batch);
            if let Some(edu) = edu.filter(|_| local) {
                match edu(position, last_update) {
                    Ok(edu) => {
                        if edu["edu_type"] == "m.device_list_update" {
                            batch.put(&self.userid_devicelistid, &user_id.to_string(), &position);
                        }
                        for server in &servers {
                            let job = crate::outgoing::Job::Edu { edu: edu.clone() };
                            self.outgoing.stage(batch, &crate::outgoing::server_destination(server), job);
                        }
                    }
                    Err(err) => failed = Some(err),
                }
            }
            for appservice in &bridges {
                let job =
                    crate::outgoing::Job::AppserviceDeviceList { as_device_list_changed: user_id.to_owned() };
                self.outgoing.stage(batch, &appservice.destination(), job);
            }
        })?;
        if let Some(err) = failed {
            tracing::warn!(%user_id, "device list update not sent to other servers: {err}");
        }
        if !servers.is_empty() || !bridges.is_empty() {
            self.outgoing.wake();
        }
        self.streams.notify(mates.iter().map(|u| &**u));
        Ok(())
    }

    /// The stream ID of a user's last `m.device_list_update` (what
    /// `/user/devices` answers, so a server's cache lines up with the next).
    pub fn device_list_stream_id(&self, user_id: &UserId) -> Result<u64> {
        Ok(self.userid_devicelistid.get(&user_id.to_string()).db()?.unwrap_or(0))
    }

    /// Another server's user's devices as cached here, if they are.
    pub fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        Ok(self.remote_device_lists.get(&user_id.to_string()).db()?.map(|Json(list)| list))
    }

    /// Cache another server's user's devices (a resync, an update applied,
    /// or `None` to forget them): a key change like any other, which those
    /// sharing a room and the bridges that see the user hear of.
    pub fn store_remote_device_list(&self, user_id: &UserId, list: Option<&RemoteDeviceList>) -> Result<()> {
        self.key_change(user_id, None, |batch| match list {
            Some(list) => batch.put(&self.remote_device_lists, &user_id.to_string(), &Json(list.clone())),
            None => batch.delete(&self.remote_device_lists, &user_id.to_string()),
        })
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
            self.device_changed(user_id, device_id)?;
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

    /// `/keys/query` for local users and the other servers' users cached
    /// here: device keys with their display names, and cross-signing keys
    /// (a user-signing key only for its owner).
    pub fn query(&self, requester: &UserId, requests: Vec<(OwnedUserId, Vec<String>)>) -> Result<JsonValue> {
        let mut device_keys = Map::new();
        let mut failures = Map::new();
        let mut cross: [Map<String, JsonValue>; 3] = Default::default();
        for (user, devices) in requests {
            if !self.accounts.is_local(&user) {
                let Some(list) = self.remote_device_list(&user)? else {
                    failures.insert(
                        user.server_name().to_string(),
                        json!({"errcode": "M_UNAVAILABLE", "error": "The user's devices are not known here"}),
                    );
                    continue;
                };
                let wanted = |device: &String| devices.is_empty() || devices.contains(device);
                let per_device = list.devices.into_iter().filter(|(d, _)| wanted(d)).collect();
                device_keys.insert(user.to_string(), JsonValue::Object(per_device));
                for (i, key) in [list.master_key, list.self_signing_key].into_iter().enumerate() {
                    if let Some(key) = key {
                        cross[i].insert(user.to_string(), key);
                    }
                }
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
                    cross[i].insert(user.to_string(), visible_signatures(key, &user, requester));
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
        let only_user_signing = keys.iter().all(|(kind, _)| *kind == "user_signing");
        let mut batch = self.db.batch();
        for (kind, key) in keys {
            if key["user_id"] != user_id.as_str() || !key["keys"].is_object() || !key["usage"].is_array() {
                return Err(Error::bad_json(format!("Invalid {kind} key")));
            }
            batch.put(&self.cross_signing, &(user_id.to_string(), kind.to_owned()), &Json(key));
        }
        batch.commit().db()?;
        if only_user_signing {
            return self.private_key_change(user_id, user_id);
        }
        self.cross_signing_changed(user_id)
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
            // A signed device is that device's change; a signed
            // cross-signing key is a signing key update.
            changed.push((user, is_device.then_some(key_id)));
        }
        changed.sort();
        changed.dedup();
        for (user, device) in changed {
            match device {
                Some(device) => self.device_changed(&user, device.as_str().into())?,
                // Another user's key signed with our user-signing key.
                None if user != signer => self.private_key_change(&user, signer)?,
                None => self.cross_signing_changed(&user)?,
            }
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

    /// Users whose devices or keys changed at positions `from..=to` as
    /// `viewer` sees them; callers narrow them to those sharing a room.
    pub fn key_changes_between(&self, viewer: &UserId, from: u64, to: u64) -> Result<BTreeSet<String>> {
        Ok(self
            .stream_keychange
            .scan_from(&[], Some(&from.encode()), false, usize::MAX)
            .db()?
            .into_iter()
            .take_while(|(position, _)| *position <= to)
            .filter_map(|(_, row)| match row.split_once(' ') {
                // A change only one user sees (see `private_key_change`).
                Some((user, only_for)) => (only_for == viewer.as_str()).then(|| user.to_owned()),
                None => Some(row),
            })
            .collect())
    }

    /// A change of `user_id`'s keys only `viewer` may see: a user-signing
    /// key (its owner's), or a signature made with one (its signer's). No
    /// other user nor server hears of it.
    fn private_key_change(&self, user_id: &UserId, viewer: &UserId) -> Result<()> {
        self.streams.commit(self.db.batch(), |position, batch| {
            batch.put(&self.stream_keychange, &position, &format!("{user_id} {viewer}"));
        })?;
        self.streams.notify([viewer]);
        Ok(())
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
        self.device_changed(user_id, device_id)
    }
}
