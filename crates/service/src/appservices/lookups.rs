//! Questions Estuary asks appservices on a client's behalf: does this user
//! or alias exist (the bridge may create it on demand), the third-party
//! protocols and their lookups, and ping.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value as JsonValue;

use estuary_core::{Error, Result};
use ruma::{
    OwnedTransactionId, RoomAliasId, UserId,
    api::appservice::{
        ping::send_ping,
        query::{query_room_alias, query_user_id},
        thirdparty::{
            get_location_for_protocol, get_location_for_room_alias, get_protocol, get_user_for_protocol,
            get_user_for_user_id,
        },
    },
    thirdparty::{Location, User},
};

use super::{Appservice, Appservices, http::ask};

/// How long a bridge's description of a protocol is used without asking again.
const PROTOCOL_CACHE_TIME: Duration = Duration::from_secs(60);

impl Appservices {
    /// Ask the appservice whose namespace holds `user_id` whether it exists;
    /// a bridge creates its ghost before answering yes. Returns whether the
    /// user exists now.
    pub async fn query_user(&self, user_id: &UserId) -> Result<bool> {
        let Some(appservice) = self.for_user(user_id) else { return Ok(false) };
        let request = query_user_id::v1::Request::new(user_id.to_owned());
        if ask(&self.http, &appservice, request).await.is_none() {
            return Ok(false);
        }
        self.accounts.exists(user_id)
    }

