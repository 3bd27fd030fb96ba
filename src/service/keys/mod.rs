//! End-to-end encryption support: device keys, one-time and fallback keys,
//! cross-signing keys and signatures, key-change tracking, and to-device
//! messages. porch stores and forwards; it never sees plaintext.

mod data;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UserId,
    api::federation::keys::claim_keys::v1::OneTimeKeys,
    encryption::{CrossSigningKey, DeviceKeys},
    serde::Raw,
};
use serde_json::{Map, Value};

use self::data::{FallbackKey, ToDeviceMessage};

/// One-time keys left per algorithm, and unused fallback key algorithms.
pub type SyncKeyCounts = (BTreeMap<OneTimeKeyAlgorithm, ruma::UInt>, Vec<OneTimeKeyAlgorithm>);
use crate::{
    error::{Error, Result},
    storage::{Batch, Db},
};

pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

pub struct Keys {
    db: Arc<Db>,
    /// Makes claiming a one-time key a single step: no key goes out twice.
    claim_lock: std::sync::Mutex<()>,
    /// Other servers' users' keys as their server last gave them.
    remote: std::sync::Mutex<HashMap<OwnedUserId, (Instant, RemoteUserKeys)>>,
    /// When each remote user's keys were last said to have changed, so an
    /// answer asked for before that is not kept.
    remote_changed: std::sync::Mutex<HashMap<OwnedUserId, Instant>>,
}

/// A user of another server's device and cross-signing keys.
#[derive(Clone, Default)]
pub struct RemoteUserKeys {
    pub devices: BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>,
    pub master: Option<Raw<CrossSigningKey>>,
    pub self_signing: Option<Raw<CrossSigningKey>>,
    /// The device-list stream id this is as of, when the server gave one
    /// (`/user/devices`), so its next `m.device_list_update` can be applied.
    pub stream_id: Option<u64>,
}

/// One `m.device_list_update` from the user's own server.
pub struct DeviceListUpdate<'a> {
    pub device_id: &'a str,
    pub stream_id: u64,
    pub prev_ids: Vec<u64>,
    pub deleted: bool,
    pub keys: Option<Value>,
    pub display_name: Option<&'a str>,
}

/// Cached remote keys are dropped when their server says they changed, and
/// after this long in case such a word was missed (no room shared any more).
const REMOTE_KEYS_FOR: Duration = Duration::from_secs(600);
const REMOTE_KEYS_KEPT: usize = 10_000;

