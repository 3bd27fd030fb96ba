//! Rooms: creation, aliases, membership, member lists, summaries.

use ruma::{
    OwnedRoomId, RoomOrAliasId,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_members, joined_rooms, kick_user, leave_room, unban_user,
        },
        room::{aliases, create_room, get_summary, upgrade_room},
    },
    events::room::member::MembershipState,
    room::{JoinRuleSummary, RoomSummary},
};
use serde_json::{Map, Value};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::{
        Services,
        create_room::{self as room_factory, CreateRoom},
        directory, history,
        membership::{self, Moderation},
        remote_invite, remote_join, remote_knock,
        sync::raw,
    },
};

fn object(raw: &ruma::serde::Raw<impl Sized>) -> Result<Map<String, Value>> {
    serde_json::from_str(raw.json().get()).map_err(|_| Error::bad_json("Expected a JSON object."))
}

pub async fn create(state: AppState, req: Ruma<create_room::v3::Request>) -> Result<create_room::v3::Response> {
    let session = req.session().clone();
    let (remote_invites, is_direct) = (
        req.body.invite.iter().filter(|u| u.server_name() != state.settings.server_name).cloned().collect::<Vec<_>>(),
        req.body.is_direct,
    );
    let room_id = blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        let mut initial_state = Vec::new();
        for event in &body.initial_state {
            let event = object(event)?;
            let kind = event
                .get("type")
                .and_then(|t| t.as_str())
                .ok_or_else(|| Error::bad_json("initial_state events need a type."))?;
            let state_key = event.get("state_key").and_then(|k| k.as_str()).unwrap_or("");
            let content = event.get("content").cloned().unwrap_or(Value::Object(Map::new()));
            if !content.is_object() {
                return Err(Error::bad_json("initial_state event content must be an object."));
            }
            initial_state.push((kind.to_owned(), state_key.to_owned(), content));
        }
        let room_id = room_factory::create(
            s,
            session,
            CreateRoom {
                version: body.room_version.clone(),
                creation_content: body.creation_content.as_ref().map(object).transpose()?,
                preset: body.preset.clone(),
                public: body.visibility == ruma::api::client::room::Visibility::Public,
                initial_state,
                power_level_override: body.power_level_content_override.as_ref().map(object).transpose()?,
                invite: body.invite.clone(),
                is_direct: body.is_direct,
                name: body.name.clone(),
                topic: body.topic.clone(),
                alias_localpart: body.room_alias_name.clone(),
            },
        )?;
        Ok(room_id)
    })
    .await?;
    // Other servers' users are invited once the room exists, each through
    // their server; one that cannot be reached does not undo the room.
    for target in remote_invites {
        if let Err(err) =
            remote_invite::invite_user_as(&state, &room_id, &session.user_id, &target, None, is_direct).await
        {
            tracing::warn!(%room_id, %target, "could not invite a user of another server: {}", err.message);
        }
    }
    Ok(create_room::v3::Response::new(room_id))
}

pub async fn put_alias(state: AppState, req: Ruma<create_alias::v3::Request>) -> Result<create_alias::v3::Response> {
    blocking(&state, move |s| {
        directory::add_alias(s, req.session(), &req.body.room_alias, &req.body.room_id)?;
        Ok(create_alias::v3::Response::new())
    })
    .await
}

pub async fn get_alias(state: AppState, req: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let alias = req.body.room_alias.clone();
    if alias.server_name() != state.settings.server_name {
        let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.clone());
        let answer = state.federation.send(alias.server_name(), request).await?;
        return Ok(get_alias::v3::Response::new(answer.room_id, answer.servers));
    }
    blocking(&state, move |s| {
        let room_id = directory::resolve_alias(s, &req.body.room_alias)?
            .ok_or_else(|| Error::not_found("No room has this alias."))?;
        Ok(get_alias::v3::Response::new(room_id, vec![s.settings.server_name.clone()]))
    })
    .await
}

pub async fn delete_alias(state: AppState, req: Ruma<delete_alias::v3::Request>) -> Result<delete_alias::v3::Response> {
    blocking(&state, move |s| {
        directory::remove_alias(s, req.session(), &req.body.room_alias)?;
        Ok(delete_alias::v3::Response::new())
    })
    .await
}

