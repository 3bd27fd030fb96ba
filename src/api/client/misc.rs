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

/// `/voip/turnServer`: the configured TURN servers with credentials —
/// made from the shared secret (`{expiry}:{user}`, HMAC-SHA1, as coturn's
/// `use-auth-secret` checks them) or the fixed ones; `{}` when none.
pub async fn turn_server(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Ruma<ruma::api::client::voip::get_turn_server_info::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    use hmac::Mac;
    let voip = &state.settings.raw.voip;
    let session = req.session();
    if voip.turn_uris.is_empty() || (session.is_guest() && !voip.turn_allow_guests) {
        return Ok(axum::Json(serde_json::json!({})));
    }
    let ttl = voip.turn_user_lifetime.as_secs();
    let (username, password) = if !voip.turn_shared_secret.is_empty() {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + ttl)
            .unwrap_or(ttl);
        let username = format!("{expiry}:{}", session.user_id);
        let mut mac =
            hmac::Hmac::<sha1::Sha1>::new_from_slice(voip.turn_shared_secret.as_bytes()).map_err(Error::internal)?;
        mac.update(username.as_bytes());
        use base64::Engine;
        (username, base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    } else {
        (voip.turn_username.clone(), voip.turn_password.clone())
    };
    Ok(axum::Json(
        serde_json::json!({ "username": username, "password": password, "uris": voip.turn_uris, "ttl": ttl }),
    ))
}