impl Keys {
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            claim_lock: std::sync::Mutex::new(()),
            remote: Default::default(),
            remote_changed: Default::default(),
        }
    }

    /// A remote user's keys, if cached and fresh.
    pub fn cached_remote(&self, user_id: &UserId) -> Option<RemoteUserKeys> {
        let cache = self.remote.lock().expect("remote keys poisoned");
        cache.get(user_id).filter(|(at, _)| at.elapsed() < REMOTE_KEYS_FOR).map(|(_, keys)| keys.clone())
    }

    /// Keep what a remote user's server answered about all their devices,
    /// asked at `asked_at`, unless a change was announced since.
    pub fn cache_remote(&self, user_id: &UserId, keys: RemoteUserKeys, asked_at: Instant) {
        let changed = self.remote_changed.lock().expect("remote changes poisoned").get(user_id).copied();
        if changed.is_some_and(|changed| changed >= asked_at) {
            return;
        }
        let mut cache = self.remote.lock().expect("remote keys poisoned");
        if cache.len() >= REMOTE_KEYS_KEPT {
            cache.retain(|_, (at, _)| at.elapsed() < REMOTE_KEYS_FOR);
            if cache.len() >= REMOTE_KEYS_KEPT {
                cache.clear();
            }
        }
        cache.insert(user_id.to_owned(), (Instant::now(), keys));
    }

    /// Note that a user's keys changed, so sync reports them to others.
    pub fn mark_changed(batch: &mut Batch<'_>, user_id: &UserId) {
        let count = batch.next_count();
        data::put_changed_at(batch, user_id, count);
    }

    /// Apply an update that follows what we hold (its `prev_id` is our
    /// stream id) to the cached list; `false` when it does not, and the
    /// whole list must be fetched again.
    pub fn apply_remote_update(&self, user_id: &UserId, update: &DeviceListUpdate<'_>) -> Result<bool> {
        {
            let mut cache = self.remote.lock().expect("remote keys poisoned");
            let Some((at, keys)) = cache.get_mut(user_id) else { return Ok(false) };
            let follows = keys
                .stream_id
                .is_some_and(|held| !update.prev_ids.is_empty() && update.prev_ids.iter().all(|p| *p == held));
            if !follows || at.elapsed() >= REMOTE_KEYS_FOR {
                return Ok(false);
            }
            let device_id = OwnedDeviceId::from(update.device_id);
            if update.deleted {
                keys.devices.remove(&device_id);
            } else if let Some(mut device_keys) = update.keys.clone().filter(Value::is_object) {
                if let Some(name) = update.display_name {
                    device_keys["unsigned"]["device_display_name"] = Value::String(name.to_owned());
                }
                keys.devices.insert(device_id, Raw::from_json(serde_json::value::to_raw_value(&device_keys)?));
            } else {
                return Ok(false);
            }
            keys.stream_id = Some(update.stream_id);
            *at = Instant::now();
        }
        // Our clients still re-query (sync names the user as changed).
        let mut batch = self.db.batch();
        Self::mark_changed(&mut batch, user_id);
        batch.commit()?;
        Ok(true)
    }

    /// Drop what we hold of these users' keys: we may have missed changes
    /// (while we shared no room with them, nobody told us of any).
    pub fn forget_remote<'u>(&self, users: impl IntoIterator<Item = &'u UserId>) {
        let mut cache = self.remote.lock().expect("remote keys poisoned");
        for user_id in users {
            cache.remove(user_id);
        }
    }

    /// Another server told us a user's keys changed: our clients re-query them.
    pub fn mark_remote_changed(&self, user_id: &UserId) -> Result<()> {
        self.forget_remote([user_id]);
        {
            let mut changed = self.remote_changed.lock().expect("remote changes poisoned");
            // Only changes newer than any fetch still in flight matter.
            changed.retain(|_, at| at.elapsed() < Duration::from_secs(120));
            changed.insert(user_id.to_owned(), Instant::now());
        }
        let mut batch = self.db.batch();
        Self::mark_changed(&mut batch, user_id);
        batch.commit()?;
        Ok(())
    }

    pub fn changed_at(&self, user_id: &UserId) -> Result<u64> {
        Ok(data::changed_at(&self.db, user_id)?.unwrap_or(0))
    }

    /// Store what a device uploads; returns its one-time key counts.
    pub fn upload(
        &self,
        user_id: &UserId,
        device_id: &str,
        device_keys: Option<Value>,
        one_time_keys: Vec<(String, Value)>,
        fallback_keys: Vec<(String, Value)>,
    ) -> Result<BTreeMap<String, u64>> {
        let mut batch = self.db.batch();
        if let Some(keys) = device_keys {
            if keys.get("user_id").and_then(|v| v.as_str()) != Some(user_id.as_str())
                || keys.get("device_id").and_then(|v| v.as_str()) != Some(device_id)
            {
                return Err(Error::invalid_param("device_keys must name your own user id and device id."));
            }
            let complete = keys.get("algorithms").is_some_and(Value::is_array)
                && keys.get("keys").is_some_and(Value::is_object)
                && keys.get("signatures").is_some_and(Value::is_object);
            if !complete {
                return Err(Error::bad_json("device_keys needs `algorithms`, `keys` and `signatures`."));
            }
            let old = data::get_device_keys(&self.db, user_id, device_id)?;
            if old.as_ref() != Some(&keys) {
                data::put_device_keys(&mut batch, user_id, device_id, &keys);
                Self::mark_changed(&mut batch, user_id);
            }
        }
        for (key_id, value) in one_time_keys {
            check_key_id(&key_id)?;
            data::put_one_time_key(&mut batch, user_id, device_id, &key_id, &value);
        }
        for (key_id, value) in fallback_keys {
            check_key_id(&key_id)?;
            let algorithm = key_id.split(':').next().unwrap_or_default();
            // One fallback key per algorithm: a new one replaces the old.
            data::delete_fallback_keys(&self.db, &mut batch, user_id, device_id, algorithm)?;
            data::put_fallback_key(&mut batch, user_id, device_id, &key_id, &FallbackKey { key: value, used: false });
        }
        // Only the device's own syncs report its key counts.
        batch.next_count_quiet();
        batch.wake_user(user_id);
        batch.commit()?;
        self.one_time_key_counts(user_id, device_id)
    }

    pub fn one_time_key_counts(&self, user_id: &UserId, device_id: &str) -> Result<BTreeMap<String, u64>> {
        data::one_time_key_counts(&self.db, user_id, device_id)
    }

    /// Algorithms with an unused fallback key.
    pub fn unused_fallback_algorithms(&self, user_id: &UserId, device_id: &str) -> Result<Vec<String>> {
        Ok(data::unused_fallback_algorithms(&self.db, user_id, device_id)?.into_iter().collect())
    }

    /// What a device's syncs report of its keys: one-time keys left per
    /// algorithm, and the algorithms of its unused fallback keys.
    pub fn sync_counts(&self, user_id: &UserId, device_id: &str) -> Result<SyncKeyCounts> {
        let one_time = self
            .one_time_key_counts(user_id, device_id)?
            .into_iter()
            .map(|(alg, n)| (OneTimeKeyAlgorithm::from(alg.as_str()), ruma::UInt::new_saturating(n)))
            .collect();
        let fallback = self
            .unused_fallback_algorithms(user_id, device_id)?
            .iter()
            .map(|a| OneTimeKeyAlgorithm::from(a.as_str()))
            .collect();
        Ok((one_time, fallback))
    }

    /// Device keys of a user: all devices, or those named.
    pub fn device_keys(&self, user_id: &UserId, devices: &[OwnedDeviceId]) -> Result<BTreeMap<OwnedDeviceId, Value>> {
        data::device_keys(&self.db, user_id, devices)
    }

    pub fn cross_signing_key(&self, user_id: &UserId, kind: &str) -> Result<Option<Value>> {
        data::cross_signing_key(&self.db, user_id, kind)
    }

    pub fn set_cross_signing_keys(&self, user_id: &UserId, keys: Vec<(&str, Value)>) -> Result<()> {
        // The other keys are signed by the master key: there must be one.
        let has_master =
            keys.iter().any(|(kind, _)| *kind == MASTER) || self.cross_signing_key(user_id, MASTER)?.is_some();
        if !has_master && !keys.is_empty() {
            return Err(Error::invalid_param("Upload a master key first: the other cross-signing keys hang off it."));
        }
        let mut batch = self.db.batch();
        // The user-signing key is the user's own business: only a new master
        // or self-signing key is a change others must hear of (as Synapse).
        let public = keys.iter().any(|(kind, _)| *kind != USER_SIGNING);
        for (kind, value) in keys {
            if value.get("user_id").and_then(|v| v.as_str()) != Some(user_id.as_str()) {
                return Err(Error::invalid_param("Cross-signing keys must name your own user id."));
            }
            data::put_cross_signing_key(&mut batch, user_id, kind, &value);
        }
        if public {
            Self::mark_changed(&mut batch, user_id);
        }
        batch.commit()?;
        Ok(())
    }

    /// Merge `signatures` from an uploaded copy into the stored key object
    /// (a device's keys, or a cross-signing key by its public key id).
    /// Only the uploader's own signatures are taken: nobody can replace the
    /// signatures another user made.
    pub fn add_signatures(&self, owner: &UserId, key_id: &str, signed: &Value, signer: &UserId) -> Result<()> {
        let Some(signatures) = signed.get("signatures").and_then(|s| s.get(signer.as_str())) else {
            return Err(Error::invalid_param("The signed object has no signatures by you."));
        };
        let signatures = Map::from_iter([(signer.to_string(), signatures.clone())]);
        // `None`: a device's keys (`key_id` is its device id); else the kind
        // of cross-signing key.
        let (kind, mut stored) = if let Some(v) = data::get_device_keys(&self.db, owner, key_id)? {
            (None, v)
        } else {
            let mut found = None;
            for kind in [MASTER, SELF_SIGNING, USER_SIGNING] {
                if let Some(v) = self.cross_signing_key(owner, kind)?
                    && v.get("keys")
                        .and_then(|k| k.as_object())
                        .is_some_and(|k| k.keys().any(|id| id.ends_with(&format!(":{key_id}"))))
                {
                    found = Some((Some(kind), v));
                    break;
                }
            }
            found.ok_or_else(|| Error::not_found("No such key."))?
        };
        let target = stored.as_object_mut().ok_or_else(|| Error::internal("stored key is not an object"))?;
        let existing = target.entry("signatures").or_insert_with(|| Value::Object(Map::new()));
        for (signer, sigs) in signatures {
            let entry = existing
                .as_object_mut()
                .expect("object")
                .entry(signer.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Some(entry), Some(sigs)) = (entry.as_object_mut(), sigs.as_object()) {
                for (id, sig) in sigs {
                    entry.insert(id.clone(), sig.clone());
                }
            }
        }
        let mut batch = self.db.batch();
        match kind {
            None => data::put_device_keys(&mut batch, owner, key_id, &stored),
            Some(kind) => data::put_cross_signing_key(&mut batch, owner, kind, &stored),
        }
        Self::mark_changed(&mut batch, owner);
        batch.commit()?;
        Ok(())
    }

    /// Claim one key per asked device of the users `may` allows (local
    /// users; the caller decides who may ask about whom).
    pub fn claim_many(
        &self,
        claims: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
        may: impl Fn(&UserId) -> Result<bool>,
    ) -> Result<OneTimeKeys> {
        let mut claimed = BTreeMap::new();
        for (user_id, devices) in claims {
            if !may(user_id)? {
                continue;
            }
            let mut per_device = BTreeMap::new();
            for (device_id, algorithm) in devices {
                if let Some((key_id, key)) = self.claim(user_id, device_id.as_str(), algorithm.as_str())?
                    && let Ok(key_id) = OwnedOneTimeKeyId::try_from(key_id)
                {
                    let key = Raw::from_json(serde_json::value::to_raw_value(&key)?);
                    per_device.insert(device_id.clone(), BTreeMap::from([(key_id, key)]));
                }
            }
            // Users with nothing left to claim are left out, as on Synapse.
            if !per_device.is_empty() {
                claimed.insert(user_id.clone(), per_device);
            }
        }
        Ok(claimed)
    }

    /// Take one one-time key of `algorithm`, or else the fallback key.
    pub fn claim(&self, user_id: &UserId, device_id: &str, algorithm: &str) -> Result<Option<(String, Value)>> {
        let _guard = self.claim_lock.lock().expect("claim lock poisoned");
        let wanted = format!("{algorithm}:");
        if let Some((key_id, value)) = data::first_one_time_key(&self.db, user_id, device_id, &wanted)? {
            let mut batch = self.db.batch();
            data::delete_one_time_key(&mut batch, user_id, device_id, &key_id);
            batch.commit()?;
            return Ok(Some((key_id, value)));
        }
        if let Some((key_id, mut fallback)) = data::first_fallback_key(&self.db, user_id, device_id, &wanted)? {
            fallback.used = true;
            let value = fallback.key.clone();
            let mut batch = self.db.batch();
            batch.next_count_quiet();
            batch.wake_user(user_id);
            data::put_fallback_key(&mut batch, user_id, device_id, &key_id, &fallback);
            batch.commit()?;
            return Ok(Some((key_id, value)));
        }
        Ok(None)
    }

    /// Queue a to-device message for one device.
    pub fn queue_to_device(
        &self,
        batch: &mut Batch<'_>,
        sender: &UserId,
        target: &UserId,
        device_id: &str,
        kind: &str,
        content: &Value,
    ) {
        let count = batch.next_count_quiet();
        batch.wake_user(target);
        data::put_to_device(
            batch,
            target,
            device_id,
            count,
            &ToDeviceMessage { sender: sender.to_owned(), kind: kind.to_owned(), content: content.clone() },
        );
    }

    pub fn batch(&self) -> Batch<'_> {
        self.db.batch()
    }

    /// Messages for a device up to `upto`; those at or before `acknowledged`
    /// (the client's `since`) were delivered and are deleted first.
    pub fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &str,
        acknowledged: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Value>> {
        Ok(self.to_device_page(user_id, device_id, acknowledged, upto, usize::MAX)?.0)
    }

    /// At most `limit` of [`Self::to_device_messages`], and the position
    /// they reach (`upto` when none are left), which the client
    /// acknowledges next time.
    pub fn to_device_page(
        &self,
        user_id: &UserId,
        device_id: &str,
        acknowledged: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, u64)> {
        let (mut messages, delivered) = data::to_device_messages(&self.db, user_id, device_id, acknowledged, upto)?;
        let mut reached = upto;
        if messages.len() > limit {
            messages.truncate(limit);
            reached = messages.last().map_or(upto, |(count, _)| *count);
        }
        let out: Vec<Value> = messages
            .into_iter()
            .map(|(_, message)| {
                serde_json::json!({ "sender": message.sender, "type": message.kind, "content": message.content })
            })
            .collect();
        if !delivered.is_empty() {
            let mut batch = self.db.batch();
            for count in delivered {
                data::delete_to_device(&mut batch, user_id, device_id, count);
            }
            batch.commit()?;
        }
        Ok((out, reached))
    }
}

