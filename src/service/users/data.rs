//! Accounts' storage: the column families below and their key formats,
//! owned here. `‖` is the separator byte `0xFF`.
//!
//! - `users`: user_id → [`UserRecord`]; kept when deactivated, so an id is
//!   never given out again
//! - `access_tokens`: token → [`TokenRecord`] (its user and device)
//! - `devices`: user ‖ device_id → [`DeviceRecord`], which names the
//!   device's current access token

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{DeviceRecord, UserRecord};
use crate::{
    error::Result,
    storage::{Batch, Cf, Db, decode, key, prefix},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct TokenRecord {
    pub(super) user_id: OwnedUserId,
    pub(super) device_id: OwnedDeviceId,
}

// ----- users -----

pub(super) fn get_user(db: &Db, user_id: &UserId) -> Result<Option<UserRecord>> {
    Ok(db.get_json(Cf::Users, user_id.as_bytes())?)
}

pub(super) fn user_exists(db: &Db, user_id: &UserId) -> Result<bool> {
    Ok(db.exists(Cf::Users, user_id.as_bytes())?)
}

pub(super) fn put_user(batch: &mut Batch<'_>, user_id: &UserId, record: &UserRecord) {
    batch.put_json(Cf::Users, user_id.as_bytes(), record);
}

/// A write of its own.
pub(super) fn save_user(db: &Db, user_id: &UserId, record: &UserRecord) -> Result<()> {
    Ok(db.put_json(Cf::Users, user_id.as_bytes(), record)?)
}

/// A write of its own.
pub(super) fn delete_user(db: &Db, user_id: &UserId) -> Result<()> {
    Ok(db.delete(Cf::Users, user_id.as_bytes())?)
}

/// Every account (keys that are not a user id are passed over).
pub(super) fn users(db: &Db) -> Result<Vec<(OwnedUserId, UserRecord)>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Users, b"") {
        let (k, v) = item?;
        let Ok(user_id) = OwnedUserId::try_from(String::from_utf8_lossy(&k).into_owned()) else { continue };
        out.push((user_id, decode(Cf::Users, &v)?));
    }
    Ok(out)
}

// ----- access_tokens -----

pub(super) fn token(db: &Db, token: &str) -> Result<Option<TokenRecord>> {
    Ok(db.get_json(Cf::AccessTokens, token.as_bytes())?)
}

pub(super) fn put_token(batch: &mut Batch<'_>, token: &str, record: &TokenRecord) {
    batch.put_json(Cf::AccessTokens, token.as_bytes(), record);
}

pub(super) fn delete_token(batch: &mut Batch<'_>, token: &str) {
    batch.delete(Cf::AccessTokens, token.as_bytes());
}

// ----- devices -----

fn device_key(user_id: &UserId, device_id: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), device_id.as_bytes()])
}

pub(super) fn device(db: &Db, user_id: &UserId, device_id: &str) -> Result<Option<DeviceRecord>> {
    Ok(db.get_json(Cf::Devices, &device_key(user_id, device_id))?)
}

pub(super) fn devices(db: &Db, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
    let prefix = prefix(&[user_id.as_bytes()]);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Devices, &prefix) {
        let (k, v) = item?;
        let device_id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        out.push((device_id.into(), decode(Cf::Devices, &v)?));
    }
    Ok(out)
}

pub(super) fn put_device(batch: &mut Batch<'_>, user_id: &UserId, device_id: &str, record: &DeviceRecord) {
    batch.put_json(Cf::Devices, &device_key(user_id, device_id), record);
}

pub(super) fn delete_device(batch: &mut Batch<'_>, user_id: &UserId, device_id: &str) {
    batch.delete(Cf::Devices, &device_key(user_id, device_id));
}
