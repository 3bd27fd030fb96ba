//! Account lifecycle steps that span several services.

use ruma::UserId;

use crate::{
    error::{Error, Result},
    service::{Services, membership, push},
};

/// Leave every room, log out everywhere, drop the pushers and key backups, and mark the account deactivated.
/// Its id is never given out again.
pub fn deactivate(s: &Services, user_id: &UserId) -> Result<()> {
    membership::leave_all(s, user_id)?;
    s.users.remove_devices(user_id, None, None)?;
    push::forget_user(s, user_id)?;
    s.key_backup.forget_user(s, user_id)?;
    let mut user = s.users.get(user_id)?.ok_or_else(|| Error::not_found("No such user."))?;
    user.deactivated = true;
    user.password_hash = None;
    s.users.save(user_id, &user)?;
    tracing::info!(%user_id, "deactivated an account");
    Ok(())
}
