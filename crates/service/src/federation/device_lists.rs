//! Other servers' users' device lists, cached while one of our users shares
//! a room with them (the spec's Device Management). The first need fetches
//! the whole list (`/user/devices`); `m.device_list_update` EDUs then change
//! one device each, in their server's order (`stream_id`, `prev_id`), and an
//! update whose predecessor never came makes us fetch the whole list again.
//! The cache is dropped when sharing a room starts again (the membership
//! index does that), because no updates come while none is shared.

use std::time::Duration;

use estuary_core::{Error, Result};
use futures::StreamExt;
use ruma::{
    OwnedUserId, ServerName, UserId,
    api::{error::ErrorKind, federation::device::get_devices},
};
use serde_json::{Value as JsonValue, json};

use super::Federation;
use crate::e2ee::RemoteDeviceList;

/// How long fetching a user's whole device list may take.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How many users' device lists one key query fetches at once.
const RESYNCS_AT_ONCE: usize = 8;

/// What a device list update does to the cached list.
#[derive(Debug, PartialEq)]
enum Step {
    /// The list already holds it (or a later state).
    Ignore,
    /// It follows what the list holds: change the one device.
    Apply,
    /// Nothing cached, or an update in between never came: fetch it all.
    Resync,
}

/// Updates up to the cached `stream_id` are in the list (stream IDs grow),
/// so an update follows it when each `prev_id` is at most that. An update
/// with no `prev_id` is a sender's first: what came before is unknown.
fn step(cached: Option<&RemoteDeviceList>, stream_id: u64, prev_ids: &[u64]) -> Step {
    let Some(cached) = cached else { return Step::Resync };
    if stream_id <= cached.stream_id {
        Step::Ignore
    } else if !prev_ids.is_empty() && prev_ids.iter().all(|id| *id <= cached.stream_id) {
        Step::Apply
    } else {
        Step::Resync
    }
}

/// Device keys as a key query answers them: the name under `unsigned`.
fn with_display_name(mut keys: JsonValue, name: Option<&str>) -> JsonValue {
    if let (Some(object), Some(name)) = (keys.as_object_mut(), name) {
        let unsigned = object.entry("unsigned").or_insert_with(|| json!({}));
        if unsigned.is_object() {
            unsigned["device_display_name"] = json!(name);
        }
    }
    keys
}

/// Keys that name another user than the one asked about are dropped: a
/// server speaks for its own users only.
fn belongs_to(key: &JsonValue, user_id: &UserId) -> bool {
    key.is_object() && key.get("user_id").is_none_or(|u| u == user_id.as_str())
}

/// One device's change, as an `m.device_list_update` gives it.
fn apply(list: &mut RemoteDeviceList, user_id: &UserId, content: &JsonValue, stream_id: u64) {
    list.stream_id = stream_id;
    let Some(device_id) = content["device_id"].as_str() else { return };
    let keys = &content["keys"];
    // A device without keys is not in key queries.
    if content["deleted"].as_bool() == Some(true) || !belongs_to(keys, user_id) {
        list.devices.remove(device_id);
        return;
    }
    let name = content["device_display_name"].as_str();
    list.devices.insert(device_id.to_owned(), with_display_name(keys.clone(), name));
}

/// The whole list from a `/user/devices` answer.
fn from_snapshot(user_id: &UserId, response: get_devices::v1::Response) -> Result<RemoteDeviceList> {
    if response.user_id != user_id {
        return Err(Error::bad_json("The server answered for another user"));
    }
    let mut list = RemoteDeviceList { stream_id: response.stream_id.into(), ..Default::default() };
    for device in response.devices {
        let keys: JsonValue = device.keys.deserialize_as().unwrap_or_default();
        if belongs_to(&keys, user_id) {
            let keys = with_display_name(keys, device.device_display_name.as_deref());
            list.devices.insert(device.device_id.to_string(), keys);
        }
    }
    let key = |raw: Option<ruma::serde::Raw<_>>| {
        raw.and_then(|raw| raw.deserialize_as::<JsonValue>().ok()).filter(|k| belongs_to(k, user_id))
    };
    list.master_key = key(response.master_key);
    list.self_signing_key = key(response.self_signing_key);
    Ok(list)
}

