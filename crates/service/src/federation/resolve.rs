//! Server name resolution (Server-Server API, "Resolving server names"):
//! where to connect for a server name, and under which name to present the
//! request (the `Host` header and the certificate checked).
//!
//! In the spec's order: IP literals, explicit ports, `/.well-known/matrix/server`
//! delegation, SRV records (`_matrix-fed._tcp`, then the deprecated
//! `_matrix._tcp`), and port 8448. `.well-known` answers and SRV records
//! are cached. An SRV target is connected to while TLS and `Host` still
//! name the server (or its delegated) hostname, as the spec requires.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_resolver::TokioResolver;
use ruma::ServerName;

/// How long an SRV answer (or its absence) is trusted.
const SRV_TTL: Duration = Duration::from_secs(3600);
const SRV_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `.well-known` answer (or its absence) is trusted.
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_MISS_TTL: Duration = Duration::from_secs(3600);
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
/// Hosts whose answers each cache keeps before it drops the expired ones.
const HOSTS_CACHED: usize = 10_000;

/// Where to send requests for a server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The host and port in the URL: what TLS verifies and `Host` names.
    pub host: String,
    pub port: u16,
    /// An SRV record's target: the host whose addresses are connected to.
    pub connect_to: Option<String>,
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
        return Some(Destination { host, port: port.unwrap_or(8448), connect_to: None });
    }
    port.map(|port| Destination { host, port, connect_to: None })
}

/// The SRV record to use, as (priority, weight, target, port): the lowest
/// priority, then the highest weight. A target of `.` says the service is
/// not offered there.
pub fn pick_srv(mut records: Vec<(u16, u16, String, u16)>) -> Option<SrvTarget> {
    records.sort_by_key(|(priority, weight, _, _)| (*priority, std::cmp::Reverse(*weight)));
    let (_, _, target, port) = records.into_iter().next()?;
    let target = target.trim_end_matches('.').to_owned();
    (!target.is_empty()).then_some((target, port))
}

/// The `m.server` of a `.well-known/matrix/server` body, if valid.
pub fn parse_well_known(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let server = value.get("m.server")?.as_str()?;
    // It must itself be a valid server name (host with optional port).
    <&ServerName>::try_from(server).ok().map(|_| server.to_owned())
}

/// An SRV record's target host and port.
type SrvTarget = (String, u16);

/// Resolves server names, caching `.well-known` answers and SRV records.
pub struct Resolver {
    well_known: TtlCache<Option<String>>,
    srv: TtlCache<Option<SrvTarget>>,
    /// The system's DNS servers, for SRV records; `None` when they cannot
    /// be read (then no SRV lookups: hostnames are reached on 8448).
    dns: Option<TokioResolver>,
}

impl Resolver {
    pub fn new() -> Self {
        let dns = match TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(err) => {
                tracing::warn!("no DNS configuration for SRV lookups: {err}");
                None
            }
        };
        Self { well_known: TtlCache::new(), srv: TtlCache::new(), dns }
    }

    /// Where to reach `name`.
    pub async fn resolve(&self, http: &reqwest::Client, name: &ServerName) -> Destination {
        if let Some(destination) = without_lookup(name.as_str()) {
            return destination;
        }
        // A delegated name resolves like a server name, without asking
        // `.well-known` again.
        let host = match self.well_known(http, name.as_str()).await {
            Some(delegated) => match without_lookup(&delegated) {
                Some(destination) => return destination,
                None => delegated,
            },
            None => name.as_str().to_owned(),
        };
        match self.srv(&host).await {
            Some((target, port)) => Destination { host, port, connect_to: Some(target) },
            None => Destination { host, port: 8448, connect_to: None },
        }
    }

    async fn srv(&self, host: &str) -> Option<SrvTarget> {
        if let Some(answer) = self.srv.fresh(host) {
            return answer;
        }
        let dns = self.dns.as_ref()?;
        let mut answer = None;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let query = format!("{service}.{host}.");
            let Ok(Ok(found)) = tokio::time::timeout(SRV_TIMEOUT, dns.srv_lookup(query)).await else {
                continue;
            };
            let records =
                found.iter().map(|r| (r.priority(), r.weight(), r.target().to_utf8(), r.port())).collect();
            answer = pick_srv(records);
            if answer.is_some() {
                break;
            }
        }
        self.srv.keep(host, answer.clone(), SRV_TTL);
        answer
    }

    async fn well_known(&self, http: &reqwest::Client, host: &str) -> Option<String> {
        if let Some(answer) = self.well_known.fresh(host) {
            return answer;
        }
        let answer = fetch_well_known(http, host).await;
        let ttl = if answer.is_some() { WELL_KNOWN_TTL } else { WELL_KNOWN_MISS_TTL };
        self.well_known.keep(host, answer.clone(), ttl);
        answer
    }
}

