//! The key-value store under [`super::Db`]: what porch needs of one, and
//! the RocksDB implementation. `Db` adds the stream counter, positions in
//! flight, wake-ups and group commit on top, whatever the store.
//!
//! Calls are made on blocking threads (services run storage work through
//! `spawn_blocking`), not on the async executor's workers. So a store
//! whose client is asynchronous (TiKV's, FoundationDB's) fits behind this
//! trait as it is: its implementation blocks on its own runtime inside each
//! call, and nothing above changes.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use super::{Cf, Entry, StorageResult, u64_from_be};

/// One atomic group of changes.
#[derive(Default)]
pub struct Changes {
    changes: Vec<Change>,
}

pub enum Change {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Set a u64be value to `value` unless it holds a larger one already
    /// (the stream counter, written by batches that commit out of order).
    Raise {
        cf: Cf,
        key: Vec<u8>,
        value: u64,
    },
}

impl Changes {
    pub fn push(&mut self, change: Change) {
        self.changes.push(change);
    }
}

pub trait Backend: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;

    /// Entries from `from` (inclusive) on, in key order (`forward`) or
    /// reverse key order.
    fn iter_from<'a>(&'a self, cf: Cf, from: &[u8], forward: bool) -> Box<dyn Iterator<Item = Entry> + 'a>;

    /// The highest key of a column family.
    fn last_key(&self, cf: Cf) -> StorageResult<Option<Box<[u8]>>>;

    /// Apply `changes` atomically. Readers see them once this returns; they
    /// are durable once a later [`Backend::sync`] returns. The answer is
    /// the write's mark: marks grow with every write.
    fn write(&self, changes: Changes) -> StorageResult<u64>;

    /// Make every write so far durable; the highest mark this covers.
    fn sync(&self) -> StorageResult<u64>;

    /// The mark of the latest write.
    fn latest(&self) -> u64;
}

/// RocksDB, a column family per [`Cf`], LZ4-compressed; marks are its
/// sequence numbers, and a sync is a WAL fsync.
pub struct Rocks {
    db: DB,
}

impl Rocks {
    pub fn open(path: &Path) -> StorageResult<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            if *cf == Cf::Meta {
                cf_opts.set_merge_operator_associative("max_u64", max_u64_merge);
            }
            if matches!(cf, Cf::StateKeyIds | Cf::EventShortIds) {
                // Mostly point reads, many of them for keys never given an
                // id (a state without a room name): a bloom filter answers
                // those without reading a block.
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                cf_opts.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        Ok(Self { db: DB::open_cf_descriptors(&opts, path, cfs)? })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("every column family is created at open")
    }
}

impl Backend for Rocks {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn iter_from<'a>(&'a self, cf: Cf, from: &[u8], forward: bool) -> Box<dyn Iterator<Item = Entry> + 'a> {
        let direction = if forward { Direction::Forward } else { Direction::Reverse };
        Box::new(self.db.iterator_cf(self.cf(cf), IteratorMode::From(from, direction)).map(|item| Ok(item?)))
    }

    fn last_key(&self, cf: Cf) -> StorageResult<Option<Box<[u8]>>> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::End).next() {
            Some(item) => Ok(Some(item?.0)),
            None => Ok(None),
        }
    }

    fn write(&self, changes: Changes) -> StorageResult<u64> {
        let mut batch = WriteBatch::default();
        for change in changes.changes {
            match change {
                Change::Put { cf, key, value } => batch.put_cf(self.cf(cf), key, value),
                Change::Delete { cf, key } => batch.delete_cf(self.cf(cf), key),
                Change::Raise { cf, key, value } => batch.merge_cf(self.cf(cf), key, value.to_be_bytes()),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts)?;
        // Later writes may be counted in too: a sync to it covers ours.
        Ok(self.db.latest_sequence_number())
    }

    fn sync(&self) -> StorageResult<u64> {
        // Everything written so far is covered by this fsync.
        let covered = self.db.latest_sequence_number();
        self.db.flush_wal(true)?;
        Ok(covered)
    }

    fn latest(&self) -> u64 {
        self.db.latest_sequence_number()
    }
}

/// The stream counter's merge: the largest of all values.
fn max_u64_merge(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let max = existing.into_iter().chain(operands.iter()).map(u64_from_be).max().unwrap_or(0);
    Some(max.to_be_bytes().to_vec())
}
