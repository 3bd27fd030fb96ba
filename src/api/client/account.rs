//! Registration, login, logout, whoami, password, deactivation, devices,
//! OpenID tokens.

use ruma::{
    OwnedDeviceId,
    api::client::{
        account::{
            change_password, check_registration_token_validity, deactivate, get_username_availability, register,
            register::RegistrationKind, request_openid_token, whoami,
        },
        device::{delete_device, delete_devices, get_device, get_devices, update_device},
        session::{get_login_token, get_login_types, login, logout, logout_all},
        uiaa::{AuthData, UserIdentifier},
    },
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::{
        Services,
        tokens::{self, TokenKind},
        uiaa::{self, StageChecks},
        users::AccountKind,
    },
};

impl StageChecks for Services {
    fn password_ok(&self, user_id: &ruma::UserId, password: &str) -> Result<bool> {
        self.users.check_password(user_id, password)
    }

    fn registration_token_ok(&self, token: &str) -> Result<bool> {
        self.registration.is_valid(token)
    }
}

/// What a registration's UIA session remembers between steps, as Synapse
/// does: a client may send its parameters only on the first call.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct PendingRegistration {
    username: Option<String>,
    password_hash: Option<String>,
    device_id: Option<OwnedDeviceId>,
    initial_device_display_name: Option<String>,
    inhibit_login: bool,
    /// The account this session made: a retry gets it again, not a second one.
    registered: Option<ruma::OwnedUserId>,
}

impl PendingRegistration {
    fn from_data(data: Option<serde_json::Value>) -> Self {
        data.and_then(|d| serde_json::from_value(d).ok()).unwrap_or_default()
    }
}

pub async fn register(state: AppState, req: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    state.register_limiter.check(req.ip).map_err(Error::limit_exceeded)?;
    let ip = req.ip.to_string();
    blocking(&state, move |s| {
        let body = req.body;
        if body.kind == RegistrationKind::Guest {
            return register_guest(s, body, ip);
        }
        if !s.settings.raw.registration.enabled {
            return Err(Error::forbidden(
                "Registration is disabled on this server; ask an administrator for an account.",
            ));
        }
        // Names are lower-cased, as on Synapse, so `Bob` registers `@bob`.
        let username = body.username.as_deref().map(str::to_lowercase);
        let password = body.password.clone().filter(|p| !p.is_empty());
        if let Some(username) = &username {
            let user_id = s.users.local_user_id(username)?;
            if s.users.exists(&user_id)? && body.auth.is_none() {
                return Err(Error::user_in_use());
            }
        }
        // The flows come first, as on Synapse: a client's first call
        // (Element's carries neither password nor `auth`) learns them.
        let flows: &[&[&str]] =
            if s.registration.requires_token() { &[&[uiaa::REGISTRATION_TOKEN]] } else { &[&[uiaa::DUMMY]] };
        let mut session = match s.uiaa.authorize(s, body.auth.as_ref(), flows, "register", None) {
            Ok(session) => session,
            Err(challenge) => {
                remember_registration(s, &challenge, &body, username.clone(), password.as_deref())?;
                return Err(challenge);
            }
        };
        let mut pending = PendingRegistration::from_data(session.data.clone());
        let device_id = body.device_id.clone().or(pending.device_id.take());
        let display_name = body.initial_device_display_name.clone().or(pending.initial_device_display_name.take());
        let inhibit_login = body.inhibit_login || pending.inhibit_login;
        let user_id = match pending.registered.clone() {
            // The same completed session again (an answer that was lost):
            // the same account, for whoever still knows its password.
            Some(user_id) => {
                s.uiaa.keep(&session)?;
                let password = password.ok_or_else(|| Error::missing_param("A password is needed to register."))?;
                if !s.users.check_password(&user_id, &password)? {
                    return Err(Error::forbidden("This registration session made another account."));
                }
                user_id
            }
            None => {
                let localpart = username
                    .or(pending.username.take())
                    .unwrap_or_else(|| crate::util::random_string(12).to_lowercase());
                let user_id = s.users.local_user_id(&localpart)?;
                let password_hash = match password {
                    Some(password) => Some(crate::password::hash(&password).map_err(Error::internal)?),
                    None => pending.password_hash.take(),
                };
                let Some(password_hash) = password_hash else {
                    // Kept, so the client can send the password with the same session.
                    session.data = Some(serde_json::to_value(&pending)?);
                    s.uiaa.keep(&session)?;
                    return Err(Error::missing_param("A password is needed to register."));
                };
                let create =
                    || s.users.create_hashed(&user_id, Some(password_hash.clone()), AccountKind::Member, false, None);
                match session.registration_token.clone() {
                    Some(token) => s.registration.use_token(&token, create)?,
                    None => create()?,
                };
                tracing::info!(%user_id, kind = AccountKind::Member.as_str(), "registered an account");
                pending.registered = Some(user_id.clone());
                session.data = Some(serde_json::to_value(&pending)?);
                s.uiaa.keep(&session)?;
                user_id
            }
        };
        registered(s, user_id, !inhibit_login, device_id, display_name, ip)
    })
    .await
}

