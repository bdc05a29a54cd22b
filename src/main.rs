//! The `estuary` binary: command line, configuration, logging, the listener
//! (plain or TLS), signals, and wiring the crates together. No Matrix logic.

mod listener;
mod metrics;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use estuary_core::{Config, config::LogFormat};
use estuary_service::Services;
use estuary_storage::{Db, OpenOptions};

/// mimalloc, chosen by measurement (docs/performance.md): under the same
/// load glibc's per-thread arenas held five times the memory. Its `override`
/// feature routes RocksDB's C++ allocations here too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Give the system back what this worker thread freed, when it goes idle
/// (at most every 100 ms). mimalloc frees a thread's emptied pages, and the
/// blocks other threads freed into them, only when that thread next calls
/// it, so a worker idle after a large answer kept them: one initial sync
/// over 1,000 rooms left 34 MB resident for good (docs/performance.md).
fn return_freed_memory() {
    use std::{cell::Cell, time::Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|at| now.duration_since(at).as_millis() >= 100);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect_thread_heap();
    }
}

/// Hand the calling thread's freed pages back to the system now.
fn collect_thread_heap() {
    // SAFETY: mi_collect only walks and trims the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Keep transparent huge pages off for this process. Its heap is small and
/// partly used, and a huge page is resident as a whole once one byte of its
/// 2 MiB is touched: mimalloc asked for them on its heap, which made 14 MB
/// of the 17 MB resident at start, and 5 MB more after the benchmark
/// (docs/performance.md). The `no_thp` build of mimalloc no longer asks;
/// this covers systems that give every mapping huge pages
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`).
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory
    // map; it takes no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Positions in mimalloc.h's `mi_option_e` (v2), which libmimalloc-sys does
/// not name (a test checks their defaults).
const MI_ABANDONED_PAGE_PURGE: libmimalloc_sys::mi_option_t = 12;
const MI_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// mimalloc's purging, tuned before the server allocates much: freed memory
/// goes back to the system at once, not at the freeing thread's next call
/// after a delay. Threads that idle for long kept what they freed last: a
/// password hash's 19 MiB of argon2 memory on a blocking-pool thread (20 MB
/// after a single registration), and RocksDB's compaction thread the
/// index and filter it built for its last output file, which grow with the
/// database (the one-hour soak rose 7 MB, and is flat without the delay;
/// docs/performance.md). RocksDB's threads also collect after each job
/// (`after_background_job`), which keeps the soak nearly flat even with the
/// delay; without the delay, memory after the benchmark is lower still, at
/// no cost measured in time. `MIMALLOC_PURGE_DELAY` still overrides it.
fn tune_allocator() {
    use libmimalloc_sys::{mi_option_get, mi_option_set};
    // SAFETY: setting options only writes mimalloc's option table.
    unsafe {
        // Only where the enum is as expected (the multiplier's default is 10).
        if mi_option_get(MI_ARENA_PURGE_MULT) == 10 {
            mi_option_set(MI_ARENA_PURGE_MULT, 0);
            // Blocking-pool threads come and go: purge what an exiting one
            // leaves rather than keep it for a thread that may never come.
            mi_option_set(MI_ABANDONED_PAGE_PURGE, 1);
        }
        // Unless set in the environment (its default is 10 ms).
        if mi_option_get(MI_PURGE_DELAY) == 10 {
            mi_option_set(MI_PURGE_DELAY, 0);
        }
    }
}

/// Estuary, a Matrix homeserver.
///
/// With no arguments it runs on an embedded default configuration: server
/// name `localhost`, listening on 127.0.0.1:8008, data in ./estuary-data.
#[derive(Parser, Debug)]
#[command(name = "estuary", version, about, long_about)]
struct Args {
    /// Read configuration from this TOML file (see conf/estuary.toml).
    /// ESTUARY_<KEY> environment variables override its keys.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check the database's consistency (rooms, state snapshots, indexes)
    /// and print a JSON report; exits 1 if anything is wrong. Run it with
    /// the server stopped (a running server answers the same check at
    /// GET /_estuary/admin/v1/consistency).
    Check,
    /// Replace the server's signing key with a new one, with the server
    /// stopped. The old key stays in the key response's `old_verify_keys`,
    /// so other servers still verify what it signed.
    RotateSigningKey,
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    tune_allocator();
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(config) => Arc::new(config),
        Err(err) => {
            eprintln!("estuary: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(return_freed_memory)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("estuary: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        Some(Command::Check) => return check(config),
        Some(Command::RotateSigningKey) => return rotate_signing_key(&config),
        None => runtime.block_on(run(config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("estuary: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        server_name = %config.server_name,
        database = %config.database_path.display(),
        "starting Estuary"
    );
    let db = open(&config)?;
    let services = Arc::new(Services::build(config.clone(), db.clone())?);
    services.on_startup().await?;
    services.resume_room_deletions()?;
    let mut workers = services.start_workers();
    // Opening the database leaves freed garbage on this thread (RocksDB parses
    // its options file and builds, then drops, a default 32 MB block cache):
    // give it back before serving (1 MB of the resident set).
    collect_thread_heap();
    let mut app = estuary_api::app(services.clone());
    if config.metrics_enabled {
        let routes = metrics::routes(services.clone(), metrics::install()?);
        match config.metrics_port {
            Some(_) => workers.push(metrics::serve_separately(&config, routes).await?),
            None => app = routes.merge(app),
        }
    }
    let shutdown = shutdown_signal();
    listener::serve(&config, app, shutdown).await?;
    tracing::info!("shutting down");
    for worker in workers {
        worker.abort();
    }
    db.flush()?;
    Ok(())
}

/// `estuary check`: the consistency check on a stopped server's database.
fn check(config: Arc<Config>) -> ExitCode {
    let report = open(&config)
        .and_then(|db| Ok(Services::build(config.clone(), db)?))
        .and_then(|services| Ok(services.rooms.check_consistency()?));
    match report {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("estuary check: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// `estuary rotate-signing-key`: a new signing key on a stopped server.
fn rotate_signing_key(config: &Config) -> ExitCode {
    match open(config).and_then(|db| Ok(estuary_service::rooms::rotate_signing_key(&db)?)) {
        Ok((old, new)) => {
            println!("signing key rotated: {old} is now an old verify key, {new} signs from now on");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("estuary rotate-signing-key: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn open(config: &Config) -> anyhow::Result<Db> {
    let budget = config.memory_budget();
    let options = OpenOptions {
        sync_writes: config.database_sync_writes,
        cache_bytes: budget.block_cache,
        memtable_bytes: budget.memtables,
        after_background_job: Some(collect_thread_heap),
    };
    Ok(Db::open(&config.database_path, &options)?)
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.log).ok())
        .unwrap_or_else(|| EnvFilter::new(estuary_core::config::DEFAULT_LOG));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => {
            use std::io::IsTerminal;
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called (not when first polled), so a signal right after startup is caught.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {},
                    _ = terminate.recv() => {},
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::{mi_option_get, mi_option_max_segment_reclaim};

    /// If mimalloc's option enum moved, `tune_allocator` would set the wrong
    /// options: the positions it uses must hold their documented defaults.
    #[test]
    fn mimalloc_option_positions() {
        // SAFETY: reading options only reads mimalloc's option table.
        unsafe {
            assert_eq!(mi_option_get(mi_option_max_segment_reclaim), 10);
            assert_eq!(mi_option_get(super::MI_ABANDONED_PAGE_PURGE), 0);
            assert_eq!(mi_option_get(super::MI_ARENA_PURGE_MULT), 10);
            assert_eq!(mi_option_get(super::MI_PURGE_DELAY), 10);
        }
    }
}
