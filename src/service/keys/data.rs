//! End-to-end keys' storage: the column families below and their key
//! formats, owned here. `‖` is the separator byte `0xFF`; `u64be` is 8 bytes
//! big-endian.
//!
//! - `device_keys`: user ‖ device → the device's keys as uploaded (JSON)
//! - `one_time_keys`: user ‖ device ‖ `algorithm:key_id` → the key (JSON)
//! - `fallback_keys`: user ‖ device ‖ `algorithm:key_id` → [`FallbackKey`];
//!   one per algorithm
//! - `cross_signing_keys`: user ‖ kind (`master`, `self_signing`,
//!   `user_signing`) → the key (JSON)
//! - `key_changes`: user → u64be position of the last change to their keys
//! - `to_device`: user ‖ device ‖ u64be position → [`ToDeviceMessage`]

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Result,
    storage::{Batch, Cf, Db, decode, key, prefix, u64_from_be},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct FallbackKey {
    pub(super) key: Value,
    pub(super) used: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ToDeviceMessage {
    pub(super) sender: OwnedUserId,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) content: Value,
}

fn device_key(user_id: &UserId, device_id: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), device_id.as_bytes()])
}

/// user ‖ device ‖: where a device's entries start in the per-device families.
fn device_prefix(user_id: &UserId, device_id: &str) -> Vec<u8> {
    prefix(&[user_id.as_bytes(), device_id.as_bytes()])
}

fn device_item_key(user_id: &UserId, device_id: &str, key_id: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), device_id.as_bytes(), key_id.as_bytes()])
}

// ----- key_changes -----

pub(super) fn put_changed_at(batch: &mut Batch<'_>, user_id: &UserId, count: u64) {
    batch.put(Cf::KeyChanges, user_id.as_bytes(), &count.to_be_bytes());
}

pub(super) fn changed_at(db: &Db, user_id: &UserId) -> Result<Option<u64>> {
    Ok(db.get(Cf::KeyChanges, user_id.as_bytes())?.map(|v| u64_from_be(&v)))
}

// ----- device_keys -----

pub(super) fn get_device_keys(db: &Db, user_id: &UserId, device_id: &str) -> Result<Option<Value>> {
    Ok(db.get_json(Cf::DeviceKeys, &device_key(user_id, device_id))?)
}

pub(super) fn put_device_keys(batch: &mut Batch<'_>, user_id: &UserId, device_id: &str, keys: &Value) {
    batch.put_json(Cf::DeviceKeys, &device_key(user_id, device_id), keys);
}

/// Device keys of a user: all devices, or those named.
pub(super) fn device_keys(
    db: &Db,
    user_id: &UserId,
    devices: &[OwnedDeviceId],
) -> Result<BTreeMap<OwnedDeviceId, Value>> {
    let p = prefix(&[user_id.as_bytes()]);
    let mut out = BTreeMap::new();
    for item in db.scan_prefix(Cf::DeviceKeys, &p) {
        let (k, v) = item?;
        let device_id: OwnedDeviceId = String::from_utf8_lossy(&k[p.len()..]).into_owned().into();
        if devices.is_empty() || devices.contains(&device_id) {
            out.insert(device_id, decode(Cf::DeviceKeys, &v)?);
        }
    }
    Ok(out)
}

// ----- one_time_keys -----

pub(super) fn put_one_time_key(batch: &mut Batch<'_>, user_id: &UserId, device_id: &str, key_id: &str, value: &Value) {
    batch.put_json(Cf::OneTimeKeys, &device_item_key(user_id, device_id, key_id), value);
}

pub(super) fn delete_one_time_key(batch: &mut Batch<'_>, user_id: &UserId, device_id: &str, key_id: &str) {
    batch.delete(Cf::OneTimeKeys, &device_item_key(user_id, device_id, key_id));
}

