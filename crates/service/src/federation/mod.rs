//! Federation: this server among others. Outgoing requests (`client`),
//! server name resolution (`resolve`), signing keys (`keys`), and what the
//! Server-Server API handlers call (`inbound`): request authentication,
//! joins, transactions, and history served to other servers.
//!
//! Received events enter the one append path (`Rooms::receive`); events
//! for other servers leave through the one outgoing queue (`Outgoing`).

pub mod backfill;
pub mod client;
mod device_lists;
pub mod e2ee;
mod gap;
pub mod inbound;
pub mod keys;
pub mod membership;
pub mod query;
pub mod resolve;
mod space;
pub use space::HierarchyRequest;

use std::sync::Arc;

use estuary_core::{Config, Error, Result, time::now_millis};
use estuary_events::federation as pdus;
use ruma::{OwnedServerName, RoomVersionId, ServerName, api::federation::authentication::XMatrix};

use crate::{Accounts, ephemeral::Ephemeral, rooms::Rooms};

pub use client::{FederationClient, FederationError};
pub use keys::{KeyCriteria, ServerKeys};

pub struct Federation {
    pub config: Arc<Config>,
    pub client: Arc<FederationClient>,
    pub keys: ServerKeys,
    rooms: Arc<Rooms>,
    ephemeral: Arc<Ephemeral>,
    accounts: Arc<Accounts>,
    e2ee: Arc<crate::e2ee::E2ee>,
    to_device: Arc<crate::to_device::ToDevice>,
    outgoing: Arc<crate::outgoing::Outgoing>,
    presence: Arc<crate::presence::Presence>,
    /// Rooms whose last backfill brought nothing, and when (not asked again soon).
    backfill_misses: backfill::Misses,
    /// One other server's user's device list changes at a time.
    device_list_locks: crate::locks::KeyedLocks<ruma::OwnedUserId>,
}

/// What the federation service works with, besides its own parts.
pub struct FederationDeps {
    pub rooms: Arc<Rooms>,
    pub ephemeral: Arc<Ephemeral>,
    pub accounts: Arc<Accounts>,
    pub e2ee: Arc<crate::e2ee::E2ee>,
    pub to_device: Arc<crate::to_device::ToDevice>,
    pub outgoing: Arc<crate::outgoing::Outgoing>,
    pub presence: Arc<crate::presence::Presence>,
}

impl Federation {
    pub fn new(
        config: Arc<Config>,
        client: Arc<FederationClient>,
        keys: ServerKeys,
        deps: FederationDeps,
    ) -> Self {
        let FederationDeps { rooms, ephemeral, accounts, e2ee, to_device, outgoing, presence } = deps;
        let backfill_misses = Default::default();
        Self {
            config,
            client,
            keys,
            rooms,
            ephemeral,
            accounts,
            e2ee,
            to_device,
            outgoing,
            presence,
            backfill_misses,
            device_list_locks: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.allow_federation
    }

    /// Authenticate a Server-Server request: its `X-Matrix` header must be
    /// for us and signed by the origin's key. Returns the origin.
    pub async fn authenticate(&self, request: &http::Request<&[u8]>) -> Result<OwnedServerName> {
        if !self.enabled() {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        // No credentials are unauthorised; credentials that do not parse
        // (an origin such as `localhost:http`) are a bad request.
        let header = XMatrix::extract_from_http_headers(request.headers()).map_err(|e| {
            let message = format!("Invalid X-Matrix authorization: {e}");
            match request.headers().contains_key(http::header::AUTHORIZATION) {
                true => Error::matrix(400, estuary_core::error::ErrorKind::Unauthorized, message),
                false => Error::unauthorized(message),
            }
        })?;
        let key_id = header.key.to_string();
        let keys = self
            .keys
            .keys_for(&self.client, &header.origin, std::slice::from_ref(&key_id), now_millis())
            .await;
        if !keys.contains_key(&key_id) {
            tracing::warn!(origin = %header.origin, key = %key_id, "request signed with an unknown key");
            return Err(Error::unauthorized("Unknown signing key"));
        }
        // A body that is no canonical JSON (floats, integers out of range)
        // cannot be signed at all: a bad request, not a bad signature.
        let body = request.body();
        if !body.is_empty() && serde_json::from_slice::<ruma::CanonicalJsonValue>(body).is_err() {
            return Err(Error::bad_json("The request body is not canonical JSON"));
        }
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(header.origin.to_string(), keys);
        header.verify_http_request(request, &self.config.server_name, &map).map_err(|e| {
            tracing::warn!(origin = %header.origin, "request signature refused: {e}");
            Error::unauthorized(format!("Invalid request signature: {e}"))
        })?;
        self.outgoing.destination_is_up(&crate::outgoing::server_destination(&header.origin));
        Ok(header.origin)
    }

    /// Parse and verify received PDUs of a room of `room_version`: the
    /// required servers' signatures (keys fetched as needed) and hashes.
    pub async fn verify_pdus(
        &self,
        room_version: &RoomVersionId,
        raw: &[Box<serde_json::value::RawValue>],
    ) -> Vec<std::result::Result<pdus::VerifiedPdu, (Option<ruma::OwnedEventId>, String)>> {
        let mut verified = Vec::with_capacity(raw.len());
        for json in raw {
            verified.push(self.verify_pdu(room_version, json).await);
        }
        verified
    }

    async fn verify_pdu(
        &self,
        room_version: &RoomVersionId,
        json: &serde_json::value::RawValue,
    ) -> std::result::Result<pdus::VerifiedPdu, (Option<ruma::OwnedEventId>, String)> {
        let object = pdus::canonical_pdu(json).map_err(|e| (None, e.0))?;
        let event_id = pdus::event_id(&object, room_version).map_err(|e| (None, e.0))?;
        let servers =
            pdus::required_servers(&object, room_version).map_err(|e| (Some(event_id.clone()), e.0))?;
        // Ask for the keys the event names, so a rotated key is fetched.
        let mut keys = ruma::signatures::PublicKeyMap::new();
        for server in servers {
            let key_ids: Vec<String> = match object.get("signatures").and_then(|s| s.as_object()) {
                Some(signatures) => match signatures.get(server.as_str()).and_then(|k| k.as_object()) {
                    Some(by_key) => by_key.keys().cloned().collect(),
                    None => Vec::new(),
                },
                None => Vec::new(),
            };
            let set = self.keys.keys_for(&self.client, &server, &key_ids, 0).await;
            keys.insert(server.to_string(), set);
        }
        pdus::verify(object, room_version, &keys).map_err(|e| (Some(event_id), e.0))
    }
}

/// Stripped state as this server keeps it (type, state key, content,
/// sender), whether sent stripped or (since v1.16) as full PDUs.
pub fn stripped_events(
    events: &[ruma::api::federation::membership::RawStrippedState],
) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|event| serde_json::to_value(event).ok())
        .map(|event| {
            let keep = ["type", "state_key", "content", "sender"];
            serde_json::Value::Object(
                keep.iter().filter_map(|k| event.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect(),
            )
        })
        .collect()
}

/// A list of raw JSON objects from PDUs.
pub fn raw_pdus(pdus: &[estuary_events::Pdu]) -> Vec<Box<serde_json::value::RawValue>> {
    pdus.iter().filter_map(|pdu| serde_json::value::to_raw_value(&pdus::outgoing_json(pdu)).ok()).collect()
}

/// The server part of a user ID string.
pub(crate) fn server_of(user_id: &str) -> Option<&ServerName> {
    user_id.split_once(':').and_then(|(_, server)| <&ServerName>::try_from(server).ok())
}