/// A user's keys as published to others.
pub struct PublishedKeys {
    pub devices: BTreeMap<OwnedDeviceId, ruma::serde::Raw<ruma::encryption::DeviceKeys>>,
    pub master: Option<ruma::serde::Raw<ruma::encryption::CrossSigningKey>>,
    pub self_signing: Option<ruma::serde::Raw<ruma::encryption::CrossSigningKey>>,
    pub user_signing: Option<ruma::serde::Raw<ruma::encryption::CrossSigningKey>>,
}

/// The device and cross-signing keys of a local user, with each device's
/// display name as `unsigned.device_display_name`. The user-signing key is
/// only for the user themself.
pub fn published_keys(
    s: &crate::service::Services,
    user_id: &UserId,
    devices: &[OwnedDeviceId],
    own: bool,
) -> Result<PublishedKeys> {
    fn raw<T>(value: &Value) -> Result<ruma::serde::Raw<T>> {
        Ok(ruma::serde::Raw::from_json(serde_json::value::to_raw_value(value)?))
    }
    let mut out = BTreeMap::new();
    for (device_id, mut device) in s.keys.device_keys(user_id, devices)? {
        if let Some(object) = device.as_object_mut() {
            let name = s.users.device(user_id, device_id.as_str())?.and_then(|record| record.display_name);
            let unsigned = match name {
                Some(name) => serde_json::json!({ "device_display_name": name }),
                None => serde_json::json!({}),
            };
            object.insert("unsigned".into(), unsigned);
        }
        out.insert(device_id, raw(&device)?);
    }
    let cross = |kind: &str| -> Result<Option<ruma::serde::Raw<_>>> {
        s.keys.cross_signing_key(user_id, kind)?.as_ref().map(raw).transpose()
    };
    Ok(PublishedKeys {
        devices: out,
        master: cross(MASTER)?,
        self_signing: cross(SELF_SIGNING)?,
        user_signing: if own { cross(USER_SIGNING)? } else { None },
    })
}

