//! The homeserver's logic, one module per concern. Handlers in the API crate
//! call these services; services own their tables and talk to storage.
//!
//! Dependencies between services are passed explicitly when a service is
//! built, so the graph stays visible (see `Services::build`).

pub mod account_data;
pub mod accounts;
pub mod appservices;
pub mod backup;
mod deactivation;
pub mod delayed;
pub mod devices;
pub mod e2ee;
pub mod ephemeral;
pub mod event_stream;
pub mod federation;
pub mod filters;
pub mod guests;
mod locks;
pub mod media;
mod monitoring;
pub mod outgoing;
pub mod peek;
pub mod presence;
pub mod profile;
pub mod push;
pub mod rate_limits;
pub mod room_deletion;
pub mod rooms;
pub mod search;
mod server_notices;
mod storage_error;
pub mod streams;
pub mod sync;
pub mod to_device;
pub mod upgrade_carry;
pub mod user_directory;
pub mod voip;

use std::sync::Arc;

use estuary_core::{Config, Result};
use estuary_storage::Db;

pub use accounts::Accounts;

/// Every service of a running server. Built once at startup and shared
/// (behind an `Arc`) with the request handlers; there is no global state.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Db,
    pub accounts: Arc<Accounts>,
    pub appservices: Arc<appservices::Appservices>,
    pub profile: Arc<profile::Profiles>,
    pub rooms: Arc<rooms::Rooms>,
    pub filters: filters::Filters,
    pub account_data: Arc<account_data::AccountData>,
    pub streams: Arc<streams::Streams>,
    pub sync: sync::Sync,
    pub push: Arc<push::PushRules>,
    pub presence: Arc<presence::Presence>,
    pub outgoing: Arc<outgoing::Outgoing>,
    pub federation: Arc<federation::Federation>,
    pub to_device: Arc<to_device::ToDevice>,
    pub e2ee: Arc<e2ee::E2ee>,
    pub devices: devices::Devices,
    pub peek: Arc<peek::Peek>,
    pub event_stream: event_stream::EventStream,
    pub delayed: Arc<delayed::DelayedEvents>,
    pub media: media::Media,
    pub search: search::Search,
    pub user_directory: user_directory::UserDirectory,
    pub backup: Arc<backup::Backup>,
    pub ephemeral: Arc<ephemeral::Ephemeral>,
    pub rate_limits: rate_limits::RateLimits,
    pub room_deletions: room_deletion::RoomDeletions,
}

impl Services {
    /// Whether the database takes writes now (`GET /health`): one small
    /// row of `global` is written, as any acknowledged write is.
    pub fn check_health(&self) -> Result<()> {
        use storage_error::StorageResultExt;
        let global: estuary_storage::Table<String, String> = self.db.table("global").db()?;
        global.put(&"health_checked_at".to_owned(), &estuary_core::time::now_millis().to_string()).db()
    }

