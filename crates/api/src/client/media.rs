//! The media repository: uploads (streamed to disk), downloads (streamed
//! from disk) with the headers that keep uploaded HTML from running script,
//! thumbnails, configuration, and the legacy unauthenticated endpoints.

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use estuary_core::Error;
use estuary_service::media::{MediaFile, ThumbnailMethod, ThumbnailSpec};
use ruma::api::client::{authenticated_media, media};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::{
    AppState,
    error::ApiResult,
    ruma_wrapper::{AuthedUser, Ruma},
};

/// Served with every download: a browser opening uploaded HTML or SVG
/// cannot run script or reach anything.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Types a browser may show inline (the spec's list); others download.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Refuse early when the declared length is already too large.
fn check_declared_length(services: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let limit = services.config.max_upload_size;
    match declared {
        Some(length) if length > limit => {
            Err(Error::too_large(format!("Uploads are limited to {limit} bytes")))
        }
        _ => Ok(()),
    }
}

fn mxc(services: &AppState, media_id: &str) -> String {
    format!("mxc://{}/{media_id}", services.config.server_name)
}

/// `POST /_matrix/media/v3/upload`.
pub async fn upload(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    check_declared_length(&services, &headers)?;
    super::rate_limit_user(&services, estuary_service::rate_limits::Action::MediaUpload, &user)?;
    let media_id =
        services.media.upload(&user, body.into_data_stream(), content_type(&headers), query.filename).await?;
    Ok(Json(json!({"content_uri": mxc(&services, &media_id)})))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}` (after `/media/v1/create`).
pub async fn upload_pending(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    check_declared_length(&services, &headers)?;
    services
        .media
        .upload_pending(
            &user,
            &server_name,
            &media_id,
            body.into_data_stream(),
            content_type(&headers),
            query.filename,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/media/v1/create`.
pub async fn create(
    services: AppState,
    request: Ruma<media::create_mxc_uri::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    super::rate_limit_user(&services, estuary_service::rate_limits::Action::MediaUpload, request.user()?)?;
    let (media_id, expires) = services.media.create_pending(request.user()?)?;
    Ok(Json(json!({"content_uri": mxc(&services, &media_id), "unused_expires_at": expires})))
}

/// `GET /_matrix/client/v1/media/config` (and the legacy `/media/v3/config`).
pub async fn config(
    services: AppState,
    _: Ruma<authenticated_media::get_media_config::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(json!({"m.upload.size": services.config.max_upload_size})))
}

/// `GET /_matrix/client/v1/media/preview_url`.
pub async fn preview_url(
    services: AppState,
    request: Ruma<authenticated_media::get_media_preview::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(services.media.preview_url(request.user()?, &request.body.url).await?))
}

/// `Content-Disposition`: inline only for the safe types, with the name.
fn disposition(content_type: &str, filename: Option<&str>) -> String {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) { "inline" } else { "attachment" };
    match filename {
        Some(name) => {
            let encoded: String = name
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
        None => kind.to_owned(),
    }
}

