//! URL previews: Estuary fetches a page and reads its OpenGraph tags.
//!
//! The fetch is an SSRF risk, so every hop is vetted: only http(s); the host
//! is resolved here and every address checked (private, loopback,
//! link-local, multicast and similar ranges are refused unless the
//! allowlist names them); the connection is pinned to the vetted address so
//! a second DNS answer cannot swap it; redirects are followed by hand, each
//! vetted again; time and size are bounded. Results are cached for an hour.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use estuary_core::{Error, Result};
use futures::StreamExt;
use regex::Regex;
use serde_json::{Map, Value as JsonValue};

const MAX_BYTES: u64 = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;
const CACHE_TTL: Duration = Duration::from_secs(3600);
const CACHE_ENTRIES: usize = 1000;

/// An address range: network address and prefix length.
#[derive(Clone, Copy, Debug)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let address = text.parse::<IpAddr>().ok()?;
                (address, if address.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { network: address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let (ip, ip_len) = bits(ip);
        let (net, net_len) = bits(self.network);
        if ip_len != net_len {
            return false;
        }
        // IPv4 sits in the top 32 bits, so the prefix counts from the top for both.
        let prefix = u32::from(self.prefix);
        let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
        ip & mask == net & mask
    }
}

/// Addresses a preview must never reach by default.
pub(crate) fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_blocked_v4(v4),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
                    || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)
            }
        },
    }
}

fn is_blocked_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240
}

/// HTTP GETs of URLs named by others (a page to preview, a media
/// server's redirect): every hop's address vetted, connections pinned to
/// it, redirects followed by hand, time and size bounded.
pub struct VettedFetcher {
    allowlist: Vec<IpRange>,
    /// Private and reserved addresses too (`federation_allow_private_addresses`
    /// for media of test networks).
    allow_private: bool,
    /// Extra certificate authorities (`federation_trusted_ca_paths`).
    roots: Vec<reqwest::Certificate>,
    /// What is fetched, for errors and the user agent: "URL preview".
    purpose: &'static str,
}

/// A fetched body, the URL it came from after redirects, and its type.
pub struct Fetched {
    pub body: Vec<u8>,
    pub url: reqwest::Url,
    pub content_type: Option<String>,
}

pub struct Previewer {
    fetcher: VettedFetcher,
    cache: Mutex<HashMap<String, (Instant, JsonValue)>>,
}

fn refused(purpose: &str, reason: &str) -> Error {
    Error::forbidden(format!("{purpose} refused: {reason}"))
}

impl Previewer {
    pub fn new(allowlist: &[String], roots: Vec<reqwest::Certificate>) -> Result<Self> {
        let allowlist = allowlist
            .iter()
            .map(|text| {
                IpRange::parse(text)
                    .ok_or_else(|| Error::internal(format!("url_preview_ip_allowlist: bad entry {text}")))
            })
            .collect::<Result<_>>()?;
        let fetcher = VettedFetcher { allowlist, allow_private: false, roots, purpose: "URL preview" };
        Ok(Self { fetcher, cache: Mutex::new(HashMap::new()) })
    }

