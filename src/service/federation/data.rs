//! Other servers' keys' storage: column family `server_keys`, owned here.
//!
//! - `server_keys`: server name → [`CachedKeys`], its verify keys (and old
//!   ones) as we last fetched and checked them

use ruma::ServerName;

use super::CachedKeys;
use crate::{
    error::Result,
    storage::{Cf, Db},
};

pub(super) fn server_keys(db: &Db, server: &ServerName) -> Result<Option<CachedKeys>> {
    Ok(db.get_json(Cf::ServerKeys, server.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_server_keys(db: &Db, server: &ServerName, keys: &CachedKeys) -> Result<()> {
    Ok(db.put_json(Cf::ServerKeys, server.as_bytes(), keys)?)
}
