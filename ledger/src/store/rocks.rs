//! RocksDB store: one column family per [`Space`], durable batches through a synced WAL.
//!
//! Tuning (why): leaves are written once in key order and read rarely, so their column family
//! favours sequential writes and strong compression at the bottom; tiles and the two id indexes
//! are read on every proof or dedup check, so they get bloom filters (also in the memtable,
//! where most negative dedup lookups land) and share a block cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType,
    DBRecoveryMode, Env, ErrorKind, IngestExternalFileOptions, Options, ReadOptions, SstFileWriter,
    WriteBufferManager, WriteOptions,
};

use super::{Direction, Ingested, Store, StoreError, WriteBatch, WriteOp, check_ingestible};
use crate::layout::Space;

/// Engine knobs. Defaults suit a server; tests use [`RocksOptions::small_for_tests`].
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// RocksDB's memory budget: one block cache for all column families, to which the
    /// memtables are charged too (a write-buffer manager flushes the largest memtable once all
    /// of them together pass half of it). Without that charge each column family could hold
    /// up to four full memtables, so resident memory kept growing with the data long after
    /// the cache had filled (docs/reliability.md, "Soak").
    pub block_cache_bytes: usize,
    /// Memtable size per column family (a flush threshold; the total is bounded by the
    /// budget above).
    pub write_buffer_bytes: usize,
    /// Table files kept open; beyond that RocksDB's table cache closes the least recently
    /// used. Unbounded, descriptors and per-file reader memory grow with the data: keys that
    /// only increase (leaves, tiles, checkpoints, UUIDv7 event ids) make every flushed file a
    /// trivial move to the last level, so the file count is data size / flush size.
    pub max_open_files: u32,
    /// Background flush + compaction threads.
    pub background_jobs: i32,
    /// Run compactions at the lowest CPU and I/O priority (flushes keep normal priority).
    /// On a small machine a compaction otherwise takes a whole core from the group commit and
    /// the network threads for seconds at a time, which shows as acknowledgement-latency tails;
    /// compaction still gets every idle cycle, and RocksDB's write stalls bound how far it can
    /// fall behind.
    pub low_priority_compaction: bool,
    /// Flushes and compactions write (and compactions read) with `O_DIRECT`, bypassing the
    /// page cache, where the filesystem supports it (probed at open; otherwise buffered, with
    /// a warning). Buffered, their data reached the disk through the kernel's writeback
    /// threads, which carry neither the compaction threads' I/O priority nor any pacing, and
    /// the synced WAL write of every acknowledgement queued behind those bursts; direct, the
    /// background I/O is issued by the (low-priority) threads themselves. Measured on 2 cores
    /// at 50k events/s: fewer acknowledgements over 5 ms and a lower p99
    /// (docs/benchmarks.md, "Direct background I/O"). Reads for proofs and searches stay
    /// buffered.
    pub direct_io: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            max_open_files: 512,
            background_jobs: 2,
            low_priority_compaction: true,
            direct_io: true,
        }
    }
}

impl RocksOptions {
    /// Small buffers so that many test databases fit in memory side by side.
    pub fn small_for_tests() -> Self {
        RocksOptions {
            block_cache_bytes: 8 << 20,
            write_buffer_bytes: 4 << 20,
            max_open_files: 64,
            background_jobs: 1,
            low_priority_compaction: false,
            // As in production, so the test suites run the direct path where it is supported.
            direct_io: true,
        }
    }
}

/// The RocksDB-backed [`Store`].
pub struct RocksStore {
    db: DB,
    cache: Cache,
    path: PathBuf,
    direct_io: bool,
    /// Each column family's options, in [`Space::ALL`] order: table files for
    /// [`Store::ingest`] are built with them, so they match what a flush would write.
    cf_options: Vec<Options>,
    /// Where [`Store::ingest`] builds its table files ([`INGEST_DIR`] in the database
    /// directory, emptied at open); RocksDB moves them into the database.
    ingest_dir: PathBuf,
    ingest_files: AtomicU64,
}