    pub fn build(config: Arc<Config>, db: Db) -> Result<Self> {
        let accounts = Arc::new(Accounts::new(config.clone(), &db)?);
        let profile = Arc::new(profile::Profiles::new(&db, accounts.clone())?);
        let highest = [
            rooms::Rooms::highest_stream(&db)?,
            account_data::AccountData::highest_stream(&db)?,
            ephemeral::Ephemeral::highest_stream(&db)?,
            presence::Presence::highest_stream(&db)?,
            to_device::ToDevice::highest_stream(&db)?,
            e2ee::E2ee::highest_stream(&db)?,
            streams::Streams::stored_high_water(&db)?,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let streams = Arc::new(streams::Streams::new(highest));
        let account_data = Arc::new(account_data::AccountData::new(&db, streams.clone())?);
        let key = Arc::new(rooms::load_or_create_signing_key(&db)?);
        let federation_client = Arc::new(federation::FederationClient::new(&config, key.clone())?);
        let appservices = Arc::new(appservices::Appservices::new(config.clone(), &db, accounts.clone())?);
        let outgoing =
            Arc::new(outgoing::Outgoing::new(&config, &db, federation_client.clone(), appservices.clone())?);
        let push = Arc::new(push::PushRules::new(account_data.clone(), &db, outgoing.clone(), &config)?);
        let rooms = Arc::new(rooms::Rooms::new(
            config.clone(),
            &db,
            rooms::RoomsDeps {
                profiles: profile.clone(),
                streams: streams.clone(),
                push: push.clone(),
                key: key.clone(),
                outgoing: outgoing.clone(),
                appservices: appservices.clone(),
            },
        )?);
        rooms.index_open_rooms_once()?;
        let ephemeral = Arc::new(ephemeral::Ephemeral::new(
            config.clone(),
            &db,
            streams.clone(),
            rooms.clone(),
            outgoing.clone(),
        )?);

        let presence = Arc::new(presence::Presence::new(
            config.clone(),
            &db,
            streams.clone(),
            rooms.clone(),
            outgoing.clone(),
        )?);
        let to_device = Arc::new(to_device::ToDevice::new(
            &db,
            streams.clone(),
            accounts.clone(),
            appservices.clone(),
            outgoing.clone(),
        )?);
        let e2ee = Arc::new(e2ee::E2ee::new(
            config.clone(),
            &db,
            streams.clone(),
            accounts.clone(),
            rooms.clone(),
            outgoing.clone(),
            appservices.clone(),
        )?);
        let server_keys = federation::ServerKeys::new(
            &db,
            config.server_name.clone(),
            key,
            config.trusted_key_servers.clone(),
        )?;
        let federation = Arc::new(federation::Federation::new(
            config.clone(),
            federation_client.clone(),
            server_keys,
            federation::FederationDeps {
                rooms: rooms.clone(),
                ephemeral: ephemeral.clone(),
                accounts: accounts.clone(),
                e2ee: e2ee.clone(),
                to_device: to_device.clone(),
                outgoing: outgoing.clone(),
                presence: presence.clone(),
            },
        ));
        let sliding_connections = Arc::new(sync::connections::Connections::default());
        let sync = sync::Sync::new(sync::SyncSources {
            connections: sliding_connections.clone(),
            rooms: rooms.clone(),
            account_data: account_data.clone(),
            ephemeral: ephemeral.clone(),
            streams: streams.clone(),
            push: push.clone(),
            presence: presence.clone(),
            to_device: to_device.clone(),
            e2ee: e2ee.clone(),
        });
        let devices = devices::Devices::new(
            &db,
            accounts.clone(),
            e2ee.clone(),
            to_device.clone(),
            push.clone(),
            rooms.clone(),
            sliding_connections,
        )?;
        let peek = Arc::new(peek::Peek::new(peek::PeekSources {
            rooms: rooms.clone(),
            streams: streams.clone(),
            account_data: account_data.clone(),
            presence: presence.clone(),
            ephemeral: ephemeral.clone(),
        }));
        let event_stream = event_stream::EventStream::new(event_stream::EventStreamSources {
            rooms: rooms.clone(),
            streams: streams.clone(),
            account_data: account_data.clone(),
            ephemeral: ephemeral.clone(),
            presence: presence.clone(),
            peek: peek.clone(),
        });
        let delayed = Arc::new(delayed::DelayedEvents::new(config.clone(), &db, rooms.clone())?);
        let media = media::Media::new(config.clone(), &db, federation_client.clone())?;
        let search = search::Search::new(rooms.clone());
        let user_directory = user_directory::UserDirectory::new(
            config.clone(),
            accounts.clone(),
            profile.clone(),
            rooms.clone(),
        );
        Ok(Self {
            user_directory,
            search,
            media,
            delayed,
            peek,
            event_stream,
            devices,
            backup: Arc::new(backup::Backup::new(&db)?),
            e2ee,
            to_device,
            outgoing,
            federation,
            presence,
            push,
            sync,
            ephemeral,
            appservices,
            profile,
            rooms,
            filters: filters::Filters::new(&db)?,
            rate_limits: rate_limits::RateLimits::new(&config, &db)?,
            room_deletions: room_deletion::RoomDeletions::new(&db)?,
            account_data,
            streams,
            accounts,
            config,
            db,
        })
    }

    /// Work to do once at startup, before serving: create the appservices'
    /// bots, announce the first-run registration token when the server has
    /// no account yet.
    pub async fn on_startup(&self) -> Result<()> {
        self.appservices.ensure_bots().await?;
        self.accounts.announce_first_run_token()
    }

    /// Start the background workers (the outgoing queue, delayed events,
    /// the memory report). Needs a tokio runtime.
    pub fn start_workers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![self.outgoing.spawn_worker(), self.delayed.spawn_worker(), self.spawn_memory_report()]
    }

    /// What the caches hold, against their budget: logged at debug once a
    /// minute.
    fn spawn_memory_report(&self) -> tokio::task::JoinHandle<()> {
        let (db, budget, rooms, push) =
            (self.db.clone(), self.config.memory_budget(), self.rooms.clone(), self.push.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let rocks = db.memory_usage();
                let (snapshots, snapshot_bytes) = rooms.state_cache_usage();
                let (cached_events, cached_event_bytes) = rooms.event_cache_usage();
                tracing::debug!(
                    block_cache = rocks.block_cache,
                    block_cache_pinned = rocks.block_cache_pinned,
                    block_cache_budget = budget.block_cache,
                    memtables = rocks.memtables,
                    memtables_budget = budget.memtables,
                    snapshots,
                    snapshot_bytes,
                    snapshot_budget = budget.state_cache,
                    cached_events,
                    cached_event_bytes,
                    event_cache_budget = budget.event_cache,
                    push_rulesets = push.cached_count(),
                    "memory"
                );
            }
        })
    }
}
