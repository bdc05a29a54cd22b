//! Thumbnails with the `image` crate, on the blocking pool. Requested sizes
//! snap to the common sizes clients ask for, so each is generated once and
//! kept beside the content.

use std::path::{Path, PathBuf};

use estuary_core::{Error, Result};
use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Crop,
    Scale,
}

impl ThumbnailMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThumbnailSpec {
    pub width: u32,
    pub height: u32,
    pub method: ThumbnailMethod,
}

/// The sizes the spec suggests servers keep.
const COMMON: [(u32, u32, ThumbnailMethod); 5] = [
    (32, 32, ThumbnailMethod::Crop),
    (96, 96, ThumbnailMethod::Crop),
    (320, 240, ThumbnailMethod::Scale),
    (640, 480, ThumbnailMethod::Scale),
    (800, 600, ThumbnailMethod::Scale),
];

/// The smallest common size at least as large as requested with the same
/// method; beyond those, the requested size itself, at most 800 pixels a
/// side (so the cache stays bounded).
pub fn snap(requested: ThumbnailSpec) -> ThumbnailSpec {
    let common = COMMON
        .iter()
        .find(|(w, h, m)| *m == requested.method && *w >= requested.width && *h >= requested.height);
    match common {
        Some(&(width, height, method)) => ThumbnailSpec { width, height, method },
        None => ThumbnailSpec {
            width: requested.width.clamp(1, 800),
            height: requested.height.clamp(1, 800),
            method: requested.method,
        },
    }
}

/// Make sure the thumbnail at `target` exists; returns it and its type.
pub async fn ensure(
    source: PathBuf,
    target: PathBuf,
    spec: ThumbnailSpec,
) -> Result<(PathBuf, &'static str)> {
    tokio::task::spawn_blocking(move || {
        if let Some(found) = existing(&target) {
            return Ok(found);
        }
        generate(&source, &target, spec)
    })
    .await
    .map_err(|e| Error::internal(format!("thumbnail task: {e}")))?
}

fn existing(target: &Path) -> Option<(PathBuf, &'static str)> {
    [("png", "image/png"), ("jpg", "image/jpeg")]
        .into_iter()
        .map(|(ext, ct)| (target.with_extension(ext), ct))
        .find(|(path, _)| path.exists())
}

fn generate(source: &Path, target: &Path, spec: ThumbnailSpec) -> Result<(PathBuf, &'static str)> {
    let not_image = || {
        Error::matrix(
            400,
            ruma::api::error::ErrorKind::Unknown,
            "This media is not an image we can thumbnail",
        )
    };
    // The type comes from the bytes, never from what the uploader claimed.
    let mut reader = ImageReader::open(source)
        .map_err(|e| Error::internal(format!("open media: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::internal(format!("read media: {e}")))?;
    let format = reader.format().ok_or_else(not_image)?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) {
        return Err(not_image());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let image = reader.decode().map_err(|_| not_image())?;
    let thumb = resize(&image, spec);
    let (extension, content_type, out_format) = match format {
        ImageFormat::Jpeg => ("jpg", "image/jpeg", ImageFormat::Jpeg),
        _ => ("png", "image/png", ImageFormat::Png),
    };
    let path = target.with_extension(extension);
    let parent = path.parent().expect("thumbnail paths have a parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::internal(format!("thumbnail folder: {e}")))?;
    // Write then rename, so a reader never sees half a thumbnail.
    let temp = path.with_extension(format!("{extension}.tmp{}", std::process::id()));
    let thumb =
        if out_format == ImageFormat::Jpeg { DynamicImage::ImageRgb8(thumb.to_rgb8()) } else { thumb };
    thumb
        .save_with_format(&temp, out_format)
        .map_err(|e| Error::internal(format!("encode thumbnail: {e}")))?;
    std::fs::rename(&temp, &path).map_err(|e| Error::internal(format!("store thumbnail: {e}")))?;
    Ok((path, content_type))
}

/// Never upscales: an image smaller than the box keeps its size.
fn resize(image: &DynamicImage, spec: ThumbnailSpec) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    match spec.method {
        ThumbnailMethod::Scale if w <= spec.width && h <= spec.height => image.clone(),
        ThumbnailMethod::Scale => image.thumbnail(spec.width, spec.height),
        ThumbnailMethod::Crop if w < spec.width || h < spec.height => {
            image.thumbnail(spec.width.min(w), spec.height.min(h))
        }
        ThumbnailMethod::Crop => image.resize_to_fill(spec.width, spec.height, FilterType::Triangle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_sizes_snap_to_common_ones() {
        let spec = |width, height, method| ThumbnailSpec { width, height, method };
        assert_eq!(snap(spec(30, 30, ThumbnailMethod::Crop)), spec(32, 32, ThumbnailMethod::Crop));
        assert_eq!(snap(spec(64, 64, ThumbnailMethod::Crop)), spec(96, 96, ThumbnailMethod::Crop));
        assert_eq!(snap(spec(500, 100, ThumbnailMethod::Scale)), spec(640, 480, ThumbnailMethod::Scale));
        assert_eq!(snap(spec(4000, 4000, ThumbnailMethod::Scale)), spec(800, 800, ThumbnailMethod::Scale));
        assert_eq!(snap(spec(200, 200, ThumbnailMethod::Crop)), spec(200, 200, ThumbnailMethod::Crop));
    }
}