/// Subdirectory of the database directory where ingested table files are built.
pub const INGEST_DIR: &str = "ingest.tmp";

/// RocksDB's own memory accounting, in bytes (exported as metrics; the soak compares it with
/// the process's resident memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RocksMemory {
    /// Active and unflushed immutable memtables of every column family.
    pub memtables: u64,
    /// Everything held by the block cache (data, index and filter blocks, and the memtable
    /// reservations charged to it).
    pub block_cache: u64,
    /// Part of the block cache pinned (in use by readers or pinned index/filter blocks).
    pub block_cache_pinned: u64,
    /// Table-reader memory outside the block cache (file metadata of open SST files).
    pub table_readers: u64,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

fn map_err(err: rocksdb::Error) -> StoreError {
    let text = err.to_string();
    match err.kind() {
        ErrorKind::Corruption => StoreError::Corruption(text),
        ErrorKind::IOError if text.contains("No space left") || text.contains("NoSpace") => {
            StoreError::NoSpace(text)
        }
        ErrorKind::IOError => StoreError::Io(text),
        _ if text.contains("No space left") => StoreError::NoSpace(text),
        _ => StoreError::Io(text),
    }
}

/// After a failed write-ahead-log write (disk full, I/O error) RocksDB puts the database in a
/// read-only background-error state and keeps returning that error for every write, even once
/// space is back: rust-rocksdb 0.25 and the C API expose no `Resume`, and its automatic
/// recovery does not cover WAL writes. Only reopening clears it, and a reopen is what the
/// ledger does on restart (reloading every log from the store, which also covers a refused
/// group whose WAL record did survive). So the error says what the operator must do.
/// docs/reliability.md "Storage faults".
fn write_failed(err: StoreError) -> StoreError {
    const RESTART: &str = " (the hot store refuses writes from now on: free space or fix the \
        device, then restart the server)";
    match err {
        StoreError::NoSpace(m) => StoreError::NoSpace(m + RESTART),
        StoreError::Io(m) => StoreError::Io(m + RESTART),
        other => other,
    }
}

fn table_options(cache: &Cache, bloom: bool) -> BlockBasedOptions {
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_block_size(16 << 10);
    // Partitioned index and filters: only the small top level must stay cached, so lookups
    // stay cheap even when the cache is much smaller than all filters together (a whole-file
    // filter of a large SST is hundreds of KiB and would be re-read on every miss).
    t.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    t.set_partition_filters(bloom);
    t.set_metadata_block_size(4096);
    t.set_cache_index_and_filter_blocks(true);
    t.set_cache_index_and_filter_blocks_with_high_priority(true);
    t.set_pin_top_level_index_and_filter(true);
    t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if bloom {
        t.set_bloom_filter(10.0, false);
        t.set_whole_key_filtering(true);
        t.set_optimize_filters_for_memory(true);
    }
    t
}

