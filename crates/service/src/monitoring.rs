//! Figures read when Prometheus scrapes: RocksDB's, the outgoing queue's,
//! the caches' and the rate limits'. Counters of events (persisted events,
//! outgoing failures, requests) are recorded where they happen.

use metrics::{counter, gauge};

use crate::Services;

impl Services {
    /// Set every gauge that is read rather than counted. Cheap: RocksDB
    /// properties and in-memory sizes, no scan.
    pub fn record_metrics(&self) {
        let rocks = self.db.statistics();
        gauge!("estuary_rocksdb_block_cache_usage_bytes").set(rocks.block_cache_bytes as f64);
        gauge!("estuary_rocksdb_memtable_bytes").set(rocks.memtable_bytes as f64);
        gauge!("estuary_rocksdb_pending_compaction_bytes").set(rocks.pending_compaction_bytes as f64);
        gauge!("estuary_rocksdb_sst_file_bytes").set(rocks.sst_file_bytes as f64);
        gauge!("estuary_rocksdb_table_readers_bytes").set(rocks.table_reader_bytes as f64);
        gauge!("estuary_outgoing_queue_jobs").set(self.db.estimated_rows("destinationseq_job") as f64);
        let (snapshots, snapshot_bytes) = self.rooms.state_cache_usage();
        gauge!("estuary_state_cache_entries").set(snapshots as f64);
        gauge!("estuary_state_cache_bytes").set(snapshot_bytes as f64);
        let (events, event_bytes) = self.rooms.event_cache_usage();
        gauge!("estuary_event_cache_entries").set(events as f64);
        gauge!("estuary_event_cache_bytes").set(event_bytes as f64);
        gauge!("estuary_push_rule_cache_entries").set(self.push.cached_count() as f64);
        for (limit, rejected) in self.rate_limits.rejections() {
            counter!("estuary_rate_limit_rejections_total", "limit" => limit).absolute(rejected);
        }
    }
}
