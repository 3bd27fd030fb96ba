//! porch's own APIs: guest rooms and links for clients
//! (`/_porch/client/v1`) and server administration (`/_porch/admin/v1`).
//! Plain JSON over axum, since ruma has no types for them; errors are the
//! same Matrix `{errcode, error}` objects.

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Path, Query, Request, State},
    routing::{delete, get, post, put},
};
use http::{Method, request::Parts};
use ruma::OwnedUserId;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    api::{AppState, Routes, blocking},
    error::{Error, Result},
    service::{
        Services, accounts,
        guests::{self, LinkOptions, NewGuestRoom, Redeemer},
        users::{AccountKind, Session},
    },
};

/// The caller's session; requests without a valid token are refused.
pub struct Auth(pub Session);

/// The caller's session if a token was sent.
pub struct MaybeAuth(pub Option<Session>);

/// A server admin's session.
pub struct Admin(pub Session);

fn bearer(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match bearer(parts) {
            Some(token) => Ok(Self(Some(blocking(state, move |s| s.users.authenticate(&token)).await?))),
            None => Ok(Self(None)),
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let MaybeAuth(session) = MaybeAuth::from_request_parts(parts, state).await?;
        session.map(Self).ok_or_else(Error::missing_token)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let Auth(session) = Auth::from_request_parts(parts, state).await?;
        if !session.user.is_admin {
            return Err(Error::forbidden("This needs a server administrator's access token."));
        }
        Ok(Self(session))
    }
}

/// A JSON body, refused with `M_NOT_JSON` / `M_BAD_JSON`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        let limit = state.settings.raw.limits.max_request_bytes;
        let bytes = crate::listener::read_body(req.into_body(), limit, &state.settings).await?;
        let bytes = if bytes.is_empty() { &b"{}"[..] } else { &bytes[..] };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::not_json(format!("The body is not valid JSON: {e}")))?;
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| Error::bad_json(format!("The body is not what this endpoint expects: {e}")))
    }
}

/// The client's address, for rate limits.
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> std::result::Result<Self, Self::Rejection> {
        Ok(Self(crate::api::client_ip(parts, &state.settings)))
    }
}

fn parse_user(user_id: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param(format!("`{user_id}` is not a user id.")))
}

pub fn register(r: &mut Routes) {
    r.raw("/_porch/client/v1/guest_rooms", Method::GET, get(list_guest_rooms).post(create_guest_room))
        .raw("/_porch/client/v1/guest_rooms/{room_id}", Method::GET, get(guest_room_details))
        .raw("/_porch/client/v1/guest_rooms/{room_id}/links", Method::GET, get(list_links).post(create_link))
        .raw("/_porch/client/v1/guest_rooms/{room_id}/links/{link_id}", Method::DELETE, delete(revoke_link))
        .raw("/_porch/client/v1/guest_rooms/{room_id}/end", Method::POST, post(end_room))
        .raw("/_porch/client/v1/guest_links/{token}", Method::GET, get(preview_link))
        .raw("/_porch/client/v1/guest_links/{token}/join", Method::POST, post(redeem_link))
        .raw("/_porch/admin/v1/stats", Method::GET, get(admin_stats))
        .raw("/_porch/admin/v1/users", Method::GET, get(admin_users).post(admin_create_user))
        .raw("/_porch/admin/v1/users/{user_id}/admin", Method::PUT, put(admin_set_admin))
        .raw("/_porch/admin/v1/users/{user_id}/deactivate", Method::POST, post(admin_deactivate))
        .raw("/_porch/admin/v1/users/{user_id}/security_level", Method::PUT, put(admin_set_level))
        .raw("/_porch/admin/v1/guest_rooms", Method::GET, get(admin_guest_rooms))
        .raw("/_porch/admin/v1/guest_rooms/{room_id}/end", Method::POST, post(admin_end_room))
        .raw("/_porch/admin/v1/guest_links/{link_id}", Method::DELETE, delete(admin_revoke_link))
        .raw("/_porch/admin/v1/reports", Method::GET, get(admin_reports));
}

#[derive(Deserialize)]
struct CreateGuestRoomBody {
    name: String,
    topic: Option<String>,
    ends_at: Option<u64>,
    history_visibility: Option<String>,
    #[serde(default)]
    link: LinkOptions,
}

async fn create_guest_room(
    State(state): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<CreateGuestRoomBody>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let request = NewGuestRoom {
            name: body.name,
            topic: body.topic,
            ends_at: body.ends_at,
            history_visibility: body.history_visibility,
            link: body.link,
        };
        let (room_id, link) = guests::create(s, &session, request)?;
        Ok(Json(json!({ "room_id": room_id, "link": link.to_json(s) })))
    })
    .await
}

