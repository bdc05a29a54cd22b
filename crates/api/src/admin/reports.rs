//! `/_synapse/admin/v1/event_reports`: the reports clients made, for
//! moderators.

use axum::{
    Json,
    extract::{Path, State},
};
use estuary_core::Error;
use estuary_service::rooms::ReportQuery;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::extract::{AdminQuery, Dir, ServerAdmin};
use crate::{AppState, error::ApiResult};

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    from: usize,
    #[serde(default = "super::extract::default_limit")]
    limit: usize,
    /// Synapse lists newest first unless `dir=f`.
    #[serde(default = "newest_first")]
    dir: Dir,
    user_id: Option<String>,
    room_id: Option<String>,
    event_sender_user_id: Option<String>,
}

fn newest_first() -> Dir {
    Dir::Backwards
}

/// `GET /_synapse/admin/v1/event_reports`.
pub async fn list(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> ApiResult<Json<JsonValue>> {
    let page = ReportQuery {
        from: query.from,
        limit: query.limit,
        oldest_first: query.dir == Dir::Forwards,
        reporter: query.user_id,
        room_id: query.room_id,
        event_sender: query.event_sender_user_id,
    };
    let (reports, total) = services.rooms.reports(&page)?;
    let listed = reports
        .iter()
        .map(|(id, report)| services.rooms.report_view(*id, report, false))
        .collect::<Result<Vec<_>, _>>()?;
    let mut body = json!({"event_reports": listed, "total": total});
    if page.from + listed.len() < total {
        body["next_token"] = json!(page.from + listed.len());
    }
    Ok(Json(body))
}

fn report_id(raw: &str) -> Result<u64, Error> {
    raw.parse().map_err(|_| Error::invalid_param("The report ID must be a positive integer"))
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`: one report with its event.
pub async fn get(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let id = report_id(&id)?;
    let report =
        services.rooms.stored_report(id)?.ok_or_else(|| Error::not_found("Event report not found"))?;
    Ok(Json(services.rooms.report_view(id, &report, true)?))
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`: the report is dealt with.
pub async fn delete(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let id = report_id(&id)?;
    if !services.rooms.delete_report(id)? {
        return Err(Error::not_found("Event report not found").into());
    }
    tracing::info!(%admin, report = id, "admin deleted a report");
    Ok(Json(json!({})))
}
