//! Synapse-compatible shared-secret registration
//! (`/_synapse/admin/v1/register`), so `register_new_matrix_user` works.

use axum::{Json, extract::State, routing::get};
use hmac::{Hmac, Mac};
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;

use crate::{
    api::{AppState, Routes, blocking},
    error::{Error, Result},
    service::users::AccountKind,
};

pub fn register(r: &mut Routes) {
    r.raw("/_synapse/admin/v1/register", Method::GET, get(nonce).post(register_user));
}

fn secret(state: &AppState) -> Result<String> {
    let secret = state.settings.raw.registration.shared_secret.clone();
    if secret.is_empty() {
        return Err(Error::bad_json(
            "Shared-secret registration is disabled; set `registration.shared_secret` to enable it.",
        ));
    }
    Ok(secret)
}

async fn nonce(State(state): State<AppState>) -> Result<Json<Value>> {
    secret(&state)?;
    Ok(Json(json!({ "nonce": state.shared_secret_nonces.issue() })))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    user_type: Option<String>,
    #[serde(default)]
    displayname: Option<String>,
    mac: String,
}

async fn register_user(State(state): State<AppState>, body: axum::body::Body) -> Result<Json<Value>> {
    let secret = secret(&state)?;
    let body = crate::listener::read_body(body, state.settings.raw.limits.max_request_bytes, &state.settings).await?;
    let body: RegisterBody =
        serde_json::from_slice(&body).map_err(|e| Error::bad_json(format!("The request body is not valid: {e}")))?;
    if !state.shared_secret_nonces.take(&body.nonce) {
        return Err(Error::bad_json("Unrecognised nonce; fetch a fresh one with GET first."));
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).map_err(Error::internal)?;
    mac.update(body.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(body.username.as_bytes());
    mac.update(b"\0");
    mac.update(body.password.as_bytes());
    mac.update(b"\0");
    mac.update(if body.admin { b"admin" as &[u8] } else { b"notadmin" });
    if let Some(user_type) = &body.user_type {
        mac.update(b"\0");
        mac.update(user_type.as_bytes());
    }
    let given = hex::decode(&body.mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    mac.verify_slice(&given).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    if body.password.is_empty() {
        return Err(Error::bad_json("A password is required."));
    }
    let response = blocking(&state, move |s| {
        let user_id = s.users.local_user_id(&body.username.to_lowercase())?;
        s.users.create(&user_id, Some(&body.password), AccountKind::Member, body.admin, body.displayname.clone())?;
        let (device_id, token) =
            s.users.create_device(&user_id, None, Some("shared-secret registration".to_owned()), None)?;
        tracing::info!(%user_id, admin = body.admin, "registered an account with the shared secret");
        Ok(json!({ "user_id": user_id, "access_token": token, "device_id": device_id, "home_server": s.server_name() }))
    })
    .await?;
    Ok(Json(response))
}