fn room_json(s: &Services, record: &guests::GuestRoom, with_links: bool) -> Result<Value> {
    let state = s.rooms.current_state(&record.room_id)?;
    let name = s.rooms.name_in(&state)?;
    let level = s.rooms.state_content(&state, guests::SECURITY_LEVEL_EVENT, "")?.unwrap_or_default();
    let mut out = json!({
        "room_id": record.room_id,
        "name": name,
        "creator": record.creator,
        "created_at": record.created_at,
        "ends_at": record.ends_at,
        "ended": record.ended,
        "ended_at": record.ended_at,
        "security_level": level,
    });
    if with_links {
        out["links"] = guests::links_of(s, &record.room_id)?.iter().map(|l| l.to_json(s)).collect();
        let mut guest_members = Vec::new();
        for user_id in s.rooms.joined_members(&record.room_id)? {
            if let Some(user) = s.users.get(&user_id)?
                && user.kind.is_guest()
            {
                guest_members
                    .push(json!({ "user_id": user_id, "kind": user.kind.as_str(), "displayname": user.displayname }));
            }
        }
        out["guests"] = Value::Array(guest_members);
    }
    Ok(out)
}

async fn list_guest_rooms(State(state): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let mut rooms = Vec::new();
        for record in guests::all_rooms(s)? {
            if !record.ended && guests::managed_room(s, &session, &record.room_id).is_ok() {
                rooms.push(room_json(s, &record, false)?);
            }
        }
        Ok(Json(json!({ "guest_rooms": rooms })))
    })
    .await
}

async fn guest_room_details(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let record = guests::managed_room(s, &session, &crate::util::parse_room_id(&room_id)?)?;
        Ok(Json(room_json(s, &record, true)?))
    })
    .await
}

async fn list_links(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let record = guests::managed_room(s, &session, &crate::util::parse_room_id(&room_id)?)?;
        Ok(Json(
            json!({ "links": guests::links_of(s, &record.room_id)?.iter().map(|l| l.to_json(s)).collect::<Vec<_>>() }),
        ))
    })
    .await
}

async fn create_link(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(room_id): Path<String>,
    Body(options): Body<LinkOptions>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let link = guests::create_link(s, &session, &crate::util::parse_room_id(&room_id)?, options)?;
        Ok(Json(link.to_json(s)))
    })
    .await
}

async fn revoke_link(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path((room_id, link_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let record = guests::managed_room(s, &session, &crate::util::parse_room_id(&room_id)?)?;
        let link = guests::link(s, &link_id)?
            .filter(|l| l.room_id == record.room_id)
            .ok_or_else(|| Error::not_found("No link with this id in this room."))?;
        let link = guests::revoke_link(s, &link.id)?;
        Ok(Json(link.to_json(s)))
    })
    .await
}

async fn end_room(
    State(state): State<AppState>,
    Auth(session): Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let room_id = crate::util::parse_room_id(&room_id)?;
        let record = guests::room(s, &room_id)?.ok_or_else(|| Error::not_found("No guest room with this id."))?;
        if !guests::may_end(s, &session, &record)? {
            return Err(Error::forbidden(
                "Only the room's creator, its admins on this server or a server admin may end it.",
            ));
        }
        let record = guests::end(s, &room_id)?;
        Ok(Json(json!({ "room_id": record.room_id, "ended": record.ended, "ended_at": record.ended_at })))
    })
    .await
}

/// Unknown tokens count against the address's redemption budget, so tokens
/// cannot be guessed at speed.
pub(crate) fn charge(state: &AppState, ip: std::net::IpAddr) -> Result<()> {
    state.redeem_limiter.check(ip).map_err(Error::limit_exceeded)
}

async fn preview_link(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    let result = blocking(&state, move |s| guests::preview(s, &token)).await;
    if result.is_err() {
        charge(&state, ip)?;
    }
    Ok(Json(result?))
}

#[derive(Deserialize)]
struct RedeemBody {
    display_name: Option<String>,
    password: Option<String>,
    user_id: Option<String>,
}

