//! Rooms' storage: the column families below and their key formats, owned
//! here. `‖` is the separator byte `0xFF`; `u64be` is 8 bytes big-endian.
//!
//! - `pdus`: event_id → [`StoredPdu`]: `meta` (room, position, state
//!   before/after, txn, prev_content, redacted_because, rejected) and the
//!   signed PDU. Outliers (events of rooms porch does not hold too: remote
//!   invites, knocks, leaves) are kept here as well.
//! - `timeline`: live events: room_id ‖ u64be position; history fetched by
//!   backfill: room_id ‖ `0xFE` ‖ u64be (u64::MAX − n) for the n-th event
//!   below the live timeline (so it sorts first, oldest lowest) → event_id
//!   (raw bytes)
//! - `state_snapshots`: u64be snapshot id → `0x01 ‖ u64be parent (0: none)
//!   ‖ u32be depth ‖ (u64be state key id ‖ u64be event short id)*`: the
//!   entries that differ from the parent, or the whole state every 16 deltas
//!   (schema version 2 and before: JSON with the strings themselves)
//! - `state_key_ids`: event type ‖ state key → u64be short id;
//!   `state_keys_by_id`: u64be → event type ‖ state key. Ids are handed out
//!   from 1 the first time a stored state holds the pair, and never change
//! - `event_short_ids`: event_id → u64be short id; `event_ids_by_short`:
//!   u64be → event_id (raw bytes), for every event a stored state holds
//! - `rooms`: room_id → [`RoomRecord`]: version, current snapshot, forward
//!   extremities, depth, last position
//! - `room_members`: room_id ‖ user_id → membership
//! - `user_rooms`: user_id ‖ room_id → [`MembershipRecord`]: membership,
//!   its event id and position, forgotten (local users only)
//! - `txn_ids`, two key shapes:
//!   - room events: user ‖ device ‖ room_id ‖ txn_id → event_id (raw bytes);
//!     a transaction id is scoped to the device and the room it was sent to
//!   - to-device messages: user ‖ device ‖ `to_device` ‖ txn_id → `true`
//!     (JSON); `to_device` is never a room id (those start with `!`)
//! - `pending_redactions`: redacted event id → id of a backfilled redaction
//!   that came before its target (history arrives newest first), applied
//!   when the target is stored (raw bytes)

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};

use super::{MembershipRecord, RoomRecord, state::Snapshot};
use crate::{
    error::{Error, Result},
    pdu::{StoredPdu, TxnRef},
    storage::{Batch, Cf, Db, SEP, decode, key, prefix, u64_from_be},
};

// ----- pdus -----

pub(crate) fn get_pdu_record(db: &Db, event_id: &EventId) -> Result<Option<StoredPdu>> {
    Ok(db.get_json(Cf::Pdus, event_id.as_bytes())?)
}

pub(crate) fn put_pdu(batch: &mut Batch<'_>, event_id: &EventId, stored: &StoredPdu) {
    batch.put_json(Cf::Pdus, event_id.as_bytes(), stored);
}

// ----- rooms -----

/// Every room this server holds.
pub(crate) fn room_ids(db: &Db) -> Result<Vec<OwnedRoomId>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Rooms, b"") {
        let (k, _) = item?;
        if let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&k).into_owned()) {
            out.push(room_id);
        }
    }
    Ok(out)
}

pub(crate) fn room_record(db: &Db, room_id: &RoomId) -> Result<Option<RoomRecord>> {
    Ok(db.get_json(Cf::Rooms, room_id.as_bytes())?)
}

pub(crate) fn room_exists(db: &Db, room_id: &RoomId) -> Result<bool> {
    Ok(db.exists(Cf::Rooms, room_id.as_bytes())?)
}

pub(crate) fn put_room_record(batch: &mut Batch<'_>, room_id: &RoomId, record: &RoomRecord) {
    batch.put_json(Cf::Rooms, room_id.as_bytes(), record);
}

// ----- state_snapshots -----

const SNAPSHOT_FORMAT: u8 = 1;
const SNAPSHOT_HEADER: usize = 1 + 8 + 4;

fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER + snapshot.changes.len() * 16);
    out.push(SNAPSHOT_FORMAT);
    out.extend_from_slice(&snapshot.parent.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&snapshot.depth.to_be_bytes());
    for (key, event) in &snapshot.changes {
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&event.to_be_bytes());
    }
    out
}

