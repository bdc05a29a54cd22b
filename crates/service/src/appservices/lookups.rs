//! Questions Estuary asks appservices on a client's behalf: does this user
//! or alias exist (the bridge may create it on demand), the third-party
//! protocols and their lookups, and ping.

use std::{collections::BTreeMap, time::Instant};

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
    thirdparty::{Location, Protocol, ProtocolInstance, User},
};

use super::{Appservice, Appservices, http::ask};

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
    pub async fn protocols(&self) -> BTreeMap<String, Protocol> {
        let mut protocols = BTreeMap::new();
        for appservice in self.registry().all.iter() {
            for name in appservice.registration.protocols.iter().flatten() {
                if let Some(protocol) = self.ask_protocol(appservice, name).await {
                    merge_protocol(&mut protocols, name, protocol);
                }
            }
        }
        protocols
    }

    /// One protocol; 404 when no appservice bridges it.
    pub async fn protocol(&self, name: &str) -> Result<Protocol> {
        let mut protocols = BTreeMap::new();
        for appservice in self.bridging(name) {
            if let Some(protocol) = self.ask_protocol(&appservice, name).await {
                merge_protocol(&mut protocols, name, protocol);
            }
        }
        protocols.remove(name).ok_or_else(|| Error::not_found(format!("No bridge for protocol {name:?}")))
    }

    async fn ask_protocol(&self, appservice: &Appservice, name: &str) -> Option<Protocol> {
        let response = ask(&self.http, appservice, get_protocol::v1::Request::new(name.to_owned())).await?;
        let mut protocol: Protocol = response.protocol.into();
        // Clients name an instance when they search the room directory; the
        // ID says which appservice and network it is.
        for instance in &mut protocol.instances {
            instance.instance_id = Some(
                serde_json::json!({"appservice_id": appservice.id(), "network_id": instance.network_id})
                    .to_string(),
            );
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

/// Two bridges of one protocol: the first description, both bridges' instances.
fn merge_protocol(
    protocols: &mut BTreeMap<String, Protocol>,
    name: &str,
    protocol: Protocol<ProtocolInstance>,
) {
    match protocols.get_mut(name) {
        Some(known) => known.instances.extend(protocol.instances),
        None => {
            protocols.insert(name.to_owned(), protocol);
        }
    }
}
