//! Membership changes by local users: join, invite, leave, kick, ban,
//! unban, knock; and profile changes carried into member events.

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{TimelineEventType, room::member::MembershipState},
};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    policy::{self, Action},
    service::{Services, ratelimit::UserAction, rooms::NewEvent, users::Session},
};

/// The content of a member event for a local user, with their profile and guest marker.
pub fn member_content(
    services: &Services,
    user_id: &UserId,
    membership: MembershipState,
    reason: Option<&str>,
) -> Result<Map<String, Value>> {
    let mut content = Map::new();
    content.insert("membership".into(), json!(membership.as_str()));
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content.insert("reason".into(), json!(reason));
    }
    if services.users.is_local(user_id)
        && let Some(user) = services.users.get(user_id)?
    {
        if matches!(membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
            if let Some(name) = &user.displayname {
                content.insert("displayname".into(), json!(name));
            }
            if let Some(avatar) = &user.avatar_url {
                content.insert("avatar_url".into(), json!(avatar));
            }
        }
        if user.kind.is_guest() {
            content.insert(crate::policy::GUEST_MARKER.into(), Value::Bool(true));
        }
    }
    Ok(content)
}

fn member_event(target: &UserId, content: Map<String, Value>) -> NewEvent {
    NewEvent::state(TimelineEventType::RoomMember, target.as_str(), Value::Object(content))
}

/// Append `target`'s member event with `content`, sent by `sender` (who
/// the caller decided may).
pub(crate) fn append_member(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    content: Map<String, Value>,
) -> Result<OwnedEventId> {
    Ok(services.rooms.append(room_id, sender, member_event(target, content))?.event_id.clone())
}

/// A signed-in user joins a room this server knows, if the guest policy allows.
/// `extra`: other keys of the join request's body, kept in the member
/// event (a per-room display name among them), as Synapse keeps them.
pub fn join(
    services: &Services,
    session: &Session,
    room_id: &RoomId,
    reason: Option<&str>,
    extra: &serde_json::Map<String, Value>,
) -> Result<OwnedEventId> {
    policy::check(services, session, Action::Join { room_id })?;
    let mut extra = extra.clone();
    for reserved in
        ["membership", "reason", "third_party_signed", "join_authorised_via_users_server", policy::GUEST_MARKER]
    {
        extra.remove(reserved);
    }
    if session.is_guest()
        && let Some(name) = extra.get("displayname").and_then(Value::as_str)
    {
        let name = policy::guest_display_name(services, name);
        extra.insert("displayname".into(), Value::String(name));
    }
    join_as(services, room_id, &session.user_id, reason, &extra)
}

/// Join a room this server knows. Restricted rooms are authorised by a
/// local member who may invite.
pub(crate) fn join_as(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
    extra: &serde_json::Map<String, Value>,
) -> Result<OwnedEventId> {
    let Some(record) = services.rooms.room(room_id)? else {
        return Err(Error::not_found("This room is not known to this server."));
    };
    let current = services.rooms.membership(room_id, user_id)?;
    if current == Some(MembershipState::Join) {
        let existing = services.rooms.user_membership(user_id, room_id)?;
        if let Some(existing) = existing {
            return Ok(existing.event_id);
        }
    }
    if current == Some(MembershipState::Ban) {
        return Err(Error::forbidden("You are banned from this room."));
    }
    let state = services.rooms.state_at(record.current_state)?;
    let mut content = member_content(services, user_id, MembershipState::Join, reason)?;
    content.extend(extra.clone());
    let join_rule = join_rule(services, &state)?;
    let invited = current == Some(MembershipState::Invite);
    if matches!(join_rule.as_str(), "restricted" | "knock_restricted") && !invited {
        let authoriser = restricted_authoriser(services, room_id, &record.version, &state, user_id)?;
        content.insert("join_authorised_via_users_server".into(), json!(authoriser));
    }
    let pdu = services.rooms.append(room_id, user_id, member_event(user_id, content))?;
    // Joining a room that replaced one of theirs: their tags and rules follow.
    crate::service::room_upgrade::on_join(services, user_id, room_id)?;
    Ok(pdu.event_id.clone())
}