fn cf_options(space: Space, opts: &RocksOptions, cache: &Cache) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(opts.write_buffer_bytes);
    o.set_max_write_buffer_number(4);
    o.set_level_compaction_dynamic_level_bytes(true);
    match space {
        Space::Leaves => {
            // LZ4 from the first flush: flushing leaves uncompressed and compressing them when
            // they reached the bottom level wrote and read every leaf byte twice more (a 256 MB
            // compaction per four flushes); compressed once at flush, background writes drop by
            // a third and CPU per event does not grow (docs/benchmarks.md, "Direct background
            // I/O"). Long-term storage is Parquet + zstd in the warm and cold tiers.
            o.set_block_based_table_factory(&table_options(cache, false));
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Lz4);
        }
        Space::EventIds | Space::LeafHashes => {
            if space == Space::LeafHashes {
                // Uniformly random keys: a small memtable keeps the skiplist that every insert
                // searches in cache (measured +5–10 % ingest on 2 cores).
                o.set_write_buffer_size(opts.write_buffer_bytes.min(8 << 20));
            }
            o.set_block_based_table_factory(&table_options(cache, true));
            o.set_memtable_whole_key_filtering(true);
            o.set_memtable_prefix_bloom_ratio(0.05);
            // Random 16/32-byte ids do not compress.
            o.set_compression_type(DBCompressionType::None);
        }
        // Search index keys are hashes followed by a bucket, values varint deltas: nothing
        // worth compressing.
        Space::Tiles | Space::Fields => {
            if space == Space::Fields {
                // Five random keys per event: as for the leaf-hash index, a small memtable keeps
                // the skiplist every insert searches in cache (measured +6–24 % ingest with 8
                // appenders on 2 cores, docs/benchmarks.md).
                o.set_write_buffer_size(opts.write_buffer_bytes.min(8 << 20));
            }
            o.set_block_based_table_factory(&table_options(cache, true));
            o.set_compression_type(DBCompressionType::None);
        }
        Space::Meta | Space::Checkpoints => {
            o.set_block_based_table_factory(&table_options(cache, true));
            o.set_compression_type(DBCompressionType::Lz4);
        }
    }
    if let Some(merge) = super::merge_operator(space) {
        // Named in RocksDB's OPTIONS file; v1 is the posting-list union of
        // layout::merge_postings. A merge that fails (malformed value) makes the read or the
        // compaction report corruption.
        o.set_merge_operator_associative(
            &format!("auditledger.{}.v1", space.name()),
            move |key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands| {
                let ops: Vec<&[u8]> = operands.iter().collect();
                merge(key, existing, &ops)
            },
        );
    }
    o
}