    /// OpenGraph data of a page (`og:title`, `og:description`, …); its
    /// `og:image` fetched and stored as media of this server.
    pub async fn preview(&self, url: &str, media: &super::Media, viewer: &ruma::UserId) -> Result<JsonValue> {
        if let Some((at, cached)) = self.cache.lock().expect("preview cache").get(url)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(cached.clone());
        }
        let Fetched { body, url: final_url, .. } = self.fetcher.fetch(url, MAX_BYTES).await?;
        let mut data = opengraph(&String::from_utf8_lossy(&body), &final_url);
        if let Some(image) = data["og:image"].as_str().and_then(|i| final_url.join(i).ok()) {
            match self.image(&image, media, viewer).await {
                Ok(fields) => data.as_object_mut().expect("object").extend(fields),
                Err(err) => {
                    tracing::debug!(%image, "URL preview left out the page's image: {err}");
                    data.as_object_mut().expect("object").remove("og:image");
                }
            }
        }
        let mut cache = self.cache.lock().expect("preview cache");
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(url.to_owned(), (Instant::now(), data.clone()));
        Ok(data)
    }

    /// A page's image as local media: its `mxc://` URI, size and dimensions.
    async fn image(
        &self,
        url: &reqwest::Url,
        media: &super::Media,
        viewer: &ruma::UserId,
    ) -> Result<Map<String, JsonValue>> {
        let bytes = self.fetcher.fetch(url.as_str(), MAX_BYTES).await?.body;
        let format = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| Error::invalid_param(format!("unreadable image: {e}")))?;
        let content_type = format.format().map(|f| f.to_mime_type().to_owned());
        let (width, height) =
            format.into_dimensions().map_err(|e| Error::invalid_param(format!("unreadable image: {e}")))?;
        let size = bytes.len();
        let media_id = media.store_bytes(viewer, bytes, content_type.clone()).await?;
        let mut fields = Map::new();
        fields.insert("og:image".into(), format!("mxc://{}/{media_id}", media.server_name()).into());
        fields.insert("matrix:image:size".into(), size.into());
        fields.insert("og:image:width".into(), width.into());
        fields.insert("og:image:height".into(), height.into());
        if let Some(content_type) = content_type {
            fields.insert("og:image:type".into(), content_type.into());
        }
        Ok(fields)
    }
}

impl VettedFetcher {
    pub fn new(allow_private: bool, roots: Vec<reqwest::Certificate>, purpose: &'static str) -> Self {
        Self { allowlist: Vec::new(), allow_private, roots, purpose }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_blocked(ip) || self.allowlist.iter().any(|range| range.contains(ip))
    }

    /// A vetted address for a URL's host.
    async fn vet(&self, url: &reqwest::Url) -> Result<SocketAddr> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_param(format!("{}: only http and https URLs", self.purpose)));
        }
        let host = url.host_str().ok_or_else(|| Error::invalid_param("URL has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| {
                Error::matrix(502, ruma::api::error::ErrorKind::Unknown, "Cannot resolve the URL's host")
            })?
            .collect();
        if addresses.is_empty() {
            return Err(refused(self.purpose, "the host has no address"));
        }
        // Every address must pass, or DNS could hand the client another one.
        if let Some(bad) = addresses.iter().find(|a| !self.allowed(a.ip())) {
            tracing::debug!(%url, ip = %bad.ip(), purpose = self.purpose, "refused a blocked address");
            return Err(refused(self.purpose, "its address is private or reserved"));
        }
        Ok(addresses[0])
    }

    /// Fetch following up to `MAX_REDIRECTS` redirects, each hop vetted;
    /// a body over `max_bytes` is refused.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Fetched> {
        let mut url = reqwest::Url::parse(url).map_err(|_| Error::invalid_param("Invalid URL"))?;
        for _ in 0..=MAX_REDIRECTS {
            let address = self.vet(&url).await?;
            let mut builder = reqwest::Client::builder();
            for root in &self.roots {
                builder = builder.add_root_certificate(root.clone());
            }
            let client = builder
                .redirect(reqwest::redirect::Policy::none())
                .timeout(TIMEOUT)
                .resolve(url.host_str().unwrap_or_default(), address)
                .user_agent(format!("Estuary/{} ({})", env!("CARGO_PKG_VERSION"), self.purpose))
                .build()
                .map_err(Error::internal)?;
            let failed = |e: reqwest::Error| {
                Error::matrix(
                    502,
                    ruma::api::error::ErrorKind::Unknown,
                    format!("Fetching the URL failed: {e}"),
                )
            };
            let response = client.get(url.clone()).send().await.map_err(failed)?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| refused(self.purpose, "a redirect without a location"))?;
                url = url.join(location).map_err(|_| refused(self.purpose, "a bad redirect"))?;
                continue;
            }
            if !response.status().is_success() {
                return Err(Error::matrix(
                    502,
                    ruma::api::error::ErrorKind::Unknown,
                    format!("The URL answered {}", response.status()),
                ));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(failed)?;
                if (body.len() + chunk.len()) as u64 > max_bytes {
                    return Err(Error::too_large(format!("{}: the answer is too large", self.purpose)));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched { body, url, content_type });
        }
        Err(refused(self.purpose, "too many redirects"))
    }
}

