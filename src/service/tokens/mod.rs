//! Short-lived tokens that stand for a user, each kind in its own column
//! family:
//! - OpenID tokens: a user proves who they are to a third party (a widget,
//!   an integration manager), which asks this server through
//!   `/_matrix/federation/v1/openid/userinfo`. They prove identity only and
//!   give no access to the account.
//! - Login tokens (`m.login.token`): a signed-in user, after entering their
//!   password again, gets a token that signs in another device once
//!   (`/login/get_token`, used to sign in a new device from an old one).

mod data;

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use self::data::TokenRecord;
use crate::{
    error::{Error, Result},
    service::Services,
    util,
};

/// The kinds of token.
#[derive(Clone, Copy, Debug)]
pub enum TokenKind {
    OpenId,
    Login,
}

impl TokenKind {
    const ALL: [TokenKind; 2] = [TokenKind::OpenId, TokenKind::Login];

    /// How long a token of this kind is good for.
    pub fn lifetime(self) -> Duration {
        match self {
            TokenKind::OpenId => Duration::from_secs(3600),
            // The spec's suggestion (and Synapse's): long enough to scan a
            // code or copy a token, short enough that a leaked one is stale.
            TokenKind::Login => Duration::from_secs(120),
        }
    }
}

/// A new token of `kind` for `user_id`.
pub fn issue(s: &Services, kind: TokenKind, user_id: &UserId) -> Result<String> {
    let token = util::random_string(32);
    let record =
        TokenRecord { user_id: user_id.to_owned(), expires_at: util::now_ms() + kind.lifetime().as_millis() as u64 };
    data::save_token(&s.db, kind, &token, &record)?;
    Ok(token)
}

/// Whose OpenID token this is; an unknown or expired one is refused (and
/// an expired one forgotten).
pub fn openid_user(s: &Services, token: &str) -> Result<OwnedUserId> {
    lookup(s, TokenKind::OpenId, token, false)?.ok_or_else(|| {
        Error::new(http::StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "This OpenID token is not known or has expired.")
    })
}

/// Whose login token this is, using it up: a login token signs in once.
pub fn redeem_login_token(s: &Services, token: &str) -> Result<OwnedUserId> {
    lookup(s, TokenKind::Login, token, true)?
        .ok_or_else(|| Error::forbidden("This login token is not known, was used already or has expired."))
}

fn lookup(s: &Services, kind: TokenKind, token: &str, consume: bool) -> Result<Option<OwnedUserId>> {
    let Some(record) = data::token(&s.db, kind, token)? else {
        return Ok(None);
    };
    let expired = record.expires_at <= util::now_ms();
    if expired || consume {
        data::delete_token(&s.db, kind, token)?;
    }
    Ok((!expired).then_some(record.user_id))
}

/// Forget tokens expired as of `now` (ms); returns how many.
pub fn prune_expired(s: &Services, now: u64) -> Result<usize> {
    let mut batch = s.db.batch();
    let mut pruned = 0;
    for kind in TokenKind::ALL {
        pruned += data::delete_tokens_where(&s.db, &mut batch, kind, |t| t.expires_at <= now)?;
    }
    batch.commit()?;
    Ok(pruned)
}
