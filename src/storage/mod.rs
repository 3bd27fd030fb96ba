//! The storage seam: a key-value store ([`Backend`]; RocksDB, a column
//! family per record kind) under the stream counter, positions in flight,
//! wake-ups and group commit. Everything above this module speaks in
//! column families, byte keys and serde values; nothing else touches
//! RocksDB.
//!
//! Keys join their parts with [`SEP`] (0xFF), a byte that never occurs in
//! UTF-8, so prefixes of Matrix identifiers cannot collide.

mod backend;
mod journal;
mod waiters;

pub use backend::{Backend, Change, Changes, Rocks};
pub use journal::{Journal, UserChanges};
pub use waiters::{Audience, Registration, Waiters};

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{RoomId, UserId};

use serde::{Serialize, de::DeserializeOwned};

pub const SEP: u8 = 0xFF;

/// Column families. The key format of each is documented in ARCHITECTURE.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    Meta,
    Users,
    AccessTokens,
    Devices,
    Pdus,
    Timeline,
    StateSnapshots,
    Rooms,
    RoomMembers,
    UserRooms,
    TxnIds,
    Aliases,
    AccountData,
    Receipts,
    Filters,
    PublicRooms,
    RegistrationTokens,
    UiaaSessions,
    NotificationCounts,
    Media,
    DeviceKeys,
    OneTimeKeys,
    FallbackKeys,
    CrossSigningKeys,
    KeyChanges,
    ToDevice,
    GuestRooms,
    GuestLinks,
    LinkTokens,
    ServerKeys,
    Outbox,
    RemoteInvites,
    OpenIdTokens,
    LoginTokens,
    PendingRedactions,
    Pushers,
    Notifications,
    BackupVersions,
    BackupKeys,
    Relations,
    ThreadRoots,
    SearchTerms,
    Reports,
    Invitations,
    InvitationTokens,
    Mails,
    StateKeyIds,
    StateKeysById,
    EventShortIds,
    EventIdsByShort,
}

