//! Pushers and notifications: the `pushers` and `notifications` column
//! families and their key formats, owned here.
//!
//! - `pushers`: user ‖ app_id ‖ pushkey → [`PusherRecord`]
//! - `notifications`: user ‖ u64be position of the event → [`NotificationRecord`]
//! - `notification_counts`: user ‖ room → [`super::Counts`]: the counts of
//!   the main timeline and per thread, when they last changed, and how far
//!   the room's events were evaluated for the user
//! - `meta` `notification_counts_floor` → u64be: events before it were
//!   evaluated when sent (databases from before counts were computed
//!   lazily, schema version 1); absent on newer databases.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Result,
    storage::{Batch, Cf, Db, decode, key, prefix, u64_from_be},
};

/// A pusher as the client set it, with what delivery needs to resume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PusherRecord {
    pub user_id: OwnedUserId,
    /// The client's pusher (ruma's `Pusher` in JSON).
    pub pusher: Value,
    pub app_id: String,
    pub pushkey: String,
    /// The device that set it: logging that device out removes the pusher.
    #[serde(default)]
    pub device_id: Option<String>,
    /// When it was set (ms), sent to the gateway as `pushkey_ts` (s).
    pub created_ms: u64,
    /// Position of the last notification delivered (or skipped); delivery
    /// resumes after it, also after a restart.
    pub last_pushed: u64,
}

/// An event that notified a user, for `/notifications` and the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub actions: Value,
    pub ts: u64,
    pub highlight: bool,
}

fn pusher_key(user_id: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
}

pub fn pushers(db: &Db, user_id: &UserId) -> Result<Vec<PusherRecord>> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Pushers, &prefix) {
        let (_, v) = item?;
        out.push(decode(Cf::Pushers, &v)?);
    }
    Ok(out)
}

pub fn pusher(db: &Db, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<Option<PusherRecord>> {
    Ok(db.get_json(Cf::Pushers, &pusher_key(user_id, app_id, pushkey))?)
}

/// Every pusher on the server (start-up, and the rare `append: false` sweep).
pub fn all_pushers(db: &Db) -> Result<Vec<PusherRecord>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Pushers, b"") {
        let (_, v) = item?;
        out.push(decode(Cf::Pushers, &v)?);
    }
    Ok(out)
}

pub fn put_pusher(batch: &mut Batch<'_>, record: &PusherRecord) {
    batch.put_json(Cf::Pushers, &pusher_key(&record.user_id, &record.app_id, &record.pushkey), record);
}

pub fn delete_pusher(batch: &mut Batch<'_>, user_id: &UserId, app_id: &str, pushkey: &str) {
    batch.delete(Cf::Pushers, &pusher_key(user_id, app_id, pushkey));
}

/// Move a pusher's delivery mark forward (never back: two deliveries may race).
pub fn mark_pushed(db: &Db, user_id: &UserId, app_id: &str, pushkey: &str, position: u64) -> Result<()> {
    let Some(mut record) = pusher(db, user_id, app_id, pushkey)? else { return Ok(()) };
    if record.last_pushed >= position {
        return Ok(());
    }
    record.last_pushed = position;
    db.put_json(Cf::Pushers, &pusher_key(user_id, app_id, pushkey), &record)?;
    Ok(())
}

const COUNTS_FLOOR_KEY: &[u8] = b"notification_counts_floor";

/// Events at or below this position need no evaluation (see the module doc).
pub fn counts_floor(db: &Db) -> Result<u64> {
    Ok(db.get(Cf::Meta, COUNTS_FLOOR_KEY)?.map_or(0, |v| u64_from_be(&v)))
}

pub fn set_counts_floor(batch: &mut Batch<'_>, position: u64) {
    batch.put(Cf::Meta, COUNTS_FLOOR_KEY, &position.to_be_bytes());
}

pub fn put_notification(batch: &mut Batch<'_>, user_id: &UserId, position: u64, record: &NotificationRecord) {
    batch.put_json(Cf::Notifications, &key(&[user_id.as_bytes(), &position.to_be_bytes()]), record);
}

