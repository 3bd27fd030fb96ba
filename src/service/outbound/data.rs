//! The outbound queue's storage: column family `outbox`, owned here. `‖` is
//! the separator byte `0xFF`; `u64be` is 8 bytes big-endian.
//!
//! - `outbox`: destination server ‖ u64be sequence (a stream position) →
//!   [`OutboxItem`]

use ruma::{OwnedServerName, ServerName};

use super::OutboxItem;
use crate::{
    error::Result,
    storage::{Batch, Cf, Db, SEP, prefix, u64_from_be},
};

fn row_key(destination: &ServerName, seq: u64) -> Vec<u8> {
    [&prefix(&[destination.as_bytes()])[..], &seq.to_be_bytes()].concat()
}

pub(super) fn put_row(batch: &mut Batch<'_>, destination: &ServerName, seq: u64, item: &OutboxItem) {
    batch.put_json(Cf::Outbox, &row_key(destination, seq), item);
}

pub(super) fn delete_rows(batch: &mut Batch<'_>, destination: &ServerName, seqs: &[u64]) {
    for seq in seqs {
        batch.delete(Cf::Outbox, &row_key(destination, *seq));
    }
}

/// The next rows for a destination, in order, up to `max_pdus` PDUs and
/// `max_edus` EDUs. Rows that cannot be read are deleted (a write of its
/// own each).
pub(super) fn next_rows(
    db: &Db,
    destination: &ServerName,
    max_pdus: usize,
    max_edus: usize,
) -> Result<Vec<(u64, OutboxItem)>> {
    let prefix = prefix(&[destination.as_bytes()]);
    let (mut pdus, mut edus) = (0, 0);
    let mut out = Vec::new();
    for item in db.scan_prefix(Cf::Outbox, &prefix) {
        let (k, v) = item?;
        let seq = u64_from_be(&k[prefix.len()..]);
        let Ok(row) = serde_json::from_slice::<OutboxItem>(&v) else {
            tracing::warn!(%destination, seq, "dropping an unreadable outbox row");
            db.delete(Cf::Outbox, &k)?;
            continue;
        };
        match &row {
            OutboxItem::Pdu(_) if pdus < max_pdus => pdus += 1,
            OutboxItem::Edu(_) if edus < max_edus => edus += 1,
            _ => break,
        }
        out.push((seq, row));
    }
    Ok(out)
}

/// Destinations with queued rows.
pub(super) fn queued_destinations(db: &Db) -> Result<Vec<OwnedServerName>> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    let mut seek: Vec<u8> = Vec::new();
    loop {
        let Some(item) = db.scan_from(Cf::Outbox, &[], &seek, true).next() else { break };
        let (k, _) = item?;
        let Some(end) = k.iter().position(|b| *b == SEP) else { break };
        if let Ok(server) = OwnedServerName::try_from(String::from_utf8_lossy(&k[..end]).into_owned()) {
            out.push(server);
        }
        // Past every row of this destination (SEP, then an 8-byte sequence).
        seek = k[..end].to_vec();
        seek.extend_from_slice(&[SEP; 9]);
    }
    Ok(out)
}