impl Cf {
    pub const ALL: [Cf; 50] = [
        Cf::Meta,
        Cf::Users,
        Cf::AccessTokens,
        Cf::Devices,
        Cf::Pdus,
        Cf::Timeline,
        Cf::StateSnapshots,
        Cf::Rooms,
        Cf::RoomMembers,
        Cf::UserRooms,
        Cf::TxnIds,
        Cf::Aliases,
        Cf::AccountData,
        Cf::Receipts,
        Cf::Filters,
        Cf::PublicRooms,
        Cf::RegistrationTokens,
        Cf::UiaaSessions,
        Cf::NotificationCounts,
        Cf::Media,
        Cf::DeviceKeys,
        Cf::OneTimeKeys,
        Cf::FallbackKeys,
        Cf::CrossSigningKeys,
        Cf::KeyChanges,
        Cf::ToDevice,
        Cf::GuestRooms,
        Cf::GuestLinks,
        Cf::LinkTokens,
        Cf::ServerKeys,
        Cf::Outbox,
        Cf::RemoteInvites,
        Cf::OpenIdTokens,
        Cf::LoginTokens,
        Cf::PendingRedactions,
        Cf::Pushers,
        Cf::Notifications,
        Cf::BackupVersions,
        Cf::BackupKeys,
        Cf::Relations,
        Cf::ThreadRoots,
        Cf::SearchTerms,
        Cf::Reports,
        Cf::Invitations,
        Cf::InvitationTokens,
        Cf::Mails,
        Cf::StateKeyIds,
        Cf::StateKeysById,
        Cf::EventShortIds,
        Cf::EventIdsByShort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Users => "users",
            Cf::AccessTokens => "access_tokens",
            Cf::Devices => "devices",
            Cf::Pdus => "pdus",
            Cf::Timeline => "timeline",
            Cf::StateSnapshots => "state_snapshots",
            Cf::Rooms => "rooms",
            Cf::RoomMembers => "room_members",
            Cf::UserRooms => "user_rooms",
            Cf::TxnIds => "txn_ids",
            Cf::Aliases => "aliases",
            Cf::AccountData => "account_data",
            Cf::Receipts => "receipts",
            Cf::Filters => "filters",
            Cf::PublicRooms => "public_rooms",
            Cf::RegistrationTokens => "registration_tokens",
            Cf::UiaaSessions => "uiaa_sessions",
            Cf::NotificationCounts => "notification_counts",
            Cf::Media => "media",
            Cf::DeviceKeys => "device_keys",
            Cf::OneTimeKeys => "one_time_keys",
            Cf::FallbackKeys => "fallback_keys",
            Cf::CrossSigningKeys => "cross_signing_keys",
            Cf::KeyChanges => "key_changes",
            Cf::ToDevice => "to_device",
            Cf::GuestRooms => "guest_rooms",
            Cf::GuestLinks => "guest_links",
            Cf::LinkTokens => "link_tokens",
            Cf::ServerKeys => "server_keys",
            Cf::Outbox => "outbox",
            Cf::RemoteInvites => "remote_invites",
            Cf::OpenIdTokens => "openid_tokens",
            Cf::LoginTokens => "login_tokens",
            Cf::PendingRedactions => "pending_redactions",
            Cf::Pushers => "pushers",
            Cf::Notifications => "notifications",
            Cf::BackupVersions => "backup_versions",
            Cf::BackupKeys => "backup_keys",
            Cf::Relations => "relations",
            Cf::ThreadRoots => "thread_roots",
            Cf::SearchTerms => "search_terms",
            Cf::Reports => "reports",
            Cf::Invitations => "invitations",
            Cf::InvitationTokens => "invitation_tokens",
            Cf::Mails => "mails",
            Cf::StateKeyIds => "state_key_ids",
            Cf::StateKeysById => "state_keys_by_id",
            Cf::EventShortIds => "event_short_ids",
            Cf::EventIdsByShort => "event_ids_by_short",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored value in {cf} is corrupt: {err}")]
    Corrupt { cf: &'static str, err: serde_json::Error },
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A key and its value, as iterators yield them.
pub type Entry = StorageResult<(Box<[u8]>, Box<[u8]>)>;

const COUNT_KEY: &[u8] = b"stream_count";

#[derive(Default)]
struct InFlight {
    positions: BTreeSet<u64>,
    /// Released batches' audiences by their highest position, woken once
    /// every position up to it is released (a lower one may still be in
    /// flight, and a sync woken before could not report the change yet).
    wakes: Vec<(u64, Audience)>,
}

impl InFlight {
    fn safe(&self, current: u64) -> u64 {
        match self.positions.first() {
            Some(lowest) => lowest - 1,
            None => current,
        }
    }
}

pub struct Db {
    backend: Box<dyn Backend>,
    /// The stream position: every change that sync must see takes the next one.
    count: AtomicU64,
    /// Positions handed out whose batch is not written yet: readers must not
    /// report a position past the lowest of these, or a slower writer's
    /// change would be skipped.
    in_flight: Mutex<InFlight>,
    /// The syncs waiting for changes, woken by audience.
    waiters: Arc<Waiters>,
    /// The released batches' audiences, for readers that hold a position.
    journal: Journal,
    sync_writes: bool,
    /// The highest write mark known to be durable.
    synced: AtomicU64,
    /// Held by the one writer whose fsync covers everyone waiting behind it.
    sync_leader: Mutex<()>,
    /// Publishes `safe_count` whenever it may have moved, to wake syncs.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Db {
    /// The RocksDB database at `path`.
    pub fn open(path: &Path, sync_writes: bool) -> StorageResult<Self> {
        Self::with_backend(Box::new(Rocks::open(path)?), sync_writes)
    }

    pub fn with_backend(backend: Box<dyn Backend>, sync_writes: bool) -> StorageResult<Self> {
        let count = backend.get(Cf::Meta, COUNT_KEY)?.map(|v| u64_from_be(&v)).unwrap_or(0);
        let (changes, _) = tokio::sync::watch::channel(count);
        let synced = AtomicU64::new(backend.latest());
        Ok(Self {
            backend,
            count: AtomicU64::new(count),
            in_flight: Mutex::new(InFlight::default()),
            waiters: Arc::new(Waiters::default()),
            journal: Journal::new(count),
            sync_writes,
            synced,
            sync_leader: Mutex::new(()),
            changes,
        })
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.backend.get(cf, key)
    }

    pub fn get_json<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<T>> {
        self.get(cf, key)?.map(|v| decode(cf, &v)).transpose()
    }

    pub fn exists(&self, cf: Cf, key: &[u8]) -> StorageResult<bool> {
        Ok(self.get(cf, key)?.is_some())
    }

    /// A single put, outside any batch (for records that stand alone).
    pub fn put_json<T: Serialize>(&self, cf: Cf, key: &[u8], value: &T) -> StorageResult<()> {
        let mut batch = self.batch();
        batch.put_json(cf, key, value);
        batch.commit()
    }

    pub fn delete(&self, cf: Cf, key: &[u8]) -> StorageResult<()> {
        let mut batch = self.batch();
        batch.delete(cf, key);
        batch.commit()
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch { db: self, inner: Changes::default(), reserved: Vec::new(), audience: Audience::default() }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(&'a self, cf: Cf, prefix: &'a [u8]) -> impl Iterator<Item = Entry> + 'a {
        self.backend
            .iter_from(cf, prefix, true)
            .take_while(move |item| item.as_ref().map(|(k, _)| k.starts_with(prefix)).unwrap_or(true))
    }

    /// The highest key of a column family.
    pub fn last_key(&self, cf: Cf) -> StorageResult<Option<Box<[u8]>>> {
        self.backend.last_key(cf)
    }

    /// Keys from `from` (inclusive) in the given direction while they share `prefix`.
    pub fn scan_from<'a>(
        &'a self,
        cf: Cf,
        prefix: &'a [u8],
        from: &[u8],
        forward: bool,
    ) -> impl Iterator<Item = Entry> + 'a {
        self.backend
            .iter_from(cf, from, forward)
            .take_while(move |item| item.as_ref().map(|(k, _)| k.starts_with(prefix)).unwrap_or(true))
    }

    /// The highest stream position handed out.
    pub fn current_count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The highest position below which every change is written: what
    /// sync may report as `next_batch`.
    pub fn safe_count(&self) -> u64 {
        self.in_flight.lock().expect("in-flight set poisoned").safe(self.current_count())
    }

    fn reserve_count(&self) -> u64 {
        let mut in_flight = self.in_flight.lock().expect("in-flight set poisoned");
        let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        in_flight.positions.insert(count);
        count
    }

    fn release_counts(&self, counts: &[u64], audience: Audience) {
        let Some(highest) = counts.iter().max().copied() else { return };
        let ready = {
            let mut in_flight = self.in_flight.lock().expect("in-flight set poisoned");
            for count in counts {
                in_flight.positions.remove(count);
            }
            if !audience.is_empty() {
                in_flight.wakes.push((highest, audience));
            }
            let safe = in_flight.safe(self.current_count());
            let (mut ready, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut in_flight.wakes).into_iter().partition(|(at, _)| *at <= safe);
            in_flight.wakes = waiting;
            // Recorded before `safe` can be read past them (under the same lock), so a
            // reader that saw a position finds every change up to it.
            ready.sort_by_key(|(at, _)| *at);
            self.journal.record(ready.iter().cloned());
            ready
        };
        for (_, audience) in &ready {
            self.waiters.wake(audience);
        }
        self.publish();
    }

    /// Where syncs wait for the changes that concern them.
    pub fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    /// Which rooms and users recent changes concern.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Return once every write up to mark `sequence` is durable (with
    /// `database.sync_writes`). Group commit: writers that
    /// arrive while an fsync runs wait for it, and the first of them then
    /// syncs for all of them at once, so N concurrent writers pay about two
    /// fsyncs, not N.
    fn sync_to(&self, sequence: u64) -> StorageResult<()> {
        if !self.sync_writes || self.synced.load(Ordering::Acquire) >= sequence {
            return Ok(());
        }
        let _leader = self.sync_leader.lock().expect("sync leader lock poisoned");
        if self.synced.load(Ordering::Acquire) >= sequence {
            return Ok(());
        }
        // Everything written so far, ours included, is covered.
        let covered = self.backend.sync()?;
        self.synced.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Wake everything waiting for the stream to move.
    pub fn publish(&self) {
        self.changes.send_replace(self.safe_count());
    }

    /// A receiver of `safe_count` changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// An atomic group of writes. Nothing is visible until [`Batch::commit`].
pub struct Batch<'a> {
    db: &'a Db,
    inner: Changes,
    reserved: Vec<u64>,
    /// Whose syncs wake when the batch's positions are released.
    audience: Audience,
}

impl<'a> Batch<'a> {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.push(Change::Put { cf, key: key.to_vec(), value: value.to_vec() });
    }

    pub fn put_json<T: Serialize>(&mut self, cf: Cf, key: &[u8], value: &T) {
        let value = serde_json::to_vec(value).expect("our records always serialize");
        self.inner.push(Change::Put { cf, key: key.to_vec(), value });
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.push(Change::Delete { cf, key: key.to_vec() });
    }

    /// Take the next stream position; it is persisted with this batch.
    /// Every waiting sync wakes for it: a change that concerns only some
    /// takes [`Self::next_count_quiet`] and names them.
    pub fn next_count(&mut self) -> u64 {
        self.audience.everyone = true;
        self.next_count_quiet()
    }

    /// The next stream position, waking only the syncs named with
    /// [`Self::wake_room`] and [`Self::wake_user`] (none for positions
    /// used as ids that no sync reports).
    pub fn next_count_quiet(&mut self) -> u64 {
        let count = self.db.reserve_count();
        self.reserved.push(count);
        count
    }

    /// The batch changes what the room's members see.
    pub fn wake_room(&mut self, room_id: &RoomId) {
        // Named twice, woken twice: harmless, and cheaper than looking.
        if self.audience.rooms.last().is_none_or(|r| r != room_id) {
            self.audience.rooms.push(room_id.to_owned());
        }
    }

    /// The batch changes who is in the room (what end-to-end encryption's
    /// device lists follow); the room's members wake as for [`Self::wake_room`].
    pub fn members_changed(&mut self, room_id: &RoomId) {
        self.wake_room(room_id);
        if self.audience.member_rooms.last().is_none_or(|r| r != room_id) {
            self.audience.member_rooms.push(room_id.to_owned());
        }
    }

    /// The batch changes the user's own standing in a room (membership,
    /// unread counts, room account data).
    pub fn wake_user_in_room(&mut self, user_id: &UserId, room_id: &RoomId) {
        self.audience.user_rooms.push((user_id.to_owned(), room_id.to_owned()));
    }

    /// The batch changes what this user sees.
    pub fn wake_user(&mut self, user_id: &UserId) {
        if self.audience.users.last().is_none_or(|u| u != user_id) {
            self.audience.users.push(user_id.to_owned());
        }
    }

    /// Write without forcing the log to disk (survives a process crash, not a power cut).
    pub fn commit(mut self) -> StorageResult<()> {
        self.write().map(drop)
    }

    /// Write and fsync the write-ahead log when `database.sync_writes` is on:
    /// used for anything acknowledged to a client as durable.
    pub fn commit_durable(self) -> StorageResult<()> {
        self.commit_unsynced()?.wait_durable()
    }

    /// Write now (readers see it) and fsync in [`Unsynced::wait_durable`],
    /// which a writer calls after releasing its locks so that concurrent
    /// writers share one fsync. The batch's stream positions stay in flight
    /// until then: no sync reports the change before it is on disk.
    pub fn commit_unsynced(mut self) -> StorageResult<Unsynced<&'a Db>> {
        let sequence = self.write()?;
        Ok(Unsynced {
            db: self.db,
            sequence,
            reserved: std::mem::take(&mut self.reserved),
            audience: std::mem::take(&mut self.audience),
        })
    }