async fn redeem_link(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeAuth(session): MaybeAuth,
    Path(token): Path<String>,
    Body(body): Body<RedeemBody>,
) -> Result<Json<Value>> {
    charge(&state, ip)?;
    let password = body.password;
    let redeemed = match (session, body.user_id, body.display_name) {
        (None, Some(user_id), _) => {
            let user_id = parse_user(&user_id)?;
            if state.users.is_local(&user_id) {
                return Err(Error::invalid_param("Sign in to join with an account of this server."));
            }
            let redeemed = guests::redeem_remote(&state, &token, password.as_deref(), user_id).await?;
            return Ok(Json(json!({ "room_id": redeemed.room_id, "user_id": redeemed.user_id, "invited": true })));
        }
        (session, _, display_name) => {
            blocking(&state, move |s| {
                let redeemer = match (&session, display_name) {
                    (Some(session), _) => Redeemer::Account(session),
                    (None, Some(display_name)) => Redeemer::NewGuest { display_name },
                    (None, None) => {
                        return Err(Error::missing_param(
                            "Give a `display_name` to join as a guest, a `user_id` of another server, or sign in.",
                        ));
                    }
                };
                guests::redeem(s, &token, password.as_deref(), redeemer)
            })
            .await?
        }
    };
    let mut out = json!({ "room_id": redeemed.room_id, "user_id": redeemed.user_id });
    if let Some((access_token, device_id, expires_at)) = redeemed.login {
        out["access_token"] = json!(access_token);
        out["device_id"] = json!(device_id);
        out["expires_at"] = json!(expires_at);
    }
    Ok(Json(out))
}

async fn admin_stats(State(state): State<AppState>, Admin(_): Admin) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let (mut member, mut external, mut temporary) = (0, 0, 0);
        for (_, user) in s.users.all()? {
            if user.deactivated {
                continue;
            }
            match user.kind {
                AccountKind::Member => member += 1,
                AccountKind::External => external += 1,
                AccountKind::Temporary => temporary += 1,
            }
        }
        let rooms = guests::all_rooms(s)?;
        let active_rooms: Vec<_> = rooms.iter().filter(|r| !r.ended).collect();
        let now = crate::util::now_ms();
        let mut active_links = 0;
        for room in &active_rooms {
            active_links += guests::links_of(s, &room.room_id)?.iter().filter(|l| l.is_active(now)).count();
        }
        Ok(Json(json!({
            "users": { "member": member, "external": external, "temporary": temporary },
            "guest_rooms": { "active": active_rooms.len(), "ended": rooms.len() - active_rooms.len() },
            "links": { "active": active_links },
            "invitations": { "pending": crate::service::invitations::pending_count(s)? },
            "limits": { "max_external_users": s.settings.raw.guests.max_external_users },
        })))
    })
    .await
}

#[derive(Deserialize)]
struct UsersQuery {
    kind: Option<String>,
}

pub(crate) fn user_json(user_id: &OwnedUserId, user: &crate::service::users::UserRecord, s: &Services) -> Value {
    let mut out = json!({
        "user_id": user_id,
        "kind": user.kind.as_str(),
        "is_admin": user.is_admin,
        "deactivated": user.deactivated,
        "displayname": user.displayname,
        "created_at": user.created_at,
        "security_level": user.security_level.clone().unwrap_or_else(|| s.settings.raw.default_security_level.clone()),
    });
    if user.kind == AccountKind::External {
        // What an admin managing outsiders needs: where they came from, where they are.
        out["email"] = json!(user.email);
        let rooms: Vec<Value> = s
            .rooms
            .user_rooms(user_id)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, m)| m.membership == ruma::events::room::member::MembershipState::Join)
            .map(|(room_id, _)| json!({ "name": s.rooms.name(&room_id).ok().flatten(), "room_id": room_id }))
            .collect();
        out["rooms"] = Value::Array(rooms);
    }
    out
}

async fn admin_users(
    State(state): State<AppState>,
    Admin(_): Admin,
    Query(query): Query<UsersQuery>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        if let Some(kind) = &query.kind
            && !matches!(kind.as_str(), "member" | "external" | "temporary")
        {
            return Err(Error::invalid_param("`kind` may be member, external or temporary."));
        }
        let users: Vec<Value> = s
            .users
            .all()?
            .iter()
            .filter(|(_, u)| query.kind.as_deref().is_none_or(|k| u.kind.as_str() == k))
            .map(|(id, u)| user_json(id, u, s))
            .collect();
        Ok(Json(json!({ "users": users })))
    })
    .await
}

#[derive(Deserialize)]
struct CreateUserBody {
    username: String,
    password: String,
    /// `member` (default) or `external`; temporary accounts come only from links.
    kind: Option<String>,
    #[serde(default)]
    admin: bool,
    displayname: Option<String>,
    security_level: Option<String>,
}

