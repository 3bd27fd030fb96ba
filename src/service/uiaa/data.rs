//! User-interactive authentication's storage: column family
//! `uiaa_sessions`, session id → [`UiaaSession`] (JSON; its `id` is the key,
//! not stored in the value).

use super::UiaaSession;
use crate::{
    error::Result,
    storage::{Batch, Cf, Db},
};

pub(super) fn session(db: &Db, id: &str) -> Result<Option<UiaaSession>> {
    Ok(db.get_json(Cf::UiaaSessions, id.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_session(db: &Db, id: &str, session: &UiaaSession) -> Result<()> {
    Ok(db.put_json(Cf::UiaaSessions, id.as_bytes(), session)?)
}

/// A write of its own.
pub(super) fn delete_session(db: &Db, id: &str) -> Result<()> {
    Ok(db.delete(Cf::UiaaSessions, id.as_bytes())?)
}

/// Stage the deletion of the sessions `expired` says so of, and of those
/// that cannot be read; returns how many.
pub(super) fn delete_sessions_where(
    db: &Db,
    batch: &mut Batch<'_>,
    expired: impl Fn(&UiaaSession) -> bool,
) -> Result<usize> {
    let mut deleted = 0;
    for item in db.scan_prefix(Cf::UiaaSessions, &[]) {
        let (key, value) = item?;
        if serde_json::from_slice::<UiaaSession>(&value).map_or(true, |s| expired(&s)) {
            batch.delete(Cf::UiaaSessions, &key);
            deleted += 1;
        }
    }
    Ok(deleted)
}