    /// The write's mark.
    fn write(&mut self) -> StorageResult<u64> {
        let mut changes = std::mem::take(&mut self.inner);
        if let Some(highest) = self.reserved.iter().max() {
            // Raised, never lowered: batches commit out of order.
            changes.push(Change::Raise { cf: Cf::Meta, key: COUNT_KEY.to_vec(), value: *highest });
        }
        self.db.backend.write(changes)
    }
}

/// A written batch whose fsync is still to come (see [`Batch::commit_unsynced`]),
/// borrowing its database (`&Db`) or, put off past the writer's scope with
/// [`Unsynced::defer`], sharing it ([`Deferred`]).
#[must_use = "acknowledge the write only after `wait_durable`"]
pub struct Unsynced<D: std::ops::Deref<Target = Db>> {
    db: D,
    sequence: u64,
    reserved: Vec<u64>,
    audience: Audience,
}

/// A written batch whose fsync and release were put off.
pub type Deferred = Unsynced<Arc<Db>>;

impl<D: std::ops::Deref<Target = Db>> Unsynced<D> {
    /// One fsync covers every write before it: waiting for many in a row
    /// costs one.
    pub fn wait_durable(self) -> StorageResult<()> {
        self.db.sync_to(self.sequence)
    }
}

impl Unsynced<&Db> {
    /// Wait later, with others: the positions stay in flight (no sync
    /// reports the change) until [`Unsynced::wait_durable`]. `db` is the
    /// database this batch was written to.
    pub fn defer(mut self, db: Arc<Db>) -> Deferred {
        Deferred {
            db,
            sequence: self.sequence,
            reserved: std::mem::take(&mut self.reserved),
            audience: std::mem::take(&mut self.audience),
        }
    }
}

