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

/// A local user's presence changes: kept, and told to the servers of the
/// rooms they are in when it differs from what it was.
pub fn set_presence(
    s: &Services,
    user_id: &UserId,
    presence: ruma::presence::PresenceState,
    status_msg: Option<String>,
) -> Result<()> {
    let previous = s.ephemeral.presence(user_id);
    let changed = previous.is_none_or(|(was, status, _)| was != presence || status != status_msg);
    s.ephemeral.set_presence(user_id, presence.clone(), status_msg.clone())?;
    if changed {
        crate::service::outbound::presence(s, user_id, &presence, status_msg.as_deref())?;
    }
    Ok(())
}

/// The `m.presence` event for a user whose presence is known here.
pub fn presence_event(s: &Services, user_id: &UserId) -> Option<serde_json::Value> {
    let (presence, status_msg, last_active) = s.ephemeral.presence(user_id)?;
    let mut content = serde_json::json!({ "presence": presence.as_str() });
    if let Some(status) = status_msg {
        content["status_msg"] = status.into();
    }
    if let Some(at) = last_active {
        let ago = at.elapsed();
        content["last_active_ago"] = (ago.as_millis() as u64).into();
        content["currently_active"] = (presence == ruma::presence::PresenceState::Online && ago.as_secs() < 300).into();
    }
    Some(serde_json::json!({ "type": "m.presence", "sender": user_id, "content": content }))
}

/// [`presence_event`], or `offline` for someone whose presence is not
/// known here (as Synapse shows them).
pub fn presence_event_or_offline(s: &Services, user_id: &UserId) -> serde_json::Value {
    presence_event(s, user_id).unwrap_or_else(
        || serde_json::json!({ "type": "m.presence", "sender": user_id, "content": { "presence": "offline" } }),
    )
}

/// `/sync?set_presence=…`: syncing marks a user online (unless they chose
/// `unavailable`, which a sync does not override), `offline` keeps them
/// from showing online; `unavailable` sets it.
pub fn presence_from_sync(s: &Services, user_id: &UserId, wanted: ruma::presence::PresenceState) -> Result<()> {
    use ruma::presence::PresenceState;
    let current = s.ephemeral.presence(user_id);
    let status = current.as_ref().and_then(|(_, status, _)| status.clone());
    let now = current.as_ref().map(|(state, _, _)| state.clone());
    let change = match wanted {
        PresenceState::Online => matches!(now, None | Some(PresenceState::Offline)),
        PresenceState::Unavailable => now != Some(PresenceState::Unavailable),
        _ => false,
    };
    if change { set_presence(s, user_id, wanted, status) } else { Ok(()) }
}
