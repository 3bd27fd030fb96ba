//! Registration tokens' storage: column family `registration_tokens`,
//! token → [`TokenRecord`] (JSON).

use super::TokenRecord;
use crate::{
    error::Result,
    storage::{Cf, Db, StorageResult},
};

/// Store a configured token with no uses yet, unless it is stored already.
/// A write of its own; at start-up, hence the storage error.
pub(super) fn seed_token(db: &Db, token: &str) -> StorageResult<()> {
    if !db.exists(Cf::RegistrationTokens, token.as_bytes())? {
        db.put_json(Cf::RegistrationTokens, token.as_bytes(), &TokenRecord::default())?;
    }
    Ok(())
}

pub(super) fn any_token(db: &Db) -> bool {
    db.scan_prefix(Cf::RegistrationTokens, b"").next().is_some()
}

pub(super) fn token(db: &Db, token: &str) -> Result<Option<TokenRecord>> {
    Ok(db.get_json(Cf::RegistrationTokens, token.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_token(db: &Db, token: &str, record: &TokenRecord) -> Result<()> {
    Ok(db.put_json(Cf::RegistrationTokens, token.as_bytes(), record)?)
}