impl RocksStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, opts: &RocksOptions) -> Result<RocksStore, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", path.display())))?;
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut db_opts = Options::default();
        // No stall: when the budget is passed the largest memtable is flushed; writers are not
        // blocked (the memtable count per column family still bounds the overshoot).
        db_opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
            opts.block_cache_bytes / 2,
            false,
            cache.clone(),
        ));
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_max_background_jobs(opts.background_jobs);
        db_opts.set_max_open_files(i32::try_from(opts.max_open_files).unwrap_or(i32::MAX));
        if opts.low_priority_compaction {
            let mut env = Env::new().map_err(map_err)?;
            env.lower_thread_pool_cpu_priority();
            env.lower_thread_pool_io_priority();
            db_opts.set_env(&env);
        }
        let direct_io = opts.direct_io && direct_io_supported(path);
        if opts.direct_io && !direct_io {
            tracing::warn!(
                path = %path.display(),
                "the filesystem refuses O_DIRECT: RocksDB flushes and compactions go through the page cache"
            );
        }
        if direct_io {
            db_opts.set_use_direct_io_for_flush_and_compaction(true);
            // Without the page cache nothing reads ahead for a compaction.
            db_opts.set_compaction_readahead_size(2 << 20);
        }
        // Spread WAL syncing so the per-batch fsync has less to flush.
        db_opts.set_wal_bytes_per_sync(1 << 20);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(4);
        // The group commit (synced) and the indexer (unsynced) write concurrently: pipelining
        // lets one's WAL write proceed while the other inserts into memtables.
        db_opts.set_enable_pipelined_write(true);
        // One thread inserts a write group's batches into the memtables, in order. Both writers
        // send key-sorted (indexer) or key-sequential (leaves, tiles) batches, and a serial
        // insert reuses the skiplist position of the previous key, where concurrent inserts
        // search from the top every time: measured +10 % appends with 8 appenders on 2 cores
        // (docs/benchmarks.md, "Posting lists and serial memtable inserts").
        db_opts.set_allow_concurrent_memtable_write(false);
        // Every write is synced, so after a crash only an unacknowledged tail record can be
        // torn; tolerate that, but refuse to open (instead of silently truncating, the default)
        // when a record in the middle of the WAL is corrupt.
        db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        let cf_opts: Vec<Options> = Space::ALL
            .iter()
            .map(|&s| cf_options(s, opts, &cache))
            .collect();
        let cfs = Space::ALL
            .iter()
            .zip(&cf_opts)
            .map(|(s, o)| ColumnFamilyDescriptor::new(s.name(), o.clone()));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
            let mapped = map_err(e);
            StoreError::Unusable(format!("opening RocksDB at {}: {mapped}", path.display()))
        })?;
        // Files left by an ingest that a crash interrupted were never part of the database.
        let ingest_dir = path.join(INGEST_DIR);
        if ingest_dir.exists() {
            std::fs::remove_dir_all(&ingest_dir)
                .map_err(|e| StoreError::Io(format!("emptying {}: {e}", ingest_dir.display())))?;
        }
        std::fs::create_dir_all(&ingest_dir)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", ingest_dir.display())))?;
        Ok(RocksStore {
            db,
            cache,
            path: path.to_owned(),
            direct_io,
            cf_options: cf_opts,
            ingest_dir,
            ingest_files: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether flushes and compactions use direct I/O (asked for and supported here).
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    fn cf(&self, space: Space) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Unusable(format!("column family {} missing", space.name())))
    }

    /// Entries in the column family's active and immutable (unflushed) memtables.
    fn memtable_entries(&self, cf: &rocksdb::ColumnFamily) -> u64 {
        [
            "rocksdb.num-entries-active-mem-table",
            "rocksdb.num-entries-imm-mem-tables",
        ]
        .iter()
        .map(|p| {
            self.db
                .property_int_value_cf(cf, *p)
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .sum()
    }

    /// Writes `batch` unsynced through the memtables and has the column family's memtable
    /// flushed in the background, so that the next ingest finds them empty; otherwise each
    /// run written through them would keep them non-empty and ingesting would not resume.
    fn write_and_flush_soon(
        &self,
        cf: &rocksdb::ColumnFamily,
        batch: WriteBatch,
    ) -> Result<(), StoreError> {
        self.write(batch, false)?;
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(false);
        self.db
            .flush_cf_opt(cf, &flush)
            .map_err(|e| write_failed(map_err(e)))
    }

    /// RocksDB's memory accounting now.
    pub fn memory(&self) -> RocksMemory {
        let sum = |name: &str| -> u64 {
            Space::ALL
                .iter()
                .filter_map(|&s| self.cf(s).ok())
                .filter_map(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
                .sum()
        };
        RocksMemory {
            memtables: sum("rocksdb.size-all-mem-tables"),
            block_cache: self.cache.get_usage() as u64,
            block_cache_pinned: self.cache.get_pinned_usage() as u64,
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// A RocksDB property of one column family (e.g. `rocksdb.estimate-num-keys`).
    pub fn property(&self, space: Space, name: &str) -> Option<String> {
        let cf = self.cf(space).ok()?;
        self.db.property_value_cf(cf, name).ok().flatten()
    }
}

/// Whether files in `dir` can be written with `O_DIRECT`: creates a probe file, writes one
/// aligned 4 KiB block through it and removes it. RocksDB would otherwise find out at the
/// first flush, and a failed flush stops every write.
fn direct_io_supported(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    let probe = dir.join(".direct-io-probe");
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)?;
        // O_DIRECT needs an aligned buffer: take the aligned block inside a larger one.
        let buffer = vec![0u8; 2 * BLOCK];
        let start = buffer.as_ptr().align_offset(BLOCK);
        file.write_all(&buffer[start..start + BLOCK])
    })();
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

impl Store for RocksStore {
    fn write(&self, batch: WriteBatch, durable: bool) -> Result<(), StoreError> {
        // RocksDB's batch format: a 12-byte header, then per operation a tag, a column family
        // id and two length-prefixed strings (~12 bytes besides the key and value).
        let mut wb =
            rocksdb::WriteBatch::with_capacity_bytes(12 + batch.bytes() + 12 * batch.len());
        for op in batch.ops() {
            match op {
                WriteOp::Put { space, key, value } => wb.put_cf(self.cf(space)?, key, value),
                WriteOp::Delete { space, key } => wb.delete_cf(self.cf(space)?, key),
                WriteOp::DeleteRange { space, start, end } => {
                    wb.delete_range_cf(self.cf(space)?, start, end)
                }
                WriteOp::Merge { space, key, value } => wb.merge_cf(self.cf(space)?, key, value),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        self.db
            .write_opt(wb, &wo)
            .map_err(|e| write_failed(map_err(e)))
    }

    /// Builds a table file of the batch with the column family's own options (bloom filter,
    /// compression) and has RocksDB move it in: no WAL record and no memtable insert. The
    /// ingest fsyncs the file and records it in the MANIFEST before returning; it lands in
    /// the lowest level it does not overlap (level 0 for random keys). While the column
    /// family's memtables hold entries (which the file would overlap) the batch is written
    /// through them instead, unsynced, and they are flushed in the background.
    fn ingest(&self, space: Space, batch: WriteBatch) -> Result<Ingested, StoreError> {
        check_ingestible(space, &batch)?;
        if batch.is_empty() {
            return Ok(Ingested::AsTable);
        }
        let cf = self.cf(space)?;
        let at = Space::ALL
            .iter()
            .position(|&s| s == space)
            .expect("every space is in Space::ALL");
        // A memtable overlapping the file would have to be flushed inside the ingest, with
        // every write of the database stopped until that flush is done (seconds on a busy
        // machine, behind other flushes). While the column family's memtables hold entries,
        // the batch goes through them instead; they empty at their next flush.
        if self.memtable_entries(cf) > 0 {
            self.write_and_flush_soon(cf, batch)?;
            return Ok(Ingested::Written);
        }
        let n = self.ingest_files.fetch_add(1, Ordering::Relaxed);
        let file = self.ingest_dir.join(format!("{}-{n}.sst", space.name()));
        let built = (|| {
            let mut writer = SstFileWriter::create(&self.cf_options[at]);
            writer.open(&file)?;
            for op in batch.ops() {
                match op {
                    WriteOp::Put { key, value, .. } => writer.put(key, value)?,
                    WriteOp::Merge { key, value, .. } => writer.merge(key, value)?,
                    WriteOp::Delete { .. } | WriteOp::DeleteRange { .. } => {
                        unreachable!("check_ingestible refuses deletes")
                    }
                }
            }
            writer.finish()
        })();
        let result = built.and_then(|()| {
            let mut io = IngestExternalFileOptions::default();
            io.set_move_files(true);
            // Refuse rather than flush with writes stopped (a write slipped in since the check).
            io.set_allow_blocking_flush(false);
            self.db.ingest_external_file_cf_opts(cf, &io, vec![&file])
        });
        if let Err(e) = result {
            // Gone already if RocksDB moved it in before failing; nothing else refers to it.
            let _ = std::fs::remove_file(&file);
            if self.memtable_entries(cf) > 0 {
                self.write_and_flush_soon(cf, batch)?;
                return Ok(Ingested::Written);
            }
            let e = map_err(e);
            return Err(match e {
                StoreError::Io(m) => {
                    StoreError::Io(format!("ingesting into {}: {m}", space.name()))
                }
                StoreError::NoSpace(m) => {
                    StoreError::NoSpace(format!("ingesting into {}: {m}", space.name()))
                }
                other => other,
            });
        }
        Ok(Ingested::AsTable)
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(space)?, key).map_err(map_err)
    }

    fn multi_get(
        &self,
        space: Space,
        keys: &[&[u8]],
        visit: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let cf = self.cf(space)?;
        // Keys already in order spare RocksDB its own sort of them; it trusts the flag, so it
        // is only set when they are.
        let sorted = keys.is_sorted();
        for (i, result) in self
            .db
            .batched_multi_get_cf(cf, keys.iter().copied(), sorted)
            .into_iter()
            .enumerate()
        {
            let value = result.map_err(map_err)?;
            visit(i, value.as_deref());
        }
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let cf = self.cf(space)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        match direction {
            Direction::Forward => it.seek(start),
            Direction::Reverse => it.seek_to_last(),
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !visit(k, v) {
                break;
            }
            match direction {
                Direction::Forward => it.next(),
                Direction::Reverse => it.prev(),
            }
        }
        it.status().map_err(map_err)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With its memtables empty, an ingest adds a table file and nothing to the
    /// memtable; once they hold entries, it writes through them (no file, no flush with
    /// writes stopped) and has them flushed, after which it ingests again. All read back the
    /// same, and leftover build files go at open.
    #[test]
    fn ingest_bypasses_the_memtable_unless_it_holds_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = RocksStore::open(&path, &RocksOptions::small_for_tests()).unwrap();
        let files = |store: &RocksStore| {
            store
                .db
                .live_files()
                .unwrap()
                .iter()
                .filter(|f| f.column_family_name == Space::LeafHashes.name())
                .count()
        };
        let cf_entries =
            |store: &RocksStore| store.memtable_entries(store.cf(Space::LeafHashes).unwrap());
        let run = |keys: std::ops::Range<u8>| {
            let mut b = WriteBatch::new();
            for k in keys {
                b.put(Space::LeafHashes, vec![k; 16], vec![k]);
            }
            b
        };
        assert_eq!(
            store.ingest(Space::LeafHashes, run(0..100)).unwrap(),
            Ingested::AsTable
        );
        assert_eq!((files(&store), cf_entries(&store)), (1, 0));
        let mut b = WriteBatch::new();
        b.put(Space::LeafHashes, vec![200; 16], vec![200]);
        store.write(b, false).unwrap();
        assert_eq!(
            store.ingest(Space::LeafHashes, run(100..150)).unwrap(),
            Ingested::Written
        );
        // Written through the memtable, which is then flushed in the background: once it is
        // empty, ingesting resumes.
        let mut waited = 0;
        while cf_entries(&store) > 0 && waited < 500 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        assert_eq!(
            (files(&store), cf_entries(&store)),
            (2, 0),
            "the memtable was flushed"
        );
        assert_eq!(
            store.ingest(Space::LeafHashes, run(150..160)).unwrap(),
            Ingested::AsTable
        );
        assert_eq!(
            (files(&store), cf_entries(&store)),
            (3, 0),
            "ingesting resumed"
        );
        for k in (0..160).chain([200]) {
            assert_eq!(
                store.get(Space::LeafHashes, &[k; 16]).unwrap(),
                Some(vec![k]),
                "key {k}"
            );
        }
        std::fs::write(path.join(INGEST_DIR).join("leaf_hashes-9.sst"), b"partial").unwrap();
        drop(store);
        let store = RocksStore::open(&path, &RocksOptions::small_for_tests()).unwrap();
        assert_eq!(std::fs::read_dir(path.join(INGEST_DIR)).unwrap().count(), 0);
        assert_eq!(
            store.get(Space::LeafHashes, &[42; 16]).unwrap(),
            Some(vec![42])
        );
    }

    /// RocksDB's checksums (WAL records, table blocks) use the CPU's CRC32C instructions
    /// (`.cargo/config.toml` compiles it with SSE4.2): in software they cost 5 % of ingest
    /// CPU. RocksDB reports which it was built with in its info log at open.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn checksums_use_the_cpus_crc32c_instructions() {
        let dir = tempfile::tempdir().unwrap();
        let _store = RocksStore::open(dir.path(), &RocksOptions::small_for_tests()).unwrap();
        let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("Fast CRC32 supported:"))
            .expect("RocksDB's info log names its CRC32C");
        assert!(
            line.ends_with("Fast CRC32 supported: Supported on x86"),
            "RocksDB was compiled without SSE4.2 (CXXFLAGS in .cargo/config.toml not applied?): {line}"
        );
    }

    /// The RocksDB OPTIONS file of the open database at `dir`.
    fn options_file(dir: &Path) -> String {
        let path = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .max()
            .expect("an OPTIONS file");
        std::fs::read_to_string(path).unwrap()
    }

    /// Direct background I/O is probed, configured as reported, and flushed and compacted
    /// data reads back byte for byte through it; the probe leaves nothing behind.
    #[test]
    fn direct_io_is_probed_and_its_files_read_back() {
        assert!(!direct_io_supported(Path::new("/nonexistent/auditledger")));
        for wanted in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let opts = RocksOptions {
                direct_io: wanted,
                ..RocksOptions::small_for_tests()
            };
            let store = RocksStore::open(dir.path(), &opts).unwrap();
            assert_eq!(store.direct_io(), wanted && direct_io_supported(dir.path()));
            assert!(!dir.path().join(".direct-io-probe").exists());
            let configured = format!(
                "use_direct_io_for_flush_and_compaction={}",
                store.direct_io()
            );
            assert!(
                options_file(dir.path()).contains(&configured),
                "{configured}"
            );
            // Three flushed files of leaves (odd sizes, so nothing is block-aligned), then
            // one compaction over them.
            let value = |i: u32| vec![(i % 251) as u8; 300 + (i % 7) as usize];
            for file in 0..3u32 {
                let mut b = WriteBatch::new();
                for i in file * 1000..(file + 1) * 1000 {
                    b.put(Space::Leaves, i.to_be_bytes(), value(i));
                }
                store.write(b, true).unwrap();
                store.db.flush_cf(store.cf(Space::Leaves).unwrap()).unwrap();
            }
            store.db.compact_range_cf(
                store.cf(Space::Leaves).unwrap(),
                None::<&[u8]>,
                None::<&[u8]>,
            );
            for i in (0..3000u32).step_by(37) {
                let got = store.get(Space::Leaves, &i.to_be_bytes()).unwrap();
                assert_eq!(got, Some(value(i)), "leaf {i}");
            }
        }
    }

    /// Acknowledged data must never vanish silently: a corrupt WAL record that is not the torn
    /// tail of a crash makes opening fail.
    #[test]
    fn corrupt_wal_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RocksOptions::small_for_tests();
        {
            let store = RocksStore::open(dir.path(), &opts).unwrap();
            for i in 0..4u8 {
                let mut b = WriteBatch::new();
                b.put(Space::Leaves, vec![i], vec![i; 1000]);
                store.write(b, true).unwrap();
            }
        }
        let wal = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .expect("a WAL file");
        let mut bytes = std::fs::read(&wal).unwrap();
        assert!(bytes.len() > 4000, "WAL holds the four writes");
        // Inside the second of four ~1 KB records.
        let at = bytes.len() / 3;
        bytes[at] ^= 0xff;
        std::fs::write(&wal, bytes).unwrap();
        let err = RocksStore::open(dir.path(), &opts).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("corrupt"), "{err}");
    }

    /// Memtables are charged to the block cache, so the one configured budget bounds both; the
    /// accounting the server exports sees them.
    #[test]
    fn memtables_count_against_the_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &RocksOptions::small_for_tests()).unwrap();
        let before = store.memory();
        for i in 0..256u32 {
            let mut b = WriteBatch::new();
            b.put(Space::Leaves, i.to_be_bytes(), vec![7; 8 << 10]);
            store.write(b, false).unwrap();
        }
        let after = store.memory();
        assert!(
            after.memtables >= before.memtables + (1 << 20),
            "2 MiB written, memtables {before:?} → {after:?}"
        );
        // Nothing was read, so everything in the cache is the memtables' reservation.
        assert!(
            after.block_cache >= after.memtables / 2,
            "memtables not charged to the block cache: {after:?}"
        );
    }
}
