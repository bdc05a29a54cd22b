//! Sorting and paging of admin listings, Synapse's way.

use std::cmp::Ordering;

use axum::Json;
use estuary_core::Error;
use serde_json::{Value as JsonValue, json};

use crate::error::ApiResult;

/// Order of JSON values in a sorted list: null, then booleans, numbers,
/// strings (with `fold_case`, compared case-insensitively).
fn compare_json(a: &JsonValue, b: &JsonValue, fold_case: bool) -> Ordering {
    fn rank(v: &JsonValue) -> u8 {
        match v {
            JsonValue::Null => 0,
            JsonValue::Bool(_) => 1,
            JsonValue::Number(_) => 2,
            _ => 3,
        }
    }
    match (a, b) {
        (JsonValue::Bool(x), JsonValue::Bool(y)) => x.cmp(y),
        (JsonValue::Number(x), JsonValue::Number(y)) => {
            x.as_f64().unwrap_or_default().total_cmp(&y.as_f64().unwrap_or_default())
        }
        (JsonValue::String(x), JsonValue::String(y)) if fold_case => x.to_lowercase().cmp(&y.to_lowercase()),
        (JsonValue::String(x), JsonValue::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Sort rows by `column` (largest first with `backwards`), ties by `tiebreak`.
pub fn sort_rows(rows: &mut [JsonValue], column: &str, backwards: bool, tiebreak: &str) {
    sort_with(rows, column, backwards, tiebreak, false);
}

/// `sort_rows`, strings compared case-insensitively (the room list's names).
pub fn sort_rows_folding_case(rows: &mut [JsonValue], column: &str, backwards: bool, tiebreak: &str) {
    sort_with(rows, column, backwards, tiebreak, true);
}

fn sort_with(rows: &mut [JsonValue], column: &str, backwards: bool, tiebreak: &str, fold_case: bool) {
    rows.sort_by(|a, b| {
        let order = compare_json(&a[column], &b[column], fold_case);
        let order = if backwards { order.reverse() } else { order };
        order.then_with(|| compare_json(&a[tiebreak], &b[tiebreak], fold_case))
    });
}

/// The page `from`..`from + limit` of sorted rows under `key`, with `total`
/// and, when rows follow, `next_token` (the next `from`; the user list
/// gives it as a string, other lists as a number).
pub fn page_body(
    key: &str,
    rows: Vec<JsonValue>,
    from: usize,
    limit: usize,
    string_token: bool,
) -> JsonValue {
    let total = rows.len();
    let page: Vec<_> = rows.into_iter().skip(from).take(limit).collect();
    let mut body = json!({"total": total});
    let next = from + page.len();
    if next < total {
        body["next_token"] = if string_token { json!(next.to_string()) } else { json!(next) };
    }
    body[key] = JsonValue::Array(page);
    body
}

/// A listing reads every account (or room): on the blocking pool, not an
/// async worker.
pub async fn blocking(
    listing: impl FnOnce() -> Result<JsonValue, Error> + Send + 'static,
) -> ApiResult<Json<JsonValue>> {
    let listed = tokio::task::spawn_blocking(listing).await.map_err(Error::internal)??;
    Ok(Json(listed))
}
