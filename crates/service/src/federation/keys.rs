//! Server signing keys: ours as `/_matrix/key/v2/server` serves it, and
//! other servers' keys, fetched from them (or a notary) when needed, checked
//! against their own signatures and cached with their `valid_until_ts`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use estuary_core::{Result, time::now_millis};
use estuary_events::ServerSigningKey;
use estuary_storage::{Db, Table, codec::Json};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName,
    api::federation::discovery::{get_remote_server_keys_batch, get_server_keys},
    serde::Base64,
    signatures::{self, PublicKeyMap, PublicKeySet},
};
use serde::{Deserialize, Serialize};

use super::client::{FederationClient, FederationError};
use crate::storage_error::StorageResultExt;

/// How long other servers may cache our key response.
const OWN_KEYS_VALID: u64 = 7 * 24 * 3600 * 1000;
/// After a failed fetch, how long before asking that server again.
const FAILED_FETCH_PAUSE: Duration = Duration::from_secs(60);
/// A key response listing more keys than this (current and old) is
/// refused: every key held costs memory and storage, and a server has a
/// handful at most.
const MAX_KEYS_PER_RESPONSE: usize = 16;
/// Keys (and responses kept for them) remembered per server: the ones
/// valid longest stay.
const MAX_KEYS_PER_SERVER: usize = 32;

/// One server's keys as we know them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KnownKeys {
    /// Key ID → (unpadded base64 key, valid until (current keys) or
    /// expired at (old keys), in ms).
    pub keys: BTreeMap<String, (String, u64)>,
    /// The latest signed key response, as notary queries return it.
    pub response: serde_json::Value,
    /// Key ID → the latest response that listed it as a current key: a
    /// notary still answers for a key its server has since dropped.
    #[serde(default)]
    pub responses: BTreeMap<String, serde_json::Value>,
}

impl KnownKeys {
    /// At most `MAX_KEYS_PER_SERVER` keys, those valid longest, and a
    /// kept response only for a key still held.
    fn bound(&mut self) {
        if self.keys.len() > MAX_KEYS_PER_SERVER {
            let mut by_validity: Vec<(u64, String)> =
                self.keys.iter().map(|(id, (_, until))| (*until, id.clone())).collect();
            by_validity.sort();
            let excess = self.keys.len() - MAX_KEYS_PER_SERVER;
            for (_, id) in by_validity.into_iter().take(excess) {
                self.keys.remove(&id);
            }
        }
        let keys = &self.keys;
        self.responses.retain(|id, _| keys.contains_key(id));
    }
}

/// What a notary query asks of one server's keys: these key IDs (any when
/// empty), in a response valid until at least `valid_until` ms.
#[derive(Clone, Debug, Default)]
pub struct KeyCriteria {
    pub key_ids: Vec<String>,
    pub valid_until: u64,
}

pub struct ServerKeys {
    server_name: OwnedServerName,
    key: Arc<ServerSigningKey>,
    /// Keys this server signed with before a rotation (key ID → key and
    /// when it expired), listed in our key response.
    old_verify_keys: CanonicalJsonObject,
    trusted_key_servers: Vec<OwnedServerName>,
    servername_keys: Table<String, Json<KnownKeys>>,
    cache: Mutex<HashMap<OwnedServerName, KnownKeys>>,
    failed: Mutex<HashMap<OwnedServerName, Instant>>,
}

