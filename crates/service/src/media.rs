//! The media repository: uploads stored once per content (SHA-256) on disk,
//! metadata in RocksDB, thumbnails generated off the async threads and kept.
//!
//! Files go through [`BlobStore`], the one place that knows they live on a
//! local disk, so an S3-compatible store can replace it later.

pub mod admin;
mod blobs;
pub(crate) mod preview;
mod thumbnail;

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use estuary_core::{Config, Error, Result, error::ErrorKind};
use estuary_storage::{Db, Table, codec::Json};
use futures::Stream;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

pub use admin::{BulkDelete, media_view};
pub use blobs::BlobStore;
pub use thumbnail::{ThumbnailMethod, ThumbnailSpec};

use crate::{accounts::tokens::random_token, storage_error::StorageResultExt};

/// How long an ID from `/media/v1/create` waits for its upload (ms).
const PENDING_LIFETIME_MS: u64 = 24 * 3600 * 1000;

/// `servermediaid_media`: what is known of one media item.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Content hash of the file; none while an async upload is pending.
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub uploader: Option<OwnedUserId>,
    /// Creation time (ms since the epoch).
    pub created_ts: u64,
    /// The admin who quarantined the item: it is served to no one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_by: Option<OwnedUserId>,
    /// Protected by an admin from quarantine (Synapse's `safe_from_quarantine`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
}

/// What a download serves.
pub struct MediaFile {
    pub record: MediaRecord,
    pub path: PathBuf,
    pub size: u64,
}