/// Join a restricted room on the strength of `authoriser` (a local member who
/// may invite): the guest-link path, where the link is the permission.
pub fn join_authorised(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    authoriser: &UserId,
) -> Result<OwnedEventId> {
    let mut content = member_content(services, user_id, MembershipState::Join, None)?;
    content.insert("join_authorised_via_users_server".into(), json!(authoriser));
    let pdu = services.rooms.append(room_id, user_id, member_event(user_id, content))?;
    Ok(pdu.event_id.clone())
}

/// The join rule of a room state (`invite` when unset).
pub fn join_rule(services: &Services, state: &crate::service::rooms::State) -> Result<String> {
    Ok(services
        .rooms
        .state_content(state, "m.room.join_rules", "")?
        .and_then(|c| c.get("join_rule").and_then(|j| j.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "invite".to_owned()))
}

/// For a restricted join without an invite: the local member who vouches
/// for it (one who may invite), once the user is seen in an allowed room.
pub fn restricted_authoriser(
    services: &Services,
    room_id: &RoomId,
    version: &ruma::RoomVersionId,
    state: &crate::service::rooms::State,
    user_id: &UserId,
) -> Result<OwnedUserId> {
    if !allowed_by_membership(services, state, user_id)? {
        return Err(Error::forbidden("You need an invite, or membership of a room this room allows, to join."));
    }
    let power_levels = services.rooms.power_levels(version, state)?;
    services
        .rooms
        .joined_members(room_id)?
        .into_iter()
        .filter(|member| services.users.is_local(member))
        .find(|member| power_levels.user_can_invite(member))
        .ok_or_else(|| {
            Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNABLE_TO_GRANT_JOIN",
                "No member of this server may invite you to the room, so the join cannot be authorised.",
            )
        })
}

/// Whether the user is joined to a room named in the join rule's `allow` list.
fn allowed_by_membership(services: &Services, state: &crate::service::rooms::State, user_id: &UserId) -> Result<bool> {
    let Some(join_rules) = services.rooms.state_content(state, "m.room.join_rules", "")? else {
        return Ok(false);
    };
    let allow = join_rules.get("allow").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    for entry in allow {
        if entry.get("type").and_then(|t| t.as_str()) != Some("m.room_membership") {
            continue;
        }
        let Some(Ok(room_id)) = entry.get("room_id").and_then(|r| r.as_str()).map(OwnedRoomId::try_from) else {
            continue;
        };
        if services.rooms.is_joined(&room_id, user_id)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A signed-in user invites a user of this server, if the guest policy and
/// the per-user limit allow (other servers' users: `remote_invite::invite_user`).
pub fn invite(
    services: &Services,
    session: &Session,
    room_id: &RoomId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<OwnedEventId> {
    may_invite(services, session)?;
    invite_as(services, room_id, &session.user_id, target, reason, is_direct)
}

/// Whether a signed-in user may send an invite now: the guest policy, then
/// the per-user limit (a token is taken). Asked for local and remote invitees.
pub fn may_invite(services: &Services, session: &Session) -> Result<()> {
    policy::check(services, session, Action::Invite)?;
    services.user_limits.check(&session.user_id, UserAction::Invite)
}

/// `sender` invites a user of this server; the caller decided they may.
pub(crate) fn invite_as(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<OwnedEventId> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found("This room is not known to this server."));
    }
    match services.rooms.membership(room_id, target)? {
        Some(MembershipState::Join) => return Err(Error::forbidden(format!("{target} is already in the room."))),
        Some(MembershipState::Ban) => return Err(Error::forbidden(format!("{target} is banned from the room."))),
        _ => {}
    }
    if !services.users.is_local(target) {
        // Their server must co-sign: `remote_invite::invite_user` routes there.
        return Err(Error::internal("a remote invite reached the local invite path"));
    }
    if services.users.get(target)?.is_none_or(|u| u.deactivated) {
        return Err(Error::not_found(format!("{target} does not exist.")));
    }
    if !services.rooms.is_joined(room_id, sender)? {
        return Err(Error::forbidden("You are not in this room."));
    }
    let mut content = member_content(services, target, MembershipState::Invite, reason)?;
    if is_direct {
        content.insert("is_direct".into(), Value::Bool(true));
    }
    let pdu = services.rooms.append(room_id, sender, member_event(target, content))?;
    crate::service::push::on_invite(services, &pdu)?;
    Ok(pdu.event_id.clone())
}

/// Leave, reject an invite, or rescind a knock.
pub fn leave(services: &Services, room_id: &RoomId, user_id: &UserId, reason: Option<&str>) -> Result<()> {
    match services.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        Some(MembershipState::Leave | MembershipState::Ban) => return Ok(()),
        _ => return Err(Error::forbidden("You are not in this room.")),
    }
    let content = member_content(services, user_id, MembershipState::Leave, reason)?;
    services.rooms.append(room_id, user_id, member_event(user_id, content))?;
    Ok(())
}