/// The answer to a registration: signed in on a new device unless asked not to be.
fn registered(
    s: &Services,
    user_id: ruma::OwnedUserId,
    sign_in: bool,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<String>,
    ip: String,
) -> Result<register::v3::Response> {
    let mut response = register::v3::Response::new(user_id.clone());
    if sign_in {
        let (device_id, token) = s.users.create_device(&user_id, device_id, display_name, Some(ip))?;
        response.access_token = Some(token);
        response.device_id = Some(device_id);
    }
    Ok(response)
}

/// Keep a registration's parameters in its UIA session for the next step;
/// the password only as a hash, made once.
fn remember_registration(
    s: &Services,
    challenge: &Error,
    body: &register::v3::Request,
    username: Option<String>,
    password: Option<&str>,
) -> Result<()> {
    if challenge.status != http::StatusCode::UNAUTHORIZED {
        return Ok(());
    }
    s.uiaa.update_data(challenge, |data| {
        let mut pending = PendingRegistration::from_data(data.take());
        if let Some(password) = password
            && pending.password_hash.is_none()
        {
            pending.password_hash = Some(crate::password::hash(password).map_err(Error::internal)?);
        }
        pending.username = username.or(pending.username.take());
        pending.device_id = body.device_id.clone().or(pending.device_id.take());
        pending.initial_device_display_name =
            body.initial_device_display_name.clone().or(pending.initial_device_display_name.take());
        pending.inhibit_login |= body.inhibit_login;
        *data = Some(serde_json::to_value(&pending)?);
        Ok(())
    })
}

/// [`register`] without the `null`s ruma writes for what it leaves out.
pub async fn register_json(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Ruma<register::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    let mut body = crate::api::response_json(register(state, req).await?)?;
    if let Some(object) = body.as_object_mut() {
        object.retain(|_, value| !value.is_null());
    }
    Ok(axum::Json(body))
}

/// A temporary account, where `registration.allow_guests` lets anyone make one.
fn register_guest(s: &Services, body: register::v3::Request, ip: String) -> Result<register::v3::Response> {
    if !s.settings.raw.registration.allow_guests {
        return Err(Error::new(
            http::StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guest registration is disabled on this server; guests join through a room's guest link.",
        ));
    }
    // Temporary accounts get an id nobody can guess or choose.
    let user_id = s.users.local_user_id(&format!("guest-{}", crate::util::random_string(16).to_lowercase()))?;
    s.users.create(&user_id, None, AccountKind::Temporary, false, None)?;
    tracing::info!(%user_id, kind = AccountKind::Temporary.as_str(), "registered an account");
    registered(s, user_id, !body.inhibit_login, body.device_id, body.initial_device_display_name, ip)
}

pub async fn username_available(
    state: AppState,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    state.register_limiter.check(req.ip).map_err(Error::limit_exceeded)?;
    blocking(&state, move |s| {
        let user_id = s.users.local_user_id(&req.body.username)?;
        if s.users.exists(&user_id)? {
            return Err(Error::user_in_use());
        }
        Ok(get_username_availability::v3::Response::new(true))
    })
    .await
}

pub async fn token_validity(
    state: AppState,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    state.register_limiter.check(req.ip).map_err(Error::limit_exceeded)?;
    blocking(&state, move |s| {
        Ok(check_registration_token_validity::v1::Response::new(s.registration.is_valid(&req.body.token)?))
    })
    .await
}

