//! Files on local disk, addressed by SHA-256. A file is written to a
//! temporary name while it is hashed and then renamed into place, so a crash
//! never leaves a partial file under a content hash; identical uploads are
//! stored once.

use std::path::PathBuf;

use bytes::Bytes;
use estuary_core::{Error, Result};
use futures::{Stream, StreamExt};
use ring::digest;
use tokio::io::AsyncWriteExt;

use super::ThumbnailSpec;
use crate::accounts::tokens::random_token;

pub struct BlobStore {
    root: PathBuf,
}

fn io_error(context: &str, err: std::io::Error) -> Error {
    Error::internal(format!("media store: {context}: {err}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl BlobStore {
    pub fn open(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))
            .map_err(|e| io_error(&format!("cannot create {}", root.display()), e))?;
        Ok(Self { root })
    }

    /// Where the file of a content hash lives (fanned out over folders).
    pub fn path(&self, sha256: &str) -> PathBuf {
        let (a, b) = (&sha256[..2.min(sha256.len())], &sha256[2.min(sha256.len())..4.min(sha256.len())]);
        self.root.join("content").join(a).join(b).join(sha256)
    }

    pub fn thumbnail_path(&self, sha256: &str, spec: &ThumbnailSpec) -> PathBuf {
        self.root.join("thumbnails").join(sha256).join(format!(
            "{}x{}-{}",
            spec.width,
            spec.height,
            spec.method.as_str()
        ))
    }

    /// Write a stream to the store; returns its SHA-256 and size. More than
    /// `limit` bytes: 413 `M_TOO_LARGE`, and nothing is kept.
    pub async fn store<S, E>(&self, mut body: S, limit: u64) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temp = self.root.join("tmp").join(random_token(16));
        let result = self.write_hashed(&mut body, &temp, limit).await;
        let (sha256, size) = match result {
            Ok(done) => done,
            Err(err) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(err);
            }
        };
        let target = self.path(&sha256);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(&temp).await;
        } else {
            let parent = target.parent().expect("content paths have a parent");
            tokio::fs::create_dir_all(parent).await.map_err(|e| io_error("create folder", e))?;
            tokio::fs::rename(&temp, &target).await.map_err(|e| io_error("move into place", e))?;
        }
        Ok((sha256, size))
    }

    async fn write_hashed<S, E>(&self, body: &mut S, temp: &PathBuf, limit: u64) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file =
            tokio::fs::File::create(temp).await.map_err(|e| io_error("create temporary file", e))?;
        let mut hasher = digest::Context::new(&digest::SHA256);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::matrix(400, ruma::api::error::ErrorKind::Unknown, format!("upload interrupted: {e}"))
            })?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Error::too_large(format!("Uploads are limited to {limit} bytes")));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io_error("write", e))?;
        }
        file.sync_data().await.map_err(|e| io_error("sync", e))?;
        Ok((hex(hasher.finish().as_ref()), size))
    }

    pub fn remove(&self, sha256: &str) -> Result<()> {
        match std::fs::remove_file(self.path(sha256)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", e)),
        }
        let _ = std::fs::remove_dir_all(self.root.join("thumbnails").join(sha256));
        Ok(())
    }
}
