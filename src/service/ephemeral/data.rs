//! Read receipts' storage (typing and presence are in memory only): column
//! family `receipts`, owned here. `‖` is the separator byte `0xFF`.
//!
//! - `receipts`: room_id ‖ user_id ‖ receipt type ‖ thread id (empty for
//!   none) → [`StoredReceipt`]: the event, when, and its stream position

use ruma::{OwnedEventId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    storage::{Batch, Cf, Db, SEP, decode, key, prefix},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct StoredReceipt {
    pub(super) event_id: OwnedEventId,
    pub(super) ts: u64,
    pub(super) count: u64,
}

fn receipt_key(room_id: &RoomId, user_id: &UserId, receipt_type: &str, thread: &str) -> Vec<u8> {
    key(&[room_id.as_bytes(), user_id.as_bytes(), receipt_type.as_bytes(), thread.as_bytes()])
}

pub(super) fn receipt(
    db: &Db,
    room_id: &RoomId,
    user_id: &UserId,
    receipt_type: &str,
    thread: &str,
) -> Result<Option<StoredReceipt>> {
    Ok(db.get_json(Cf::Receipts, &receipt_key(room_id, user_id, receipt_type, thread))?)
}

pub(super) fn put_receipt(
    batch: &mut Batch<'_>,
    room_id: &RoomId,
    user_id: &UserId,
    receipt_type: &str,
    thread: &str,
    record: &StoredReceipt,
) {
    batch.put_json(Cf::Receipts, &receipt_key(room_id, user_id, receipt_type, thread), record);
}

/// The stream position of the room's latest receipt (0 for none).
pub(super) fn latest_receipt(db: &Db, room_id: &RoomId) -> Result<u64> {
    let mut latest = 0;
    for item in db.scan_prefix(Cf::Receipts, &prefix(&[room_id.as_bytes()])) {
        let (_, v) = item?;
        latest = latest.max(decode::<StoredReceipt>(Cf::Receipts, &v)?.count);
    }
    Ok(latest)
}

/// Call `each` with (user, receipt type, thread, receipt) for every receipt
/// in the room after position `since`; the key parts as stored (bytes).
pub(super) fn each_receipt_since(
    db: &Db,
    room_id: &RoomId,
    since: u64,
    mut each: impl FnMut(&[u8], &[u8], &[u8], StoredReceipt),
) -> Result<()> {
    let prefix = prefix(&[room_id.as_bytes()]);
    for item in db.scan_prefix(Cf::Receipts, &prefix) {
        let (k, v) = item?;
        let receipt: StoredReceipt = decode(Cf::Receipts, &v)?;
        if receipt.count <= since {
            continue;
        }
        let parts: Vec<&[u8]> = k[prefix.len()..].split(|b| *b == SEP).collect();
        let [user, receipt_type, thread] = parts[..] else { continue };
        each(user, receipt_type, thread, receipt);
    }
    Ok(())
}