pub async fn room_aliases(state: AppState, req: Ruma<aliases::v3::Request>) -> Result<aliases::v3::Response> {
    blocking(&state, move |s| {
        history::require_reader(s, &req.body.room_id, &req.session().user_id)?;
        Ok(aliases::v3::Response::new(directory::room_aliases(s, &req.body.room_id)?))
    })
    .await
}

fn resolve(s: &Services, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
    match <&ruma::RoomId>::try_from(room) {
        Ok(room_id) => Ok(room_id.to_owned()),
        Err(alias) => directory::resolve_alias(s, alias)?.ok_or_else(|| Error::not_found("No room has this alias.")),
    }
}

/// Join a room by id or alias: locally when porch holds the room, else
/// through the servers named (`via`, the alias's, the room id's).
/// A room id from an id or alias (of this server or, asked over
/// federation, another), with the servers that may know the room.
async fn resolve_any(
    state: &AppState,
    room: &RoomOrAliasId,
    mut via: Vec<ruma::OwnedServerName>,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let room_id = match <&ruma::RoomId>::try_from(room) {
        Ok(room_id) => room_id.to_owned(),
        Err(alias) if alias.server_name() == state.settings.server_name => {
            let alias = alias.to_owned();
            blocking(state, move |s| {
                directory::resolve_alias(s, &alias)?.ok_or_else(|| Error::not_found("No room has this alias."))
            })
            .await?
        }
        Err(alias) => {
            let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
            let answer = state.federation.send(alias.server_name(), request).await?;
            via.extend(answer.servers);
            via.push(alias.server_name().to_owned());
            answer.room_id
        }
    };
    Ok((room_id, via))
}

async fn join_any(
    state: &AppState,
    session: crate::service::users::Session,
    room: &RoomOrAliasId,
    via: Vec<ruma::OwnedServerName>,
    reason: Option<String>,
    extra: Map<String, Value>,
) -> Result<OwnedRoomId> {
    let (room_id, via) = resolve_any(state, room, via).await?;
    let checked_room = room_id.clone();
    let remote = blocking(state, move |s| remote_join::needs_remote_join(s, &checked_room)).await?;
    if remote {
        remote_join::join(state, &session.user_id, &room_id, via, reason).await?;
    } else {
        let checked_room = room_id.clone();
        blocking(state, move |s| membership::join(s, &session, &checked_room, reason.as_deref(), &extra)).await?;
    }
    Ok(room_id)
}

pub async fn join_by_id(
    state: AppState,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let room = ruma::OwnedRoomOrAliasId::from(req.body.room_id.clone());
    let extra = req.body_object.clone().unwrap_or_default();
    let room_id = join_any(&state, req.session().clone(), &room, Vec::new(), req.body.reason.clone(), extra).await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

pub async fn join_by_id_or_alias(
    state: AppState,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let body = &req.body;
    let extra = req.body_object.clone().unwrap_or_default();
    let room_id =
        join_any(&state, req.session().clone(), &body.room_id_or_alias, body.via.clone(), body.reason.clone(), extra)
            .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

pub async fn invite(state: AppState, req: Ruma<invite_user::v3::Request>) -> Result<invite_user::v3::Response> {
    let session = req.session().clone();
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.body.recipient else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            "Third-party invites are not supported.",
        ));
    };
    let (target, reason, room_id) = (recipient.user_id.clone(), recipient.reason.clone(), req.body.room_id.clone());
    remote_invite::invite_user(&state, &session, &room_id, &target, reason, false).await?;
    Ok(invite_user::v3::Response::new())
}

/// Leave a room; an invite to a room porch does not hold is rejected
/// through the inviting server.
pub async fn leave(state: AppState, req: Ruma<leave_room::v3::Request>) -> Result<leave_room::v3::Response> {
    let (user, room_id) = (req.session().user_id.clone(), req.body.room_id.clone());
    let (u, r) = (user.clone(), room_id.clone());
    let remote_invite =
        blocking(&state, move |s| Ok(!s.rooms.exists(&r)? && remote_invite::pending_invite(s, &u, &r)?.is_some()))
            .await?;
    if remote_invite {
        remote_invite::reject(&state, &user, &room_id, req.body.reason.clone()).await?;
    } else {
        blocking(&state, move |s| membership::leave(s, &room_id, &user, req.body.reason.as_deref())).await?;
    }
    Ok(leave_room::v3::Response::new())
}

