//! Server name resolution (Server-Server API, "Resolving server names"):
//! where to connect for a server name, and under which name to present the
//! request (the `Host` header and the certificate checked).
//!
//! Implemented: IP literals, explicit ports, `/.well-known/matrix/server`
//! delegation (cached), and port 8448. SRV records are not looked up yet: a
//! server that publishes only SRV is reached on 8448 of its hostname.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::ServerName;

/// How long a `.well-known` answer (or its absence) is trusted.
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_MISS_TTL: Duration = Duration::from_secs(3600);
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
const WELL_KNOWN_CACHED: usize = 10_000;

/// Where to send requests for a server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The host and port in the URL: what TLS verifies and `Host` names.
    pub host: String,
    pub port: u16,
}

impl Destination {
    pub fn base_url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

/// A server name's host and explicit port, if any.
fn host_and_port(name: &str) -> (String, Option<u16>) {
    // `[::1]:8448` or `[::1]`
    if let Some(rest) = name.strip_prefix('[')
        && let Some((ip, tail)) = rest.split_once(']')
    {
        return (ip.to_owned(), tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().ok()),
        None => (name.to_owned(), None),
    }
}

/// Steps 1 and 2 of the spec: an IP literal or an explicit port decides
/// without any lookup. `None`: ask `.well-known`.
pub fn without_lookup(name: &str) -> Option<Destination> {
    let (host, port) = host_and_port(name);
    if host.parse::<IpAddr>().is_ok() {
        return Some(Destination { host, port: port.unwrap_or(8448) });
    }
    port.map(|port| Destination { host, port })
}

/// A delegated server name from `.well-known` resolves like a server name,
/// except that it is not asked for `.well-known` again.
pub fn delegated(delegated: &str) -> Destination {
    without_lookup(delegated).unwrap_or_else(|| Destination { host: delegated.to_owned(), port: 8448 })
}

/// The `m.server` of a `.well-known/matrix/server` body, if valid.
pub fn parse_well_known(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let server = value.get("m.server")?.as_str()?;
    // It must itself be a valid server name (host with optional port).
    <&ServerName>::try_from(server).ok().map(|_| server.to_owned())
}

/// Resolves server names, caching `.well-known` answers.
pub struct Resolver {
    well_known: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl Resolver {
    pub fn new() -> Self {
        Self { well_known: Mutex::new(HashMap::new()) }
    }

    /// Where to reach `name`.
    pub async fn resolve(&self, http: &reqwest::Client, name: &ServerName) -> Destination {
        if let Some(destination) = without_lookup(name.as_str()) {
            return destination;
        }
        match self.well_known(http, name.as_str()).await {
            Some(server) => delegated(&server),
            None => Destination { host: name.as_str().to_owned(), port: 8448 },
        }
    }

    async fn well_known(&self, http: &reqwest::Client, host: &str) -> Option<String> {
        if let Some((until, answer)) = self.well_known.lock().expect("well-known cache").get(host)
            && *until > Instant::now()
        {
            return answer.clone();
        }
        let answer = fetch_well_known(http, host).await;
        let ttl = if answer.is_some() { WELL_KNOWN_TTL } else { WELL_KNOWN_MISS_TTL };
        let mut cache = self.well_known.lock().expect("well-known cache");
        if cache.len() >= WELL_KNOWN_CACHED {
            cache.retain(|_, (until, _)| *until > Instant::now());
        }
        cache.insert(host.to_owned(), (Instant::now() + ttl, answer.clone()));
        answer
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

async fn fetch_well_known(http: &reqwest::Client, host: &str) -> Option<String> {
    let url = format!("https://{host}/.well-known/matrix/server");
    let response = http.get(&url).timeout(WELL_KNOWN_TIMEOUT).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = super::client::read_limited(response, WELL_KNOWN_MAX_BYTES).await.ok()?;
    let server = parse_well_known(&body);
    if server.is_none() {
        tracing::warn!(server = %host, "invalid /.well-known/matrix/server; using port 8448");
    }
    server
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, port: u16) -> Option<Destination> {
        Some(Destination { host: host.into(), port })
    }

    #[test]
    fn ip_literals_and_explicit_ports_need_no_lookup() {
        assert_eq!(without_lookup("1.2.3.4"), dest("1.2.3.4", 8448));
        assert_eq!(without_lookup("1.2.3.4:8000"), dest("1.2.3.4", 8000));
        assert_eq!(without_lookup("[::1]"), dest("::1", 8448));
        assert_eq!(without_lookup("[::1]:9000"), dest("::1", 9000));
        assert_eq!(without_lookup("hs2.localhost:8482"), dest("hs2.localhost", 8482));
        assert_eq!(without_lookup("example.org"), None, "a bare hostname asks .well-known");
    }

    #[test]
    fn urls_bracket_ipv6_hosts() {
        assert_eq!(Destination { host: "::1".into(), port: 1 }.base_url(), "https://[::1]:1");
        assert_eq!(Destination { host: "a.test".into(), port: 2 }.base_url(), "https://a.test:2");
    }

    #[test]
    fn well_known_delegation_resolves_the_delegated_name() {
        let body = br#"{"m.server": "matrix.example.org:443"}"#;
        let server = parse_well_known(body).unwrap();
        assert_eq!(delegated(&server), Destination { host: "matrix.example.org".into(), port: 443 });
        assert_eq!(
            delegated("matrix.example.org"),
            Destination { host: "matrix.example.org".into(), port: 8448 }
        );
        assert_eq!(parse_well_known(br#"{"m.server": "not a name!"}"#), None);
        assert_eq!(parse_well_known(b"<html>"), None);
        assert_eq!(parse_well_known(br#"{"m.server": 5}"#), None);
    }
}
