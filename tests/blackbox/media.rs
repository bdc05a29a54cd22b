//! The media repository: uploads, downloads, thumbnails, limits, headers.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbaImage};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::harness::{TestServer, User, assert_error};

const UPLOAD: &str = "/_matrix/media/v3/upload";

pub(crate) async fn upload(
    server: &TestServer,
    user: &User,
    bytes: Vec<u8>,
    content_type: &str,
    name: &str,
) -> (StatusCode, Value) {
    let response = server
        .http()
        .post(format!("{}{UPLOAD}?filename={name}", server.base))
        .bearer_auth(&user.token)
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn media_path(content_uri: &str) -> String {
    content_uri.strip_prefix("mxc://").expect("an mxc URI").to_owned()
}

pub(crate) async fn download(server: &TestServer, user: Option<&User>, path: &str) -> reqwest::Response {
    let mut request = server.http().get(format!("{}{path}", server.base));
    if let Some(user) = user {
        request = request.bearer_auth(&user.token);
    }
    request.send().await.unwrap()
}

/// Deterministic pseudo-random bytes (incompressible, so sizes are real).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

fn stored_files(server: &TestServer) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries.flatten().map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum()
            })
            .unwrap_or(0)
    }
    count(&server.dir.path().join("media").join("content"))
}

#[tokio::test]
async fn upload_download_headers_and_dedup() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let data = bytes(100_000, 1);
    let (status, body) = upload(&server, &alice, data.clone(), "text/html", "page.html").await;
    assert_eq!(status, 200, "{body}");
    let path = media_path(body["content_uri"].as_str().unwrap());
    assert!(path.starts_with("localhost/"));

    let response =
        download(&server, Some(&alice), &format!("/_matrix/client/v1/media/download/{path}")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html");
    let disposition = headers[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("page.html"),
        "HTML never inline: {disposition}"
    );
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("sandbox") && csp.contains("script-src 'none'"), "{csp}");
    assert_eq!(response.bytes().await.unwrap().as_ref(), data.as_slice(), "byte-identical");

    let response =
        download(&server, Some(&alice), &format!("/_matrix/client/v1/media/download/{path}/other.png")).await;
    assert!(response.headers()[header::CONTENT_DISPOSITION].to_str().unwrap().contains("other.png"));
    assert_eq!(
        download(&server, None, &format!("/_matrix/client/v1/media/download/{path}")).await.status(),
        401
    );
    let missing =
        download(&server, Some(&alice), "/_matrix/client/v1/media/download/localhost/nothing").await;
    assert_eq!(missing.status(), 404);

    // The same bytes again: a new media ID, one file on disk.
    assert_eq!(stored_files(&server), 1);
    let (_, again) = upload(&server, &alice, data, "text/plain", "copy.txt").await;
    assert_ne!(again["content_uri"], body["content_uri"]);
    assert_eq!(stored_files(&server), 1, "identical content is stored once");
    let response = download(
        &server,
        Some(&alice),
        &format!("/_matrix/client/v1/media/download/{}", media_path(again["content_uri"].as_str().unwrap())),
    )
    .await;
    assert!(response.headers()[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("inline"));

    let (status, config) = server.get("/_matrix/client/v1/media/config", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(config["m.upload.size"], 50 * 1024 * 1024);
}

#[tokio::test]
async fn a_50_mib_file_round_trips() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let data = bytes(50 * 1024 * 1024, 2);
    let (status, body) = upload(&server, &alice, data.clone(), "application/octet-stream", "big.bin").await;
    assert_eq!(status, 200, "{body}");
    let path = media_path(body["content_uri"].as_str().unwrap());
    let response =
        download(&server, Some(&alice), &format!("/_matrix/client/v1/media/download/{path}")).await;
    assert_eq!(response.headers()[header::CONTENT_LENGTH], (50 * 1024 * 1024).to_string().as_str());
    let received = response.bytes().await.unwrap();
    assert!(received.as_ref() == data.as_slice(), "byte-identical");
}

