//! Profiles: display name and avatar, carried into member events.

use ruma::{
    UserId,
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
};
use serde_json::Value;

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    policy,
    service::{membership, profiles, users::Session},
};

pub async fn profile(state: AppState, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    if !state.users.is_local(&req.body.user_id) {
        return remote_profile(state, req).await;
    }
    blocking(&state, move |s| {
        let user = profiles::visible(s, req.session.as_ref(), &req.body.user_id)?;
        let mut data = ruma::profile::UserProfile::new();
        if let Some(name) = user.displayname {
            data.set("displayname".to_owned(), Value::String(name));
        }
        if let Some(avatar) = user.avatar_url {
            data.set("avatar_url".to_owned(), Value::String(avatar.to_string()));
        }
        if user.kind.is_guest() {
            data.set(policy::GUEST_MARKER.to_owned(), Value::Bool(true));
        }
        Ok(get_profile::v3::Response::from(data))
    })
    .await
}

/// A user of another server: asked over federation, after the guest policy.
async fn remote_profile(state: AppState, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    let user_id = req.body.user_id.clone();
    let session = req.session.ok_or_else(Error::missing_token)?;
    let target = user_id.clone();
    blocking(&state, move |s| profiles::may_view(s, &session, &target)).await?;
    let request = ruma::api::federation::query::get_profile_information::v1::Request::new(user_id.clone());
    let answer = state.federation.send(user_id.server_name(), request).await?;
    Ok(get_profile::v3::Response::from(answer.data))
}

pub async fn display_name(
    state: AppState,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response> {
    blocking(&state, move |s| {
        let user = profiles::visible(s, req.session.as_ref(), &req.body.user_id)?;
        Ok(get_display_name::v3::Response::new(user.displayname))
    })
    .await
}

pub async fn avatar_url(
    state: AppState,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response> {
    blocking(&state, move |s| {
        let user = profiles::visible(s, req.session.as_ref(), &req.body.user_id)?;
        Ok(get_avatar_url::v3::Response::new(user.avatar_url))
    })
    .await
}

fn own_profile(session: &Session, user_id: &UserId) -> Result<()> {
    if session.user_id != user_id {
        return Err(Error::forbidden("You can only change your own profile."));
    }
    Ok(())
}

pub async fn set_display_name(
    state: AppState,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        own_profile(session, &req.body.user_id)?;
        let mut name = req.body.displayname.clone().filter(|n| !n.trim().is_empty());
        if session.is_guest() {
            // Guests keep their marker: the suffix comes back whatever they send.
            name = Some(policy::guest_display_name(s, name.as_deref().unwrap_or(session.user_id.localpart())));
        }
        if name.as_ref().is_some_and(|n| n.len() > 256) {
            return Err(Error::invalid_param("Display names are limited to 256 bytes."));
        }
        let mut user = s.users.get(&session.user_id)?.ok_or_else(|| Error::not_found("No such user."))?;
        user.displayname = name;
        s.users.save(&session.user_id, &user)?;
        membership::propagate_profile(s, &session.user_id)?;
        Ok(set_display_name::v3::Response::new())
    })
    .await
}

pub async fn set_avatar_url(
    state: AppState,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        own_profile(session, &req.body.user_id)?;
        let mut user = s.users.get(&session.user_id)?.ok_or_else(|| Error::not_found("No such user."))?;
        user.avatar_url = req.body.avatar_url.clone().filter(|u| !u.as_str().is_empty());
        s.users.save(&session.user_id, &user)?;
        membership::propagate_profile(s, &session.user_id)?;
        Ok(set_avatar_url::v3::Response::new())
    })
    .await
}