/// Up to `limit` notifications after `position`, oldest first.
pub fn notifications_after(
    db: &Db,
    user_id: &UserId,
    position: u64,
    limit: usize,
) -> Result<Vec<(u64, NotificationRecord)>> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let from = key(&[user_id.as_bytes(), &position.saturating_add(1).to_be_bytes()]);
    collect(db.scan_from(Cf::Notifications, &prefix, &from, true), prefix.len(), limit)
}

/// Up to `limit` notifications before `position` (all if `None`), newest first.
pub fn notifications_before(
    db: &Db,
    user_id: &UserId,
    position: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, NotificationRecord)>> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let from = match position {
        Some(0) => return Ok(Vec::new()),
        Some(p) => key(&[user_id.as_bytes(), &(p - 1).to_be_bytes()]),
        None => key(&[user_id.as_bytes(), &u64::MAX.to_be_bytes()]),
    };
    collect(db.scan_from(Cf::Notifications, &prefix, &from, false), prefix.len(), limit)
}

fn collect(
    entries: impl Iterator<Item = crate::storage::Entry>,
    prefix_len: usize,
    limit: usize,
) -> Result<Vec<(u64, NotificationRecord)>> {
    let mut out = Vec::new();
    for item in entries.take(limit) {
        let (k, v) = item?;
        out.push((u64_from_be(&k[prefix_len..]), decode(Cf::Notifications, &v)?));
    }
    Ok(out)
}

/// Delete notifications older than `before_ms`; returns how many.
pub fn prune_notifications(db: &Db, before_ms: u64) -> Result<usize> {
    let mut batch = db.batch();
    let mut pruned = 0;
    for item in db.scan_prefix(Cf::Notifications, b"") {
        let (k, v) = item?;
        let record: NotificationRecord = decode(Cf::Notifications, &v)?;
        if record.ts < before_ms {
            batch.delete(Cf::Notifications, &k);
            pruned += 1;
        }
    }
    batch.commit()?;
    Ok(pruned)
}

/// Stage the removal of the pushers a device set (it is being logged out).
pub fn forget_device(db: &Db, batch: &mut Batch<'_>, user_id: &UserId, device_id: &str) -> Result<()> {
    for record in pushers(db, user_id)? {
        if record.device_id.as_deref() == Some(device_id) {
            delete_pusher(batch, user_id, &record.app_id, &record.pushkey);
        }
    }
    Ok(())
}

/// Delete every pusher and notification of a user (deactivation).
pub fn delete_user(db: &Db, user_id: &UserId) -> Result<()> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let mut batch = db.batch();
    for cf in [Cf::Pushers, Cf::Notifications] {
        for item in db.scan_prefix(cf, &prefix) {
            let (k, _) = item?;
            batch.delete(cf, &k);
        }
    }
    batch.commit()?;
    Ok(())
}

// ----- notification_counts -----

fn counts_key(user_id: &UserId, room_id: &ruma::RoomId) -> Vec<u8> {
    key(&[user_id.as_bytes(), room_id.as_bytes()])
}

pub fn counts(db: &Db, user_id: &UserId, room_id: &ruma::RoomId) -> Result<Option<super::Counts>> {
    Ok(db.get_json(Cf::NotificationCounts, &counts_key(user_id, room_id))?)
}

pub fn put_counts(batch: &mut Batch<'_>, user_id: &UserId, room_id: &ruma::RoomId, counts: &super::Counts) {
    batch.put_json(Cf::NotificationCounts, &counts_key(user_id, room_id), counts);
}

/// The user's counts in every room.
pub fn all_counts(db: &Db, user_id: &UserId) -> Result<Vec<super::Counts>> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::NotificationCounts, &prefix) {
        let (_, v) = item?;
        out.push(decode(Cf::NotificationCounts, &v)?);
    }
    Ok(out)
}
