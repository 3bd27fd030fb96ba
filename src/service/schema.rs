//! The database's layout version (`meta` `schema_version`, u64be) and the
//! steps that bring a database written by an older porch up to this one's,
//! run once at start before anything else reads. A database from a newer
//! porch is refused rather than misread.
//!
//! | version | layout change |
//! |---|---|
//! | 1 | the first (no `schema_version` key) |
//! | 2 | notification counts are evaluated lazily: `notification_counts_floor` marks what was counted when sent |
//! | 3 | room states are stored in short ids (`state_key_ids`, `event_short_ids` and their reverses) |

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::storage::{Cf, Db, u64_from_be};

pub const CURRENT: u64 = 3;
const VERSION_KEY: &[u8] = b"schema_version";

/// The stored version, upgraded to [`CURRENT`] step by step.
pub fn migrate(db: &Arc<Db>) -> anyhow::Result<u64> {
    let stored = db.get(Cf::Meta, VERSION_KEY).context("cannot read the schema version")?.map(|v| u64_from_be(&v));
    let mut version = match stored {
        Some(version) => version,
        // No stream position was ever handed out: a new database.
        None if db.current_count() == 0 => {
            let mut batch = db.batch();
            batch.put(Cf::Meta, VERSION_KEY, &CURRENT.to_be_bytes());
            batch.commit_durable().context("cannot write the schema version")?;
            return Ok(CURRENT);
        }
        None => 1,
    };
    if version > CURRENT {
        bail!(
            "this database has schema version {version}, written by a newer porch than this one (which knows up to \
             {CURRENT}); run that newer porch, or restore a backup taken before it was upgraded"
        );
    }
    while version < CURRENT {
        let mut batch = db.batch();
        let change = match version {
            1 => {
                // Everything so far was evaluated when it was sent.
                crate::service::push::data::set_counts_floor(&mut batch, db.current_count());
                "notification counts are now computed when read"
            }
            2 => {
                // In steps of their own, each safe to repeat: the version
                // moves only once every snapshot is converted.
                let converted = crate::service::rooms::state::convert_legacy_snapshots(db)
                    .map_err(|e| anyhow::anyhow!("cannot convert the stored room states: {}", e.message))?;
                tracing::info!("{converted} room state snapshots converted to short ids");
                "room states are stored in short ids"
            }
            other => bail!("no migration from schema version {other}"),
        };
        version += 1;
        batch.put(Cf::Meta, VERSION_KEY, &version.to_be_bytes());
        batch.commit_durable().with_context(|| format!("cannot migrate the database to schema version {version}"))?;
        tracing::info!("database migrated to schema version {version}: {change}");
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_starts_at_the_current_version_and_an_old_one_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path(), false).unwrap());
        assert_eq!(migrate(&db).unwrap(), CURRENT);
        assert_eq!(crate::service::push::data::counts_floor(&db).unwrap(), 0);

        // A version 1 database: positions handed out, no version key.
        let old = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(old.path(), false).unwrap());
        let mut batch = db.batch();
        for _ in 0..5 {
            batch.next_count();
        }
        batch.commit().unwrap();
        assert_eq!(migrate(&db).unwrap(), CURRENT);
        assert_eq!(crate::service::push::data::counts_floor(&db).unwrap(), 5);
        // Run again (the next start): nothing moves.
        let mut batch = db.batch();
        batch.next_count();
        batch.commit().unwrap();
        assert_eq!(migrate(&db).unwrap(), CURRENT);
        assert_eq!(crate::service::push::data::counts_floor(&db).unwrap(), 5);
    }

    #[test]
    fn a_database_from_a_newer_porch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path(), false).unwrap());
        let mut batch = db.batch();
        batch.put(Cf::Meta, VERSION_KEY, &(CURRENT + 1).to_be_bytes());
        batch.commit().unwrap();
        let err = migrate(&db).unwrap_err().to_string();
        assert!(err.contains("newer porch"), "{err}");
    }
}
