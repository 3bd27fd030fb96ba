//! Account data's and filters' storage: the column families below and their
//! key formats, owned here. `‖` is the separator byte `0xFF`.
//!
//! - `account_data`: user ‖ room_id (empty for global data) ‖ type →
//!   [`Entry`]: the stream position of its last change and the content
//! - `filters`: user ‖ filter id → the filter (JSON)

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use super::{Entry, Item};
use crate::{
    error::Result,
    storage::{Batch, Cf, Db, SEP, decode, key, prefix},
};

// ----- account_data -----

fn entry_key(user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), room_id.map(|r| r.as_bytes()).unwrap_or(b""), kind.as_bytes()])
}

pub(super) fn entry(db: &Db, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Entry>> {
    Ok(db.get_json(Cf::AccountData, &entry_key(user_id, room_id, kind))?)
}

pub(super) fn put_entry(batch: &mut Batch<'_>, user_id: &UserId, room_id: Option<&RoomId>, kind: &str, entry: &Entry) {
    batch.put_json(Cf::AccountData, &entry_key(user_id, room_id, kind), entry);
}

/// A user's items changed after stream position `since`.
pub(super) fn changed_since(db: &Db, user_id: &UserId, since: u64) -> Result<Vec<Item>> {
    items(db, &prefix(&[user_id.as_bytes()]), user_id, since)
}

/// A user's global items changed after `since` (room ids start with `!`,
/// so the empty room part's prefix holds only these).
pub(super) fn global_changed_since(db: &Db, user_id: &UserId, since: u64) -> Result<Vec<Item>> {
    items(db, &prefix(&[user_id.as_bytes(), b""]), user_id, since)
}

/// A user's items for one room, whenever they changed.
pub(super) fn room_items(db: &Db, user_id: &UserId, room_id: &RoomId) -> Result<Vec<Item>> {
    items(db, &prefix(&[user_id.as_bytes(), room_id.as_bytes()]), user_id, 0)
}

/// The items under `scan` (a prefix starting with the user) changed after `since`.
fn items(db: &Db, scan: &[u8], user_id: &UserId, since: u64) -> Result<Vec<Item>> {
    let user_prefix = prefix(&[user_id.as_bytes()]);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::AccountData, scan) {
        let (k, v) = item?;
        let entry: Entry = decode(Cf::AccountData, &v)?;
        if entry.count <= since {
            continue;
        }
        let rest = &k[user_prefix.len()..];
        let Some(split) = rest.iter().position(|b| *b == SEP) else { continue };
        let room = &rest[..split];
        let room_id = if room.is_empty() {
            None
        } else {
            match OwnedRoomId::try_from(String::from_utf8_lossy(room).into_owned()) {
                Ok(room_id) => Some(room_id),
                Err(_) => continue,
            }
        };
        out.push(Item {
            room_id,
            kind: String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
            count: entry.count,
            content: entry.content,
        });
    }
    Ok(out)
}

// ----- filters -----

fn filter_key(user_id: &UserId, id: &str) -> Vec<u8> {
    key(&[user_id.as_bytes(), id.as_bytes()])
}

pub(super) fn filter(db: &Db, user_id: &UserId, id: &str) -> Result<Option<Value>> {
    Ok(db.get_json(Cf::Filters, &filter_key(user_id, id))?)
}

/// A write of its own.
pub(super) fn save_filter(db: &Db, user_id: &UserId, id: &str, filter: &Value) -> Result<()> {
    Ok(db.put_json(Cf::Filters, &filter_key(user_id, id), filter)?)
}
