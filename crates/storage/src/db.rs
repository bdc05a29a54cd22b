//! The database handle, opening, and atomic batches.

use std::{path::Path, sync::Arc};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Env, InfoLogger, LogLevel, Options,
    WriteBatch, WriteBufferManager, WriteOptions,
};

use crate::{Key, Table, Value, catalog::TABLES, codec::CodecError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the database at {path} is in use by another process (is another Estuary running?)")]
    Locked { path: String },
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("cannot open the database at {path}: {source}")]
    Open { path: String, source: rocksdb::Error },
    #[error("database error in table `{table}`: {source}")]
    Rocks { table: &'static str, source: rocksdb::Error },
    #[error("corrupt row in table `{table}`: {source}")]
    Codec { table: &'static str, source: CodecError },
    #[error("unknown table `{0}`: add it to storage::catalog::TABLES")]
    UnknownTable(&'static str),
}

#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// fsync the WAL on each write (survives machine crashes, not just process crashes).
    pub sync_writes: bool,
    /// Block cache size in bytes.
    pub cache_bytes: usize,
    /// All memtables together, in bytes (one write-buffer manager).
    pub memtable_bytes: usize,
    /// Called on RocksDB's own thread when it has finished a flush or a
    /// compaction, with what the job built (the new file's index and filter)
    /// already freed: the binary hands that thread's freed memory back to the
    /// system there, since the thread may then idle for minutes.
    pub after_background_job: Option<fn()>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { sync_writes: false, cache_bytes: 8 << 20, memtable_bytes: 8 << 20, after_background_job: None }
    }
}

struct Inner {
    rocks: rocksdb::DB,
    write_options: WriteOptions,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

/// What RocksDB holds in memory now, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct MemoryUsage {
    pub block_cache: usize,
    pub block_cache_pinned: usize,
    pub memtables: usize,
}

/// RocksDB's default environment with its compaction threads at the lowest
/// CPU and I/O priority. On a small machine a compaction after a burst of
/// writes otherwise takes a core from the requests for seconds; flushes (the
/// high-priority pool) keep their priority, so memtables still drain and
/// writes do not stall.
fn background_env() -> Result<Env, rocksdb::Error> {
    let mut env = Env::new()?;
    env.lower_thread_pool_cpu_priority();
    env.lower_thread_pool_io_priority();
    Ok(env)
}

/// RocksDB's log, into the server's: errors and warnings as such, the rest
/// (the options at open, every job, statistics) at trace level, not in a
/// LOG file of its own. RocksDB writes the event ending a flush or a
/// compaction from the thread that ran it, once the job's memory is freed,
/// which is where `after_background_job` runs.
fn info_logger(after_background_job: Option<fn()>) -> InfoLogger {
    InfoLogger::new_callback_logger(LogLevel::Info, move |level, message| {
        let message = message.trim_end();
        match level {
            LogLevel::Fatal | LogLevel::Error => tracing::error!(target: "rocksdb", "{message}"),
            LogLevel::Warn => tracing::warn!(target: "rocksdb", "{message}"),
            _ => tracing::trace!(target: "rocksdb", "{message}"),
        }
        if let Some(hook) = after_background_job
            && ends_background_job(message)
        {
            hook();
        }
    })
}