impl ServerKeys {
    pub fn new(
        db: &Db,
        server_name: OwnedServerName,
        key: Arc<ServerSigningKey>,
        trusted_key_servers: Vec<OwnedServerName>,
    ) -> Result<Self> {
        let old_verify_keys = crate::rooms::old_verify_keys(db)?;
        let old_verify_keys = match serde_json::from_value(serde_json::Value::Object(old_verify_keys)) {
            Ok(CanonicalJsonValue::Object(keys)) => keys,
            _ => CanonicalJsonObject::new(),
        };
        Ok(Self {
            server_name,
            key,
            old_verify_keys,
            trusted_key_servers,
            servername_keys: db.table("servername_keys").db()?,
            cache: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// Our key response, signed: `GET /_matrix/key/v2/server`.
    pub fn own_keys(&self) -> CanonicalJsonObject {
        let mut verify_key = CanonicalJsonObject::new();
        verify_key.insert("key".into(), self.key.public_key_base64().into());
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(self.key.key_id(), verify_key.into());
        let mut object = CanonicalJsonObject::new();
        object.insert("server_name".into(), self.server_name.as_str().into());
        object.insert("verify_keys".into(), verify_keys.into());
        object.insert("old_verify_keys".into(), self.old_verify_keys.clone().into());
        object.insert("valid_until_ts".into(), int(now_millis() + OWN_KEYS_VALID));
        self.sign(&mut object);
        object
    }

    /// Add our signature to a JSON object (notary answers, our key response).
    pub fn sign(&self, object: &mut CanonicalJsonObject) {
        if let Err(err) = signatures::sign_json(self.server_name.as_str(), &self.key.keypair, object) {
            tracing::error!("cannot sign a key response: {err}");
        }
    }

    /// The stored key responses of `server` (for notary queries); our own
    /// for our name.
    pub fn stored_response(&self, server: &ServerName) -> Option<serde_json::Value> {
        if server == self.server_name {
            return serde_json::to_value(self.own_keys()).ok();
        }
        self.known(server).map(|known| known.response).filter(|r| !r.is_null())
    }

    /// A notary's answer for `server`: the key responses that list the
    /// keys asked for, fetched again first when those held are not valid
    /// long enough (expired ones are better than none, as the spec asks).
    pub async fn notary_responses(
        &self,
        client: &FederationClient,
        server: &ServerName,
        criteria: &KeyCriteria,
    ) -> Vec<serde_json::Value> {
        if server == self.server_name {
            return self.stored_response(server).into_iter().collect();
        }
        if let Some(valid) = self.stored_responses(server, criteria, true) {
            return valid;
        }
        // Asked for by another server: fetched now, even if the last fetch
        // failed a moment ago (the pause spares a dead server our own
        // repeated checks, not a notary query).
        if let Err(err) = self.fetch(client, server).await {
            tracing::warn!(server = %server, "cannot fetch the server's signing keys for a notary query: {err}");
        }
        self.stored_responses(server, criteria, false).unwrap_or_default()
    }

    /// The held responses answering `criteria`. With `require_valid`, all
    /// asked-for keys must be in responses valid long enough, else `None`.
    fn stored_responses(
        &self,
        server: &ServerName,
        criteria: &KeyCriteria,
        require_valid: bool,
    ) -> Option<Vec<serde_json::Value>> {
        let known = self.known(server)?;
        let valid =
            |r: &serde_json::Value| r["valid_until_ts"].as_u64().is_some_and(|u| u >= criteria.valid_until);
        let candidates: Vec<Option<&serde_json::Value>> = if criteria.key_ids.is_empty() {
            vec![Some(&known.response).filter(|r| !r.is_null())]
        } else {
            // Records from before responses were kept per key have only
            // the latest: it answers for the keys it lists, old ones too.
            let lists = |id: &String| {
                ["verify_keys", "old_verify_keys"].iter().any(|field| known.response[field].get(id).is_some())
            };
            let latest = |id: &String| lists(id).then_some(&known.response);
            criteria.key_ids.iter().map(|id| known.responses.get(id).or_else(|| latest(id))).collect()
        };
        let mut answer: Vec<serde_json::Value> = Vec::new();
        for candidate in candidates {
            match candidate {
                Some(r) if !require_valid || valid(r) => {
                    if !answer.contains(r) {
                        answer.push(r.clone());
                    }
                }
                Some(_) | None if require_valid => return None,
                Some(_) | None => {}
            }
        }
        Some(answer)
    }

    fn known(&self, server: &ServerName) -> Option<KnownKeys> {
        if let Some(known) = self.cache.lock().expect("key cache").get(server) {
            return Some(known.clone());
        }
        let known = self.servername_keys.get(&server.to_string()).ok().flatten().map(|Json(k)| k)?;
        self.cache.lock().expect("key cache").insert(server.to_owned(), known.clone());
        Some(known)
    }

    /// Public keys of `server` covering `key_ids` (any current key when
    /// empty), valid at least until `valid_at` ms; fetched when not cached.
    pub async fn keys_for(
        &self,
        client: &FederationClient,
        server: &ServerName,
        key_ids: &[String],
        valid_at: u64,
    ) -> PublicKeySet {
        if server == self.server_name {
            return self.key.public_key_map(server.as_str()).remove(server.as_str()).unwrap_or_default();
        }
        let usable = |known: &KnownKeys| {
            let wanted: Vec<&String> =
                if key_ids.is_empty() { known.keys.keys().collect() } else { key_ids.iter().collect() };
            !wanted.is_empty()
                && wanted.iter().all(|id| known.keys.get(*id).is_some_and(|(_, until)| *until >= valid_at))
        };
        match self.known(server) {
            Some(known) if usable(&known) => return key_set(&known),
            _ => {}
        }
        self.refresh(client, server).await;
        // Whatever we have: an expired key still verifies what it signed
        // while it was valid; the callers' signature checks decide.
        self.known(server).map(|k| key_set(&k)).unwrap_or_default()
    }

    /// Fetch `server`'s keys again, unless that failed a moment ago.
    async fn refresh(&self, client: &FederationClient, server: &ServerName) {
        let recently_failed = self
            .failed
            .lock()
            .expect("failed fetches")
            .get(server)
            .is_some_and(|at| at.elapsed() < FAILED_FETCH_PAUSE);
        if recently_failed {
            return;
        }
        if let Err(err) = self.fetch(client, server).await {
            tracing::warn!(server = %server, "cannot fetch the server's signing keys: {err}");
            self.failed.lock().expect("failed fetches").insert(server.to_owned(), Instant::now());
        }
    }

    /// Fetch `server`'s keys from it, else from the trusted notaries.
    async fn fetch(&self, client: &FederationClient, server: &ServerName) -> std::result::Result<(), String> {
        let direct = match client.send_unsigned(server, get_server_keys::v2::Request::new()).await {
            Ok(response) => self.accept(server, response.server_key.json().get(), None),
            Err(err) => Err(err.to_string()),
        };
        let Err(direct_err) = direct else { return Ok(()) };
        for notary in &self.trusted_key_servers {
            if notary == server {
                continue;
            }
            match self.fetch_from_notary(client, notary, server).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(server = %server, notary = %notary, "notary key query failed: {err}")
                }
            }
        }
        Err(direct_err)
    }

    async fn fetch_from_notary(
        &self,
        client: &FederationClient,
        notary: &ServerName,
        server: &ServerName,
    ) -> std::result::Result<(), String> {
        // The notary's own key must be known to check its countersignature.
        let notary_keys = Box::pin(self.keys_for(client, notary, &[], now_millis())).await;
        if notary_keys.is_empty() {
            return Err("the notary's own keys are unknown".into());
        }
        let request = get_remote_server_keys_batch::v2::Request::new(BTreeMap::from([(
            server.to_owned(),
            BTreeMap::new(),
        )]));
        let response =
            client.send_unsigned(notary, request).await.map_err(|e: FederationError| e.to_string())?;
        let mut last = Err("the notary returned no keys".to_owned());
        for raw in response.server_keys {
            last = self.accept(server, raw.json().get(), Some((notary, &notary_keys)));
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// Check a key response (signed by the server itself with the keys it
    /// lists, and by the notary when it came through one) and store it.
    fn accept(
        &self,
        server: &ServerName,
        json: &str,
        notary: Option<(&ServerName, &PublicKeySet)>,
    ) -> std::result::Result<(), String> {
        let object: CanonicalJsonObject =
            serde_json::from_str(json).map_err(|e| format!("bad key response: {e}"))?;
        let known = parse_key_response(server, &object)?;
        if known.keys.len() > MAX_KEYS_PER_RESPONSE {
            return Err(format!(
                "the key response lists {} keys, more than {MAX_KEYS_PER_RESPONSE}",
                known.keys.len()
            ));
        }
        let mut map = PublicKeyMap::new();
        map.insert(
            server.to_string(),
            key_set(&KnownKeys { keys: current_keys(&object), ..Default::default() }),
        );
        if let Some((notary, keys)) = notary {
            map.insert(notary.to_string(), keys.clone());
        }
        signatures::verify_json(&map, &object).map_err(|e| format!("key response signature: {e}"))?;
        // Keep old keys we knew that the new response no longer lists.
        let mut merged = self.known(server).unwrap_or_default();
        for key_id in current_keys(&object).into_keys() {
            merged.responses.insert(key_id, known.response.clone());
        }
        merged.keys.extend(known.keys);
        merged.response = known.response;
        merged.bound();
        self.servername_keys.put(&server.to_string(), &Json(merged.clone())).map_err(|e| e.to_string())?;
        self.cache.lock().expect("key cache").insert(server.to_owned(), merged);
        self.failed.lock().expect("failed fetches").remove(server);
        Ok(())
    }
}

fn int(value: u64) -> CanonicalJsonValue {
    CanonicalJsonValue::Integer(ruma::Int::new(value as i64).unwrap_or_default())
}

/// The `verify_keys` of a key response.
fn current_keys(object: &CanonicalJsonObject) -> BTreeMap<String, (String, u64)> {
    let until =
        object.get("valid_until_ts").and_then(|v| v.as_integer()).map_or(0, |i| i64::from(i).max(0) as u64);
    keys_of(object, "verify_keys", |_| until)
}

fn keys_of(
    object: &CanonicalJsonObject,
    field: &str,
    until: impl Fn(&CanonicalJsonObject) -> u64,
) -> BTreeMap<String, (String, u64)> {
    let Some(CanonicalJsonValue::Object(keys)) = object.get(field) else { return BTreeMap::new() };
    keys.iter()
        .filter_map(|(id, value)| {
            let value = value.as_object()?;
            let key = value.get("key")?.as_str()?.to_owned();
            Some((id.clone(), (key, until(value))))
        })
        .collect()
}

/// The keys a response lists for `server`: current ones valid until
/// `valid_until_ts`, old ones until their `expired_ts`.
pub fn parse_key_response(
    server: &ServerName,
    object: &CanonicalJsonObject,
) -> std::result::Result<KnownKeys, String> {
    if object.get("server_name").and_then(|v| v.as_str()) != Some(server.as_str()) {
        return Err("the key response names another server".into());
    }
    let mut keys = keys_of(object, "old_verify_keys", |old| {
        old.get("expired_ts").and_then(|v| v.as_integer()).map_or(0, |i| i64::from(i).max(0) as u64)
    });
    let current = current_keys(object);
    if current.is_empty() {
        return Err("the key response has no verify_keys".into());
    }
    keys.extend(current);
    let response = serde_json::to_value(object).map_err(|e| e.to_string())?;
    Ok(KnownKeys { keys, response, responses: BTreeMap::new() })
}

fn key_set(known: &KnownKeys) -> PublicKeySet {
    known.keys.iter().filter_map(|(id, (key, _))| Some((id.clone(), Base64::parse(key).ok()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of_server(db: &Db, name: &str, version: &str) -> ServerKeys {
        let key = Arc::new(ServerSigningKey::generate(version).unwrap());
        ServerKeys::new(db, ServerName::parse(name).unwrap(), key, Vec::new()).unwrap()
    }

    /// A notary keeps, for each key, the latest response that listed it: a
    /// server that forgets a key cannot make the notary forget it too.
    #[test]
    fn a_notary_answers_for_a_key_its_server_has_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let notary = keys_of_server(&db, "notary.test", "n");
        let origin = ServerName::parse("origin.test").unwrap();
        let first = keys_of_server(&db, "origin.test", "key_1").own_keys();
        let second = keys_of_server(&db, "origin.test", "key_2").own_keys();
        for response in [&first, &second] {
            notary.accept(&origin, &serde_json::to_string(response).unwrap(), None).unwrap();
        }
        let ask = |key_ids: &[&str], valid_until: u64, require_valid: bool| {
            let key_ids = key_ids.iter().map(|id| id.to_string()).collect();
            notary.stored_responses(&origin, &KeyCriteria { key_ids, valid_until }, require_valid)
        };
        let as_value = |object: &CanonicalJsonObject| serde_json::to_value(object).unwrap();
        assert_eq!(ask(&["ed25519:key_1"], 0, true), Some(vec![as_value(&first)]));
        assert_eq!(ask(&["ed25519:key_2"], 0, true), Some(vec![as_value(&second)]));
        assert_eq!(ask(&[], 0, true), Some(vec![as_value(&second)]), "no key named: the latest");
        // Valid for too short a time: fetch first (None), else the expired one.
        assert_eq!(ask(&["ed25519:key_1"], u64::MAX, true), None);
        assert_eq!(ask(&["ed25519:key_1"], u64::MAX, false), Some(vec![as_value(&first)]));
        assert_eq!(ask(&["ed25519:unknown"], 0, true), None);
    }
}
