//! Short-lived tokens' storage: one column family per [`TokenKind`], owned
//! here.
//!
//! - `openid_tokens`: token → [`TokenRecord`] (its user and expiry, ms)
//! - `login_tokens`: token → [`TokenRecord`]

use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};

use super::TokenKind;
use crate::{
    error::Result,
    storage::{Batch, Cf, Db},
};

#[derive(Serialize, Deserialize)]
pub(super) struct TokenRecord {
    pub(super) user_id: OwnedUserId,
    pub(super) expires_at: u64,
}

fn cf(kind: TokenKind) -> Cf {
    match kind {
        TokenKind::OpenId => Cf::OpenIdTokens,
        TokenKind::Login => Cf::LoginTokens,
    }
}

pub(super) fn token(db: &Db, kind: TokenKind, token: &str) -> Result<Option<TokenRecord>> {
    Ok(db.get_json(cf(kind), token.as_bytes())?)
}

/// A write of its own.
pub(super) fn save_token(db: &Db, kind: TokenKind, token: &str, record: &TokenRecord) -> Result<()> {
    Ok(db.put_json(cf(kind), token.as_bytes(), record)?)
}

/// A write of its own.
pub(super) fn delete_token(db: &Db, kind: TokenKind, token: &str) -> Result<()> {
    Ok(db.delete(cf(kind), token.as_bytes())?)
}

/// Stage the deletion of the tokens of `kind` that `expired` says so of,
/// and of those that cannot be read; returns how many.
pub(super) fn delete_tokens_where(
    db: &Db,
    batch: &mut Batch<'_>,
    kind: TokenKind,
    expired: impl Fn(&TokenRecord) -> bool,
) -> Result<usize> {
    let mut deleted = 0;
    for item in db.scan_prefix(cf(kind), &[]) {
        let (key, value) = item?;
        if serde_json::from_slice::<TokenRecord>(&value).map_or(true, |t| expired(&t)) {
            batch.delete(cf(kind), &key);
            deleted += 1;
        }
    }
    Ok(deleted)
}
