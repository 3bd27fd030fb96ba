//! Search's storage: column family `search_terms`, owned here.
//!
//! - `search_terms`: room id ‖ term ‖ u64be sortable ordering ‖ event id →
//!   field (`content.body`, `content.name`, `content.topic`, raw bytes);
//!   a term's entries sort by ordering, so a scan meets the oldest first

use ruma::{EventId, OwnedEventId, RoomId};

use crate::{
    error::Result,
    storage::{Batch, Cf, Db, SEP, key, prefix, sortable, u64_from_be, unsortable},
};

pub(super) fn put_term(
    batch: &mut Batch<'_>,
    room_id: &RoomId,
    term: &str,
    ordering: i64,
    event_id: &EventId,
    field: &str,
) {
    let k = key(&[room_id.as_bytes(), term.as_bytes(), &sortable(ordering).to_be_bytes(), event_id.as_bytes()]);
    batch.put(Cf::SearchTerms, &k, field.as_bytes());
}

/// An indexed word that starts with a query term.
pub(super) struct TermHit {
    pub word: Vec<u8>,
    pub field: Vec<u8>,
    pub ordering: i64,
    pub event_id: OwnedEventId,
}

/// At most `limit` entries of words in the room that start with `term`
/// (entries that cannot be read are passed over, and count).
pub(super) fn term_hits(db: &Db, room_id: &RoomId, term: &str, limit: usize) -> Result<Vec<TermHit>> {
    let start = key(&[room_id.as_bytes(), term.as_bytes()]);
    let room_prefix_len = room_id.as_bytes().len() + 1;
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::SearchTerms, &start).take(limit) {
        let (k, v) = item?;
        let rest = &k[room_prefix_len..];
        let Some(sep) = rest.iter().position(|b| *b == SEP) else { continue };
        let tail = &rest[sep + 1..];
        if tail.len() < 9 {
            continue;
        }
        let Ok(event_id) = OwnedEventId::try_from(String::from_utf8_lossy(&tail[9..]).into_owned()) else {
            continue;
        };
        out.push(TermHit {
            word: rest[..sep].to_vec(),
            field: v.to_vec(),
            ordering: unsortable(u64_from_be(&tail[..8])),
            event_id,
        });
    }
    Ok(out)
}

/// Stage the removal of a room's whole index.
pub(super) fn stage_purge_room(db: &Db, batch: &mut Batch<'_>, room_id: &RoomId) -> Result<()> {
    for item in db.scan_prefix(Cf::SearchTerms, &prefix(&[room_id.as_bytes()])) {
        let (k, _) = item?;
        batch.delete(Cf::SearchTerms, &k);
    }
    Ok(())
}