/// Whether a RocksDB log line is the event that ends a flush or a compaction
/// (its event log: `EVENT_LOG_v1 {"time_micros": …, "job": 7, "event":
/// "flush_finished", …}`).
fn ends_background_job(message: &str) -> bool {
    message.contains("EVENT_LOG_v1")
        && (message.contains(r#""event": "flush_finished""#)
            || message.contains(r#""event": "compaction_finished""#))
}

/// A handle to the open database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// Open (or create) the database at `path` with every table of the catalog.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<Self, StorageError> {
        let display = path.display().to_string();
        std::fs::create_dir_all(path)
            .map_err(|source| StorageError::CreateDir { path: display.clone(), source })?;
        let cache = Cache::new_lru_cache(options.cache_bytes);
        let mut table_options = BlockBasedOptions::default();
        table_options.set_block_cache(&cache);
        table_options.set_bloom_filter(10.0, false);
        table_options.set_cache_index_and_filter_blocks(true);

        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&table_options);
        // Many small tables: keep each memtable small, and its arena blocks
        // small, or every table that sees one write holds a 1 MiB block.
        // The total is capped by the write-buffer manager below.
        cf_options.set_write_buffer_size((options.memtable_bytes / 2).clamp(1 << 20, 8 << 20));
        cf_options.set_max_write_buffer_number(2);
        cf_options.set_arena_block_size(64 << 10);
        cf_options.set_compression_type(DBCompressionType::Lz4);
        cf_options.set_bottommost_compression_type(DBCompressionType::Zstd);

        let mut db_options = cf_options.clone();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_env(
            &background_env().map_err(|source| StorageError::Open { path: display.clone(), source })?,
        );
        db_options.set_info_logger(info_logger(options.after_background_job));
        // All memtables together stay under this, whatever the number of tables.
        let write_buffers = WriteBufferManager::new_write_buffer_manager(options.memtable_bytes, false);
        db_options.set_write_buffer_manager(&write_buffers);

        let descriptors = TABLES.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options.clone()));
        let rocks = rocksdb::DB::open_cf_descriptors(&db_options, path, descriptors).map_err(|source| {
            let text = source.to_string();
            if text.contains("lock") || text.contains("LOCK") {
                StorageError::Locked { path: display.clone() }
            } else {
                StorageError::Open { path: display.clone(), source }
            }
        })?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.sync_writes);
        Ok(Self { inner: Arc::new(Inner { rocks, write_options, cache, write_buffers }) })
    }

    /// A typed view of table `name` (which must be in the catalog).
    pub fn table<K: Key, V: Value>(&self, name: &'static str) -> Result<Table<K, V>, StorageError> {
        if self.inner.rocks.cf_handle(name).is_none() {
            return Err(StorageError::UnknownTable(name));
        }
        Ok(Table::new(self.clone(), name))
    }

    pub(crate) fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        // Tables are checked against the catalog when created, and every
        // catalog entry is opened, so the handle always exists.
        self.inner.rocks.cf_handle(name).expect("table opened from the catalog")
    }

    pub(crate) fn rocks(&self) -> &rocksdb::DB {
        &self.inner.rocks
    }

    /// Start a batch of writes that become visible together or not at all.
    pub fn batch(&self) -> Batch {
        Batch { db: self.clone(), inner: WriteBatch::default(), tables: Vec::new(), after_commit: Vec::new() }
    }

    /// RocksDB's memory now: block cache (and what is pinned in it) and memtables.
    pub fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage {
            block_cache: self.inner.cache.get_usage(),
            block_cache_pinned: self.inner.cache.get_pinned_usage(),
            memtables: self.inner.write_buffers.get_usage(),
        }
    }

    /// RocksDB's figures for monitoring: memory, compaction debt and size on disk.
    pub fn statistics(&self) -> DbStatistics {
        let sum = |property: &str| -> u64 {
            TABLES
                .iter()
                .filter_map(|name| {
                    self.inner.rocks.property_int_value_cf(self.cf(name), property).ok().flatten()
                })
                .sum()
        };
        DbStatistics {
            block_cache_bytes: self.inner.cache.get_usage() as u64,
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            sst_file_bytes: sum("rocksdb.total-sst-files-size"),
            table_reader_bytes: sum("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// RocksDB's estimate of a table's number of rows (cheap: no scan).
    pub fn estimated_rows(&self, table: &'static str) -> u64 {
        self.inner
            .rocks
            .property_int_value_cf(self.cf(table), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Flush memtables to disk (used at shutdown to shorten the next start).
    pub fn flush(&self) -> Result<(), StorageError> {
        for name in TABLES {
            self.inner
                .rocks
                .flush_cf(self.cf(name))
                .map_err(|source| StorageError::Rocks { table: name, source })?;
        }
        Ok(())
    }
}

/// RocksDB's figures (`Db::statistics`), in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct DbStatistics {
    pub block_cache_bytes: u64,
    pub memtable_bytes: u64,
    pub pending_compaction_bytes: u64,
    pub sst_file_bytes: u64,
    /// What the open SST files hold outside the block cache (their readers).
    pub table_reader_bytes: u64,
}

/// Writes to one or more tables, applied atomically by [`Batch::commit`].
pub struct Batch {
    db: Db,
    inner: WriteBatch,
    tables: Vec<&'static str>,
    /// Run once the writes are applied (caches forgetting what they change).
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl Batch {
    pub fn put<K: Key, V: Value>(&mut self, table: &Table<K, V>, key: &K, value: &V) {
        self.inner.put_cf(self.db.cf(table.name()), key.encode(), value.encode_value());
        self.note(table.name());
    }

    pub fn delete<K: Key, V: Value>(&mut self, table: &Table<K, V>, key: &K) {
        self.inner.delete_cf(self.db.cf(table.name()), key.encode());
        self.note(table.name());
    }

    fn note(&mut self, table: &'static str) {
        if !self.tables.contains(&table) {
            self.tables.push(table);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Run `hook` after the batch is committed; never if it is not.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(hook));
    }

    /// Apply every write of the batch atomically (and durably, see [`OpenOptions`]).
    pub fn commit(self) -> Result<(), StorageError> {
        let table = self.tables.first().copied().unwrap_or("batch");
        self.db
            .inner
            .rocks
            .write_opt(self.inner, &self.db.inner.write_options)
            .map_err(|source| StorageError::Rocks { table, source })?;
        for hook in self.after_commit {
            hook();
        }
        Ok(())
    }
}

impl Db {
    pub(crate) fn write_options(&self) -> &WriteOptions {
        &self.inner.write_options
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::{Db, OpenOptions, ends_background_job};

    /// The names of the threads `after_background_job` ran on.
    static JOB_THREADS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn record_job_thread() {
        let name = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
        JOB_THREADS.lock().unwrap().push(name.trim().to_owned());
    }

    /// Waits (at most 10 s) until the hook has run on a thread named `name`.
    fn wait_for_job_on(name: &str) {
        for _ in 0..1000 {
            if JOB_THREADS.lock().unwrap().iter().any(|thread| thread == name) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no job ended on {name}: {:?}", JOB_THREADS.lock().unwrap());
    }

    #[test]
    fn flushes_and_compactions_call_the_hook_on_their_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions { after_background_job: Some(record_job_thread), ..Default::default() };
        let db = Db::open(dir.path(), &options).unwrap();
        let table = db.table::<String, String>("global").unwrap();
        // Two overlapping files, so that compacting them is a real merge.
        for round in 0..2 {
            for n in 0..100 {
                table.put(&format!("key{n}"), &format!("value{round}")).unwrap();
            }
            db.flush().unwrap();
        }
        wait_for_job_on("rocksdb:high");
        db.rocks().compact_range_cf(db.cf("global"), None::<&[u8]>, None::<&[u8]>);
        wait_for_job_on("rocksdb:low");
        assert_eq!(table.get(&"key7".to_owned()).unwrap().as_deref(), Some("value1"));
    }

    #[test]
    fn only_the_events_ending_a_job_end_one() {
        let line =
            |event: &str| format!(r#"EVENT_LOG_v1 {{"time_micros": 1, "job": 3, "event": "{event}"}}"#);
        assert!(ends_background_job(&line("flush_finished")));
        assert!(ends_background_job(&line("compaction_finished")));
        assert!(!ends_background_job(&line("flush_started")));
        assert!(!ends_background_job(&line("table_file_creation")));
        assert!(!ends_background_job(r#"[default] "event": "flush_finished" quoted elsewhere"#));
    }
}
