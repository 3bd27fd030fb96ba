//! Small endpoints clients call at start-up: presence, third-party
//! protocols and 3PIDs. Each answers truthfully for
//! what porch supports.

use std::time::Duration;

use ruma::{
    api::client::{
        account::get_3pids,
        presence::{get_presence, set_presence},
        thirdparty::get_protocols,
    },
    presence::PresenceState,
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
};

pub async fn set_presence(state: AppState, req: Ruma<set_presence::v3::Request>) -> Result<set_presence::v3::Response> {
    let session = req.session();
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You can only set your own presence."));
    }
    if !matches!(req.body.presence, PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable) {
        return Err(Error::invalid_param("Presence must be online, offline or unavailable."));
    }
    let (user, presence, status) = (session.user_id.clone(), req.body.presence.clone(), req.body.status_msg.clone());
    blocking(&state, move |s| crate::service::profiles::set_presence(s, &user, presence, status)).await?;
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

/// No bridges: no third-party protocols.
pub async fn protocols(_: AppState, _: Ruma<get_protocols::v3::Request>) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(Default::default()))
}

/// porch does not bind email addresses or phone numbers to accounts.
pub async fn threepids(_: AppState, _: Ruma<get_3pids::v3::Request>) -> Result<get_3pids::v3::Response> {
    Ok(get_3pids::v3::Response::new(Vec::new()))
}