/// Answers per host, each trusted until it expires; expired ones are
/// dropped when the cache reaches `HOSTS_CACHED`.
struct TtlCache<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    /// The answer for `host`, if one is cached and still trusted.
    fn fresh(&self, host: &str) -> Option<V> {
        let entries = self.entries.lock().expect("resolver cache");
        entries.get(host).filter(|(until, _)| *until > Instant::now()).map(|(_, answer)| answer.clone())
    }

    fn keep(&self, host: &str, answer: V, ttl: Duration) {
        let mut entries = self.entries.lock().expect("resolver cache");
        if entries.len() >= HOSTS_CACHED {
            entries.retain(|_, (until, _)| *until > Instant::now());
        }
        entries.insert(host.to_owned(), (Instant::now() + ttl, answer));
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
        Some(Destination { host: host.into(), port, connect_to: None })
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
        assert_eq!(dest("::1", 1).unwrap().base_url(), "https://[::1]:1");
        assert_eq!(dest("a.test", 2).unwrap().base_url(), "https://a.test:2");
    }

    #[test]
    fn well_known_answers_are_checked() {
        let body = br#"{"m.server": "matrix.example.org:443"}"#;
        let server = parse_well_known(body).unwrap();
        assert_eq!(without_lookup(&server), dest("matrix.example.org", 443), "a delegated port decides");
        assert_eq!(parse_well_known(br#"{"m.server": "not a name!"}"#), None);
        assert_eq!(parse_well_known(b"<html>"), None);
        assert_eq!(parse_well_known(br#"{"m.server": 5}"#), None);
    }

    #[test]
    fn cached_answers_expire() {
        let cache: TtlCache<Option<String>> = TtlCache::new();
        assert_eq!(cache.fresh("a.test"), None, "nothing cached");
        cache.keep("a.test", Some("b.test".into()), Duration::from_secs(60));
        cache.keep("c.test", None, Duration::from_secs(60));
        assert_eq!(cache.fresh("a.test"), Some(Some("b.test".into())));
        assert_eq!(cache.fresh("c.test"), Some(None), "an absence is cached too");
        cache.keep("a.test", Some("b.test".into()), Duration::ZERO);
        assert_eq!(cache.fresh("a.test"), None, "an expired answer is asked again");
    }

    #[test]
    fn the_srv_record_with_the_lowest_priority_and_highest_weight_is_used() {
        let record = |priority, weight, target: &str, port| (priority, weight, target.to_owned(), port);
        let records = vec![
            record(20, 100, "backup.example.org.", 8448),
            record(10, 5, "light.example.org.", 8449),
            record(10, 50, "matrix.example.org.", 443),
        ];
        assert_eq!(pick_srv(records), Some(("matrix.example.org".to_owned(), 443)));
        assert_eq!(pick_srv(vec![record(0, 0, ".", 0)]), None, "`.`: no service here");
        assert_eq!(pick_srv(Vec::new()), None);
    }
}