pub async fn login_types(_: AppState, _: Ruma<get_login_types::v3::Request>) -> Result<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType, TokenLoginType};
    let mut token = TokenLoginType::new();
    token.get_login_token = true;
    Ok(get_login_types::v3::Response::new(vec![LoginType::Password(PasswordLoginType::new()), LoginType::Token(token)]))
}

pub async fn login(state: AppState, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    state.login_limiter.check(req.ip).map_err(Error::limit_exceeded)?;
    let ip = req.ip.to_string();
    blocking(&state, move |s| {
        let body = req.body;
        let user_id = match body.login_info {
            login::v3::LoginInfo::Password(password) => password_login(s, &password)?,
            login::v3::LoginInfo::Token(login::v3::Token { token, .. }) => {
                let user_id = tokens::redeem_login_token(s, &token)?;
                if s.users.get(&user_id)?.is_none_or(|user| user.deactivated) {
                    return Err(Error::user_deactivated());
                }
                user_id
            }
            _ => {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Only password and token login are supported.",
                ));
            }
        };
        let (device_id, token) = s.users.create_device(
            &user_id,
            body.device_id.clone(),
            body.initial_device_display_name.clone(),
            Some(ip),
        )?;
        let mut response = login::v3::Response::new(user_id, token, device_id);
        #[allow(deprecated)]
        {
            response.home_server = Some(s.settings.server_name.clone());
        }
        Ok(response)
    })
    .await
}

/// The account a password login names, if the password is right.
fn password_login(s: &Services, password: &login::v3::Password) -> Result<ruma::OwnedUserId> {
    // `user` is the legacy (pre-r0.4) field; clients such as matrix-nio still send it.
    #[allow(deprecated)]
    let legacy_user = &password.user;
    let name = match (&password.identifier, legacy_user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        _ => return Err(Error::forbidden("Invalid username or password.")),
    };
    let user_id = uiaa::identifier_user(s.server_name(), &name)
        .ok_or_else(|| Error::forbidden("Invalid username or password."))?;
    if let Some(user) = s.users.get(&user_id)?
        && user.deactivated
    {
        return Err(Error::user_deactivated());
    }
    if !s.users.is_local(&user_id) || !s.users.check_password(&user_id, &password.password)? {
        return Err(Error::forbidden("Invalid username or password."));
    }
    Ok(user_id)
}

/// A single-use token that signs in another device (after the password
/// is entered again).
pub async fn get_login_token(
    state: AppState,
    req: Ruma<get_login_token::v1::Request>,
) -> Result<get_login_token::v1::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if session.user.password_hash.is_none() {
            // Nothing to confirm it with (temporary guests have no password).
            return Err(Error::forbidden("This account has no password, so it cannot sign in other devices."));
        }
        password_uia(s, req.body.auth.as_ref(), "get_login_token", &session.user_id)?;
        let token = tokens::issue(s, TokenKind::Login, &session.user_id)?;
        Ok(get_login_token::v1::Response::new(TokenKind::Login.lifetime(), token))
    })
    .await
}

pub async fn logout(state: AppState, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        crate::service::accounts::remove_devices(
            s,
            &session.user_id,
            Some(std::slice::from_ref(&session.device_id)),
            None,
        )?;
        Ok(logout::v3::Response::new())
    })
    .await
}

pub async fn logout_all(state: AppState, req: Ruma<logout_all::v3::Request>) -> Result<logout_all::v3::Response> {
    blocking(&state, move |s| {
        crate::service::accounts::remove_devices(s, &req.session().user_id, None, None)?;
        Ok(logout_all::v3::Response::new())
    })
    .await
}

pub async fn whoami(_: AppState, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let session = req.session();
    let mut response = whoami::v3::Response::new(session.user_id.clone(), session.is_guest());
    response.device_id = Some(session.device_id.clone());
    Ok(response)
}

/// A token the user hands to a third party to prove who they are.
pub async fn request_openid_token(
    state: AppState,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if req.body.user_id != session.user_id {
            return Err(Error::forbidden("You may only ask for tokens for yourself."));
        }
        let token = tokens::issue(s, TokenKind::OpenId, &session.user_id)?;
        Ok(request_openid_token::v3::Response::new(
            token,
            ruma::authentication::TokenType::Bearer,
            s.settings.server_name.clone(),
            TokenKind::OpenId.lifetime(),
        ))
    })
    .await
}

