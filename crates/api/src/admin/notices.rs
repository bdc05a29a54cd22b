//! `POST /_synapse/admin/v1/send_server_notice` (and the idempotent `PUT`
//! with a transaction ID).

use axum::{
    Json,
    extract::{Path, State},
};
use estuary_service::rooms::Txn;
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::extract::{AdminBody, ServerAdmin, user_id};
use crate::{AppState, error::ApiResult};

#[derive(Deserialize)]
pub struct Notice {
    user_id: String,
    content: serde_json::Map<String, JsonValue>,
    #[serde(rename = "type", default = "message")]
    event_type: String,
    state_key: Option<String>,
}

fn message() -> String {
    "m.room.message".to_owned()
}

/// `POST /_synapse/admin/v1/send_server_notice`.
pub async fn send(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    AdminBody(notice): AdminBody<Notice>,
) -> ApiResult<Json<JsonValue>> {
    send_notice(&services, &admin, notice, None).await
}

/// `PUT /_synapse/admin/v1/send_server_notice/{txnId}`: as `POST`; a retry
/// with the same transaction ID sends nothing twice.
pub async fn send_with_txn(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(txn_id): Path<String>,
    AdminBody(notice): AdminBody<Notice>,
) -> ApiResult<Json<JsonValue>> {
    // Scoped to the admin, as a client's transactions are to its device.
    let txn = Txn { device_id: format!("_server_notices_{admin}").into(), txn_id };
    send_notice(&services, &admin, notice, Some(txn)).await
}

async fn send_notice(
    services: &AppState,
    admin: &UserId,
    notice: Notice,
    txn: Option<Txn>,
) -> ApiResult<Json<JsonValue>> {
    let user = user_id(&notice.user_id)?;
    let content = JsonValue::Object(notice.content);
    let event_id =
        services.send_server_notice(&user, &notice.event_type, notice.state_key, content, txn).await?;
    tracing::info!(%admin, target = %user, %event_id, "admin sent a server notice");
    Ok(Json(json!({"event_id": event_id})))
}