pub struct Media {
    config: Arc<Config>,
    /// Fetches other servers' media on first download.
    federation: Arc<crate::federation::FederationClient>,
    blobs: BlobStore,
    previewer: preview::Previewer,
    /// Fetches the URL another server's media download redirects to.
    redirect_fetcher: preview::VettedFetcher,
    records: Table<(String, String), Json<MediaRecord>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Media {
    pub fn new(
        config: Arc<Config>,
        db: &Db,
        federation: Arc<crate::federation::FederationClient>,
    ) -> Result<Self> {
        let blobs = BlobStore::open(config.media_dir())?;
        let roots = crate::federation::client::trusted_roots(&config)?;
        let previewer = preview::Previewer::new(&config.url_preview_ip_allowlist, roots.clone())?;
        let redirect_fetcher =
            preview::VettedFetcher::new(config.federation_allow_private_addresses, roots, "remote media");
        let records = db.table("servermediaid_media").db()?;
        Ok(Self { config, federation, blobs, previewer, redirect_fetcher, records })
    }

    pub(crate) fn server_name(&self) -> &ruma::ServerName {
        &self.config.server_name
    }

    fn key(&self, media_id: &str) -> (String, String) {
        (self.config.server_name.to_string(), media_id.to_owned())
    }

    /// `POST /media/v3/upload`: store the body and return the new media ID.
    pub async fn upload<S, E>(
        &self,
        uploader: &UserId,
        body: S,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<String>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (sha256, size) = self.blobs.store(body, self.config.max_upload_size).await?;
        let media_id = random_token(24);
        let record = MediaRecord {
            sha256: Some(sha256),
            content_type,
            filename,
            size,
            uploader: Some(uploader.to_owned()),
            created_ts: now_ms(),
            ..MediaRecord::default()
        };
        self.records.put(&self.key(&media_id), &Json(record)).db()?;
        Ok(media_id)
    }

    /// `POST /media/v1/create`: reserve an ID to upload to later.
    pub fn create_pending(&self, uploader: &UserId) -> Result<(String, u64)> {
        let media_id = random_token(24);
        let created_ts = now_ms();
        let record = MediaRecord {
            sha256: None,
            content_type: None,
            filename: None,
            size: 0,
            uploader: Some(uploader.to_owned()),
            created_ts,
            ..MediaRecord::default()
        };
        self.records.put(&self.key(&media_id), &Json(record)).db()?;
        Ok((media_id, created_ts + PENDING_LIFETIME_MS))
    }

    /// `PUT /media/v3/upload/{serverName}/{mediaId}`: fill a reserved ID.
    pub async fn upload_pending<S, E>(
        &self,
        uploader: &UserId,
        server_name: &str,
        media_id: &str,
        body: S,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let key = (server_name.to_owned(), media_id.to_owned());
        let Json(mut record) =
            self.records.get(&key).db()?.ok_or_else(|| Error::not_found("Unknown media ID"))?;
        if record.uploader.as_deref() != Some(uploader) {
            return Err(Error::forbidden("This media ID was created by another user"));
        }
        if record.sha256.is_some() {
            return Err(Error::matrix(409, ErrorKind::CannotOverwriteMedia, "Media already uploaded"));
        }
        if now_ms() > record.created_ts + PENDING_LIFETIME_MS {
            return Err(Error::not_found("This media ID has expired"));
        }
        let (sha256, size) = self.blobs.store(body, self.config.max_upload_size).await?;
        record.sha256 = Some(sha256);
        record.size = size;
        record.content_type = content_type;
        record.filename = filename;
        self.records.put(&key, &Json(record)).db()
    }

    /// The record of a media item, if known.
    pub fn record(&self, server_name: &str, media_id: &str) -> Result<Option<MediaRecord>> {
        Ok(self.records.get(&(server_name.to_owned(), media_id.to_owned())).db()?.map(|Json(r)| r))
    }

    /// A media item's file: ours, another server's cached here, or fetched
    /// from its server now (`/_matrix/federation/v1/media/download`) and
    /// cached.
    pub async fn file_or_fetch(&self, server_name: &str, media_id: &str) -> Result<MediaFile> {
        let remote = server_name != self.config.server_name.as_str() && self.config.allow_federation;
        match self.file(server_name, media_id) {
            Err(Error::Matrix { status: 404, .. }) if remote => {
                self.fetch_remote(server_name, media_id).await?;
                self.file(server_name, media_id)
            }
            other => other,
        }
    }

    async fn fetch_remote(&self, server_name: &str, media_id: &str) -> Result<()> {
        use ruma::api::federation::authenticated_media::{FileOrLocation, get_content};
        let server =
            <&ruma::ServerName>::try_from(server_name).map_err(|_| Error::not_found("Media not found"))?;
        let answer = self.federation.send(server, get_content::v1::Request::new(media_id.to_owned())).await;
        let content = match answer {
            Ok(answer) => answer.content,
            Err(err) if err.is_permanent() => return Err(Error::not_found("Media not found")),
            Err(err) => {
                tracing::warn!(server = server_name, "fetching media failed: {err}");
                return Err(err.into());
            }
        };
        let max = self.config.max_upload_size;
        let (bytes, content_type, filename) = match content {
            FileOrLocation::File(content) => {
                (content.file, content.content_type, content.content_disposition.and_then(|d| d.filename))
            }
            // The server keeps its media elsewhere (a CDN, object storage):
            // a plain GET of that URL, vetted like any URL named by others.
            FileOrLocation::Location(url) => {
                let fetched = self.redirect_fetcher.fetch(&url, max).await.inspect_err(|err| {
                    tracing::warn!(
                        server = server_name,
                        "fetching media from where the server redirects failed: {err}"
                    )
                })?;
                (fetched.body, fetched.content_type, None)
            }
            _ => {
                return Err(Error::matrix(
                    502,
                    ErrorKind::Unknown,
                    "The media's server answered in an unknown form",
                ));
            }
        };
        if bytes.len() as u64 > max {
            return Err(Error::too_large("The remote media is larger than this server accepts"));
        }
        let size = bytes.len() as u64;
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(bytes))]);
        let (sha256, _) = self.blobs.store(body, max).await?;
        let record = MediaRecord {
            sha256: Some(sha256),
            content_type,
            filename,
            size,
            uploader: None,
            created_ts: now_ms(),
            ..MediaRecord::default()
        };
        self.records.put(&(server_name.to_owned(), media_id.to_owned()), &Json(record)).db()
    }

    /// A local or cached media item's file, for download.
    pub fn file(&self, server_name: &str, media_id: &str) -> Result<MediaFile> {
        let record = self
            .record(server_name, media_id)?
            .filter(|record| record.quarantined_by.is_none())
            .ok_or_else(|| Error::not_found("Media not found"))?;
        let Some(sha256) = &record.sha256 else {
            return Err(Error::matrix(504, ErrorKind::NotYetUploaded, "The media has not been uploaded yet"));
        };
        let path = self.blobs.path(sha256);
        let size = record.size;
        Ok(MediaFile { record, path, size })
    }

    /// Whether the legacy unauthenticated endpoints may serve this item.
    pub fn legacy_allowed(&self, record: &MediaRecord) -> bool {
        self.config.legacy_media_before.is_some_and(|before| record.created_ts < before.saturating_mul(1000))
    }

    /// A thumbnail of a media item: the path of a cached PNG or JPEG and its
    /// content type. Generated once per (content, size, method).
    pub async fn thumbnail(
        &self,
        server_name: &str,
        media_id: &str,
        requested: ThumbnailSpec,
    ) -> Result<(PathBuf, &'static str)> {
        let file = self.file_or_fetch(server_name, media_id).await?;
        let sha256 = file.record.sha256.clone().unwrap_or_default();
        let spec = thumbnail::snap(requested);
        let target = self.blobs.thumbnail_path(&sha256, &spec);
        thumbnail::ensure(file.path, target, spec).await
    }

    /// `GET /media/preview_url`: the page's OpenGraph data, its image
    /// stored as media of this server.
    pub async fn preview_url(&self, viewer: &UserId, url: &str) -> Result<serde_json::Value> {
        if !self.config.url_preview {
            return Err(Error::unrecognized(404, "URL previews are disabled on this server"));
        }
        self.previewer.preview(url, self, viewer).await
    }

    /// Store bytes already in memory as new local media.
    pub(crate) async fn store_bytes(
        &self,
        uploader: &UserId,
        bytes: Vec<u8>,
        content_type: Option<String>,
    ) -> Result<String> {
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(bytes))]);
        self.upload(uploader, body, content_type, None).await
    }

    /// Admin: delete a media item (and its file, unless other items share it).
    pub fn delete(&self, server_name: &str, media_id: &str) -> Result<bool> {
        let key = (server_name.to_owned(), media_id.to_owned());
        let Some(Json(record)) = self.records.get(&key).db()? else { return Ok(false) };
        self.records.delete(&key).db()?;
        if let Some(sha256) = &record.sha256 {
            let shared = self
                .records
                .scan_raw_prefix(&[], usize::MAX)
                .db()?
                .into_iter()
                .any(|(_, Json(other))| other.sha256.as_deref() == Some(sha256));
            if !shared {
                self.blobs.remove(sha256)?;
            }
        }
        Ok(true)
    }

    /// Admin: forget cached remote media fetched before `before_ts` (ms);
    /// returns how many items went.
    pub fn purge_remote(&self, before_ts: u64) -> Result<usize> {
        let cutoff = before_ts;
        let local = self.config.server_name.to_string();
        let mut purged = 0;
        for ((server, media_id), Json(record)) in self.records.scan_raw_prefix(&[], usize::MAX).db()? {
            if server != local && record.created_ts < cutoff && self.delete(&server, &media_id)? {
                purged += 1;
            }
        }
        Ok(purged)
    }
}