/// How many one-time keys a device has left, per algorithm.
pub(super) fn one_time_key_counts(db: &Db, user_id: &UserId, device_id: &str) -> Result<BTreeMap<String, u64>> {
    let p = device_prefix(user_id, device_id);
    let mut counts = BTreeMap::new();
    for item in db.scan_prefix(Cf::OneTimeKeys, &p) {
        let (k, _) = item?;
        let key_id = String::from_utf8_lossy(&k[p.len()..]).into_owned();
        *counts.entry(key_id.split(':').next().unwrap_or_default().to_owned()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// The first one-time key of a device whose id starts with `wanted`
/// (`algorithm:`), as (key id, key).
pub(super) fn first_one_time_key(
    db: &Db,
    user_id: &UserId,
    device_id: &str,
    wanted: &str,
) -> Result<Option<(String, Value)>> {
    first_device_key(db, Cf::OneTimeKeys, user_id, device_id, wanted)
}

/// The same for fallback keys.
pub(super) fn first_fallback_key(
    db: &Db,
    user_id: &UserId,
    device_id: &str,
    wanted: &str,
) -> Result<Option<(String, FallbackKey)>> {
    first_device_key(db, Cf::FallbackKeys, user_id, device_id, wanted)
}

/// The first key in `cf` (one-time or fallback) of a device whose id
/// starts with `wanted`.
fn first_device_key<T: serde::de::DeserializeOwned>(
    db: &Db,
    cf: Cf,
    user_id: &UserId,
    device_id: &str,
    wanted: &str,
) -> Result<Option<(String, T)>> {
    let p = device_prefix(user_id, device_id);
    for item in db.scan_prefix(cf, &p) {
        let (k, v) = item?;
        let key_id = String::from_utf8_lossy(&k[p.len()..]).into_owned();
        if key_id.starts_with(wanted) {
            return Ok(Some((key_id, decode(cf, &v)?)));
        }
    }
    Ok(None)
}

// ----- fallback_keys -----

pub(super) fn put_fallback_key(
    batch: &mut Batch<'_>,
    user_id: &UserId,
    device_id: &str,
    key_id: &str,
    fallback: &FallbackKey,
) {
    batch.put_json(Cf::FallbackKeys, &device_item_key(user_id, device_id, key_id), fallback);
}

/// Stage the deletion of a device's fallback keys of `algorithm`.
pub(super) fn delete_fallback_keys(
    db: &Db,
    batch: &mut Batch<'_>,
    user_id: &UserId,
    device_id: &str,
    algorithm: &str,
) -> Result<()> {
    let fallback_prefix = device_prefix(user_id, device_id);
    for item in db.scan_prefix(Cf::FallbackKeys, &fallback_prefix) {
        let (k, _) = item?;
        if k[fallback_prefix.len()..].starts_with(format!("{algorithm}:").as_bytes()) {
            batch.delete(Cf::FallbackKeys, &k);
        }
    }
    Ok(())
}

/// Algorithms with an unused fallback key.
pub(super) fn unused_fallback_algorithms(db: &Db, user_id: &UserId, device_id: &str) -> Result<BTreeSet<String>> {
    let p = device_prefix(user_id, device_id);
    let mut out = BTreeSet::new();
    for item in db.scan_prefix(Cf::FallbackKeys, &p) {
        let (k, v) = item?;
        let fallback: FallbackKey = decode(Cf::FallbackKeys, &v)?;
        if !fallback.used {
            out.insert(String::from_utf8_lossy(&k[p.len()..]).split(':').next().unwrap_or_default().to_owned());
        }
    }
    Ok(out)
}

// ----- cross_signing_keys -----

fn cross_signing_key_key(user_id: &UserId, kind: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), kind.as_bytes()])
}

pub(super) fn cross_signing_key(db: &Db, user_id: &UserId, kind: &str) -> Result<Option<Value>> {
    Ok(db.get_json(Cf::CrossSigningKeys, &cross_signing_key_key(user_id, kind))?)
}

pub(super) fn put_cross_signing_key(batch: &mut Batch<'_>, user_id: &UserId, kind: &str, value: &Value) {
    batch.put_json(Cf::CrossSigningKeys, &cross_signing_key_key(user_id, kind), value);
}

// ----- to_device -----

fn to_device_key(user_id: &UserId, device_id: &str, count: u64) -> Vec<u8> {
    [&device_prefix(user_id, device_id)[..], &count.to_be_bytes()].concat()
}

pub(super) fn put_to_device(
    batch: &mut Batch<'_>,
    user_id: &UserId,
    device_id: &str,
    count: u64,
    message: &ToDeviceMessage,
) {
    batch.put_json(Cf::ToDevice, &to_device_key(user_id, device_id, count), message);
}

pub(super) fn delete_to_device(batch: &mut Batch<'_>, user_id: &UserId, device_id: &str, count: u64) {
    batch.delete(Cf::ToDevice, &to_device_key(user_id, device_id, count));
}

/// A device's messages by position.
pub(super) type Inbox = Vec<(u64, ToDeviceMessage)>;

/// A device's messages up to `upto`, and the positions of those at or
/// before `acknowledged` (delivered already).
pub(super) fn to_device_messages(
    db: &Db,
    user_id: &UserId,
    device_id: &str,
    acknowledged: Option<u64>,
    upto: u64,
) -> Result<(Inbox, Vec<u64>)> {
    let p = device_prefix(user_id, device_id);
    let mut out = Vec::new();
    let mut delivered = Vec::new();
    for item in db.scan_prefix(Cf::ToDevice, &p) {
        let (k, v) = item?;
        let count = u64_from_be(&k[p.len()..]);
        if acknowledged.is_some_and(|a| count <= a) {
            delivered.push(count);
            continue;
        }
        if count > upto {
            break;
        }
        out.push((count, decode(Cf::ToDevice, &v)?));
    }
    Ok((out, delivered))
}

// ----- a device -----

/// Stage the removal of a device's keys, one-time and fallback keys and
/// to-device messages.
pub(super) fn delete_device(db: &Db, batch: &mut Batch<'_>, user_id: &UserId, device_id: &str) -> Result<()> {
    batch.delete(Cf::DeviceKeys, &device_key(user_id, device_id));
    let p = device_prefix(user_id, device_id);
    for cf in [Cf::OneTimeKeys, Cf::FallbackKeys, Cf::ToDevice] {
        for item in db.scan_prefix(cf, &p) {
            let (k, _) = item?;
            batch.delete(cf, &k);
        }
    }
    Ok(())
}