/// A signed-in user kicks, bans or unbans `target`: guests never may,
/// whatever the power levels say; for others the room's auth rules decide.
pub fn moderate(
    services: &Services,
    session: &Session,
    room_id: &RoomId,
    target: &UserId,
    action: Moderation,
    reason: Option<&str>,
) -> Result<()> {
    let asked = match action {
        Moderation::Kick => Action::Kick,
        Moderation::Ban => Action::Ban,
        Moderation::Unban => Action::Unban,
    };
    policy::check(services, session, asked)?;
    moderate_as(services, room_id, &session.user_id, target, action, reason)
}

/// Kick, ban or unban `target` as `sender` (ending a guest room). Power is
/// checked by the room's auth rules.
pub(crate) fn moderate_as(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    action: Moderation,
    reason: Option<&str>,
) -> Result<()> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found("This room is not known to this server."));
    }
    let current = services.rooms.membership(room_id, target)?;
    let membership = match action {
        Moderation::Kick => {
            if !matches!(current, Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)) {
                return Err(Error::forbidden(format!("{target} is not in the room.")));
            }
            MembershipState::Leave
        }
        Moderation::Ban => MembershipState::Ban,
        Moderation::Unban => {
            if current != Some(MembershipState::Ban) {
                return Err(Error::forbidden(format!("{target} is not banned.")));
            }
            MembershipState::Leave
        }
    };
    let mut content = Map::new();
    content.insert("membership".into(), json!(membership.as_str()));
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content.insert("reason".into(), json!(reason));
    }
    services.rooms.append(room_id, sender, member_event(target, content))?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub enum Moderation {
    Kick,
    Ban,
    Unban,
}

/// A signed-in user knocks on a room this server holds.
pub fn knock(services: &Services, session: &Session, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
    policy::check(services, session, Action::Knock)?;
    let user_id = &session.user_id;
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found("This room is not known to this server."));
    }
    match services.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join) => return Err(Error::forbidden("You are already in this room.")),
        Some(MembershipState::Ban) => return Err(Error::forbidden("You are banned from this room.")),
        Some(MembershipState::Invite) => return Err(Error::forbidden("You are already invited to this room.")),
        _ => {}
    }
    let content = member_content(services, user_id, MembershipState::Knock, reason)?;
    services.rooms.append(room_id, user_id, member_event(user_id, content))?;
    Ok(())
}

/// Carry a profile change into a new member event in every joined room.
pub fn propagate_profile(services: &Services, user_id: &UserId) -> Result<()> {
    for (room_id, record) in services.rooms.user_rooms(user_id)? {
        if record.membership != MembershipState::Join {
            continue;
        }
        let content = member_content(services, user_id, MembershipState::Join, None)?;
        if let Err(err) = services.rooms.append(&room_id, user_id, member_event(user_id, content)) {
            tracing::warn!(%room_id, %user_id, "could not update member event after a profile change: {err}");
        }
    }
    Ok(())
}

/// Leave every room (deactivation).
pub fn leave_all(services: &Services, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
    let mut left = Vec::new();
    for (room_id, record) in services.rooms.user_rooms(user_id)? {
        if matches!(record.membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
            leave(services, &room_id, user_id, None)?;
            left.push(room_id);
        }
    }
    Ok(left)
}

/// A user id from a client, refusing malformed ids with `M_INVALID_PARAM`.
pub fn parse_user(user: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(user).map_err(|_| Error::invalid_param(format!("`{user}` is not a valid user id.")))
}