/// Those of `users` whose keys changed after position `from`, up to `to`.
pub fn keys_changed_between(
    s: &crate::service::Services,
    users: &BTreeSet<OwnedUserId>,
    from: u64,
    to: u64,
) -> Result<BTreeSet<OwnedUserId>> {
    let mut changed = BTreeSet::new();
    for user in users {
        let at = s.keys.changed_at(user)?;
        if at > from && at <= to {
            changed.insert(user.clone());
        }
    }
    Ok(changed)
}

/// Membership events one `/keys/changes` request reads per room at most.
const MAX_CHANGES_SCAN: usize = 1_000;

/// Whose device lists changed for `user_id` between two sync positions:
/// peers whose keys changed, who joined one of the user's rooms, or whose
/// room the user joined (`changed`), and those who no longer share a room
/// (`left`). The one definition both syncs and `/keys/changes` use.
pub fn changes_between(
    s: &crate::service::Services,
    user_id: &UserId,
    from: u64,
    to: u64,
) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
    use ruma::events::room::member::MembershipState;
    let peers = room_peers(s, user_id)?;
    let mut changed = keys_changed_between(s, &peers, from, to)?;
    let mut left = BTreeSet::new();
    for (room_id, record) in s.rooms.user_rooms(user_id)? {
        let joined = record.membership == MembershipState::Join;
        if record.count <= from && !joined {
            continue;
        }
        // A room the user left since: its members they meet nowhere else are gone.
        if !joined && record.count <= to {
            left.extend(s.rooms.joined_members(&room_id)?.into_iter().filter(|member| !peers.contains(member)));
        }
        for (count, event_id) in s.rooms.timeline(&room_id, to as i64 + 1, false, MAX_CHANGES_SCAN)? {
            if count <= from as i64 {
                break;
            }
            let Some((pdu, _)) = s.rooms.get_pdu(&event_id)? else { continue };
            if pdu.kind != ruma::events::TimelineEventType::RoomMember {
                continue;
            }
            let Some(member) = pdu.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok()) else { continue };
            if member == user_id {
                continue;
            }
            match crate::service::rooms::membership_of(&pdu) {
                Some(MembershipState::Join) if peers.contains(&member) => {
                    changed.insert(member);
                }
                Some(MembershipState::Leave | MembershipState::Ban) if !peers.contains(&member) => {
                    left.insert(member);
                }
                _ => {}
            }
        }
        // A room the user joined (or rejoined, or changed their membership
        // in) since: everyone in it may be new to their device lists, as on
        // Synapse; while the user was away nobody told this server of their
        // devices.
        if joined && record.count > from && record.count <= to {
            changed.extend(s.rooms.joined_members(&room_id)?.into_iter().filter(|member| member != user_id));
        }
    }
    Ok((changed.into_iter().collect(), left.into_iter().collect()))
}