impl Federation {
    /// Whether one of our users shares a room with this user: only then do
    /// their server's updates reach us, and only then is a cache kept.
    fn shares_room_here(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.rooms.room_mates(user_id)?.iter().any(|u| self.is_local(u)))
    }

    /// Fetch a user's whole device list from their server and cache it.
    async fn resync_device_list(&self, user_id: &UserId) -> Result<()> {
        let request = get_devices::v1::Request::new(user_id.to_owned());
        let sent = self.client.send(user_id.server_name(), request);
        let timed_out = || Error::matrix(504, ErrorKind::Unknown, "The user's server did not answer in time");
        let response = tokio::time::timeout(RESYNC_TIMEOUT, sent).await.map_err(|_| timed_out())??;
        let list = from_snapshot(user_id, response)?;
        self.e2ee.store_remote_device_list(user_id, Some(&list))
    }

    /// A key query's other servers' users: those we share a room with but
    /// have not cached are fetched whole (a few at a time). Returns the
    /// users whose devices are now cached.
    pub(super) async fn cache_device_lists(&self, users: &[OwnedUserId]) -> Vec<OwnedUserId> {
        let fetches = users.iter().cloned().map(|user| self.cache_device_list(user));
        let cached: Vec<Option<OwnedUserId>> =
            futures::stream::iter(fetches).buffer_unordered(RESYNCS_AT_ONCE).collect().await;
        cached.into_iter().flatten().collect()
    }

    async fn cache_device_list(&self, user: OwnedUserId) -> Option<OwnedUserId> {
        let lock = self.device_list_locks.get(&user);
        let _guard = lock.lock().await;
        match self.e2ee.remote_device_list(&user) {
            Ok(Some(_)) => return Some(user),
            Ok(None) if self.shares_room_here(&user).unwrap_or(false) => {}
            _ => return None,
        }
        match self.resync_device_list(&user).await {
            Ok(()) => Some(user),
            Err(err) => {
                tracing::warn!(server = %user.server_name(), %user, "device list not fetched: {err}");
                None
            }
        }
    }

    /// `m.device_list_update`: one of the origin's users changed a device.
    pub(super) async fn receive_device_list_update(&self, origin: &ServerName, content: &JsonValue) {
        let Some(user) = self.updated_user(origin, content) else { return };
        let Some(stream_id) = content["stream_id"].as_u64() else { return };
        let prev_ids: Vec<u64> =
            content["prev_id"].as_array().into_iter().flatten().filter_map(JsonValue::as_u64).collect();
        let lock = self.device_list_locks.get(&user);
        let _guard = lock.lock().await;
        let outcome = match self.e2ee.remote_device_list(&user) {
            Ok(cached) => match step(cached.as_ref(), stream_id, &prev_ids) {
                Step::Ignore => Ok(()),
                Step::Apply => {
                    let mut list = cached.unwrap_or_default();
                    apply(&mut list, &user, content, stream_id);
                    self.e2ee.store_remote_device_list(&user, Some(&list))
                }
                Step::Resync => self.resync_device_list(&user).await.or_else(|err| {
                    // Clients are told to query again; the next query retries.
                    tracing::warn!(%origin, %user, "device list not fetched after an update: {err}");
                    self.e2ee.store_remote_device_list(&user, None)
                }),
            },
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            tracing::warn!(%origin, %user, "device list update not recorded: {err}");
        }
    }

    /// `m.signing_key_update`: one of the origin's users changed their
    /// cross-signing keys.
    pub(super) async fn receive_signing_key_update(&self, origin: &ServerName, content: &JsonValue) {
        let Some(user) = self.updated_user(origin, content) else { return };
        let lock = self.device_list_locks.get(&user);
        let _guard = lock.lock().await;
        let outcome = self.e2ee.remote_device_list(&user).and_then(|cached| {
            let updated = cached.map(|mut list| {
                for (field, key) in
                    [("master_key", &mut list.master_key), ("self_signing_key", &mut list.self_signing_key)]
                {
                    if belongs_to(&content[field], &user) {
                        *key = Some(content[field].clone());
                    }
                }
                list
            });
            self.e2ee.store_remote_device_list(&user, updated.as_ref())
        });
        if let Err(err) = outcome {
            tracing::warn!(%origin, %user, "signing key update not recorded: {err}");
        }
    }

    /// The user an update is about: one of the origin's, sharing a room
    /// with one of ours (the others' updates are not ours to keep).
    fn updated_user(&self, origin: &ServerName, content: &JsonValue) -> Option<OwnedUserId> {
        let user = content["user_id"].as_str().and_then(|u| UserId::parse(u).ok())?;
        if user.server_name() != origin {
            tracing::info!(%origin, %user, "ignored a device update for another server's user");
            return None;
        }
        self.shares_room_here(&user).unwrap_or(false).then_some(user)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Step, apply, step};
    use crate::e2ee::RemoteDeviceList;

    fn cached(stream_id: u64) -> RemoteDeviceList {
        RemoteDeviceList { stream_id, ..Default::default() }
    }

    #[test]
    fn an_update_applies_only_after_what_the_cache_holds() {
        assert_eq!(step(None, 1, &[]), Step::Resync, "nothing cached");
        assert_eq!(step(Some(&cached(1)), 2, &[1]), Step::Apply, "the next one");
        assert_eq!(step(Some(&cached(3)), 4, &[1, 3]), Step::Apply, "all its predecessors held");
        assert_eq!(step(Some(&cached(1)), 3, &[2]), Step::Resync, "update 2 went missing");
        assert_eq!(step(Some(&cached(1)), 3, &[]), Step::Resync, "a sender that starts over");
        assert_eq!(step(Some(&cached(3)), 2, &[1]), Step::Ignore, "older than the cache");
        assert_eq!(step(Some(&cached(3)), 3, &[2]), Step::Ignore, "already held");
    }

    #[test]
    fn an_update_changes_renames_or_deletes_one_device() {
        let user = ruma::user_id!("@alice:remote.example");
        let mut list = cached(1);
        let keys = json!({"user_id": user, "device_id": "D", "keys": {"ed25519:D": "k"}});
        apply(&mut list, user, &json!({"device_id": "D", "keys": keys, "device_display_name": "Phone"}), 2);
        assert_eq!(list.stream_id, 2);
        assert_eq!(list.devices["D"]["unsigned"]["device_display_name"], "Phone");
        assert_eq!(list.devices["D"]["keys"]["ed25519:D"], "k");
        let forged = json!({"user_id": "@mallory:remote.example", "device_id": "E", "keys": {}});
        apply(&mut list, user, &json!({"device_id": "E", "keys": forged}), 3);
        assert!(!list.devices.contains_key("E"), "keys of another user are not kept");
        apply(&mut list, user, &json!({"device_id": "D", "deleted": true}), 4);
        assert!(list.devices.is_empty() && list.stream_id == 4);
    }
}