    /// Ask the appservice whose namespace holds `alias` about it; the
    /// caller looks the alias up again when this answers yes.
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        let Some(appservice) = self.for_alias(alias) else { return false };
        let request = query_room_alias::v1::Request::new(alias.to_owned());
        ask(&self.http, &appservice, request).await.is_some()
    }

    /// `POST /appservice/{id}/ping`: how long the appservice took to answer.
    pub async fn ping(
        &self,
        appservice: &Appservice,
        transaction_id: Option<OwnedTransactionId>,
    ) -> Result<u64> {
        let mut request = send_ping::v1::Request::new();
        request.transaction_id = transaction_id;
        let started = Instant::now();
        self.http.send(appservice, request).await.map_err(|e| e.into_ping_error())?;
        Ok(started.elapsed().as_millis() as u64)
    }

    /// Every protocol the appservices bridge, as their bridges describe them.
    pub async fn protocols(&self) -> BTreeMap<String, JsonValue> {
        let mut protocols = BTreeMap::new();
        let mut names: Vec<String> = self
            .with_protocols()
            .iter()
            .flat_map(|a| a.registration.protocols.clone().unwrap_or_default())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            if let Ok(protocol) = self.protocol(&name).await {
                protocols.insert(name, protocol);
            }
        }
        protocols
    }

    /// One protocol: the first bridge's description with every bridge's
    /// instances; 404 when no bridge describes it. A description is kept
    /// for a minute, and used when a bridge answers nothing usable.
    pub async fn protocol(&self, name: &str) -> Result<JsonValue> {
        if let Some((at, known)) = self.protocol_cache.lock().expect("protocol cache").get(name)
            && at.elapsed() < PROTOCOL_CACHE_TIME
        {
            return Ok(known.clone());
        }
        let mut merged: Option<JsonValue> = None;
        for appservice in self.bridging(name) {
            let Some(protocol) = self.ask_protocol(&appservice, name).await else { continue };
            match merged.as_mut() {
                Some(merged) => {
                    let more = protocol["instances"].as_array().cloned().unwrap_or_default();
                    if let Some(instances) = merged["instances"].as_array_mut() {
                        instances.extend(more);
                    }
                }
                None => merged = Some(protocol),
            }
        }
        let mut cache = self.protocol_cache.lock().expect("protocol cache");
        match merged {
            Some(protocol) => {
                cache.insert(name.to_owned(), (Instant::now(), protocol.clone()));
                Ok(protocol)
            }
            None => cache
                .get(name)
                .map(|(_, known)| known.clone())
                .ok_or_else(|| Error::not_found(format!("No bridge for protocol {name:?}"))),
        }
    }

    /// A bridge's description of a protocol, passed on as it wrote it (with
    /// an `instance_id` for each instance naming a network, so clients can
    /// search its room directory); `None` unless it is a usable object.
    async fn ask_protocol(&self, appservice: &Appservice, name: &str) -> Option<JsonValue> {
        let request = get_protocol::v1::Request::new(name.to_owned());
        let mut protocol = match self.http.send_for_json(appservice, request).await {
            Ok(protocol) => protocol,
            Err(err) => {
                tracing::warn!(
                    appservice = appservice.id(),
                    protocol = name,
                    "protocol lookup failed: {err}"
                );
                return None;
            }
        };
        if !protocol.get("instances").is_some_and(JsonValue::is_array) {
            return None;
        }
        for instance in protocol["instances"].as_array_mut().into_iter().flatten() {
            // "appservice ID|network ID", the form Synapse uses (and SyTest
            // relies on): it names the directory `/publicRooms` searches.
            if let Some(network) = instance.get("network_id").and_then(JsonValue::as_str).map(str::to_owned) {
                instance["instance_id"] = format!("{}|{network}", appservice.id()).into();
            }
        }
        Some(protocol)
    }

    /// `GET /thirdparty/location/{protocol}`: every bridge of the protocol asked.
    pub async fn locations(&self, name: &str, fields: BTreeMap<String, String>) -> Result<Vec<Location>> {
        self.require_protocol(name)?;
        let mut found = Vec::new();
        for appservice in self.bridging(name) {
            let mut request = get_location_for_protocol::v1::Request::new(name.to_owned());
            request.fields = fields.clone();
            found
                .extend(ask(&self.http, &appservice, request).await.map(|r| r.locations).unwrap_or_default());
        }
        Ok(found)
    }

    /// `GET /thirdparty/user/{protocol}`.
    pub async fn users(&self, name: &str, fields: BTreeMap<String, String>) -> Result<Vec<User>> {
        self.require_protocol(name)?;
        let mut found = Vec::new();
        for appservice in self.bridging(name) {
            let mut request = get_user_for_protocol::v1::Request::new(name.to_owned());
            request.fields = fields.clone();
            found.extend(ask(&self.http, &appservice, request).await.map(|r| r.users).unwrap_or_default());
        }
        Ok(found)
    }

    /// `GET /thirdparty/location?alias=`: every bridge asked.
    pub async fn locations_for_alias(&self, alias: &RoomAliasId) -> Vec<Location> {
        let mut found = Vec::new();
        for appservice in self.with_protocols() {
            let request = get_location_for_room_alias::v1::Request::new(alias.to_owned());
            found
                .extend(ask(&self.http, &appservice, request).await.map(|r| r.locations).unwrap_or_default());
        }
        found
    }

    /// `GET /thirdparty/user?userid=`: every bridge asked.
    pub async fn users_for_user_id(&self, user_id: &UserId) -> Vec<User> {
        let mut found = Vec::new();
        for appservice in self.with_protocols() {
            let request = get_user_for_user_id::v1::Request::new(user_id.to_owned());
            found.extend(ask(&self.http, &appservice, request).await.map(|r| r.users).unwrap_or_default());
        }
        found
    }

    fn require_protocol(&self, name: &str) -> Result<()> {
        if self.bridging(name).is_empty() {
            return Err(Error::not_found(format!("No bridge for protocol {name:?}")));
        }
        Ok(())
    }

    /// The appservices that list `name` among their protocols.
    fn bridging(&self, name: &str) -> Vec<std::sync::Arc<Appservice>> {
        self.with_protocols()
            .into_iter()
            .filter(|a| a.registration.protocols.iter().flatten().any(|p| p == name))
            .collect()
    }

    fn with_protocols(&self) -> Vec<std::sync::Arc<Appservice>> {
        self.registry()
            .all
            .iter()
            .filter(|a| a.registration.protocols.as_ref().is_some_and(|p| !p.is_empty()))
            .cloned()
            .collect()
    }
}
