//! Application services (bridges): their registrations and the namespaces
//! they claim. Registrations come from the files named in
//! `appservice_registrations` and from server admins at runtime (kept in
//! `appserviceid_registration`); both live in one registry that is swapped
//! whole when it changes, so readers never wait on a lock for long.
//!
//! - `http`: what Estuary asks an appservice (transactions, ping, queries,
//!   third-party lookups).
//! - Which appservices receive which events is decided in the append path
//!   (`rooms/appservice_interest.rs`), from the namespaces compiled here.

pub mod http;
mod lookups;

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use estuary_core::{Config, Error, Result, error::ErrorKind};
use estuary_storage::{Db, Table, codec::Json};
use regex::RegexSet;
use ruma::{OwnedUserId, RoomAliasId, RoomId, UserId, api::appservice::Registration};
use serde::Serialize;
use serde_json::Value as JsonValue;

use crate::{accounts::Accounts, storage_error::StorageResultExt};

/// Where a registration came from: the config file (changed by editing it
/// and restarting) or an admin at runtime (removable at runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Database,
}

/// One kind of namespace (users, aliases or rooms), compiled once.
struct Namespace {
    all: RegexSet,
    exclusive: RegexSet,
}

impl Namespace {
    fn compile(id: &str, what: &str, list: &[ruma::api::appservice::Namespace]) -> Result<Self> {
        // Namespaces are whole-string matches.
        let anchored = |exclusive_only: bool| {
            RegexSet::new(
                list.iter()
                    .filter(|ns| !exclusive_only || ns.exclusive)
                    .map(|ns| format!("^(?:{})$", ns.regex)),
            )
            .map_err(|e| Error::bad_json(format!("appservice {id}: invalid {what} regex: {e}")))
        };
        Ok(Self { all: anchored(false)?, exclusive: anchored(true)? })
    }

    fn matches(&self, text: &str) -> bool {
        self.all.is_match(text)
    }

    fn claims(&self, text: &str) -> bool {
        self.exclusive.is_match(text)
    }
}

/// One registration with its namespaces compiled.
pub struct Appservice {
    pub registration: Registration,
    pub source: Source,
    /// The user `sender_localpart` names (the bridge bot).
    pub bot: OwnedUserId,
    /// `receive_ephemeral`, or the MSC2409 name older bridges set.
    pub receive_ephemeral: bool,
    /// `org.matrix.msc3202`: the bridge encrypts through its transactions.
    /// Its users' to-device messages (MSC2409), device list changes and
    /// one-time-key counts (MSC3202) go to it instead of to a sync.
    pub device_extensions: bool,
    users: Namespace,
    aliases: Namespace,
    rooms: Namespace,
}