/// `og:*` meta tags, falling back to `<title>` and the meta description.
fn opengraph(html: &str, url: &reqwest::Url) -> JsonValue {
    static META: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static ATTR: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static TITLE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let meta = META.get_or_init(|| Regex::new(r"(?is)<meta\s[^>]*>").expect("valid regex"));
    let attr = ATTR.get_or_init(|| {
        Regex::new(r#"(?is)([a-z:_-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')"#).expect("valid regex")
    });
    let title = TITLE.get_or_init(|| Regex::new(r"(?is)<title[^>]*>(.*?)</title>").expect("valid regex"));
    let mut data = Map::new();
    let mut description = None;
    for tag in meta.find_iter(html).take(500) {
        let attrs: HashMap<String, String> = attr
            .captures_iter(tag.as_str())
            .map(|c| (c[1].to_ascii_lowercase(), unescape(c.get(2).or(c.get(3)).map_or("", |m| m.as_str()))))
            .collect();
        let (Some(key), Some(content)) = (attrs.get("property").or(attrs.get("name")), attrs.get("content"))
        else {
            continue;
        };
        if key.starts_with("og:") && !data.contains_key(key) {
            data.insert(key.clone(), content.chars().take(1000).collect::<String>().into());
        } else if key == "description" {
            description = Some(content.clone());
        }
    }
    if !data.contains_key("og:title")
        && let Some(found) = title.captures(html)
    {
        data.insert("og:title".into(), unescape(found[1].trim()).into());
    }
    if !data.contains_key("og:description")
        && let Some(description) = description
    {
        data.insert("og:description".into(), description.into());
    }
    data.entry("og:url").or_insert_with(|| url.as_str().into());
    data.into()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_blocked() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_blocked(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(!is_blocked(ip.parse().unwrap()), "{ip}");
        }
        let range = IpRange::parse("127.0.0.0/8").unwrap();
        assert!(range.contains("127.9.9.9".parse().unwrap()));
        assert!(!range.contains("128.0.0.1".parse().unwrap()));
        assert!(IpRange::parse("::1").unwrap().contains("::1".parse().unwrap()));
    }

    /// A local web server answering `/moved` with a redirect to `/file`,
    /// which is five bytes of PNG; `requests` answers, then it stops.
    async fn redirecting_server(requests: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for _ in 0..requests {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut buffer = vec![0u8; 4096];
                let read = socket.read(&mut buffer).await.unwrap_or(0);
                let answer = if buffer[..read].starts_with(b"GET /moved ") {
                    "HTTP/1.1 302 Found\r\nLocation: /file\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://127.0.0.1:{port}/moved")
    }

    #[tokio::test]
    async fn vetted_fetches_follow_redirects_and_refuse_private_addresses() {
        let url = redirecting_server(4).await;
        let strict = VettedFetcher::new(false, Vec::new(), "remote media");
        let refused = strict.fetch(&url, 100).await.err().expect("loopback is refused");
        assert!(refused.to_string().contains("private or reserved"), "{refused}");
        let open = VettedFetcher::new(true, Vec::new(), "remote media");
        let fetched = open.fetch(&url, 100).await.unwrap();
        assert_eq!(fetched.body, b"hello");
        assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
        assert_eq!(fetched.url.path(), "/file");
        let too_large = open.fetch(&url, 4).await.err().expect("five bytes exceed four");
        assert!(matches!(too_large, Error::Matrix { status: 413, .. }), "{too_large}");
    }

    #[test]
    fn opengraph_tags_and_fallbacks() {
        let url = reqwest::Url::parse("http://example.org/a").unwrap();
        let html = r#"<html><head><title>Plain &amp; simple</title>
            <meta property="og:description" content="A &quot;quoted&quot; page">
            <meta name='description' content='ignored'></head></html>"#;
        let data = opengraph(html, &url);
        assert_eq!(data["og:title"], "Plain & simple");
        assert_eq!(data["og:description"], "A \"quoted\" page");
        assert_eq!(data["og:url"], "http://example.org/a");
    }
}