#[tokio::test]
async fn oversized_uploads_are_refused_and_leave_nothing() {
    let server = TestServer::start_with("allow_registration = true\nmax_upload_size = 4096\n").await;
    let alice = server.register("alice").await;
    let (status, body) = upload(&server, &alice, bytes(5000, 3), "application/octet-stream", "x").await;
    assert_error(&(status, body), 413, "M_TOO_LARGE");
    // Without a declared length (chunked), the limit holds while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..5).map(|i| Ok(bytes(1000, i))).collect();
    let response = server
        .http()
        .post(format!("{}{UPLOAD}", server.base))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(stored_files(&server), 0);
    let tmp = std::fs::read_dir(server.dir.path().join("media").join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "no temporary file left behind");
    let (status, _) = upload(&server, &alice, bytes(4096, 4), "application/octet-stream", "x").await;
    assert_eq!(status, 200, "exactly the limit is fine");
}

#[tokio::test]
async fn async_upload_create_then_put() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (status, created) = server.post("/_matrix/media/v1/create", Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{created}");
    assert!(created["unused_expires_at"].as_u64().is_some());
    let path = media_path(created["content_uri"].as_str().unwrap());
    let early = download(&server, Some(&alice), &format!("/_matrix/client/v1/media/download/{path}")).await;
    assert_eq!(early.status(), 504);
    assert_eq!(early.json::<Value>().await.unwrap()["errcode"], "M_NOT_YET_UPLOADED");

    let put = |user: &User, data: Vec<u8>| {
        server
            .http()
            .put(format!("{}/_matrix/media/v3/upload/{path}", server.base))
            .bearer_auth(&user.token)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(data)
            .send()
    };
    assert_eq!(put(&bob, b"not yours".to_vec()).await.unwrap().status(), 403);
    assert_eq!(put(&alice, b"hello later".to_vec()).await.unwrap().status(), 200);
    let again = put(&alice, b"twice".to_vec()).await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.json::<Value>().await.unwrap()["errcode"], "M_CANNOT_OVERWRITE_MEDIA");
    let response = download(&server, Some(&bob), &format!("/_matrix/client/v1/media/download/{path}")).await;
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello later");
}

fn test_image(format: ImageFormat) -> Vec<u8> {
    let image =
        RgbaImage::from_fn(400, 300, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255]));
    let image = match format {
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(image).to_rgb8()),
        _ => DynamicImage::ImageRgba8(image),
    };
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn thumbnails_of_png_jpeg_gif_and_webp() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for (format, content_type) in [
        (ImageFormat::Png, "image/png"),
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::WebP, "image/webp"),
    ] {
        // The declared type is ignored: the bytes decide.
        let (_, body) = upload(&server, &alice, test_image(format), "application/octet-stream", "img").await;
        let path = media_path(body["content_uri"].as_str().unwrap());
        for (width, height, method, expected) in
            [(96, 96, "crop", (96, 96)), (320, 240, "scale", (320, 240)), (40, 40, "scale", (320, 240))]
        {
            let url = format!(
                "/_matrix/client/v1/media/thumbnail/{path}?width={width}&height={height}&method={method}"
            );
            let response = download(&server, Some(&alice), &url).await;
            assert_eq!(response.status(), 200, "{content_type} {url}");
            let served = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            assert!(served == "image/png" || served == "image/jpeg", "{served}");
            let thumb = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
            assert_eq!((thumb.width(), thumb.height()), expected, "{content_type} {width}x{height} {method}");
        }
    }
    let (_, text) = upload(&server, &alice, b"not an image".to_vec(), "image/png", "fake.png").await;
    let path = media_path(text["content_uri"].as_str().unwrap());
    let response = download(
        &server,
        Some(&alice),
        &format!("/_matrix/client/v1/media/thumbnail/{path}?width=32&height=32"),
    )
    .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn legacy_endpoints_serve_only_media_from_before_the_cutover() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (_, body) = upload(&server, &alice, b"new media".to_vec(), "text/plain", "a.txt").await;
    let path = media_path(body["content_uri"].as_str().unwrap());
    assert_eq!(download(&server, None, &format!("/_matrix/media/v3/download/{path}")).await.status(), 404);
    let (status, _) = server.get("/_matrix/media/v3/config", Some(&alice.token)).await;
    assert_eq!(status, 200);

    let dir = server.kill();
    let server = TestServer::start_in(dir, "allow_registration = true\nlegacy_media_before = 4102444800\n");
    let response = download(&server, None, &format!("/_matrix/media/v3/download/{path}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"new media");
}

#[tokio::test]
async fn admins_delete_media_and_purge_the_remote_cache() {
    let server = TestServer::start().await;
    let admin = server.register("admin").await; // the first account is an admin
    let alice = server.register("alice").await;
    let (_, body) = upload(&server, &alice, b"delete me".to_vec(), "text/plain", "d.txt").await;
    let path = media_path(body["content_uri"].as_str().unwrap());
    let url = format!("/_synapse/admin/v1/media/{path}");
    assert_error(&server.delete(&url, Some(&alice.token)).await, 403, "M_FORBIDDEN");
    let (status, deleted) = server.delete(&url, Some(&admin.token)).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["total"], 1);
    assert_eq!(
        download(&server, Some(&alice), &format!("/_matrix/client/v1/media/download/{path}")).await.status(),
        404
    );
    assert_eq!(stored_files(&server), 0, "the file went with its only media item");
    assert_error(&server.delete(&url, Some(&admin.token)).await, 404, "M_NOT_FOUND");
    let (status, purged) = server
        .post("/_synapse/admin/v1/purge_media_cache?before_ts=99999999999999", Some(&admin.token), json!({}))
        .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["deleted"], 0, "no remote media is cached before federation");
}