impl Appservice {
    fn new(registration: Registration, raw: &JsonValue, source: Source, config: &Config) -> Result<Self> {
        let id = registration.id.clone();
        let bot = UserId::parse(format!("@{}:{}", registration.sender_localpart, config.server_name))
            .map_err(|e| Error::bad_json(format!("appservice {id}: invalid sender_localpart: {e}")))?;
        let namespaces = &registration.namespaces;
        Ok(Self {
            users: Namespace::compile(&id, "user", &namespaces.users)?,
            aliases: Namespace::compile(&id, "alias", &namespaces.aliases)?,
            rooms: Namespace::compile(&id, "room", &namespaces.rooms)?,
            receive_ephemeral: registration.receive_ephemeral
                || raw["de.sorunome.msc2409.push_ephemeral"].as_bool() == Some(true),
            device_extensions: raw["org.matrix.msc3202"].as_bool() == Some(true),
            bot,
            source,
            registration,
        })
    }

    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user_id` is in this appservice's user namespaces (or is its bot).
    pub fn is_user_in_namespace(&self, user_id: &UserId) -> bool {
        user_id == self.bot || self.users.matches(user_id.as_str())
    }

    pub fn is_alias_in_namespace(&self, alias: &RoomAliasId) -> bool {
        self.aliases.matches(alias.as_str())
    }

    pub fn is_room_in_namespace(&self, room_id: &RoomId) -> bool {
        self.rooms.matches(room_id.as_str())
    }

    /// The queue destination of this appservice's transactions.
    pub fn destination(&self) -> String {
        crate::outgoing::appservice_destination(self.id())
    }
}

/// Every registration at one moment.
#[derive(Default)]
pub struct Registry {
    pub all: Vec<Arc<Appservice>>,
    by_token: HashMap<String, usize>,
}

impl Registry {
    fn build(all: Vec<Arc<Appservice>>) -> Result<Self> {
        let mut by_token = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (index, appservice) in all.iter().enumerate() {
            if !ids.insert(appservice.id().to_owned()) {
                return Err(Error::invalid_param(format!(
                    "an appservice with ID {:?} is already registered",
                    appservice.id()
                )));
            }
            if by_token.insert(appservice.registration.as_token.clone(), index).is_some() {
                return Err(Error::invalid_param(format!(
                    "appservice {:?} uses the as_token of another appservice",
                    appservice.id()
                )));
            }
        }
        Ok(Self { all, by_token })
    }
}

pub struct Appservices {
    config: Arc<Config>,
    accounts: Arc<Accounts>,
    appserviceid_registration: Table<String, Json<JsonValue>>,
    current: RwLock<Arc<Registry>>,
    /// Bumped at every change, so caches of who is interested in what
    /// (`rooms/appservice_interest.rs`) know when to start over.
    generation: AtomicU64,
    pub(crate) http: http::AppserviceClient,
    /// Protocol descriptions (`lookups.rs`): name → (when asked, description).
    protocol_cache: std::sync::Mutex<HashMap<String, (std::time::Instant, JsonValue)>>,
}

impl Appservices {
    /// Load the configured registrations, then the ones admins added; a
    /// broken file or a duplicate ID or token stops startup.
    pub fn new(config: Arc<Config>, db: &Db, accounts: Arc<Accounts>) -> Result<Self> {
        let table: Table<String, Json<JsonValue>> = db.table("appserviceid_registration").db()?;
        let mut all = Vec::new();
        for path in registration_files(&config.appservice_registrations)? {
            let raw = read_registration_file(&path)?;
            all.push(Arc::new(parse(raw, Source::Config, &config).map_err(|e| in_file(&path, e))?));
        }
        for (_, Json(raw)) in table.scan_raw_prefix(&[], usize::MAX).db()? {
            all.push(Arc::new(parse(raw, Source::Database, &config)?));
        }
        let registry = Registry::build(all)?;
        for appservice in &registry.all {
            tracing::info!(id = appservice.id(), source = ?appservice.source, "loaded appservice registration");
        }
        Ok(Self {
            http: http::AppserviceClient::new(&config)?,
            config,
            accounts,
            appserviceid_registration: table,
            current: RwLock::new(Arc::new(registry)),
            generation: AtomicU64::new(0),
            protocol_cache: Default::default(),
        })
    }

    /// Every registration now.
    pub fn registry(&self) -> Arc<Registry> {
        self.current.read().expect("appservice registry").clone()
    }

    pub fn is_empty(&self) -> bool {
        self.registry().all.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The appservice whose `as_token` this is.
    pub fn by_token(&self, token: &str) -> Option<Arc<Appservice>> {
        let registry = self.registry();
        registry.by_token.get(token).map(|&index| registry.all[index].clone())
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Appservice>> {
        self.registry().all.iter().find(|a| a.id() == id).cloned()
    }

    /// Create the bots of every registration that lacks one (at startup).
    pub async fn ensure_bots(&self) -> Result<()> {
        for appservice in &self.registry().all {
            self.ensure_bot(appservice).await?;
        }
        Ok(())
    }

    async fn ensure_bot(&self, appservice: &Appservice) -> Result<()> {
        if !self.accounts.exists(&appservice.bot)? {
            self.accounts.create_appservice_account(&appservice.bot).await?;
        }
        Ok(())
    }

    /// Register an appservice at runtime (an admin's request): checked like
    /// a configured one, kept in the database, in effect at once.
    pub async fn register(&self, raw: JsonValue) -> Result<Arc<Appservice>> {
        let appservice = Arc::new(parse(raw.clone(), Source::Database, &self.config)?);
        self.replace(|all| {
            all.push(appservice.clone());
            Ok(())
        })?;
        self.appserviceid_registration.put(&appservice.id().to_owned(), &Json(raw)).db()?;
        self.ensure_bot(&appservice).await?;
        tracing::info!(id = appservice.id(), "appservice registered at runtime");
        Ok(appservice)
    }

    /// Remove a runtime registration. What is queued for it stays queued
    /// (and is delivered if it is registered again).
    pub fn remove(&self, id: &str) -> Result<()> {
        self.replace(|all| {
            let index = all
                .iter()
                .position(|a| a.id() == id)
                .ok_or_else(|| Error::not_found(format!("No appservice with ID {id:?}")))?;
            if all[index].source == Source::Config {
                return Err(Error::invalid_param(
                    "This appservice is registered in the config file; remove it there and restart",
                ));
            }
            all.remove(index);
            Ok(())
        })?;
        self.appserviceid_registration.delete(&id.to_owned()).db()?;
        tracing::info!(id, "appservice registration removed");
        Ok(())
    }

    /// Change the registry under its write lock, checked as a whole.
    fn replace(&self, change: impl FnOnce(&mut Vec<Arc<Appservice>>) -> Result<()>) -> Result<()> {
        let mut current = self.current.write().expect("appservice registry");
        let mut all = current.all.clone();
        change(&mut all)?;
        *current = Arc::new(Registry::build(all)?);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Refuse a user ID that an appservice claims exclusively (unless that
    /// appservice is the one asking).
    pub fn check_not_exclusive(&self, user_id: &UserId, asking: Option<&Appservice>) -> Result<()> {
        self.check_unclaimed(asking, |a| a.users.claims(user_id.as_str()) || a.bot == user_id)
            .map_err(|()| exclusive("This user ID is reserved by an application service"))
    }

    /// Refuse an alias that an appservice claims exclusively (unless that
    /// appservice is the one asking).
    pub fn check_alias_not_exclusive(&self, alias: &RoomAliasId, asking: Option<&Appservice>) -> Result<()> {
        self.check_unclaimed(asking, |a| a.aliases.claims(alias.as_str()))
            .map_err(|()| exclusive("This alias is reserved by an application service"))
    }

    fn check_unclaimed(
        &self,
        asking: Option<&Appservice>,
        claims: impl Fn(&Appservice) -> bool,
    ) -> std::result::Result<(), ()> {
        let claimed =
            self.registry().all.iter().any(|a| claims(a) && asking.is_none_or(|me| me.id() != a.id()));
        if claimed { Err(()) } else { Ok(()) }
    }

    /// The appservice whose user namespace holds `user_id`, first registered first.
    pub fn for_user(&self, user_id: &UserId) -> Option<Arc<Appservice>> {
        self.registry().all.iter().find(|a| a.is_user_in_namespace(user_id)).cloned()
    }

    /// The appservice that handles `user_id`'s encryption through its
    /// transactions (MSC3202), if any.
    pub fn encrypting_for(&self, user_id: &UserId) -> Option<Arc<Appservice>> {
        self.for_user(user_id).filter(|a| a.device_extensions && a.registration.url.is_some())
    }

    pub fn for_alias(&self, alias: &RoomAliasId) -> Option<Arc<Appservice>> {
        self.registry().all.iter().find(|a| a.is_alias_in_namespace(alias)).cloned()
    }
}

fn exclusive(message: &str) -> Error {
    Error::matrix(400, ErrorKind::Exclusive, message)
}

/// Parse and check one registration.
fn parse(raw: JsonValue, source: Source, config: &Config) -> Result<Appservice> {
    let registration: Registration = serde_json::from_value(raw.clone())
        .map_err(|e| Error::bad_json(format!("invalid appservice registration: {e}")))?;
    if registration.id.is_empty() || registration.as_token.is_empty() || registration.hs_token.is_empty() {
        return Err(Error::bad_json("An appservice registration needs an id, an as_token and an hs_token"));
    }
    if let Some(url) = &registration.url
        && reqwest::Url::parse(url).is_err()
    {
        return Err(Error::bad_json(format!("appservice {}: invalid url {url:?}", registration.id)));
    }
    Appservice::new(registration, &raw, source, config)
}

/// A registration in YAML (the format bridges write), as JSON.
pub fn parse_yaml(text: &str) -> Result<JsonValue> {
    serde_yaml_ng::from_str(text).map_err(|e| Error::bad_json(format!("invalid registration YAML: {e}")))
}

fn read_registration_file(path: &Path) -> Result<JsonValue> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::internal(format!("cannot read appservice registration {}: {e}", path.display()))
    })?;
    parse_yaml(&text).map_err(|e| in_file(path, e))
}

fn in_file(path: &Path, err: Error) -> Error {
    Error::internal(format!("appservice registration {}: {err}", path.display()))
}

/// The registration files `appservice_registrations` names: files as they
/// are, directories as their `*.yaml` and `*.yml` files in name order.
fn registration_files(entries: &[impl AsRef<Path>]) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.as_ref();
        if !entry.is_dir() {
            files.push(entry.to_owned());
            continue;
        }
        let listing = std::fs::read_dir(entry)
            .map_err(|e| Error::internal(format!("cannot list {}: {e}", entry.display())))?;
        let mut found: Vec<_> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r##"
id: bridge
url: http://127.0.0.1:9999
as_token: as_secret
hs_token: hs_secret
sender_localpart: bridgebot
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@bridge_.*:example.org"
  aliases:
    - exclusive: false
      regex: "#bridge_.*:example.org"
  rooms:
    - exclusive: false
      regex: "!bridged:example.org"
"##;

    fn config() -> Config {
        Config { server_name: "example.org".try_into().unwrap(), ..Config::default() }
    }

    fn registry(yamls: &[&str]) -> Result<Registry> {
        let config = config();
        let all = yamls
            .iter()
            .map(|y| parse(parse_yaml(y).unwrap(), Source::Config, &config).map(Arc::new))
            .collect::<Result<_>>()?;
        Registry::build(all)
    }

    #[test]
    fn namespaces_are_whole_string() {
        let registry = registry(&[YAML]).unwrap();
        let bridge = &registry.all[0];
        assert!(bridge.is_user_in_namespace(&UserId::parse("@bridge_alice:example.org").unwrap()));
        assert!(bridge.is_user_in_namespace(&UserId::parse("@bridgebot:example.org").unwrap()));
        assert!(!bridge.is_user_in_namespace(&UserId::parse("@alice:example.org").unwrap()));
        assert!(!bridge.is_user_in_namespace(&UserId::parse("@xbridge_a:example.org").unwrap()));
        assert!(bridge.is_alias_in_namespace(&RoomAliasId::parse("#bridge_x:example.org").unwrap()));
        assert!(!bridge.is_alias_in_namespace(&RoomAliasId::parse("#x:example.org").unwrap()));
        assert!(bridge.is_room_in_namespace(&RoomId::parse("!bridged:example.org").unwrap()));
        assert!(bridge.receive_ephemeral, "the MSC2409 flag counts");
        assert!(bridge.users.claims("@bridge_alice:example.org"));
        assert!(!bridge.aliases.claims("#bridge_x:example.org"), "a non-exclusive namespace claims nothing");
    }

    #[test]
    fn duplicate_ids_and_tokens_are_refused() {
        let other_token = YAML.replace("as_secret", "as_other");
        let err = registry(&[YAML, &other_token]).err().unwrap();
        assert!(err.to_string().contains("already registered"), "{err}");
        let other_id = YAML.replace("id: bridge", "id: other");
        let err = registry(&[YAML, &other_id]).err().unwrap();
        assert!(err.to_string().contains("as_token"), "{err}");
        let bad_regex = YAML.replace("@bridge_.*", "@bridge_(");
        assert_eq!(registry(&[&bad_regex]).err().unwrap().errcode(), "M_BAD_JSON");
        let no_url = YAML.replace("url: http://127.0.0.1:9999", "url: null");
        assert!(registry(&[&no_url]).unwrap().all[0].registration.url.is_none());
    }
}
