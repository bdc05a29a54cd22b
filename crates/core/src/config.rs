//! Estuary's configuration: one struct, its defaults, and the loader that
//! merges a TOML file with `ESTUARY_<KEY>` environment overrides.
//!
//! Every option is documented in `conf/estuary.toml`; a unit test keeps that
//! file and this struct in step.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Serialize};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "ESTUARY_";

/// Estuary's own INFO lines (`estuary`, `estuary_api`, … share the prefix),
/// warnings from everything else.
pub const DEFAULT_LOG: &str = "warn,estuary=info";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after `:` in user IDs. Cannot change later.
    pub server_name: OwnedServerName,
    /// Address to listen on.
    pub address: IpAddr,
    /// Port to listen on (client and federation API).
    pub port: u16,
    /// Where RocksDB keeps its files.
    pub database_path: PathBuf,
    /// fsync the write-ahead log on every write. Off: acknowledged writes
    /// survive a crash of the process (`kill -9`) but not of the machine.
    pub database_sync_writes: bool,
    /// The memory Estuary's caches may hold together, in MiB: RocksDB's
    /// block cache and memtables and Estuary's own caches are cut from it
    /// (`MemoryBudget`). The process uses this plus its working memory.
    pub memory_budget_mb: u64,
    /// Anyone may register an account.
    pub allow_registration: bool,
    /// When set, registration also requires this token (`m.login.registration_token`).
    pub registration_token: Option<String>,
    /// A secret that lets a holder create accounts (admins too) through
    /// `/_synapse/admin/v1/register`, as Synapse's `register_new_matrix_user`
    /// and test harnesses do. Unset: that endpoint is off.
    pub registration_shared_secret: Option<String>,
    /// Registration requires a registration token that admins create with
    /// the admin API (`/_synapse/admin/v1/registration_tokens`).
    pub registration_requires_token: bool,
    /// Allow guest accounts (`/register?kind=guest`).
    pub allow_guest_access: bool,
    /// Largest request body accepted, in bytes (413 `M_TOO_LARGE` above).
    pub max_request_size: u64,
    /// Lifetime of access tokens issued to clients that asked for a refresh
    /// token, in seconds. Tokens issued without refresh never expire.
    pub refreshable_access_token_lifetime: u64,
    /// Log filter (tracing `EnvFilter` syntax). The default is Estuary's own
    /// INFO lines and only warnings from its dependencies (ruma's state
    /// resolution logs at INFO on every event).
    pub log: String,
    /// Log format: `pretty` (human) or `json` (one object per line).
    pub log_format: LogFormat,
    /// Base URL advertised in `/.well-known/matrix/client`. Defaults to
    /// `http(s)://<server_name>:<port>`.
    pub well_known_client: Option<String>,
    /// Delegated `host:port` advertised in `/.well-known/matrix/server`. Unset: 404.
    pub well_known_server: Option<OwnedServerName>,
    /// Room version for new rooms.
    pub default_room_version: RoomVersionId,
    /// PEM certificate chain; with `tls_private_key_path`, the listener speaks HTTPS.
    pub tls_certificate_path: Option<PathBuf>,
    /// PEM private key for `tls_certificate_path`.
    pub tls_private_key_path: Option<PathBuf>,
    /// Track and share presence (online/unavailable/offline). Off: presence
    /// updates are accepted and ignored, everyone appears offline.
    pub presence: bool,
    /// Application service (bridge) registrations loaded at startup: YAML
    /// files, or directories whose `*.yaml`/`*.yml` files are each one.
    /// Admins can also add some at runtime (`/_estuary/admin/v1/appservices`).
    pub appservice_registrations: Vec<PathBuf>,
    /// TURN server URIs handed to clients for calls (`/voip/turnServer`).
    /// Empty: no TURN, and the endpoint answers `{}`.
    pub turn_uris: Vec<String>,
    /// Shared secret of the TURN server's REST-API mode (coturn
    /// `static-auth-secret`): credentials are minted per user and expire.
    pub turn_shared_secret: Option<String>,
    /// Static TURN credentials, when the TURN server has no shared secret.
    pub turn_username: Option<String>,
    pub turn_password: Option<String>,
    /// Lifetime of minted TURN credentials, in seconds (returned as `ttl`).
    pub turn_user_lifetime: u64,
    /// Whether guests get TURN credentials.
    pub turn_allow_guests: bool,
    /// MatrixRTC foci (MSC4143), e.g. a LiveKit service, advertised in
    /// `/.well-known/matrix/client` and `/rtc/transports`.
    pub rtc_foci: Vec<RtcFocus>,
    /// Most delayed events (MSC4140) one user may have scheduled at once.
    pub max_delayed_events_per_user: u64,
    /// Longest delay a delayed event may ask for, in seconds.
    pub max_event_delay: u64,
    /// Where uploaded files live (by content hash). Unset: a `media` folder
    /// beside the database folder.
    pub media_path: Option<PathBuf>,
    /// Largest upload accepted, in bytes (413 `M_TOO_LARGE` above).
    pub max_upload_size: u64,
    /// Media uploaded before this time (unix seconds) stays available on the
    /// legacy unauthenticated `/_matrix/media/v3/download|thumbnail`
    /// endpoints. Unset: those endpoints serve no local media (spec v1.11).
    pub legacy_media_before: Option<u64>,
    /// Serve URL previews (`/media/preview_url`).
    pub url_preview: bool,
    /// Language of the full-text search stemmer (Snowball: english, french,
    /// german, spanish, …; `none` to index words as they are).
    pub search_language: String,
    /// Who `/user_directory/search` finds: `false` (the default) users who
    /// share a room with the searcher or are in a public room; `true` every
    /// local user.
    pub user_directory_search_all_users: bool,
    /// Addresses URL previews may reach even though they are private,
    /// loopback or link-local (CIDR or single IP), e.g. `["10.0.0.5/32"]`.
    pub url_preview_ip_allowlist: Vec<String>,
    /// Take part in federation: serve the Server-Server API and talk to
    /// other servers. Off: this server is an island.
    pub allow_federation: bool,
    /// A second listener, meant for other servers, on `address`, over HTTPS
    /// with the main listener's certificate (so only when TLS is
    /// configured); it serves the same API as the main listener. Other
    /// servers connect to 8448 unless told otherwise. The main listener
    /// serves federation too, for deployments behind a TLS-terminating
    /// proxy with `well_known_server` delegation. Unset or
    /// equal to `port` or 0: no second listener.
    pub federation_port: Option<u16>,
    /// Notary servers asked for another server's signing keys when that
    /// server cannot be reached directly.
    pub trusted_key_servers: Vec<OwnedServerName>,
    /// Extra PEM files of certificate authorities trusted for every outgoing
    /// request (federation, appservices, push gateways: a private test
    /// network's CA), besides the built-in roots.
    pub federation_trusted_ca_paths: Vec<PathBuf>,
    /// Let outgoing federation reach loopback, private and reserved
    /// addresses (test networks only: on a public server it would let
    /// anyone make this server probe its own network).
    pub federation_allow_private_addresses: bool,
    /// Take the client's address from the first `X-Forwarded-For` entry
    /// (behind a reverse proxy that sets it), for per-address rate limits
    /// and the last-seen address of devices. Off: the connection's peer.
    pub x_forwarded: bool,
    /// Localpart of the system user that sends server notices
    /// (`/_synapse/admin/v1/send_server_notice`) into each user's notices
    /// room. Its user ID cannot be registered by anyone.
    pub server_notices_localpart: String,
    /// Name of the notices rooms.
    pub server_notices_room_name: String,
    /// Serve Prometheus metrics (`process_*`, Synapse's request metrics,
    /// Estuary's own). Off by default.
    pub metrics_enabled: bool,
    /// Address of the metrics listener (with `metrics_port`).
    pub metrics_address: IpAddr,
    /// A separate listener for metrics at `/metrics` (and
    /// `/_synapse/metrics`), on `metrics_address`. Unset: metrics are served
    /// at `/_synapse/metrics` on the main listener.
    pub metrics_port: Option<u16>,
    /// Rate limits on. Off: no request is ever refused with 429 (tests,
    /// benchmarks, conformance runs).
    pub rc_enabled: bool,
    /// Events a user sends (messages, state, redactions), per user.
    pub rc_message: RateLimit,
    /// Registrations, per client address.
    pub rc_registration: RateLimit,
    /// Registration token validity checks, per client address.
    pub rc_registration_token_validity: RateLimit,
    /// Login attempts: per client address, per account, and failed ones per account.
    pub rc_login: LoginRateLimits,
    /// Joins, per user: to rooms this server is in, and to rooms it must join over federation.
    pub rc_joins: JoinRateLimits,
    /// Invites: per room, per invited user and per inviter.
    pub rc_invites: InviteRateLimits,
    /// Media uploads, per user.
    pub rc_media_create: RateLimit,
}