/// A small site on loopback: a 3×2 PNG at `/img.png`, `html` at every
/// other path; returns its base URL.
async fn serve_page(html: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut png = Vec::new();
    image::RgbImage::new(3, 2)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let n = socket.read(&mut buffer).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buffer[..n]);
            let (content_type, body) = if request.starts_with("GET /img.png") {
                ("image/png", png.clone())
            } else {
                ("text/html", html.as_bytes().to_vec())
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
        }
    });
    format!("http://{address}")
}

#[tokio::test]
async fn url_previews_of_allowed_pages_and_refusal_of_private_addresses() {
    let page = serve_page(
        "<html><head><title>Fallback</title><meta property=\"og:title\" content=\"Estuary news\">\
         <meta property=\"og:description\" content=\"Bridges &amp; more\">\
         <meta property=\"og:image\" content=\"img.png\"></head></html>",
    )
    .await;
    let allowing =
        TestServer::start_with("allow_registration = true\nurl_preview_ip_allowlist = [\"127.0.0.1/32\"]\n")
            .await;
    let alice = allowing.register("alice").await;
    let (status, data) = preview(&allowing, &alice, &format!("{page}/article")).await;
    assert_eq!(status, 200, "{data}");
    assert_eq!(data["og:title"], "Estuary news");
    assert_eq!(data["og:description"], "Bridges & more");
    // The page's image, relative to it, is stored here and described.
    let image = data["og:image"].as_str().unwrap_or_else(|| panic!("no image: {data}"));
    assert!(image.starts_with("mxc://localhost/"), "{data}");
    assert_eq!((data["og:image:width"].clone(), data["og:image:height"].clone()), (json!(3), json!(2)));
    let stored = download(
        &allowing,
        Some(&alice),
        &format!("/_matrix/client/v1/media/download/{}", media_path(image)),
    )
    .await;
    assert_eq!(stored.bytes().await.unwrap().len() as u64, data["matrix:image:size"].as_u64().unwrap());

    let strict = TestServer::start().await;
    let bob = strict.register("bob").await;
    for url in [format!("{page}/article"), "http://10.0.0.1/".to_owned(), "http://localhost:9/".to_owned()] {
        assert_error(&preview(&strict, &bob, &url).await, 403, "M_FORBIDDEN");
    }
    assert_error(&preview(&strict, &bob, "file:///etc/passwd").await, 400, "M_INVALID_PARAM");
}

async fn preview(server: &TestServer, user: &User, url: &str) -> (StatusCode, Value) {
    let encoded = crate::harness::encode(url);
    server.get(&format!("/_matrix/client/v1/media/preview_url?url={encoded}"), Some(&user.token)).await
}