/// Ask for the account's password through UIA.
fn password_uia(s: &Services, auth: Option<&AuthData>, purpose: &str, user_id: &ruma::UserId) -> Result<()> {
    s.uiaa.authorize(s, auth, &[&[uiaa::PASSWORD]], &format!("{purpose}:{user_id}"), Some(user_id))?;
    Ok(())
}

pub async fn change_password(
    state: AppState,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if session.user.password_hash.is_none() {
            return Err(Error::forbidden("This account has no password to change."));
        }
        password_uia(s, req.body.auth.as_ref(), "password", &session.user_id)?;
        if req.body.new_password.is_empty() {
            return Err(Error::new(http::StatusCode::BAD_REQUEST, "M_WEAK_PASSWORD", "The new password is empty."));
        }
        s.users.set_password(&session.user_id, &req.body.new_password)?;
        if req.body.logout_devices {
            crate::service::accounts::remove_devices(s, &session.user_id, None, Some(session.device_id.as_str()))?;
        }
        Ok(change_password::v3::Response::new())
    })
    .await
}

pub async fn deactivate(state: AppState, req: Ruma<deactivate::v3::Request>) -> Result<deactivate::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if session.user.password_hash.is_some() {
            password_uia(s, req.body.auth.as_ref(), "deactivate", &session.user_id)?;
        }
        crate::service::accounts::deactivate(s, &session.user_id)?;
        Ok(deactivate::v3::Response::new(ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport))
    })
    .await
}

fn device_info(
    device_id: OwnedDeviceId,
    record: crate::service::users::DeviceRecord,
) -> ruma::api::client::device::Device {
    let mut device = ruma::api::client::device::Device::new(device_id);
    device.display_name = record.display_name;
    device.last_seen_ip = record.last_seen_ip;
    device.last_seen_ts = Some(ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(record.last_seen_ts)));
    device
}

pub async fn devices(state: AppState, req: Ruma<get_devices::v3::Request>) -> Result<get_devices::v3::Response> {
    blocking(&state, move |s| {
        let list = s.users.devices(&req.session().user_id)?.into_iter().map(|(id, r)| device_info(id, r)).collect();
        Ok(get_devices::v3::Response::new(list))
    })
    .await
}

pub async fn device(state: AppState, req: Ruma<get_device::v3::Request>) -> Result<get_device::v3::Response> {
    blocking(&state, move |s| {
        let record = s
            .users
            .device(&req.session().user_id, req.body.device_id.as_str())?
            .ok_or_else(|| Error::not_found("No such device."))?;
        Ok(get_device::v3::Response::new(device_info(req.body.device_id.clone(), record)))
    })
    .await
}

pub async fn update_device(
    state: AppState,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    blocking(&state, move |s| {
        let user_id = &req.session().user_id;
        let device_id = req.body.device_id.as_str();
        let before = s.keys.changed_at(user_id)?;
        if !s.users.update_device(user_id, device_id, req.body.display_name.clone())? {
            return Err(Error::not_found("No such device."));
        }
        // Its display name is part of what other servers show of the device.
        crate::service::outbound::device_list_update(s, user_id, device_id, false, before)?;
        Ok(update_device::v3::Response::new())
    })
    .await
}

pub async fn delete_device(
    state: AppState,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if s.users.device(&session.user_id, req.body.device_id.as_str())?.is_none() {
            return Err(Error::not_found("No such device."));
        }
        // The session is bound to the devices it was started for.
        let purpose = format!("delete_devices:{}", req.body.device_id);
        password_uia(s, req.body.auth.as_ref(), &purpose, &session.user_id)?;
        crate::service::accounts::remove_devices(
            s,
            &session.user_id,
            Some(std::slice::from_ref(&req.body.device_id)),
            None,
        )?;
        Ok(delete_device::v3::Response::new())
    })
    .await
}

pub async fn delete_devices(
    state: AppState,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let mut devices: Vec<&str> = req.body.devices.iter().map(|d| d.as_str()).collect();
        devices.sort_unstable();
        let purpose = format!("delete_devices:{}", devices.join(","));
        password_uia(s, req.body.auth.as_ref(), &purpose, &session.user_id)?;
        crate::service::accounts::remove_devices(s, &session.user_id, Some(&req.body.devices), None)?;
        Ok(delete_devices::v3::Response::new())
    })
    .await
}