impl<D: std::ops::Deref<Target = Db>> Drop for Unsynced<D> {
    /// Released in any case, but never reported before it is on disk (an
    /// error here is the caller's of `wait_durable` to report).
    fn drop(&mut self) {
        if !self.reserved.is_empty() {
            let _ = self.db.sync_to(self.sequence);
        }
        self.db.release_counts(&self.reserved, std::mem::take(&mut self.audience));
    }
}

impl Drop for Batch<'_> {
    /// Written or abandoned, the batch's positions are no longer in flight.
    fn drop(&mut self) {
        self.db.release_counts(&self.reserved, std::mem::take(&mut self.audience));
    }
}

pub fn decode<T: DeserializeOwned>(cf: Cf, bytes: &[u8]) -> StorageResult<T> {
    serde_json::from_slice(bytes).map_err(|err| StorageError::Corrupt { cf: cf.name(), err })
}

/// Join key parts with [`SEP`].
pub fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.extend_from_slice(part);
    }
    out
}

/// `parts` joined and followed by a trailing [`SEP`], for prefix scans.
pub fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = key(parts);
    out.push(SEP);
    out
}

/// A timeline ordering (negative for backfilled history) as a key part
/// that sorts like it: the sign bit flipped.
pub fn sortable(ordering: i64) -> u64 {
    (ordering as u64) ^ (1 << 63)
}