/// A token bucket: `burst_count` actions at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst_count: u32,
}

impl RateLimit {
    pub const fn new(per_second: f64, burst_count: u32) -> Self {
        Self { per_second, burst_count }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoginRateLimits {
    pub address: RateLimit,
    pub account: RateLimit,
    pub failed_attempts: RateLimit,
}

impl Default for LoginRateLimits {
    fn default() -> Self {
        Self {
            address: RateLimit::new(0.003, 5),
            account: RateLimit::new(0.003, 5),
            failed_attempts: RateLimit::new(0.17, 3),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JoinRateLimits {
    pub local: RateLimit,
    pub remote: RateLimit,
}

impl Default for JoinRateLimits {
    fn default() -> Self {
        Self { local: RateLimit::new(0.1, 10), remote: RateLimit::new(0.01, 10) }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InviteRateLimits {
    pub per_room: RateLimit,
    pub per_user: RateLimit,
    pub per_issuer: RateLimit,
}

impl Default for InviteRateLimits {
    fn default() -> Self {
        Self {
            per_room: RateLimit::new(0.3, 10),
            per_user: RateLimit::new(0.003, 5),
            per_issuer: RateLimit::new(0.3, 10),
        }
    }
}

/// One MatrixRTC focus: its type (`livekit`) and service URL.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RtcFocus {
    #[serde(rename = "type")]
    pub kind: String,
    pub livekit_service_url: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".try_into().expect("valid server name"),
            address: IpAddr::from([127, 0, 0, 1]),
            port: 8008,
            database_path: PathBuf::from("./estuary-data"),
            database_sync_writes: false,
            memory_budget_mb: 32,
            allow_registration: false,
            registration_token: None,
            registration_requires_token: false,
            registration_shared_secret: None,
            allow_guest_access: false,
            max_request_size: 20 * 1024 * 1024,
            refreshable_access_token_lifetime: 300,
            log: DEFAULT_LOG.to_owned(),
            log_format: LogFormat::Pretty,
            well_known_client: None,
            well_known_server: None,
            default_room_version: RoomVersionId::V12,
            tls_certificate_path: None,
            tls_private_key_path: None,
            presence: true,
            appservice_registrations: Vec::new(),
            turn_uris: Vec::new(),
            turn_shared_secret: None,
            turn_username: None,
            turn_password: None,
            turn_user_lifetime: 3600,
            turn_allow_guests: true,
            rtc_foci: Vec::new(),
            max_delayed_events_per_user: 100,
            max_event_delay: 24 * 3600,
            media_path: None,
            max_upload_size: 50 * 1024 * 1024,
            legacy_media_before: None,
            url_preview: true,
            search_language: "english".to_owned(),
            user_directory_search_all_users: false,
            url_preview_ip_allowlist: Vec::new(),
            allow_federation: true,
            federation_port: Some(8448),
            trusted_key_servers: vec!["matrix.org".try_into().expect("valid server name")],
            federation_trusted_ca_paths: Vec::new(),
            federation_allow_private_addresses: false,
            x_forwarded: false,
            server_notices_localpart: "server".to_owned(),
            server_notices_room_name: "Server Notices".to_owned(),
            metrics_enabled: false,
            metrics_address: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            metrics_port: None,
            // Synapse's defaults.
            rc_enabled: true,
            rc_message: RateLimit::new(0.2, 10),
            rc_registration: RateLimit::new(0.17, 3),
            rc_registration_token_validity: RateLimit::new(0.1, 5),
            rc_login: LoginRateLimits::default(),
            rc_joins: JoinRateLimits::default(),
            rc_invites: InviteRateLimits::default(),
            rc_media_create: RateLimit::new(10.0, 50),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Load from an optional TOML file, then apply `ESTUARY_*` variables from `env`.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                    origin: format!(" in {}", path.display()),
                    message: e.to_string(),
                })?;
                (table, format!(" in {}", path.display()))
            }
            None => (toml::Table::new(), String::new()),
        };
        let overrides = apply_env_overrides(&mut table, env)?;
        let origin = if overrides.is_empty() {
            origin
        } else {
            format!("{origin} (environment overrides: {})", overrides.join(", "))
        };
        // Re-serialise so the deserialiser reports the offending key and line.
        let merged = toml::to_string(&table)
            .map_err(|e| ConfigError::Invalid { origin: origin.clone(), message: e.to_string() })?;
        let config: Config = toml::from_str(&merged)
            .map_err(|e| ConfigError::Invalid { origin: origin.clone(), message: e.to_string() })?;
        config.validate().map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.memory_budget_mb < 8 {
            return Err("`memory_budget_mb` must be at least 8".into());
        }
        if self.tls_certificate_path.is_some() != self.tls_private_key_path.is_some() {
            return Err("`tls_certificate_path` and `tls_private_key_path` must be set together".into());
        }
        if self.registration_shared_secret.as_deref() == Some("") {
            return Err("`registration_shared_secret` must not be empty".into());
        }
        if self.registration_token.as_deref() == Some("") {
            return Err("`registration_token` must not be empty".into());
        }
        if self.turn_shared_secret.is_some() && (self.turn_username.is_some() || self.turn_password.is_some())
        {
            return Err("set either `turn_shared_secret` or `turn_username`/`turn_password`, not both".into());
        }
        if self.turn_username.is_some() != self.turn_password.is_some() {
            return Err("`turn_username` and `turn_password` must be set together".into());
        }
        for (name, limit) in self.rate_limits() {
            if !(limit.per_second > 0.0 && limit.per_second.is_finite()) || limit.burst_count == 0 {
                return Err(format!("`{name}` needs a per_second above 0 and a burst_count of at least 1"));
            }
        }
        if ruma::UserId::parse_with_server_name(self.server_notices_localpart.as_str(), &self.server_name)
            .is_err()
        {
            return Err("`server_notices_localpart` is not a valid user ID localpart".into());
        }
        if self.max_request_size < 1024 {
            return Err("`max_request_size` must be at least 1024 bytes".into());
        }
        Ok(())
    }

    /// Every rate limit with its configuration key.
    pub fn rate_limits(&self) -> [(&'static str, RateLimit); 12] {
        [
            ("rc_message", self.rc_message),
            ("rc_registration", self.rc_registration),
            ("rc_registration_token_validity", self.rc_registration_token_validity),
            ("rc_login.address", self.rc_login.address),
            ("rc_login.account", self.rc_login.account),
            ("rc_login.failed_attempts", self.rc_login.failed_attempts),
            ("rc_joins.local", self.rc_joins.local),
            ("rc_joins.remote", self.rc_joins.remote),
            ("rc_invites.per_room", self.rc_invites.per_room),
            ("rc_invites.per_user", self.rc_invites.per_user),
            ("rc_invites.per_issuer", self.rc_invites.per_issuer),
            ("rc_media_create", self.rc_media_create),
        ]
    }

    /// The media folder: `media_path`, or `media` beside the database folder.
    pub fn media_dir(&self) -> PathBuf {
        self.media_path.clone().unwrap_or_else(|| self.database_path.with_file_name("media"))
    }

    /// Whether the listener serves HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_certificate_path.is_some()
    }

    /// The client base URL clients should use.
    pub fn client_base_url(&self) -> String {
        match &self.well_known_client {
            Some(url) => url.clone(),
            None => {
                let scheme = if self.tls_enabled() { "https" } else { "http" };
                let host = self.server_name.host();
                format!("{scheme}://{host}:{}", self.port)
            }
        }
    }
}

/// Apply `ESTUARY_<KEY>` variables (nested keys joined with `__`) onto `table`.
/// Values parse as TOML literals (`8008`, `true`, `["a"]`) and fall back to strings.
/// Returns the names of the variables applied.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let vars: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    let mut applied = Vec::new();
    for (name, raw) in vars {
        let path: Vec<String> =
            name[ENV_PREFIX.len()..].split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid {
                origin: String::new(),
                message: format!("environment variable {name} does not name a key"),
            });
        }
        let value = parse_env_value(&raw);
        let mut cursor = &mut *table;
        for segment in &path[..path.len() - 1] {
            let entry =
                cursor.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = entry.as_table_mut().ok_or_else(|| ConfigError::Invalid {
                origin: String::new(),
                message: format!("environment variable {name}: `{segment}` is not a table"),
            })?;
        }
        cursor.insert(path[path.len() - 1].clone(), value);
        applied.push(name);
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Wrapper {
        v: toml::Value,
    }
    toml::from_str::<Wrapper>(&format!("v = {raw}"))
        .map(|w| w.v)
        .unwrap_or_else(|_| toml::Value::String(raw.to_owned()))
}

