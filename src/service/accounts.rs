//! Account lifecycle steps that span several services.

use ruma::{OwnedDeviceId, UserId};

use crate::{
    error::{Error, Result},
    service::{Services, membership, push},
};

/// Leave every room, log out everywhere, drop the pushers and key backups, and mark the account deactivated.
/// Its id is never given out again.
pub fn deactivate(s: &Services, user_id: &UserId) -> Result<()> {
    // Devices first, so the servers in the user's rooms hear they are gone.
    remove_devices(s, user_id, None, None)?;
    membership::leave_all(s, user_id)?;
    push::forget_user(s, user_id)?;
    s.key_backup.forget_user(s, user_id)?;
    let mut user = s.users.get(user_id)?.ok_or_else(|| Error::not_found("No such user."))?;
    user.deactivated = true;
    user.password_hash = None;
    s.users.save(user_id, &user)?;
    tracing::info!(%user_id, "deactivated an account");
    Ok(())
}

/// Log devices out (all, those listed, all but `keep`) and tell the
/// servers sharing a room with the user that they are gone.
pub fn remove_devices(
    s: &Services,
    user_id: &UserId,
    which: Option<&[OwnedDeviceId]>,
    keep: Option<&str>,
) -> Result<()> {
    let before = s.keys.changed_at(user_id)?;
    for device_id in s.users.remove_devices(user_id, which, keep)? {
        s.sliding_sync.forget_device(user_id, &device_id);
        crate::service::outbound::device_list_update(s, user_id, device_id.as_str(), true, before)?;
    }
    Ok(())
}
