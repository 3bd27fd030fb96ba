//! The relation index's storage: the column families below and their key
//! formats, owned here. `‖` is the separator byte `0xFF`; `u64be` is 8
//! bytes big-endian; `sortable` is an ordering with its sign bit flipped, so
//! backfilled (negative) orderings sort first.
//!
//! - `relations`: parent event id ‖ u64be sortable ordering ‖ child event id → [`Stored`]
//!   (the child's rel type, event type and sender)
//! - `thread_roots`: room id ‖ root event id → u64be sortable ordering of the latest reply

use std::collections::BTreeMap;

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId};
use serde::{Deserialize, Serialize};

use super::Child;
use crate::{
    error::Result,
    storage::{Batch, Cf, Db, decode, key, prefix, sortable, u64_from_be, unsortable},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) rel_type: String,
    pub(super) kind: String,
    pub(super) sender: OwnedUserId,
}

// ----- relations -----

pub(super) fn put_relation(batch: &mut Batch<'_>, parent: &EventId, ordering: i64, child: &EventId, stored: &Stored) {
    batch.put_json(
        Cf::Relations,
        &key(&[parent.as_bytes(), &sortable(ordering).to_be_bytes(), child.as_bytes()]),
        stored,
    );
}

/// Direct children of `parent`, oldest first, at most `limit` read.
pub(super) fn children(db: &Db, parent: &EventId, limit: usize) -> Result<Vec<Child>> {
    let prefix = prefix(&[parent.as_bytes()]);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Relations, &prefix).take(limit) {
        let (k, v) = item?;
        let rest = &k[prefix.len()..];
        if rest.len() < 9 {
            continue;
        }
        let ordering = unsortable(u64_from_be(&rest[..8]));
        let Ok(event_id) = OwnedEventId::try_from(String::from_utf8_lossy(&rest[9..]).into_owned()) else { continue };
        let stored: Stored = decode(Cf::Relations, &v)?;
        out.push(Child { event_id, rel_type: stored.rel_type, kind: stored.kind, sender: stored.sender, ordering });
    }
    Ok(out)
}

// ----- thread_roots -----

fn thread_root_key(room_id: &RoomId, root: &EventId) -> Vec<u8> {
    key(&[room_id.as_bytes(), root.as_bytes()])
}

/// Stage `ordering` as the root's latest reply, unless a later one is stored.
pub(super) fn raise_thread_root(
    db: &Db,
    batch: &mut Batch<'_>,
    room_id: &RoomId,
    root: &EventId,
    ordering: i64,
) -> Result<()> {
    let root_key = thread_root_key(room_id, root);
    let latest = db.get(Cf::ThreadRoots, &root_key)?.map(|v| u64_from_be(&v)).unwrap_or(0);
    if sortable(ordering) > latest {
        batch.put(Cf::ThreadRoots, &root_key, &sortable(ordering).to_be_bytes());
    }
    Ok(())
}

/// A room's thread roots by the ordering of their latest reply.
pub(super) fn thread_roots(db: &Db, room_id: &RoomId) -> Result<BTreeMap<i64, OwnedEventId>> {
    let prefix = prefix(&[room_id.as_bytes()]);
    let mut roots = BTreeMap::new();
    for item in db.scan_prefix(Cf::ThreadRoots, &prefix) {
        let (k, v) = item?;
        let latest = unsortable(u64_from_be(&v));
        if let Ok(root) = OwnedEventId::try_from(String::from_utf8_lossy(&k[prefix.len()..]).into_owned()) {
            roots.insert(latest, root);
        }
    }
    Ok(roots)
}

// ----- both -----

/// Stage the deletion of the relations of purged events (their ids, raw
/// bytes) and of the room's thread roots.
pub(super) fn delete_purged(db: &Db, batch: &mut Batch<'_>, room_id: &RoomId, purged: &[Vec<u8>]) -> Result<()> {
    for parent in purged {
        for item in db.scan_prefix(Cf::Relations, &prefix(&[parent])) {
            let (k, _) = item?;
            batch.delete(Cf::Relations, &k);
        }
    }
    for item in db.scan_prefix(Cf::ThreadRoots, &prefix(&[room_id.as_bytes()])) {
        let (k, _) = item?;
        batch.delete(Cf::ThreadRoots, &k);
    }
    Ok(())
}
