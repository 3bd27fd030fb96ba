//! OpenID tokens: a user proves who they are to a third party (a widget,
//! an integration manager), which asks this server through
//! `/_matrix/federation/v1/openid/userinfo`. The tokens prove identity
//! only and give no access to the account.

use std::time::Duration;

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    service::Services,
    storage::Cf,
    util,
};

/// How long a token proves its user's identity.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize)]
struct OpenIdToken {
    user_id: OwnedUserId,
    expires_at: u64,
}

/// A new token for `user_id`.
pub fn request_token(s: &Services, user_id: &UserId) -> Result<String> {
    let token = util::random_string(32);
    let record =
        OpenIdToken { user_id: user_id.to_owned(), expires_at: util::now_ms() + TOKEN_LIFETIME.as_millis() as u64 };
    s.db.put_json(Cf::OpenIdTokens, token.as_bytes(), &record)?;
    Ok(token)
}

/// Whose token this is; an unknown or expired one is refused (and an
/// expired one forgotten).
pub fn user_of(s: &Services, token: &str) -> Result<OwnedUserId> {
    let unknown = || {
        Error::new(http::StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "This OpenID token is not known or has expired.")
    };
    let record: OpenIdToken = s.db.get_json(Cf::OpenIdTokens, token.as_bytes())?.ok_or_else(unknown)?;
    if record.expires_at <= util::now_ms() {
        s.db.delete(Cf::OpenIdTokens, token.as_bytes())?;
        return Err(unknown());
    }
    Ok(record.user_id)
}

/// Forget tokens expired as of `now` (ms); returns how many.
pub fn prune_expired(s: &Services, now: u64) -> Result<usize> {
    let mut batch = s.db.batch();
    let mut pruned = 0;
    for item in s.db.scan_prefix(Cf::OpenIdTokens, &[]) {
        let (key, value) = item?;
        let expired = serde_json::from_slice::<OpenIdToken>(&value).map_or(true, |t| t.expires_at <= now);
        if expired {
            batch.delete(Cf::OpenIdTokens, &key);
            pruned += 1;
        }
    }
    batch.commit()?;
    Ok(pruned)
}
