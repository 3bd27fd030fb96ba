//! Email invitations over HTTP: the admin API (`/_porch/admin/v1/invitations`,
//! the outbox, external users' rooms) and the invitation page's API
//! (`/_porch/client/v1/invitations/{token}`, no login). The logic is in
//! `service::invitations`.

use axum::{
    Json,
    extract::{Path, Query, State},
    routing::{delete, get, post},
};
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState, Routes, blocking,
        porch::{Admin, Body, ClientIp, charge, local_user},
    },
    error::Result,
    service::{
        invitations::{self, NewInvitation},
        mail,
    },
};

pub fn register(r: &mut Routes) {
    r.raw("/_porch/admin/v1/invitations", Method::GET, get(list).post(create))
        .raw("/_porch/admin/v1/invitations/{id}", Method::DELETE, delete(revoke))
        .raw("/_porch/admin/v1/invitations/{id}/resend", Method::POST, post(resend))
        .raw("/_porch/admin/v1/outbox", Method::GET, get(outbox))
        .raw("/_porch/admin/v1/invitable_rooms", Method::GET, get(invitable_rooms))
        .raw("/_porch/admin/v1/users/{user_id}/rooms", Method::POST, post(add_rooms))
        .raw("/_porch/admin/v1/users/{user_id}/rooms/{room_id}", Method::DELETE, delete(remove_room))
        .raw("/_porch/client/v1/invitations/key/isvalid", Method::GET, get(key_is_valid))
        .raw("/_porch/client/v1/invitations/{token}", Method::GET, get(preview))
        .raw("/_porch/client/v1/invitations/{token}/accept", Method::POST, post(accept));
}

#[derive(Deserialize)]
struct CreateBody {
    email: String,
    rooms: Vec<String>,
    expires_in_ms: Option<u64>,
    message: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    Admin(session): Admin,
    Body(body): Body<CreateBody>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let request = NewInvitation {
            email: body.email,
            rooms: body.rooms,
            expires_in_ms: body.expires_in_ms,
            message: body.message,
        };
        let created = invitations::create(s, &session, request)?;
        let mut out = invitations::to_json(s, &created.invitation)?;
        out["link"] = json!(created.link);
        if created.invitation.existing_account {
            out["invited_user_id"] = json!(created.invitation.accepted_by);
        }
        Ok(Json(out))
    })
    .await
}

async fn list(State(state): State<AppState>, Admin(_): Admin) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let all = invitations::list(s)?.iter().map(|i| invitations::to_json(s, i)).collect::<Result<Vec<_>>>()?;
        Ok(Json(json!({ "invitations": all })))
    })
    .await
}

async fn revoke(State(state): State<AppState>, Admin(_): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    blocking(&state, move |s| Ok(Json(invitations::to_json(s, &invitations::revoke(s, &id)?)?))).await
}

async fn resend(State(state): State<AppState>, Admin(_): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    blocking(&state, move |s| Ok(Json(invitations::to_json(s, &invitations::resend(s, &id)?)?))).await
}

async fn outbox(State(state): State<AppState>, Admin(_): Admin) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let mails: Vec<Value> = mail::outbox(s)?
            .into_iter()
            .map(
                |m| json!({ "id": m.id, "to": m.to, "subject": m.subject, "text": m.text, "created_at": m.created_at }),
            )
            .collect();
        Ok(Json(json!({ "mails": mails })))
    })
    .await
}

async fn invitable_rooms(State(state): State<AppState>, Admin(session): Admin) -> Result<Json<Value>> {
    blocking(&state, move |s| Ok(Json(json!({ "rooms": invitations::invitable_rooms(s, &session)? })))).await
}

#[derive(Deserialize)]
struct RoomsBody {
    rooms: Vec<String>,
}

async fn add_rooms(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(user_id): Path<String>,
    Body(body): Body<RoomsBody>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let (user_id, _) = local_user(s, &user_id)?;
        let joined = invitations::add_to_rooms(s, &session, &user_id, &body.rooms)?;
        Ok(Json(json!({ "user_id": user_id, "joined": joined })))
    })
    .await
}

async fn remove_room(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path((user_id, room_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let (user_id, _) = local_user(s, &user_id)?;
        invitations::remove_from_room(s, &session, &user_id, &crate::util::parse_room_id(&room_id)?)?;
        Ok(Json(json!({})))
    })
    .await
}

#[derive(Deserialize)]
struct KeyQuery {
    public_key: String,
}

async fn key_is_valid(State(state): State<AppState>, Query(query): Query<KeyQuery>) -> Json<Value> {
    Json(json!({ "valid": invitations::key_is_valid(&state, &query.public_key) }))
}

/// A failed lookup counts against the address's budget, as for guest links,
/// so tokens cannot be guessed at speed.
async fn preview(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    let result = blocking(&state, move |s| invitations::preview(s, &token)).await;
    if result.is_err() {
        charge(&state, ip)?;
    }
    Ok(Json(result?))
}

#[derive(Deserialize)]
struct AcceptBody {
    username: String,
    password: String,
    display_name: Option<String>,
}

async fn accept(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(token): Path<String>,
    Body(body): Body<AcceptBody>,
) -> Result<Json<Value>> {
    charge(&state, ip)?;
    blocking(&state, move |s| {
        let accepted = invitations::accept(s, &token, &body.username, &body.password, body.display_name.as_deref())?;
        Ok(Json(json!({
            "user_id": accepted.user_id,
            "access_token": accepted.access_token,
            "device_id": accepted.device_id,
            "rooms": accepted.rooms,
            "homeserver": s.settings.client_base_url(),
        })))
    })
    .await
}