pub async fn forget(state: AppState, req: Ruma<forget_room::v3::Request>) -> Result<forget_room::v3::Response> {
    blocking(&state, move |s| {
        let user_id = &req.session().user_id;
        match s.rooms.membership(&req.body.room_id, user_id)? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
                Err(Error::bad_state("Leave the room before forgetting it."))
            }
            None if s.rooms.user_membership(user_id, &req.body.room_id)?.is_none() => {
                Err(Error::not_found("You were never in this room."))
            }
            _ => {
                s.rooms.forget(user_id, &req.body.room_id)?;
                Ok(forget_room::v3::Response::new())
            }
        }
    })
    .await
}

pub async fn kick(state: AppState, req: Ruma<kick_user::v3::Request>) -> Result<kick_user::v3::Response> {
    blocking(&state, move |s| {
        membership::moderate(
            s,
            req.session(),
            &req.body.room_id,
            &req.body.user_id,
            Moderation::Kick,
            req.body.reason.as_deref(),
        )?;
        Ok(kick_user::v3::Response::new())
    })
    .await
}

pub async fn ban(state: AppState, req: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response> {
    blocking(&state, move |s| {
        membership::moderate(
            s,
            req.session(),
            &req.body.room_id,
            &req.body.user_id,
            Moderation::Ban,
            req.body.reason.as_deref(),
        )?;
        Ok(ban_user::v3::Response::new())
    })
    .await
}

pub async fn unban(state: AppState, req: Ruma<unban_user::v3::Request>) -> Result<unban_user::v3::Response> {
    blocking(&state, move |s| {
        membership::moderate(
            s,
            req.session(),
            &req.body.room_id,
            &req.body.user_id,
            Moderation::Unban,
            req.body.reason.as_deref(),
        )?;
        Ok(unban_user::v3::Response::new())
    })
    .await
}

pub async fn knock(state: AppState, req: Ruma<knock_room::v3::Request>) -> Result<knock_room::v3::Response> {
    let session = req.session().clone();
    let (room_id, mut via) = resolve_any(&state, &req.body.room_id_or_alias, req.body.via.clone()).await?;
    let user = req.session().user_id.clone();
    let reason = req.body.reason.clone();
    let held = {
        let room_id = room_id.clone();
        blocking(&state, move |s| s.rooms.exists(&room_id)).await?
    };
    if held {
        let room = room_id.clone();
        blocking(&state, move |s| membership::knock(s, &session, &room, reason.as_deref())).await?;
    } else {
        via.extend(room_id.server_name().map(ToOwned::to_owned));
        remote_knock::knock(&state, &user, &room_id, via, reason).await?;
    }
    Ok(knock_room::v3::Response::new(room_id))
}

pub async fn members(
    state: AppState,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let room_state = history::visible_state(s, &body.room_id, &req.session().user_id)?;
        let mut chunk = Vec::new();
        for (_, event_id) in s.rooms.state_of_kind(&room_state, "m.room.member")? {
            let Some((pdu, meta)) = s.rooms.get_pdu(&event_id)? else { continue };
            let membership = pdu.content_value().get("membership").and_then(|m| m.as_str()).map(MembershipState::from);
            if body.membership.as_ref().is_some_and(|want| membership.as_ref() != Some(want)) {
                continue;
            }
            if body.not_membership.as_ref().is_some_and(|not| membership.as_ref() == Some(not)) {
                continue;
            }
            chunk.push(raw(&pdu.to_client_event(&meta, true, None)));
        }
        Ok(get_member_events::v3::Response::new(chunk))
    })
    .await
}