fn decode_snapshot(id: u64, bytes: &[u8]) -> Result<Snapshot> {
    if bytes.first() != Some(&SNAPSHOT_FORMAT)
        || bytes.len() < SNAPSHOT_HEADER
        || !(bytes.len() - SNAPSHOT_HEADER).is_multiple_of(16)
    {
        return Err(Error::internal(format!(
            "state snapshot {id} is in an unknown format (a database of an older porch must be migrated first)"
        )));
    }
    let parent = u64_from_be(&bytes[1..9]);
    let depth = u32::from_be_bytes(bytes[9..13].try_into().expect("four bytes"));
    let changes = bytes[SNAPSHOT_HEADER..]
        .chunks_exact(16)
        .map(|pair| (u64_from_be(&pair[..8]), u64_from_be(&pair[8..])))
        .collect();
    Ok(Snapshot { parent: (parent != 0).then_some(parent), depth, changes })
}

pub(super) fn snapshot(db: &Db, id: u64) -> Result<Option<Snapshot>> {
    db.get(Cf::StateSnapshots, &id.to_be_bytes())?.map(|bytes| decode_snapshot(id, &bytes)).transpose()
}

pub(super) fn put_snapshot(batch: &mut Batch<'_>, id: u64, snapshot: &Snapshot) {
    batch.put(Cf::StateSnapshots, &id.to_be_bytes(), &encode_snapshot(snapshot));
}

/// A snapshot as schema version 2 stored it: the strings themselves.
#[derive(serde::Deserialize)]
pub(crate) struct LegacySnapshot {
    pub parent: Option<u64>,
    pub depth: u32,
    pub changes: Vec<(String, String, OwnedEventId)>,
}