/// Stream a file with the download headers.
async fn send_file(
    path: &std::path::Path,
    size: Option<u64>,
    content_type: &str,
    filename: Option<&str>,
) -> ApiResult<Response> {
    let file =
        tokio::fs::File::open(path).await.map_err(|e| Error::internal(format!("open media file: {e}")))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    let value = |v: &str| {
        HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    headers.insert(header::CONTENT_TYPE, value(content_type));
    if let Some(size) = size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    headers.insert(header::CONTENT_DISPOSITION, value(&disposition(content_type, filename)));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400, immutable"));
    Ok(response)
}

async fn download_file(file: MediaFile, filename: Option<&str>) -> ApiResult<Response> {
    let content_type =
        file.record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let filename = filename.or(file.record.filename.as_deref());
    send_file(&file.path, Some(file.size), &content_type, filename).await
}

pub async fn download(
    services: AppState,
    request: Ruma<authenticated_media::get_content::v1::Request>,
) -> ApiResult<Response> {
    request.user()?;
    let body = &request.body;
    download_file(services.media.file_or_fetch(body.server_name.as_str(), &body.media_id).await?, None).await
}

pub async fn download_as(
    services: AppState,
    request: Ruma<authenticated_media::get_content_as_filename::v1::Request>,
) -> ApiResult<Response> {
    request.user()?;
    let body = &request.body;
    let file = services.media.file_or_fetch(body.server_name.as_str(), &body.media_id).await?;
    download_file(file, Some(&body.filename)).await
}

pub(crate) fn thumbnail_spec(
    width: ruma::UInt,
    height: ruma::UInt,
    method: Option<&media::get_content_thumbnail::v3::Method>,
) -> Result<ThumbnailSpec, Error> {
    let method = match method.map(|m| m.as_str()) {
        Some("crop") => ThumbnailMethod::Crop,
        Some("scale") | None => ThumbnailMethod::Scale,
        Some(other) => return Err(Error::invalid_param(format!("Unknown thumbnail method {other}"))),
    };
    let dimension = |v: ruma::UInt| u32::try_from(u64::from(v)).ok().filter(|&d| d > 0);
    match (dimension(width), dimension(height)) {
        (Some(width), Some(height)) => Ok(ThumbnailSpec { width, height, method }),
        _ => Err(Error::invalid_param("width and height must be positive")),
    }
}

async fn thumbnail_response(
    services: &AppState,
    server_name: &str,
    media_id: &str,
    spec: ThumbnailSpec,
) -> ApiResult<Response> {
    let (path, content_type) = services.media.thumbnail(server_name, media_id, spec).await?;
    send_file(&path, None, content_type, None).await
}

pub async fn thumbnail(
    services: AppState,
    request: Ruma<authenticated_media::get_content_thumbnail::v1::Request>,
) -> ApiResult<Response> {
    request.user()?;
    let body = &request.body;
    let spec = thumbnail_spec(body.width, body.height, body.method.as_ref())?;
    thumbnail_response(&services, body.server_name.as_str(), &body.media_id, spec).await
}

/// The unauthenticated endpoints spec v1.11 deprecated, kept for old clients.
pub mod legacy {
    #![allow(deprecated)] // these endpoints are deprecated by design

    use axum::{Json, response::Response};
    use estuary_core::Error;
    use estuary_service::media::MediaFile;
    use ruma::api::client::media;
    use serde_json::{Value as JsonValue, json};

    use super::{download_file, thumbnail_response, thumbnail_spec};
    use crate::{
        AppState,
        error::{ApiError, ApiResult},
        ruma_wrapper::Ruma,
    };

    pub async fn config(
        services: AppState,
        _: Ruma<media::get_media_config::v3::Request>,
    ) -> ApiResult<Json<JsonValue>> {
        Ok(Json(json!({"m.upload.size": services.config.max_upload_size})))
    }

    /// The legacy endpoints serve only media from before `legacy_media_before`.
    fn allowed_file(services: &AppState, server_name: &str, media_id: &str) -> Result<MediaFile, ApiError> {
        let file = services.media.file(server_name, media_id)?;
        if !services.media.legacy_allowed(&file.record) {
            return Err(Error::not_found("Media not found (use the authenticated media endpoints)").into());
        }
        Ok(file)
    }

    pub async fn preview_url(
        services: AppState,
        request: Ruma<media::get_media_preview::v3::Request>,
    ) -> ApiResult<Json<JsonValue>> {
        Ok(Json(services.media.preview_url(request.user()?, &request.body.url).await?))
    }

    pub async fn download(
        services: AppState,
        request: Ruma<media::get_content::v3::Request>,
    ) -> ApiResult<Response> {
        let body = &request.body;
        download_file(allowed_file(&services, body.server_name.as_str(), &body.media_id)?, None).await
    }

    pub async fn download_as(
        services: AppState,
        request: Ruma<media::get_content_as_filename::v3::Request>,
    ) -> ApiResult<Response> {
        let body = &request.body;
        let file = allowed_file(&services, body.server_name.as_str(), &body.media_id)?;
        download_file(file, Some(&body.filename)).await
    }

    pub async fn thumbnail(
        services: AppState,
        request: Ruma<media::get_content_thumbnail::v3::Request>,
    ) -> ApiResult<Response> {
        let body = &request.body;
        allowed_file(&services, body.server_name.as_str(), &body.media_id)?;
        let spec = thumbnail_spec(body.width, body.height, body.method.as_ref())?;
        thumbnail_response(&services, body.server_name.as_str(), &body.media_id, spec).await
    }
}
