//! What server admins do with media (the admin API): quarantine, protect,
//! list by uploader, delete in bulk and count per user. Listings read every
//! media record: they are admin pages, not request paths.

use std::collections::{HashMap, HashSet};

use estuary_core::Result;
use estuary_storage::codec::Json;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{Media, MediaRecord};
use crate::storage_error::StorageResultExt;

/// At most this many media records are read by one admin operation.
const RECORDS_READ: usize = 10_000_000;

/// Bulk deletion's filter (`POST /_synapse/admin/v1/media/delete`).
pub struct BulkDelete {
    /// Media created before this (ms since the epoch).
    pub before_ts: u64,
    /// Only media larger than this (bytes).
    pub size_gt: u64,
    /// `mxc://` URIs kept whatever their age (avatars, with `keep_profiles`).
    pub keep: HashSet<String>,
}

impl Media {
    fn all_records(&self) -> Result<Vec<((String, String), MediaRecord)>> {
        Ok(self
            .records
            .scan_raw_prefix(&[], RECORDS_READ)
            .db()?
            .into_iter()
            .map(|(key, Json(record))| (key, record))
            .collect())
    }

    /// Quarantine (with `by`) or release an item; false when unknown. A
    /// protected item stays served.
    pub fn set_quarantined(&self, server_name: &str, media_id: &str, by: Option<&UserId>) -> Result<bool> {
        let key = (server_name.to_owned(), media_id.to_owned());
        let Some(Json(mut record)) = self.records.get(&key).db()? else { return Ok(false) };
        if by.is_some() && record.protected {
            return Ok(true);
        }
        record.quarantined_by = by.map(ToOwned::to_owned);
        self.records.put(&key, &Json(record)).db()?;
        Ok(true)
    }

    /// Quarantine the items `mxc://` URIs name; how many were quarantined.
    pub fn quarantine_uris(&self, uris: &[String], by: &UserId) -> Result<usize> {
        let mut count = 0;
        for uri in uris {
            let Some((server, media_id)) = uri.strip_prefix("mxc://").and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if self.record(server, media_id)?.is_some_and(|r| !r.protected && r.quarantined_by.is_none()) {
                self.set_quarantined(server, media_id, Some(by))?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Quarantine everything a user uploaded; how many were quarantined.
    pub fn quarantine_uploads_of(&self, uploader: &UserId, by: &UserId) -> Result<usize> {
        let uris: Vec<String> = self
            .uploads_of(uploader)?
            .into_iter()
            .map(|(media_id, _)| format!("mxc://{}/{media_id}", self.config.server_name))
            .collect();
        self.quarantine_uris(&uris, by)
    }

    /// Protect (or unprotect) a local item from quarantine; false when unknown.
    pub fn set_protected(&self, media_id: &str, protected: bool) -> Result<bool> {
        let key = self.key(media_id);
        let Some(Json(mut record)) = self.records.get(&key).db()? else { return Ok(false) };
        record.protected = protected;
        self.records.put(&key, &Json(record)).db()?;
        Ok(true)
    }

    /// A user's uploads: (media ID, record).
    pub fn uploads_of(&self, uploader: &UserId) -> Result<Vec<(String, MediaRecord)>> {
        let local = self.config.server_name.as_str();
        Ok(self
            .all_records()?
            .into_iter()
            .filter(|((server, _), record)| server == local && record.uploader.as_deref() == Some(uploader))
            .map(|((_, media_id), record)| (media_id, record))
            .collect())
    }

    /// Delete local media matching `filter`; the IDs deleted.
    pub fn delete_local(&self, filter: &BulkDelete) -> Result<Vec<String>> {
        let local = self.config.server_name.to_string();
        let mut deleted = Vec::new();
        for ((server, media_id), record) in self.all_records()? {
            let uri = format!("mxc://{server}/{media_id}");
            if server == local
                && record.created_ts < filter.before_ts
                && record.size > filter.size_gt
                && !record.protected
                && !filter.keep.contains(&uri)
                && self.delete(&server, &media_id)?
            {
                deleted.push(media_id);
            }
        }
        Ok(deleted)
    }

    /// Local uploads per user: (count, bytes).
    pub fn uploads_per_user(&self) -> Result<HashMap<OwnedUserId, (u64, u64)>> {
        let local = self.config.server_name.as_str();
        let mut per_user: HashMap<OwnedUserId, (u64, u64)> = HashMap::new();
        for ((server, _), record) in self.all_records()? {
            if let (true, Some(uploader)) = (server == local, record.uploader) {
                let entry = per_user.entry(uploader).or_default();
                entry.0 += 1;
                entry.1 += record.size;
            }
        }
        Ok(per_user)
    }
}

/// A media item as Synapse's admin API shows it.
pub fn media_view(media_id: &str, record: &MediaRecord) -> JsonValue {
    json!({
        "media_id": media_id,
        "media_type": record.content_type,
        "media_length": record.size,
        "upload_name": record.filename,
        "created_ts": record.created_ts,
        "last_access_ts": record.created_ts,
        "quarantined_by": record.quarantined_by,
        "safe_from_quarantine": record.protected,
        "user_id": record.uploader,
        "url_cache": null,
        "authenticated": true,
        "sha256": record.sha256,
    })
}