/// Written as JSON: each member has `display_name` and `avatar_url`, null
/// when unset, as Synapse answers (ruma would leave them out).
pub async fn joined_members(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<axum::Json<Value>> {
    blocking(&state, move |s| {
        if !s.rooms.is_joined(&req.body.room_id, &req.session().user_id)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let room_state = s.rooms.current_state(&req.body.room_id)?;
        let mut joined = Map::new();
        for user_id in s.rooms.joined_members(&req.body.room_id)? {
            let content = s.rooms.state_content(&room_state, "m.room.member", user_id.as_str())?.unwrap_or_default();
            let field = |name: &str| content.get(name).filter(|v| v.is_string()).cloned().unwrap_or(Value::Null);
            joined.insert(
                user_id.to_string(),
                serde_json::json!({ "display_name": field("displayname"), "avatar_url": field("avatar_url") }),
            );
        }
        Ok(axum::Json(serde_json::json!({ "joined": joined })))
    })
    .await
}

pub async fn joined_rooms(state: AppState, req: Ruma<joined_rooms::v3::Request>) -> Result<joined_rooms::v3::Response> {
    blocking(&state, move |s| {
        let rooms = s
            .rooms
            .user_rooms(&req.session().user_id)?
            .into_iter()
            .filter(|(_, r)| r.membership == MembershipState::Join)
            .map(|(room_id, _)| room_id)
            .collect();
        Ok(joined_rooms::v3::Response::new(rooms))
    })
    .await
}

/// MSC3266 room summary: for members, and for anyone when the room is
/// public, world-readable or open to knocking.
pub async fn summary(state: AppState, req: Ruma<get_summary::v1::Request>) -> Result<get_summary::v1::Response> {
    blocking(&state, move |s| {
        let room_id = resolve(s, &req.body.room_id_or_alias)?;
        let room = s.rooms.room(&room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        let room_state = s.rooms.state_at(room.current_state)?;
        let text = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(s.rooms
                .state_content(&room_state, kind, "")?
                .and_then(|c| c.get(field).and_then(|v| v.as_str()).map(str::to_owned)))
        };
        let join_rule = text("m.room.join_rules", "join_rule")?.unwrap_or_else(|| "invite".to_owned());
        let guest_can_join = text("m.room.guest_access", "guest_access")?.as_deref() == Some("can_join");
        let world_readable =
            text("m.room.history_visibility", "history_visibility")?.as_deref() == Some("world_readable");
        let membership = match &req.session {
            Some(session) => {
                crate::policy::check(s, session, crate::policy::Action::PreviewRoom { room_id: &room_id })
                    .map_err(|_| Error::not_found("This room is not known to this server."))?;
                s.rooms.membership(&room_id, &session.user_id)?
            }
            None => None,
        };
        let visible = world_readable
            || matches!(join_rule.as_str(), "public" | "knock" | "knock_restricted" | "restricted")
            || membership.is_some();
        if !visible {
            return Err(Error::not_found("This room is not known to this server."));
        }
        let join_rule_summary = match join_rule.as_str() {
            "public" => JoinRuleSummary::Public,
            "knock" => JoinRuleSummary::Knock,
            "private" => JoinRuleSummary::Private,
            _ => JoinRuleSummary::Invite,
        };
        let joined = ruma::UInt::new_saturating(s.rooms.joined_members(&room_id)?.len() as u64);
        let mut summary = RoomSummary::new(room_id.clone(), join_rule_summary, guest_can_join, joined, world_readable);
        summary.name = text("m.room.name", "name")?;
        summary.topic = text("m.room.topic", "topic")?;
        summary.canonical_alias = text("m.room.canonical_alias", "alias")?.and_then(|a| a.try_into().ok());
        summary.avatar_url = text("m.room.avatar", "url")?.map(Into::into);
        summary.room_version = Some(room.version.clone());
        let mut response = get_summary::v1::Response::new(summary);
        response.membership = membership;
        Ok(response)
    })
    .await
}

pub async fn upgrade(state: AppState, req: Ruma<upgrade_room::v3::Request>) -> Result<upgrade_room::v3::Response> {
    let body = &req.body;
    let new_room =
        crate::service::room_upgrade::upgrade_room(&state, req.session(), &body.room_id, body.new_version.as_str())
            .await?;
    Ok(upgrade_room::v3::Response::new(new_room))
}
