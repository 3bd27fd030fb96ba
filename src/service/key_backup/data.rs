//! Server-side key backup: the `backup_versions` and `backup_keys` column
//! families and their key formats, owned here.
//!
//! - `backup_versions`: user ‖ u64be version → [`VersionRecord`] (a deleted
//!   version stays as a tombstone, so its number is never given out again)
//! - `backup_keys`: user ‖ u64be version ‖ room_id ‖ session_id → the
//!   client's `KeyBackupData` (JSON)

use ruma::{OwnedRoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Result,
    storage::{Batch, Cf, Db, SEP, decode, key, prefix, u64_from_be},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionRecord {
    /// `{algorithm, auth_data}` as the client gave it.
    pub algorithm: Value,
    /// Moves whenever the keys change.
    pub etag: u64,
    pub count: u64,
    #[serde(default)]
    pub deleted: bool,
}

fn version_key(user_id: &UserId, version: u64) -> Vec<u8> {
    key(&[user_id.as_bytes(), &version.to_be_bytes()])
}

pub fn version(db: &Db, user_id: &UserId, version: u64) -> Result<Option<VersionRecord>> {
    Ok(db.get_json::<VersionRecord>(Cf::BackupVersions, &version_key(user_id, version))?.filter(|v| !v.deleted))
}

/// The highest version number given out (deleted ones included), and the
/// newest version still there.
pub fn versions(db: &Db, user_id: &UserId) -> Result<(u64, Option<(u64, VersionRecord)>)> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let mut highest = 0;
    let mut latest = None;
    for item in db.scan_prefix(Cf::BackupVersions, &prefix) {
        let (k, v) = item?;
        let number = u64_from_be(&k[prefix.len()..]);
        highest = highest.max(number);
        let record: VersionRecord = decode(Cf::BackupVersions, &v)?;
        if !record.deleted {
            latest = Some((number, record));
        }
    }
    Ok((highest, latest))
}

pub fn put_version(batch: &mut Batch<'_>, user_id: &UserId, version: u64, record: &VersionRecord) {
    batch.put_json(Cf::BackupVersions, &version_key(user_id, version), record);
}

fn keys_prefix(user_id: &UserId, version: u64, room_id: Option<&str>) -> Vec<u8> {
    match room_id {
        Some(room_id) => prefix(&[user_id.as_bytes(), &version.to_be_bytes(), room_id.as_bytes()]),
        None => prefix(&[user_id.as_bytes(), &version.to_be_bytes()]),
    }
}

fn session_key(user_id: &UserId, version: u64, room_id: &str, session_id: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), &version.to_be_bytes(), room_id.as_bytes(), session_id.as_bytes()])
}

pub fn session(db: &Db, user_id: &UserId, version: u64, room_id: &str, session_id: &str) -> Result<Option<Value>> {
    Ok(db.get_json(Cf::BackupKeys, &session_key(user_id, version, room_id, session_id))?)
}

pub fn put_session(
    batch: &mut Batch<'_>,
    user_id: &UserId,
    version: u64,
    room_id: &str,
    session_id: &str,
    data: &Value,
) {
    batch.put_json(Cf::BackupKeys, &session_key(user_id, version, room_id, session_id), data);
}

/// Every key of a version, or of one room in it: (room, session, data).
pub fn sessions(
    db: &Db,
    user_id: &UserId,
    version: u64,
    room_id: Option<&str>,
) -> Result<Vec<(OwnedRoomId, String, Value)>> {
    let base = keys_prefix(user_id, version, None).len();
    let prefix = keys_prefix(user_id, version, room_id);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::BackupKeys, &prefix) {
        let (k, v) = item?;
        let rest = &k[base..];
        let Some(split) = rest.iter().position(|b| *b == SEP) else { continue };
        let (Ok(room), Ok(session)) = (std::str::from_utf8(&rest[..split]), std::str::from_utf8(&rest[split + 1..]))
        else {
            continue;
        };
        let Ok(room) = OwnedRoomId::try_from(room) else { continue };
        out.push((room, session.to_owned(), decode(Cf::BackupKeys, &v)?));
    }
    Ok(out)
}

/// Stage the deletion of keys (all of a version, a room's, or one
/// session's); returns how many.
pub fn delete_sessions(
    db: &Db,
    batch: &mut Batch<'_>,
    user_id: &UserId,
    version: u64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<u64> {
    if let (Some(room_id), Some(session_id)) = (room_id, session_id) {
        let k = session_key(user_id, version, room_id, session_id);
        if db.exists(Cf::BackupKeys, &k)? {
            batch.delete(Cf::BackupKeys, &k);
            return Ok(1);
        }
        return Ok(0);
    }
    let prefix = keys_prefix(user_id, version, room_id);
    let mut deleted = 0;
    for item in db.scan_prefix(Cf::BackupKeys, &prefix) {
        let (k, _) = item?;
        batch.delete(Cf::BackupKeys, &k);
        deleted += 1;
    }
    Ok(deleted)
}

/// Stage the removal of every backup of a user (deactivation).
pub fn delete_user(db: &Db, batch: &mut Batch<'_>, user_id: &UserId) -> Result<()> {
    let prefix = prefix(&[user_id.as_bytes()]);
    for cf in [Cf::BackupVersions, Cf::BackupKeys] {
        for item in db.scan_prefix(cf, &prefix) {
            let (k, _) = item?;
            batch.delete(cf, &k);
        }
    }
    Ok(())
}
