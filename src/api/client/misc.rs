//! Small endpoints clients call at start-up: presence, pushers, third-party
//! protocols, 3PIDs and key backup discovery. Each answers truthfully for
//! what porch supports.

use std::time::Duration;

use ruma::{
    api::client::{
        account::get_3pids,
        backup::get_latest_backup_info,
        presence::{get_presence, set_presence},
        push::get_pushers,
        thirdparty::get_protocols,
    },
    presence::PresenceState,
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::outbound,
};

pub async fn set_presence(state: AppState, req: Ruma<set_presence::v3::Request>) -> Result<set_presence::v3::Response> {
    let session = req.session();
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You can only set your own presence."));
    }
    if !matches!(req.body.presence, PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable) {
        return Err(Error::invalid_param("Presence must be online, offline or unavailable."));
    }
    let previous = state.ephemeral.presence(&session.user_id);
    state.ephemeral.set_presence(&session.user_id, req.body.presence.clone(), req.body.status_msg.clone());
    let changed =
        previous.is_none_or(|(presence, status, _)| presence != req.body.presence || status != req.body.status_msg);
    if changed {
        let (user, presence, status) =
            (session.user_id.clone(), req.body.presence.clone(), req.body.status_msg.clone());
        blocking(&state, move |s| outbound::presence(s, &user, &presence, status.as_deref())).await?;
    }
    Ok(set_presence::v3::Response::new())
}

pub async fn get_presence(state: AppState, req: Ruma<get_presence::v3::Request>) -> Result<get_presence::v3::Response> {
    blocking(&state, move |s| {
        crate::service::profiles::may_view(s, req.session(), &req.body.user_id)?;
        let known = s.ephemeral.presence(&req.body.user_id);
        // Other servers' users: what their server last told us.
        let unknown = if s.users.is_local(&req.body.user_id) {
            s.users.get(&req.body.user_id)?.is_none()
        } else {
            known.is_none()
        };
        if unknown {
            return Err(Error::not_found("This user's presence is not known here."));
        }
        let (presence, status_msg, last_active) = known.unwrap_or((PresenceState::Offline, None, None));
        let mut response = get_presence::v3::Response::new(presence);
        response.status_msg = status_msg;
        response.last_active_ago = last_active.map(|at: std::time::Instant| at.elapsed());
        response.currently_active = last_active.map(|at| at.elapsed() < Duration::from_secs(300));
        Ok(response)
    })
    .await
}

/// porch does not send push notifications (no push gateway support yet), so
/// no pushers are ever registered.
pub async fn pushers(_: AppState, _: Ruma<get_pushers::v3::Request>) -> Result<get_pushers::v3::Response> {
    Ok(get_pushers::v3::Response::new(Vec::new()))
}

/// No bridges: no third-party protocols.
pub async fn protocols(_: AppState, _: Ruma<get_protocols::v3::Request>) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(Default::default()))
}

/// porch does not bind email addresses or phone numbers to accounts.
pub async fn threepids(_: AppState, _: Ruma<get_3pids::v3::Request>) -> Result<get_3pids::v3::Response> {
    Ok(get_3pids::v3::Response::new(Vec::new()))
}

/// Server-side key backup is not offered: there is never a current backup.
pub async fn key_backup(
    _: AppState,
    _: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    Err(Error::not_found("No current backup version."))
}