/// How `memory_budget_mb` is shared out, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// RocksDB's block cache (data, index and filter blocks).
    pub block_cache: usize,
    /// All RocksDB memtables together (one write-buffer manager).
    pub memtables: usize,
    /// Estuary's cache of room state snapshots.
    pub state_cache: usize,
    /// Estuary's cache of recently read events.
    pub event_cache: usize,
    /// Estuary's smaller caches (push rules, URL previews, …).
    pub other_caches: usize,
}

impl Config {
    /// The memory budget's shares: reads repeat most on the block cache,
    /// memtables only need to absorb writes between flushes.
    pub fn memory_budget(&self) -> MemoryBudget {
        let total = (self.memory_budget_mb as usize) << 20;
        MemoryBudget {
            block_cache: total / 100 * 35,
            memtables: total / 100 * 25,
            state_cache: total / 100 * 20,
            event_cache: total / 100 * 10,
            other_caches: total / 100 * 10,
        }
    }

    /// Every top-level key, including optional ones that serialise to nothing.
    pub fn documented_keys() -> &'static [&'static str] {
        &[
            "server_name",
            "address",
            "port",
            "database_path",
            "database_sync_writes",
            "memory_budget_mb",
            "allow_registration",
            "registration_token",
            "registration_requires_token",
            "registration_shared_secret",
            "allow_guest_access",
            "max_request_size",
            "refreshable_access_token_lifetime",
            "log",
            "log_format",
            "well_known_client",
            "well_known_server",
            "default_room_version",
            "tls_certificate_path",
            "tls_private_key_path",
            "presence",
            "appservice_registrations",
            "turn_uris",
            "turn_shared_secret",
            "turn_username",
            "turn_password",
            "turn_user_lifetime",
            "turn_allow_guests",
            "rtc_foci",
            "max_delayed_events_per_user",
            "max_event_delay",
            "media_path",
            "max_upload_size",
            "legacy_media_before",
            "url_preview",
            "url_preview_ip_allowlist",
            "search_language",
            "user_directory_search_all_users",
            "allow_federation",
            "federation_port",
            "trusted_key_servers",
            "federation_trusted_ca_paths",
            "federation_allow_private_addresses",
            "x_forwarded",
            "server_notices_localpart",
            "server_notices_room_name",
            "metrics_enabled",
            "metrics_address",
            "metrics_port",
            "rc_enabled",
            "rc_message",
            "rc_registration",
            "rc_registration_token_validity",
            "rc_login",
            "rc_joins",
            "rc_invites",
            "rc_media_create",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn embedded_default_needs_no_file() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config.server_name.as_str(), "localhost");
        assert_eq!(config.port, 8008);
        assert!(!config.allow_registration);
        assert_eq!(config.client_base_url(), "http://localhost:8008");
    }

    #[test]
    fn env_overrides_typed_values() {
        let config = Config::load(
            None,
            env(&[
                ("ESTUARY_PORT", "9000"),
                ("ESTUARY_ALLOW_REGISTRATION", "true"),
                ("ESTUARY_SERVER_NAME", "example.org"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.port, 9000);
        assert!(config.allow_registration);
        assert_eq!(config.server_name.as_str(), "example.org");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = Config::load(None, env(&[("ESTUARY_NO_SUCH_KEY", "1")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no_such_key"), "{text}");
        assert!(text.contains("ESTUARY_NO_SUCH_KEY"), "{text}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let dir = std::env::temp_dir().join(format!("estuary-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "port = \"eighty\"\n").unwrap();
        let text = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(text.contains("port"), "{text}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The configuration the Complement image runs with (`complement/`) is
    /// one Estuary accepts.
    #[test]
    fn complement_config_parses() {
        let config: Config = toml::from_str(include_str!("../../../complement/estuary.toml"))
            .expect("complement/estuary.toml parses");
        config.validate().expect("complement/estuary.toml is valid");
    }

    /// `conf/estuary.toml` documents every option: it must parse, and every
    /// key of the struct must appear in it.
    #[test]
    fn example_config_documents_every_key() {
        let example = include_str!("../../../conf/estuary.toml");
        let _: Config = toml::from_str(example).expect("conf/estuary.toml parses");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let uncommented: String =
            example.lines().map(|l| l.trim_start_matches('#').trim_start()).collect::<Vec<_>>().join("\n");
        for key in Config::documented_keys() {
            assert!(
                uncommented.lines().any(|l| l.starts_with(&format!("{key} ="))),
                "conf/estuary.toml does not document `{key}`"
            );
        }
        for key in defaults.keys() {
            assert!(Config::documented_keys().contains(&key.as_str()), "{key} missing from list");
        }
    }
}