/// A member event from another server has been placed: if it is a join,
/// we may not have shared a room with its user until now.
pub fn on_remote_member(s: &crate::service::Services, pdu: &crate::pdu::Pdu) {
    if pdu.kind == ruma::events::TimelineEventType::RoomMember
        && crate::service::rooms::membership_of(pdu) == Some(ruma::events::room::member::MembershipState::Join)
        && let Some(Ok(user_id)) = pdu.state_key.as_deref().map(<&UserId>::try_from)
        && !s.users.is_local(user_id)
    {
        s.keys.forget_remote([user_id]);
    }
}

/// Users sharing a room with `user_id` (and the user), for key-change tracking.
pub fn room_peers(s: &crate::service::Services, user_id: &UserId) -> Result<BTreeSet<OwnedUserId>> {
    let mut peers = BTreeSet::from([user_id.to_owned()]);
    for (room_id, record) in s.rooms.user_rooms(user_id)? {
        if record.membership == ruma::events::room::member::MembershipState::Join {
            peers.extend(s.rooms.joined_members(&room_id)?);
        }
    }
    Ok(peers)
}

/// Remove everything stored for a device (it was deleted or logged out).
pub fn forget_device(db: &Db, batch: &mut Batch<'_>, user_id: &UserId, device_id: &str) -> Result<()> {
    data::delete_device(db, batch, user_id, device_id)?;
    // A device gone is a device-list change for everyone who shares a room,
    // keys or not.
    Keys::mark_changed(batch, user_id);
    Ok(())
}

