//! Guest rooms' storage: the column families below, owned here.
//!
//! - `guest_rooms`: room_id → [`GuestRoom`]
//! - `guest_links`: link id → [`Link`]
//! - `link_tokens`: a link's secret token → its link id (raw bytes)

use ruma::RoomId;

use super::{GuestRoom, Link};
use crate::{
    error::Result,
    storage::{Cf, Db, decode},
};

// ----- guest_rooms -----

pub(super) fn room(db: &Db, room_id: &RoomId) -> Result<Option<GuestRoom>> {
    Ok(db.get_json(Cf::GuestRooms, room_id.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_room(db: &Db, record: &GuestRoom) -> Result<()> {
    Ok(db.put_json(Cf::GuestRooms, record.room_id.as_bytes(), record)?)
}

pub(super) fn rooms(db: &Db) -> Result<Vec<GuestRoom>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::GuestRooms, b"") {
        let (_, v) = item?;
        out.push(decode(Cf::GuestRooms, &v)?);
    }
    Ok(out)
}

// ----- guest_links, link_tokens -----

pub(super) fn link(db: &Db, link_id: &str) -> Result<Option<Link>> {
    Ok(db.get_json(Cf::GuestLinks, link_id.as_bytes())?)
}

pub(super) fn link_by_token(db: &Db, token: &str) -> Result<Option<Link>> {
    match db.get(Cf::LinkTokens, token.as_bytes())? {
        Some(id) => link(db, &String::from_utf8_lossy(&id)),
        None => Ok(None),
    }
}

/// The link and its token, as one durable write.
pub(super) fn save_link(db: &Db, link: &Link) -> Result<()> {
    let mut batch = db.batch();
    batch.put_json(Cf::GuestLinks, link.id.as_bytes(), link);
    batch.put(Cf::LinkTokens, link.token.as_bytes(), link.id.as_bytes());
    batch.commit_durable()?;
    Ok(())
}

/// A room's links, in no particular order (a scan of all links).
pub(super) fn links_of(db: &Db, room_id: &RoomId) -> Result<Vec<Link>> {
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::GuestLinks, b"") {
        let (_, v) = item?;
        let link: Link = decode(Cf::GuestLinks, &v)?;
        if link.room_id == room_id {
            out.push(link);
        }
    }
    Ok(out)
}
