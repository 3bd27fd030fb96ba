//! Who may see whose profile and presence: the guest policy's `ViewProfile`,
//! asked here for every lookup path.

use ruma::UserId;

use crate::{
    error::{Error, Result},
    policy::{self, Action},
    service::{
        Services,
        users::{Session, UserRecord},
    },
};

/// The profile of a user as this server knows it, after the guest policy.
/// Lookups need a signed-in caller: otherwise anyone, guests included, could
/// enumerate the server's people by leaving out their token.
pub fn visible(s: &Services, viewer: Option<&Session>, user_id: &UserId) -> Result<UserRecord> {
    let viewer = viewer.ok_or_else(Error::missing_token)?;
    policy::check(s, viewer, Action::ViewProfile { target: user_id })?;
    match s.users.get(user_id)? {
        Some(user) if !user.deactivated && s.users.is_local(user_id) => Ok(user),
        _ => Err(Error::not_found("This user has no profile here.")),
    }
}

/// Whether `viewer` may see `target`'s profile or presence (any server's user).
pub fn may_view(s: &Services, viewer: &Session, target: &UserId) -> Result<()> {
    policy::check(s, viewer, Action::ViewProfile { target })
}