fn check_key_id(key_id: &str) -> Result<()> {
    match key_id.split_once(':') {
        Some((algorithm, id)) if !algorithm.is_empty() && !id.is_empty() && key_id.len() <= 255 => Ok(()),
        _ => Err(Error::invalid_param(format!("`{key_id}` is not an algorithm:key_id pair."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_asked_for_before_a_change_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(Arc::new(Db::open(dir.path(), false).unwrap()));
        let bob = OwnedUserId::try_from("@bob:other.example").unwrap();

        let asked_at = Instant::now();
        keys.cache_remote(&bob, RemoteUserKeys::default(), asked_at);
        assert!(keys.cached_remote(&bob).is_some(), "kept");

        // A change announced while a second query is in flight: its answer
        // may predate the change, so it is not kept.
        let asked_at = Instant::now();
        keys.mark_remote_changed(&bob).unwrap();
        assert!(keys.cached_remote(&bob).is_none(), "dropped on the change");
        keys.cache_remote(&bob, RemoteUserKeys::default(), asked_at);
        assert!(keys.cached_remote(&bob).is_none(), "a stale answer is not kept");

        std::thread::sleep(Duration::from_millis(5));
        keys.cache_remote(&bob, RemoteUserKeys::default(), Instant::now());
        assert!(keys.cached_remote(&bob).is_some(), "a later answer is kept");
    }
}