/// Every snapshot still in the JSON format, a step of at most `limit` from
/// `after` (exclusive), with its id.
pub(crate) fn legacy_snapshots(db: &Db, after: u64, limit: usize) -> Result<Vec<(u64, LegacySnapshot)>> {
    let mut out = Vec::new();
    for item in db.scan_from(Cf::StateSnapshots, b"", &(after + 1).to_be_bytes(), true) {
        let (k, v) = item?;
        if v.first() == Some(&b'{') {
            out.push((u64_from_be(&k), decode(Cf::StateSnapshots, &v)?));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

// ----- state_key_ids, state_keys_by_id, event_short_ids, event_ids_by_short -----

pub(super) fn state_key_bytes(kind: &str, state_key: &str) -> Vec<u8> {
    key(&[kind.as_bytes(), state_key.as_bytes()])
}

pub(super) fn state_key_id(db: &Db, pair: &[u8]) -> Result<Option<u64>> {
    Ok(db.get(Cf::StateKeyIds, pair)?.map(|v| u64_from_be(&v)))
}

/// The event type and state key with short id `id`.
pub(super) fn state_key_by_id(db: &Db, id: u64) -> Result<Option<(String, String)>> {
    let Some(pair) = db.get(Cf::StateKeysById, &id.to_be_bytes())? else { return Ok(None) };
    let split = pair.iter().position(|b| *b == SEP).unwrap_or(pair.len());
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(Error::internal);
    Ok(Some((text(&pair[..split])?, text(pair.get(split + 1..).unwrap_or_default())?)))
}

pub(super) fn event_short_id(db: &Db, event_id: &EventId) -> Result<Option<u64>> {
    Ok(db.get(Cf::EventShortIds, event_id.as_bytes())?.map(|v| u64_from_be(&v)))
}

pub(super) fn event_id_by_short(db: &Db, id: u64) -> Result<Option<OwnedEventId>> {
    let Some(raw) = db.get(Cf::EventIdsByShort, &id.to_be_bytes())? else { return Ok(None) };
    Ok(Some(OwnedEventId::try_from(String::from_utf8_lossy(&raw).into_owned()).map_err(Error::internal)?))
}

/// Record a new short id both ways, at once and on its own: every reader
/// must find it before any state holding it is written. It reaches the disk
/// with the first fsynced write after it (the WAL keeps writes in order),
/// which is at the latest the write of the state that holds it.
fn put_short_id(db: &Db, forward: Cf, reverse: Cf, name: &[u8], id: u64) -> Result<()> {
    let mut batch = db.batch();
    batch.put(forward, name, &id.to_be_bytes());
    batch.put(reverse, &id.to_be_bytes(), name);
    batch.commit()?;
    Ok(())
}

pub(super) fn put_state_key_id(db: &Db, pair: &[u8], id: u64) -> Result<()> {
    put_short_id(db, Cf::StateKeyIds, Cf::StateKeysById, pair, id)
}

pub(super) fn put_event_short_id(db: &Db, event_id: &EventId, id: u64) -> Result<()> {
    put_short_id(db, Cf::EventShortIds, Cf::EventIdsByShort, event_id.as_bytes(), id)
}

/// The highest short id handed out in `reverse` (0: none yet).
fn last_short_id(db: &Db, reverse: Cf) -> Result<u64> {
    Ok(db.last_key(reverse)?.map_or(0, |k| u64_from_be(&k)))
}

pub(super) fn last_state_key_id(db: &Db) -> Result<u64> {
    last_short_id(db, Cf::StateKeysById)
}

pub(super) fn last_event_short_id(db: &Db) -> Result<u64> {
    last_short_id(db, Cf::EventIdsByShort)
}

// ----- room_members -----

fn member_key(room_id: &RoomId, user_id: &UserId) -> Vec<u8> {
    key(&[room_id.as_bytes(), user_id.as_bytes()])
}

pub(crate) fn membership(db: &Db, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipState>> {
    Ok(db.get_json(Cf::RoomMembers, &member_key(room_id, user_id))?)
}

/// Every user with a membership in the room.
pub(crate) fn members(db: &Db, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipState)>> {
    by_id_after(db, Cf::RoomMembers, room_id.as_bytes())
}

/// Every entry under `owner ‖`, keyed by the identifier after it (entries
/// whose rest is not one are passed over), with its decoded value.
fn by_id_after<I: TryFrom<String>, V: serde::de::DeserializeOwned>(
    db: &Db,
    cf: Cf,
    owner: &[u8],
) -> Result<Vec<(I, V)>> {
    let prefix = prefix(&[owner]);
    let mut out = Vec::new();
    for item in db.scan_prefix(cf, &prefix) {
        let (k, v) = item?;
        let Ok(id) = I::try_from(String::from_utf8_lossy(&k[prefix.len()..]).into_owned()) else { continue };
        out.push((id, decode(cf, &v)?));
    }
    Ok(out)
}

pub(crate) fn put_member(batch: &mut Batch<'_>, room_id: &RoomId, user_id: &UserId, membership: &MembershipState) {
    batch.put_json(Cf::RoomMembers, &member_key(room_id, user_id), membership);
}

// ----- user_rooms -----

fn user_room_key(user_id: &UserId, room_id: &RoomId) -> Vec<u8> {
    key(&[user_id.as_bytes(), room_id.as_bytes()])
}

/// The rooms a local user has (or had) a membership in.
pub(crate) fn user_rooms(db: &Db, user_id: &UserId) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
    by_id_after(db, Cf::UserRooms, user_id.as_bytes())
}

pub(crate) fn user_membership(db: &Db, user_id: &UserId, room_id: &RoomId) -> Result<Option<MembershipRecord>> {
    Ok(db.get_json(Cf::UserRooms, &user_room_key(user_id, room_id))?)
}

pub(crate) fn put_user_membership(
    batch: &mut Batch<'_>,
    user_id: &UserId,
    room_id: &RoomId,
    record: &MembershipRecord,
) {
    // Every change of a user's rooms is one of their standing in a room.
    batch.wake_user_in_room(user_id, room_id);
    batch.put_json(Cf::UserRooms, &user_room_key(user_id, room_id), record);
}

/// Mark the user's membership record forgotten, if there is one (a write
/// of its own).
pub(crate) fn set_forgotten(db: &Db, user_id: &UserId, room_id: &RoomId) -> Result<()> {
    let k = user_room_key(user_id, room_id);
    if let Some(mut record) = db.get_json::<MembershipRecord>(Cf::UserRooms, &k)? {
        record.forgotten = true;
        db.put_json(Cf::UserRooms, &k, &record)?;
    }
    Ok(())
}

// ----- timeline -----

/// Where a room's live timeline (`room ‖ 0xFF`) or its backfilled history
/// (`room ‖ 0xFE`, sorting just before) is kept. 0xFE never occurs in UTF-8,
/// so no other room's keys fall in either range.
fn timeline_range(room_id: &RoomId, live: bool) -> Vec<u8> {
    let mut range = room_id.as_bytes().to_vec();
    range.push(if live { SEP } else { SEP - 1 });
    range
}

/// Live event `p` at `u64be(p)`; backfilled `-n` at `u64be(u64::MAX - n)`,
/// so older history sorts lower in both ranges.
fn timeline_key(room_id: &RoomId, ordering: i64) -> Vec<u8> {
    let mut key = timeline_range(room_id, ordering > 0);
    let raw = if ordering > 0 { ordering as u64 } else { u64::MAX - ordering.unsigned_abs() };
    key.extend_from_slice(&raw.to_be_bytes());
    key
}

/// Timeline entries from `from` (exclusive) onwards (`forward`) or
/// backwards, at most `limit`, as (ordering, event id): the live range and
/// the backfilled one, each scanned in its own range.
pub(crate) fn timeline(
    db: &Db,
    room_id: &RoomId,
    from: i64,
    forward: bool,
    limit: usize,
) -> Result<Vec<(i64, OwnedEventId)>> {
    let segments: [(i64, bool); 2] = if forward {
        [(from.saturating_add(1), false), (from.saturating_add(1).max(1), true)]
    } else {
        [(from.saturating_sub(1), true), (from.saturating_sub(1).min(-1), false)]
    };
    let mut out = Vec::new();
    for (start, live) in segments {
        if live != (start > 0) || out.len() >= limit {
            continue;
        }
        let range = timeline_range(room_id, live);
        let start_key = timeline_key(room_id, start);
        for item in db.scan_from(Cf::Timeline, &range, &start_key, forward) {
            let (k, v) = item?;
            if out.len() >= limit {
                break;
            }
            let raw = u64_from_be(&k[range.len()..]);
            let ordering = if live { raw as i64 } else { -((u64::MAX - raw) as i64) };
            let Ok(event_id) = OwnedEventId::try_from(String::from_utf8_lossy(&v).into_owned()) else { continue };
            out.push((ordering, event_id));
        }
    }
    Ok(out)
}

pub(crate) fn put_timeline(batch: &mut Batch<'_>, room_id: &RoomId, ordering: i64, event_id: &EventId) {
    batch.put(Cf::Timeline, &timeline_key(room_id, ordering), event_id.as_bytes());
}

/// Stage the deletion of a room's timeline, backfilled history first, and
/// of the events in it; their ids (raw bytes), in that order.
pub(crate) fn purge_timeline(db: &Db, batch: &mut Batch<'_>, room_id: &RoomId) -> Result<Vec<Vec<u8>>> {
    let mut purged = Vec::new();
    for live in [false, true] {
        for item in db.scan_prefix(Cf::Timeline, &timeline_range(room_id, live)) {
            let (k, v) = item?;
            batch.delete(Cf::Timeline, &k);
            batch.delete(Cf::Pdus, &v);
            purged.push(v.to_vec());
        }
    }
    Ok(purged)
}

// ----- txn_ids -----

/// Transaction ids are scoped to the device and the room they were sent to.
fn txn_key(room_id: &RoomId, sender: &UserId, txn: &TxnRef) -> Vec<u8> {
    key(&[sender.as_bytes(), txn.device_id.as_bytes(), room_id.as_bytes(), txn.txn_id.as_bytes()])
}

/// The event a client sent to the room with this transaction id, if any.
pub(crate) fn txn_event(db: &Db, room_id: &RoomId, sender: &UserId, txn: &TxnRef) -> Result<Option<OwnedEventId>> {
    let Some(event_id) = db.get(Cf::TxnIds, &txn_key(room_id, sender, txn))? else { return Ok(None) };
    let event_id = OwnedEventId::try_from(String::from_utf8_lossy(&event_id).into_owned()).map_err(Error::internal)?;
    Ok(Some(event_id))
}

pub(crate) fn put_txn_event(
    batch: &mut Batch<'_>,
    room_id: &RoomId,
    sender: &UserId,
    txn: &TxnRef,
    event_id: &EventId,
) {
    batch.put(Cf::TxnIds, &txn_key(room_id, sender, txn), event_id.as_bytes());
}

/// Record a to-device transaction id (a write of its own); `false` if it
/// was used before.
pub(crate) fn claim_to_device_txn(db: &Db, user_id: &UserId, device_id: &str, txn_id: &str) -> Result<bool> {
    let k = key(&[user_id.as_bytes(), device_id.as_bytes(), b"to_device", txn_id.as_bytes()]);
    if db.exists(Cf::TxnIds, &k)? {
        return Ok(false);
    }
    db.put_json(Cf::TxnIds, &k, &true)?;
    Ok(true)
}

// ----- pending_redactions -----

pub(crate) fn put_pending_redaction(batch: &mut Batch<'_>, target: &EventId, redaction_id: &EventId) {
    batch.put(Cf::PendingRedactions, target.as_bytes(), redaction_id.as_bytes());
}

/// The redaction waiting for `target`, if one is stored; its entry is
/// deleted in `batch` (also when the stored id does not parse, then `None`).
pub(crate) fn take_pending_redaction(db: &Db, batch: &mut Batch<'_>, target: &EventId) -> Result<Option<OwnedEventId>> {
    let Some(redaction_id) = db.get(Cf::PendingRedactions, target.as_bytes())? else { return Ok(None) };
    batch.delete(Cf::PendingRedactions, target.as_bytes());
    Ok(OwnedEventId::try_from(String::from_utf8_lossy(&redaction_id).into_owned()).ok())
}
