//! Turning a createRoom request into the room's first events.

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId, UserId,
    api::client::room::create_room::v3::RoomPreset,
    events::{TimelineEventType, room::member::MembershipState},
};
use serde_json::{Map, Value, json};

use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    error::{Error, Result},
    policy::{self, Action},
    service::{Services, directory, membership, ratelimit::UserAction, rooms::NewEvent, users::Session},
};

/// What a client asked for, already parsed.
#[derive(Debug)]
pub struct CreateRoom {
    pub version: Option<RoomVersionId>,
    pub creation_content: Option<Map<String, Value>>,
    pub preset: Option<RoomPreset>,
    pub public: bool,
    pub initial_state: Vec<(String, String, Value)>,
    pub power_level_override: Option<Map<String, Value>>,
    /// Everyone to invite (trusted private chats make them all admins);
    /// only this server's users get their invite here, the caller sends
    /// the others through their servers.
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias_localpart: Option<String>,
}

/// createRoom for a signed-in user: the guest policy and the per-user
/// limit decide first.
pub fn create(s: &Services, session: &Session, req: CreateRoom) -> Result<OwnedRoomId> {
    policy::check(s, session, Action::CreateRoom(&req))?;
    if req.public {
        policy::check(s, session, Action::PublishRoom)?;
    }
    if req.alias_localpart.is_some() {
        policy::check(s, session, Action::ManageAliases)?;
    }
    s.user_limits.check(&session.user_id, UserAction::CreateRoom)?;
    // Invites sent with a new room count like any others.
    for _ in &req.invite {
        s.user_limits.check(&session.user_id, UserAction::Invite)?;
    }
    create_as(s, &session.user_id, req)
}

/// Make the room, `creator` sending its first events; the caller has
/// decided that they may (a guest room's creator, checked by `guests`).
pub(crate) fn create_as(s: &Services, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
    let version = req.version.clone().unwrap_or_else(|| s.settings.default_room_version.clone());
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::unsupported_room_version(format!(
            "This server cannot create rooms of version {version}; use a version from 1 to 12."
        )));
    }
    let rules = crate::service::rooms::Rooms::rules(&version)?;
    let alias = match &req.alias_localpart {
        Some(localpart) => {
            if localpart.is_empty() || localpart.contains([':', '#', ' ']) {
                return Err(Error::invalid_param(
                    "The room alias name may not be empty or contain ':', '#' or spaces.",
                ));
            }
            let alias = OwnedRoomAliasId::try_from(format!("#{localpart}:{}", s.server_name()))
                .map_err(|_| Error::invalid_param("The room alias name is not valid."))?;
            if directory::resolve_alias(s, &alias)?.is_some() {
                return Err(Error::room_in_use("That room alias is already taken."));
            }
            Some(alias)
        }
        None => None,
    };
    for user in &req.invite {
        if s.users.is_local(user) && s.users.get(user)?.is_none_or(|u| u.deactivated) {
            return Err(Error::not_found(format!("{user} does not exist.")));
        }
    }
    let preset =
        req.preset.clone().unwrap_or(if req.public { RoomPreset::PublicChat } else { RoomPreset::PrivateChat });
    let trusted = preset == RoomPreset::TrustedPrivateChat;

    let mut create_content = req.creation_content.clone().unwrap_or_default();
    create_content.insert("room_version".into(), json!(version.as_str()));
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), json!(creator));
    } else {
        create_content.remove("creator");
    }
    if rules.authorization.explicitly_privilege_room_creators && trusted {
        let mut extra: Vec<Value> =
            create_content.get("additional_creators").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        extra.extend(req.invite.iter().map(|u| json!(u)));
        create_content.insert("additional_creators".into(), Value::Array(extra));
    }

    let mut events = Vec::new();
    events.push(NewEvent::state(
        TimelineEventType::RoomMember,
        creator.as_str(),
        Value::Object(membership::member_content(s, creator, MembershipState::Join, None)?),
    ));

    // Creators hold infinite power from v12 and must not be listed in `users`.
    let mut users = Map::new();
    if !rules.authorization.explicitly_privilege_room_creators {
        users.insert(creator.to_string(), json!(100));
        if trusted {
            for user in &req.invite {
                users.insert(user.to_string(), json!(100));
            }
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100
        },
        "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        "notifications": { "room": 50 }
    });
    if let Some(override_content) = req.power_level_override {
        let target = power_levels.as_object_mut().expect("object");
        for (k, v) in override_content {
            target.insert(k, v);
        }
    }
    events.push(NewEvent::state(TimelineEventType::RoomPowerLevels, "", power_levels));
    if let Some(alias) = &alias {
        events.push(NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", json!({ "alias": alias })));
    }
    // As Synapse: private presets let Matrix guests in, the public one
    // says nothing (guests are then not allowed, the spec's default).
    let (join_rule, history, guest) = match preset {
        RoomPreset::PublicChat => ("public", "shared", None),
        _ => ("invite", "shared", Some("can_join")),
    };
    events.push(NewEvent::state(TimelineEventType::RoomJoinRules, "", json!({ "join_rule": join_rule })));
    events.push(NewEvent::state(
        TimelineEventType::RoomHistoryVisibility,
        "",
        json!({ "history_visibility": history }),
    ));
    if let Some(guest) = guest {
        events.push(NewEvent::state(TimelineEventType::RoomGuestAccess, "", json!({ "guest_access": guest })));
    }
    for (kind, state_key, content) in req.initial_state {
        if kind == "m.room.create" || kind == "m.room.member" {
            return Err(Error::bad_json("initial_state may not contain m.room.create or m.room.member events."));
        }
        events.push(NewEvent::state(kind.as_str(), state_key, content));
    }
    if let Some(name) = req.name.filter(|n| !n.is_empty()) {
        events.push(NewEvent::state(TimelineEventType::RoomName, "", json!({ "name": name })));
    }
    if let Some(topic) = req.topic.filter(|t| !t.is_empty()) {
        events.push(NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": topic })));
    }
    // Other servers' users are invited through their server once the room
    // exists (the caller does it); their power above is set all the same.
    for user in req.invite.iter().filter(|u| s.users.is_local(u)) {
        let mut content = membership::member_content(s, user, MembershipState::Invite, None)?;
        if req.is_direct {
            content.insert("is_direct".into(), Value::Bool(true));
        }
        events.push(NewEvent::state(TimelineEventType::RoomMember, user.as_str(), Value::Object(content)));
    }

    let create = || {
        let (room_id, pdus) = s.rooms.create_room(creator, version, Value::Object(create_content), events)?;
        // The invites notify their invitees (see `push::on_invite`).
        for pdu in pdus.iter().filter(|pdu| pdu.kind == TimelineEventType::RoomMember) {
            crate::service::push::on_invite(s, pdu)?;
        }
        Ok(room_id)
    };
    let room_id = match &alias {
        Some(alias) => directory::create_with_alias(s, alias, creator, create)?,
        None => create()?,
    };
    if req.public {
        directory::set_published(s, &room_id, true)?;
    }
    tracing::info!(%room_id, %creator, "created a room");
    Ok(room_id)
}
