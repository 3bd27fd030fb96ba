//! Reports' storage: column family `reports`, owned here.
//!
//! - `reports`: u64be id (a stream position) → [`Report`]; the id read
//!   back is the key's

use super::Report;
use crate::{
    error::Result,
    storage::{Batch, Cf, Db, decode, u64_from_be},
};

pub(super) fn put_report(batch: &mut Batch<'_>, id: u64, report: &Report) {
    batch.put_json(Cf::Reports, &id.to_be_bytes(), report);
}

/// Newest first, before `before` (an id) if given, at most `limit`.
pub(super) fn reports(db: &Db, before: Option<u64>, limit: usize) -> Result<Vec<Report>> {
    let from = before.map_or(u64::MAX, |b| b.saturating_sub(1)).to_be_bytes();
    let mut out = Vec::new();
    for item in db.scan_from(Cf::Reports, b"", &from, false).take(limit) {
        let (k, v) = item?;
        let mut report: Report = decode(Cf::Reports, &v)?;
        report.id = u64_from_be(&k);
        out.push(report);
    }
    Ok(out)
}