async fn admin_create_user(
    State(state): State<AppState>,
    Admin(_): Admin,
    Body(body): Body<CreateUserBody>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        crate::service::users::check_new_password(&body.password)?;
        if let Some(level) = &body.security_level
            && s.settings.security_level(level).is_none()
        {
            return Err(Error::invalid_param(format!("`{level}` is not a configured security level.")));
        }
        let kind = match body.kind.as_deref() {
            None | Some("member") => AccountKind::Member,
            Some("external") => AccountKind::External,
            Some(_) => {
                return Err(Error::invalid_param(
                    "`kind` may be member or external; temporary accounts come from guest links.",
                ));
            }
        };
        if kind == AccountKind::External && body.admin {
            return Err(Error::invalid_param("External accounts cannot be server admins."));
        }
        let user_id = s.users.local_user_id(&body.username)?;
        let displayname = match kind {
            AccountKind::External => {
                Some(crate::policy::guest_display_name(s, body.displayname.as_deref().unwrap_or(&body.username)))
            }
            _ => body.displayname,
        };
        let mut user = s.users.create(&user_id, Some(&body.password), kind, body.admin, displayname)?;
        if body.security_level.is_some() {
            user.security_level = body.security_level;
            s.users.save(&user_id, &user)?;
        }
        Ok(Json(user_json(&user_id, &user, s)))
    })
    .await
}

pub(crate) fn local_user(s: &Services, user_id: &str) -> Result<(OwnedUserId, crate::service::users::UserRecord)> {
    let user_id = parse_user(user_id)?;
    let user = s
        .users
        .get(&user_id)?
        .filter(|_| s.users.is_local(&user_id))
        .ok_or_else(|| Error::not_found("No such user on this server."))?;
    Ok((user_id, user))
}

/// Change a local account and answer with its new record.
fn update_user(
    s: &Services,
    user_id: &str,
    change: impl FnOnce(&mut crate::service::users::UserRecord) -> Result<()>,
) -> Result<Json<Value>> {
    let (user_id, mut user) = local_user(s, user_id)?;
    change(&mut user)?;
    s.users.save(&user_id, &user)?;
    Ok(Json(user_json(&user_id, &user, s)))
}

#[derive(Deserialize)]
struct AdminFlagBody {
    admin: bool,
}

async fn admin_set_admin(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    Body(body): Body<AdminFlagBody>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        update_user(s, &user_id, |user| {
            if body.admin && user.kind.is_guest() {
                return Err(Error::forbidden("Guest accounts cannot be server admins."));
            }
            user.is_admin = body.admin;
            Ok(())
        })
    })
    .await
}

async fn admin_deactivate(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let (user_id, _) = local_user(s, &user_id)?;
        accounts::deactivate(s, &user_id)?;
        let (_, user) = local_user(s, user_id.as_str())?;
        Ok(Json(user_json(&user_id, &user, s)))
    })
    .await
}

#[derive(Deserialize)]
struct LevelBody {
    level: String,
}

async fn admin_set_level(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    Body(body): Body<LevelBody>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        if s.settings.security_level(&body.level).is_none() {
            return Err(Error::invalid_param(format!("`{}` is not a configured security level.", body.level)));
        }
        update_user(s, &user_id, |user| {
            user.security_level = Some(body.level);
            Ok(())
        })
    })
    .await
}

async fn admin_guest_rooms(State(state): State<AppState>, Admin(_): Admin) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let rooms = guests::all_rooms(s)?.iter().map(|r| room_json(s, r, true)).collect::<Result<Vec<_>>>()?;
        Ok(Json(json!({ "guest_rooms": rooms })))
    })
    .await
}

#[derive(Deserialize)]
struct ReportsQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

/// Reports of events, rooms and users, newest first; `before` pages.
async fn admin_reports(
    State(state): State<AppState>,
    Admin(_): Admin,
    Query(query): Query<ReportsQuery>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let reports = crate::service::reports::list(s, query.before, query.limit.unwrap_or(50))?;
        let next =
            if reports.len() == query.limit.unwrap_or(50).clamp(1, 100) { reports.last().map(|r| r.id) } else { None };
        Ok(Json(json!({ "reports": reports, "next_before": next })))
    })
    .await
}

async fn admin_end_room(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let record = guests::end(s, &crate::util::parse_room_id(&room_id)?)?;
        Ok(Json(json!({ "room_id": record.room_id, "ended": record.ended, "ended_at": record.ended_at })))
    })
    .await
}

async fn admin_revoke_link(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(link_id): Path<String>,
) -> Result<Json<Value>> {
    blocking(&state, move |s| {
        let link = guests::revoke_link(s, &link_id)?;
        Ok(Json(link.to_json(s)))
    })
    .await
}
