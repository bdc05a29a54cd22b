//! `/versions`, `/capabilities` and `/.well-known/matrix/*`.

use axum::Json;
use estuary_core::Error;
use ruma::{
    RoomVersionId,
    api::{
        client::discovery::{
            discover_homeserver::{self, HomeserverInfo},
            get_capabilities::{
                self,
                v3::{Capabilities, ProfileFieldsCapability, RoomVersionStability, RoomVersionsCapability},
            },
            get_supported_versions,
        },
        federation::discovery::discover_homeserver as discover_server,
    },
};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// Spec versions whose client API Estuary serves. Clients pick endpoints
/// and behaviour from this list.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3",
    "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
];

/// Room versions Estuary can read and join.
pub const ROOM_VERSIONS: &[RoomVersionId] = &[
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// Unstable features (MSCs) Estuary implements, as `/versions` advertises them.
const UNSTABLE_FEATURES: &[&str] = &[
    // Cross-signing: Element offers its setup and device verification only
    // with this flag.
    "org.matrix.e2e_cross_signing",
    // Threads (`/threads`, thread relations and receipts).
    "org.matrix.msc3440.stable",
    // Dehydrated devices.
    "org.matrix.msc3814",
    // Delayed events.
    "org.matrix.msc4140",
    // Simplified sliding sync (MSC4186): Element X syncs only with it.
    "org.matrix.simplified_msc3575",
];

pub async fn versions(
    _: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> ApiResult<get_supported_versions::Response> {
    let mut response =
        get_supported_versions::Response::new(SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect());
    // Only what is implemented: clients switch behaviour on these flags.
    response.unstable_features = UNSTABLE_FEATURES.iter().map(|f| (f.to_string(), true)).collect();
    Ok(response)
}

/// `/capabilities`. ruma omits capabilities that are at their spec default;
/// clients and SyTest expect the common ones spelled out, so they are added.
pub async fn capabilities(
    services: AppState,
    _: Ruma<get_capabilities::v3::Request>,
) -> ApiResult<Json<serde_json::Value>> {
    let available = ROOM_VERSIONS.iter().map(|v| (v.clone(), RoomVersionStability::Stable)).collect();
    let mut capabilities = Capabilities::new();
    capabilities.room_versions =
        RoomVersionsCapability::new(services.config.default_room_version.clone(), available);
    capabilities.change_password.enabled = true;
    // Deprecated since v1.16 in favour of `m.profile_fields`, still read by older clients.
    #[allow(deprecated)]
    {
        capabilities.set_displayname.enabled = true;
        capabilities.set_avatar_url.enabled = true;
    }
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = true;
    capabilities.profile_fields = Some(ProfileFieldsCapability::new(true));
    let mut json = serde_json::to_value(&capabilities).map_err(Error::from)?;
    for name in ["m.change_password", "m.set_displayname", "m.set_avatar_url"] {
        json[name] = serde_json::json!({ "enabled": true });
    }
    json["org.matrix.msc4140.delayed_events"] = serde_json::json!({
        "max_delay_ms": services.config.max_event_delay.saturating_mul(1000),
        "max_scheduled": services.config.max_delayed_events_per_user,
    });
    Ok(Json(serde_json::json!({ "capabilities": json })))
}

pub async fn well_known_client(
    services: AppState,
    _: Ruma<discover_homeserver::Request>,
) -> ApiResult<discover_homeserver::Response> {
    let mut response =
        discover_homeserver::Response::new(HomeserverInfo::new(services.config.client_base_url()));
    response.rtc_foci = super::calls::rtc_transports(&services.config);
    Ok(response)
}

pub async fn well_known_server(
    services: AppState,
    _: Ruma<discover_server::Request>,
) -> ApiResult<discover_server::Response> {
    let delegated = services
        .config
        .well_known_server
        .clone()
        .ok_or_else(|| Error::not_found("No server delegation is configured"))?;
    Ok(discover_server::Response::new(delegated))
}
