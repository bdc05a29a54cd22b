//! RocksDB behind a small typed interface.
//!
//! - [`catalog`] declares every table (a RocksDB column family) as data.
//! - [`codec`] turns keys (tuples, big-endian integers) and values into bytes.
//! - [`Table`] is a typed view of one column family.
//! - [`Batch`] groups writes to several tables into one atomic write.
//!
//! Durability: the write-ahead log is always on, so every acknowledged write
//! survives a crash of the process; `sync_writes` adds an fsync per write for
//! machine crashes.

pub mod catalog;
pub mod codec;
mod db;
mod table;

pub use codec::{CodecError, Key, Value};
pub use db::{Batch, Db, DbStatistics, MemoryUsage, OpenOptions, StorageError};
pub use table::Table;