/// The ordering a [`sortable`] key part holds.
pub fn unsortable(raw: u64) -> i64 {
    (raw ^ (1 << 63)) as i64
}

pub fn u64_from_be(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        (dir, db)
    }

    #[test]
    fn a_sync_is_woken_for_its_rooms_only_once_the_change_is_safe_to_report() {
        let (_dir, db) = open();
        let (alice, ours, other) = (
            ruma::owned_user_id!("@alice:example.org"),
            ruma::owned_room_id!("!ours:example.org"),
            ruma::owned_room_id!("!other:example.org"),
        );
        let mut waiting = db.waiters().register(&alice, vec![ours.clone()]);
        waiting.mark_seen();
        let woken = |w: &mut Registration| {
            let woke = futures_util::FutureExt::now_or_never(w.changed()).is_some();
            w.mark_seen();
            woke
        };
        // A slower writer holds a lower position while ours is released.
        let mut slow = db.batch();
        slow.next_count_quiet();
        slow.wake_room(&other);
        let mut ours_batch = db.batch();
        ours_batch.next_count_quiet();
        ours_batch.wake_room(&ours);
        ours_batch.commit().unwrap();
        assert!(!woken(&mut waiting), "woken while its sync could not yet report the change");
        slow.commit().unwrap();
        assert!(woken(&mut waiting), "woken once everything up to the change is written");
        // Another room's change and a quiet position wake nobody; a plain one wakes everyone.
        let mut batch = db.batch();
        batch.next_count_quiet();
        batch.wake_room(&other);
        batch.commit().unwrap();
        let mut batch = db.batch();
        batch.next_count_quiet();
        batch.commit().unwrap();
        assert!(!woken(&mut waiting));
        let mut batch = db.batch();
        batch.next_count();
        batch.commit().unwrap();
        assert!(woken(&mut waiting));
    }

    #[test]
    fn prefix_scans_stay_inside_their_prefix() {
        let (_dir, db) = open();
        for k in [key(&[b"@a:x", b"1"]), key(&[b"@a:x", b"2"]), key(&[b"@a:xy", b"1"]), key(&[b"@b:x", b"1"])] {
            db.put_json(Cf::Filters, &k, &1).unwrap();
        }
        let p = prefix(&[b"@a:x"]);
        let found: Vec<_> = db.scan_prefix(Cf::Filters, &p).map(|e| e.unwrap().0).collect();
        assert_eq!(found.len(), 2, "`@a:xy` shares bytes with `@a:x` but not the prefix");
    }

    #[test]
    fn counter_survives_out_of_order_commits_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), false).unwrap();
            let mut early = db.batch();
            let first = early.next_count();
            let mut late = db.batch();
            let second = late.next_count();
            assert!(second > first);
            assert_eq!(db.safe_count(), first - 1, "nothing past an unwritten position is safe");
            late.commit().unwrap();
            assert_eq!(db.safe_count(), first - 1);
            early.commit().unwrap();
            assert_eq!(db.safe_count(), second);
        }
        let db = Db::open(dir.path(), false).unwrap();
        assert_eq!(db.current_count(), 2, "the larger position was kept though it was written first");
    }

    #[test]
    fn dropped_batches_release_their_positions() {
        let (_dir, db) = open();
        let mut batch = db.batch();
        let n = batch.next_count();
        drop(batch);
        assert_eq!(db.safe_count(), n);
    }
}
