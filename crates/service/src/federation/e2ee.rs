//! End-to-end encryption across servers: device keys and one-time keys of
//! other servers' users (`/user/keys/query`, `/user/keys/claim`), device
//! lists (`/user/devices`, `m.device_list_update`), and to-device messages
//! (`m.direct_to_device`). The server relays ciphertext only.

use std::{collections::BTreeMap, time::Duration};

use estuary_core::{Error, Result};
use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId,
    api::federation::keys::{claim_keys, get_keys},
};
use serde_json::{Map, Value as JsonValue, json};

use super::Federation;
use crate::outgoing::{Job, server_destination};

/// How long a client's key query or claim waits for another server.
const REMOTE_KEYS_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests grouped by the users' servers.
fn by_server<T>(items: Vec<(OwnedUserId, T)>) -> BTreeMap<OwnedServerName, Vec<(OwnedUserId, T)>> {
    let mut grouped: BTreeMap<OwnedServerName, Vec<(OwnedUserId, T)>> = BTreeMap::new();
    for (user, item) in items {
        grouped.entry(user.server_name().to_owned()).or_default().push((user, item));
    }
    grouped
}

/// Merge `from`'s object fields into `into`'s (per user).
fn merge(into: &mut JsonValue, field: &str, from: &JsonValue) {
    if let (Some(target), Some(source)) = (into[field].as_object_mut(), from[field].as_object()) {
        for (key, value) in source {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// A server that did not answer, named in the answer's `failures`.
fn note_failure(answer: &mut JsonValue, server: &ServerName, what: &str, reason: String) {
    tracing::warn!(%server, "{what} failed: {reason}");
    answer["failures"][server.as_str()] = json!({"errcode": "M_UNAVAILABLE", "error": reason});
}

impl Federation {
    pub(super) fn is_local(&self, user: &UserId) -> bool {
        user.server_name() == self.config.server_name
    }

    /// `/keys/query` for a client: our users from storage, other servers'
    /// users from their servers (in parallel, bounded); a server that does
    /// not answer is named in `failures`.
    pub async fn query_keys(
        &self,
        requester: &UserId,
        requests: Vec<(OwnedUserId, Vec<String>)>,
    ) -> Result<JsonValue> {
        let (mut here, remote): (Vec<_>, Vec<_>) =
            requests.into_iter().partition(|(user, _)| self.is_local(user));
        if !self.enabled() {
            return self.e2ee.query(requester, here);
        }
        // Other servers' users sharing a room with ours are answered from
        // the cache (fetched whole the first time); the others are asked.
        let remote_users: Vec<OwnedUserId> = remote.iter().map(|(user, _)| user.clone()).collect();
        let cached = self.cache_device_lists(&remote_users).await;
        let (from_cache, remote): (Vec<_>, Vec<_>) =
            remote.into_iter().partition(|(user, _)| cached.contains(user));
        here.extend(from_cache);
        let mut answer = self.e2ee.query(requester, here)?;
        let queries = by_server(remote).into_iter().map(|(server, users)| async move {
            let request: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> = users
                .into_iter()
                .map(|(user, devices)| (user, devices.into_iter().map(OwnedDeviceId::from).collect()))
                .collect();
            let sent = self.client.send(&server, get_keys::v1::Request::new(request));
            let outcome = tokio::time::timeout(REMOTE_KEYS_TIMEOUT, sent).await;
            (server, outcome)
        });
        for (server, outcome) in futures::future::join_all(queries).await {
            match outcome {
                Ok(Ok(response)) => {
                    let value = json!({
                        "device_keys": response.device_keys,
                        "master_keys": response.master_keys,
                        "self_signing_keys": response.self_signing_keys,
                    });
                    for field in ["device_keys", "master_keys", "self_signing_keys"] {
                        merge(&mut answer, field, &value);
                    }
                }
                Ok(Err(err)) => note_failure(&mut answer, &server, "key query", err.to_string()),
                Err(_) => note_failure(&mut answer, &server, "key query", "timed out".to_owned()),
            }
        }
        Ok(answer)
    }

    /// `/keys/claim` for a client: one-time keys of our users and of other
    /// servers' users.
    pub async fn claim_keys(&self, requests: Vec<(OwnedUserId, String, String)>) -> Result<JsonValue> {
        let (local, remote): (Vec<_>, Vec<_>) =
            requests.into_iter().partition(|(user, _, _)| self.is_local(user));
        let mut answer = self.e2ee.claim(local)?;
        if !self.enabled() {
            return Ok(answer);
        }
        let remote =
            remote.into_iter().map(|(user, device, algorithm)| (user, (device, algorithm))).collect();
        let claims = by_server(remote).into_iter().map(|(server, users)| async move {
            let mut request: claim_keys::v1::OneTimeKeyClaims = BTreeMap::new();
            for (user, (device, algorithm)) in users {
                request.entry(user).or_default().insert(device.into(), algorithm.as_str().into());
            }
            let sent = self.client.send(&server, claim_keys::v1::Request::new(request));
            let outcome = tokio::time::timeout(REMOTE_KEYS_TIMEOUT, sent).await;
            (server, outcome)
        });
        for (server, outcome) in futures::future::join_all(claims).await {
            match outcome {
                Ok(Ok(response)) => {
                    merge(&mut answer, "one_time_keys", &json!({"one_time_keys": response.one_time_keys}));
                }
                Ok(Err(err)) => note_failure(&mut answer, &server, "key claim", err.to_string()),
                Err(_) => note_failure(&mut answer, &server, "key claim", "timed out".to_owned()),
            }
        }
        Ok(answer)
    }

    /// To-device messages for other servers' users: one `m.direct_to_device`
    /// EDU per server, queued durably.
    pub fn send_to_device_remote(
        &self,
        sender: &UserId,
        event_type: &str,
        message_id: &str,
        targets: Vec<(OwnedUserId, Option<OwnedDeviceId>, JsonValue)>,
    ) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let targets = targets.into_iter().map(|(user, device, content)| (user, (device, content))).collect();
        for (server, users) in by_server(targets) {
            let mut messages: Map<String, JsonValue> = Map::new();
            for (user, (device, content)) in users {
                let device = device.map_or_else(|| "*".to_owned(), |d| d.to_string());
                let entry = messages.entry(user.to_string()).or_insert_with(|| json!({}));
                entry[device] = content;
            }
            let edu = json!({"edu_type": "m.direct_to_device", "content": {
                "sender": sender, "type": event_type, "message_id": message_id, "messages": messages,
            }});
            self.outgoing.enqueue(&server_destination(&server), Job::Edu { edu })?;
        }
        Ok(())
    }

    /// `/user/keys/query` from another server: our users' keys (no
    /// user-signing keys: those are for their owner only).
    pub fn serve_keys_query(
        &self,
        origin: &ServerName,
        requests: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<JsonValue> {
        let local = requests
            .into_iter()
            .filter(|(user, _)| self.is_local(user))
            .map(|(user, devices)| (user, devices.into_iter().map(|d| d.to_string()).collect()))
            .collect();
        // A requester no key belongs to: user-signing keys are left out.
        let requester = UserId::parse(format!("@:{origin}")).map_err(Error::internal)?;
        self.e2ee.query(&requester, local)
    }

    /// `/user/keys/claim` from another server, for our users only.
    pub fn serve_keys_claim(&self, claims: claim_keys::v1::OneTimeKeyClaims) -> Result<JsonValue> {
        let mut requests = Vec::new();
        for (user, devices) in claims.into_iter().filter(|(user, _)| self.is_local(user)) {
            for (device, algorithm) in devices {
                requests.push((user.clone(), device.to_string(), algorithm.to_string()));
            }
        }
        self.e2ee.claim(requests)
    }

    /// `/user/devices/{userId}`: a user's devices with their keys, and their
    /// cross-signing keys; the stream ID is the user's last
    /// `m.device_list_update`, which the next one names as its `prev_id`.
    pub fn serve_devices(&self, user_id: &UserId) -> Result<(u64, JsonValue)> {
        if !self.is_local(user_id) {
            return Err(Error::not_found("The user is not on this server"));
        }
        let requester = UserId::parse(format!("@:{}", self.config.server_name)).map_err(Error::internal)?;
        let keys = self.e2ee.query(&requester, vec![(user_id.to_owned(), Vec::new())])?;
        Ok((self.e2ee.device_list_stream_id(user_id)?, keys))
    }

    /// `m.direct_to_device`: deliver to our users' devices.
    pub(super) fn receive_to_device(&self, origin: &ServerName, content: &JsonValue) {
        let Some(sender) = content["sender"].as_str().and_then(|s| UserId::parse(s).ok()) else { return };
        if sender.server_name() != origin {
            return;
        }
        let (Some(event_type), Some(messages)) = (content["type"].as_str(), content["messages"].as_object())
        else {
            return;
        };
        let message_id = content["message_id"].as_str().unwrap_or_default();
        let mut targets = Vec::new();
        for (user, devices) in messages {
            let Ok(user) = UserId::parse(user) else { continue };
            if !self.is_local(&user) {
                continue;
            }
            for (device, body) in devices.as_object().into_iter().flatten() {
                let device = (device != "*").then(|| OwnedDeviceId::from(device.as_str()));
                targets.push((user.clone(), device, body.clone()));
            }
        }
        // The message ID makes a retried transaction deliver once.
        let via: OwnedDeviceId = format!("federation:{origin}").into();
        if let Err(err) = self.to_device.send(&sender, &via, message_id, event_type, targets) {
            tracing::warn!(%origin, "to-device messages from the server not delivered: {err}");
        }
    }
}
