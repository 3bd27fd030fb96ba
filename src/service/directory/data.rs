//! The directory's storage: the column families below, owned here.
//!
//! - `aliases`: room alias → [`AliasRecord`] (its room and who made it)
//! - `public_rooms`: room_id → `true` (JSON): the room is in the public
//!   room directory

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId};
use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    storage::{Batch, Cf, Db, decode},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AliasRecord {
    pub(super) room_id: OwnedRoomId,
    pub(super) creator: OwnedUserId,
}

// ----- aliases -----

pub(super) fn alias(db: &Db, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
    Ok(db.get_json(Cf::Aliases, alias.as_bytes())?)
}

pub(super) fn alias_exists(db: &Db, alias: &RoomAliasId) -> Result<bool> {
    Ok(db.exists(Cf::Aliases, alias.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_alias(db: &Db, alias: &RoomAliasId, record: &AliasRecord) -> Result<()> {
    Ok(db.put_json(Cf::Aliases, alias.as_bytes(), record)?)
}

pub(super) fn put_alias(batch: &mut Batch<'_>, alias: &RoomAliasId, record: &AliasRecord) {
    batch.put_json(Cf::Aliases, alias.as_bytes(), record);
}

/// A write of its own.
pub(super) fn delete_alias(db: &Db, alias: &RoomAliasId) -> Result<()> {
    Ok(db.delete(Cf::Aliases, alias.as_bytes())?)
}

/// The aliases pointing to a room (a scan of all aliases).
pub(super) fn room_aliases(db: &Db, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Aliases, b"") {
        let (k, v) = item?;
        let record: AliasRecord = decode(Cf::Aliases, &v)?;
        if record.room_id == room_id
            && let Ok(alias) = OwnedRoomAliasId::try_from(String::from_utf8_lossy(&k).into_owned())
        {
            out.push(alias);
        }
    }
    Ok(out)
}

// ----- public_rooms -----

pub(super) fn is_published(db: &Db, room_id: &RoomId) -> Result<bool> {
    Ok(db.exists(Cf::PublicRooms, room_id.as_bytes())?)
}

/// A write of its own.
pub(super) fn set_published(db: &Db, room_id: &RoomId, published: bool) -> Result<()> {
    if published {
        db.put_json(Cf::PublicRooms, room_id.as_bytes(), &true)?;
    } else {
        db.delete(Cf::PublicRooms, room_id.as_bytes())?;
    }
    Ok(())
}

pub(super) fn put_published(batch: &mut Batch<'_>, room_id: &RoomId) {
    batch.put_json(Cf::PublicRooms, room_id.as_bytes(), &true);
}

pub(super) fn delete_published(batch: &mut Batch<'_>, room_id: &RoomId) {
    batch.delete(Cf::PublicRooms, room_id.as_bytes());
}

pub(super) fn published_rooms(db: &Db) -> Result<Vec<OwnedRoomId>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::PublicRooms, b"") {
        let (k, _) = item?;
        if let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&k).into_owned()) {
            out.push(room_id);
        }
    }
    Ok(out)
}
