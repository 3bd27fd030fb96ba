//! Room upgrades (`POST /rooms/{roomId}/upgrade`), as the spec describes
//! them: a new room of the asked version whose create event names its
//! predecessor, the old room's transferable state copied over (bans
//! included), a tombstone in the old room pointing to the new one, the old
//! room muted (`events_default` and `invite` raised), local aliases, the
//! canonical alias and the directory entry moved, and the upgrader's tags,
//! room push rules and direct-chat marking carried to the new room (every
//! other local member gets theirs when they join it). When the old room let
//! nobody in uninvited (join rule `invite` or `knock`), its members and
//! invitees are invited to the replacement, so they can follow the
//! tombstone; Synapse leaves them stranded there.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::{Map, Value, json};

use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    error::{Error, Result},
    policy::{self, Action},
    service::{
        Services, blocking, directory, membership, remote_invite,
        rooms::{self, NewEvent},
        users::Session,
    },
};

/// State copied into the replacement room, as the spec lists it.
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

/// Rooms being upgraded now: a second upgrade of the same room waits its turn elsewhere.
static UPGRADING: Mutex<Option<HashSet<OwnedRoomId>>> = Mutex::new(None);

struct Upgrading(OwnedRoomId);

impl Upgrading {
    fn start(room_id: &RoomId) -> Result<Self> {
        let mut rooms = UPGRADING.lock().expect("upgrade set poisoned");
        if !rooms.get_or_insert_with(HashSet::new).insert(room_id.to_owned()) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "This room is being upgraded already; try again in a moment.",
            ));
        }
        Ok(Self(room_id.to_owned()))
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        if let Some(rooms) = UPGRADING.lock().expect("upgrade set poisoned").as_mut() {
            rooms.remove(&self.0);
        }
    }
}

/// Upgrade a room, then invite the old room's people when it was private:
/// this server's users at once, other servers' users in the background (each
/// invite is a round trip to their server, and the upgrade is done already).
pub async fn upgrade_room(
    s: &Arc<Services>,
    session: &Session,
    room_id: &RoomId,
    new_version: &str,
) -> Result<OwnedRoomId> {
    let (checked, old, version) = (session.clone(), room_id.to_owned(), new_version.to_owned());
    let (new_room, remote) = blocking(s, move |s| {
        let (new_room, invitees) = upgrade(s, &checked, &old, &version)?;
        let mut remote = Vec::new();
        for target in invitees {
            if s.users.is_local(&target) {
                if let Err(err) = membership::invite_as(s, &new_room, &checked.user_id, &target, None, false) {
                    tracing::info!(room = %new_room, %target, "not invited to the replacement room: {err}");
                }
            } else {
                remote.push(target);
            }
        }
        Ok((new_room, remote))
    })
    .await?;
    if !remote.is_empty() {
        let (s, sender, room) = (s.clone(), session.user_id.clone(), new_room.clone());
        tokio::spawn(async move {
            for target in remote {
                if let Err(err) = remote_invite::invite_user_as(&s, &room, &sender, &target, None, false).await {
                    tracing::info!(%room, %target, "not invited to the replacement room: {err}");
                }
            }
        });
    }
    Ok(new_room)
}

/// The upgrade itself: the replacement room and who should be invited to
/// it (empty unless the old room was invite- or knock-only and the upgrader
/// may invite).
fn upgrade(
    s: &Services,
    session: &Session,
    room_id: &RoomId,
    new_version: &str,
) -> Result<(OwnedRoomId, Vec<OwnedUserId>)> {
    let version = RoomVersionId::try_from(new_version)
        .ok()
        .filter(|v| SUPPORTED_ROOM_VERSIONS.contains(v))
        .ok_or_else(|| Error::unsupported_room_version(format!("porch cannot make rooms of version {new_version}.")))?;
    let Some(record) = s.rooms.room(room_id)? else {
        return Err(Error::not_found("This room is not known to this server."));
    };
    let user_id = &session.user_id;
    if !s.rooms.is_joined(room_id, user_id)? {
        return Err(Error::forbidden("You are not in this room."));
    }
    policy::check(s, session, Action::SendState { room_id, event_type: "m.room.tombstone", state_key: "" })?;
    if crate::service::guests::room(s, room_id)?.is_some() {
        return Err(Error::forbidden("A guest room cannot be upgraded: end it and make a new one."));
    }
    let state = s.rooms.current_state(room_id)?;
    let old_power = s.rooms.power_levels(&record.version, &state)?;
    if !old_power.user_can_send_state(user_id, StateEventType::RoomTombstone) {
        return Err(Error::forbidden("You may not upgrade this room: that needs the power to send m.room.tombstone."));
    }
    let _upgrading = Upgrading::start(room_id)?;
    let old_rules = crate::service::rooms::Rooms::rules(&record.version)?;
    let new_rules = crate::service::rooms::Rooms::rules(&version)?;

    // The create event: the old one's content, less what the version sets, plus the predecessor.
    let old_create = s.rooms.state_content(&state, "m.room.create", "")?.unwrap_or_else(|| json!({}));
    let mut create: Map<String, Value> = old_create.as_object().cloned().unwrap_or_default();
    for key in ["room_version", "creator", "predecessor", "additional_creators"] {
        create.remove(key);
    }
    let last_event = record.extremities.first().cloned();
    create.insert("predecessor".into(), json!({ "room_id": room_id, "event_id": last_event }));
    create.insert("room_version".into(), json!(version.as_str()));
    if !new_rules.authorization.use_room_create_sender {
        create.insert("creator".into(), json!(user_id));
    }
    let mut creators: Vec<String> = vec![user_id.to_string()];
    if new_rules.authorization.explicitly_privilege_room_creators
        && let Some(extra) =
            old_create.get("additional_creators").filter(|_| old_rules.authorization.explicitly_privilege_room_creators)
    {
        create.insert("additional_creators".into(), extra.clone());
        creators.extend(extra.as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(str::to_owned));
    }

    // Power levels: the old ones; the upgrader raised while the state is
    // copied when they would not be able to, then put back.
    let mut power: Map<String, Value> = s
        .rooms
        .state_content(&state, "m.room.power_levels", "")?
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let mut users: Map<String, Value> = power.get("users").and_then(Value::as_object).cloned().unwrap_or_default();
    if new_rules.authorization.explicitly_privilege_room_creators {
        // Creators hold infinite power in these versions and must not be listed.
        for creator in &creators {
            users.remove(creator);
        }
    } else if old_rules.authorization.explicitly_privilege_room_creators {
        for creator in s.rooms.creators(&state)? {
            users.entry(creator.to_string()).or_insert(json!(100));
        }
    }
    power.insert("users".into(), Value::Object(users.clone()));
    let needed = power_needed(&power);
    let own = users
        .get(user_id.as_str())
        .and_then(Value::as_i64)
        .unwrap_or_else(|| power.get("users_default").and_then(Value::as_i64).unwrap_or(0));
    let raise = !new_rules.authorization.explicitly_privilege_room_creators && own < needed;
    let mut first_power = power.clone();
    if raise {
        let mut raised = users.clone();
        raised.insert(user_id.to_string(), json!(needed));
        first_power.insert("users".into(), Value::Object(raised));
    }

    let mut events = vec![NewEvent::state(
        "m.room.member",
        user_id.as_str(),
        Value::Object(membership::member_content(s, user_id, MembershipState::Join, None)?),
    )];
    events.push(NewEvent::state("m.room.power_levels", "", Value::Object(first_power)));
    for kind in TRANSFERRED {
        match s.rooms.state_content(&state, kind, "")? {
            Some(content) => events.push(NewEvent::state(*kind, "", content)),
            // As Synapse, the replacement starts from the private preset,
            // which lets Matrix guests in unless the old room said otherwise.
            None if *kind == "m.room.guest_access" => {
                events.push(NewEvent::state(*kind, "", json!({ "guest_access": "can_join" })))
            }
            None => {}
        }
    }
    for (target, event_id) in s.rooms.state_of_kind(&state, "m.room.member")? {
        let Some((member, _)) = s.rooms.get_pdu(&event_id)? else { continue };
        let content = member.content_value();
        if content["membership"] == "ban" {
            let mut ban = json!({ "membership": "ban" });
            if let Some(reason) = content.get("reason") {
                ban["reason"] = reason.clone();
            }
            events.push(NewEvent::state("m.room.member", target.as_str(), ban));
        }
    }
    if raise {
        events.push(NewEvent::state("m.room.power_levels", "", Value::Object(power.clone())));
    }
    let (new_room, _) = s.rooms.create_room(user_id, version.clone(), Value::Object(create), events)?;

    // The old room points to the new one and goes quiet.
    s.rooms.append(
        room_id,
        user_id,
        NewEvent::state(
            "m.room.tombstone",
            "",
            json!({ "body": "This room has been replaced", "replacement_room": new_room }),
        ),
    )?;
    mute_old_room(s, room_id, user_id)?;

    // Aliases and the directory entry follow; the canonical alias moves.
    directory::move_to_replacement(s, room_id, &new_room)?;
    if let Some(canonical) = s.rooms.state_content(&state, "m.room.canonical_alias", "")?
        && canonical.as_object().is_some_and(|c| !c.is_empty())
    {
        s.rooms.append(room_id, user_id, NewEvent::state("m.room.canonical_alias", "", json!({})))?;
        s.rooms.append(&new_room, user_id, NewEvent::state("m.room.canonical_alias", "", canonical))?;
    }
    carry_user_state(s, user_id, room_id, &new_room)?;
    tracing::info!(old = %room_id, new = %new_room, %version, by = %user_id, "upgraded a room");
    let private = matches!(membership::join_rule(s, &state)?.as_str(), "invite" | "knock");
    let may_invite = private && policy::check(s, session, Action::Invite).is_ok() && {
        let new_state = s.rooms.current_state(&new_room)?;
        s.rooms.power_levels(&version, &new_state)?.user_can_invite(user_id)
    };
    let mut invitees = Vec::new();
    if may_invite {
        for (target, event_id) in s.rooms.state_of_kind(&state, "m.room.member")? {
            let Ok(target) = UserId::parse(target.as_str()) else { continue };
            let membership = s.rooms.get_pdu(&event_id)?.and_then(|(member, _)| rooms::membership_of(&member));
            if target != *user_id && matches!(membership, Some(MembershipState::Join | MembershipState::Invite)) {
                invitees.push(target);
            }
        }
    }
    Ok((new_room, invitees))
}

/// The level the initial state needs: enough for every state event sent.
fn power_needed(power: &Map<String, Value>) -> i64 {
    let level = |key: &str, default: i64| power.get(key).and_then(Value::as_i64).unwrap_or(default);
    let mut needed = level("state_default", 50).max(level("ban", 50));
    if let Some(events) = power.get("events").and_then(Value::as_object) {
        for kind in TRANSFERRED.iter().chain(["m.room.power_levels"].iter()) {
            if let Some(n) = events.get(*kind).and_then(Value::as_i64) {
                needed = needed.max(n);
            }
        }
    }
    needed
}

/// `events_default` and `invite` raised to at least 50 and above
/// `users_default`, so ordinary members stop talking there.
fn mute_old_room(s: &Services, room_id: &RoomId, user_id: &UserId) -> Result<()> {
    let Some(mut power) = s.rooms.current_state_pdu(room_id, "m.room.power_levels", "")?.map(|p| p.content_value())
    else {
        return Ok(());
    };
    let users_default = power.get("users_default").and_then(Value::as_i64).unwrap_or(0);
    let restricted = 50.max(users_default + 1);
    let mut changed = false;
    for key in ["events_default", "invite"] {
        if power.get(key).and_then(Value::as_i64).unwrap_or(0) < restricted {
            power[key] = json!(restricted);
            changed = true;
        }
    }
    if changed && let Err(err) = s.rooms.append(room_id, user_id, NewEvent::state("m.room.power_levels", "", power)) {
        tracing::info!(%room_id, "the upgraded room's power levels could not be restricted: {err}");
    }
    Ok(())
}

/// A local user's own state about a room, carried to its replacement: room
/// tags, room push rules, and the `m.direct` marking.
pub fn carry_user_state(s: &Services, user_id: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
    if let Some(tags) = s.account_data.get(user_id, Some(old), "m.tag")? {
        let tags: Value = serde_json::from_str(tags.get())?;
        s.account_data.set(user_id, Some(new), "m.tag", &tags)?;
    }
    crate::service::push::copy_room_rules(s, user_id, old, new)?;
    if let Some(direct) = s.account_data.get(user_id, None, "m.direct")? {
        let mut direct: Value = serde_json::from_str(direct.get())?;
        let mut changed = false;
        for rooms in direct.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
            if let Some(list) = rooms.as_array_mut()
                && list.iter().any(|r| r.as_str() == Some(old.as_str()))
                && !list.iter().any(|r| r.as_str() == Some(new.as_str()))
            {
                list.push(json!(new));
                changed = true;
            }
        }
        if changed {
            s.account_data.set(user_id, None, "m.direct", &direct)?;
        }
    }
    Ok(())
}

/// When a local user joins a room that replaced one they were in, their
/// state about the old room follows.
pub fn on_join(s: &Services, user_id: &UserId, room_id: &RoomId) -> Result<()> {
    let Some(create) = s.rooms.current_state_pdu(room_id, "m.room.create", "")? else { return Ok(()) };
    let Some(Ok(old)) =
        create.content_value()["predecessor"]["room_id"].as_str().map(|r| OwnedRoomId::try_from(r.to_owned()))
    else {
        return Ok(());
    };
    if s.rooms.user_membership(user_id, &old)?.is_some() {
        carry_user_state(s, user_id, &old, room_id)?;
    }
    Ok(())
}

/// A tombstone from another server: our aliases and directory entry for
/// the room follow its replacement.
pub fn on_tombstone(s: &Services, pdu: &crate::pdu::Pdu) -> Result<()> {
    if pdu.kind.to_string() != "m.room.tombstone" || pdu.state_key.as_deref() != Some("") {
        return Ok(());
    }
    let Some(Ok(new)) = pdu.content_value()["replacement_room"].as_str().map(|r| OwnedRoomId::try_from(r.to_owned()))
    else {
        return Ok(());
    };
    if new == pdu.room_id {
        return Ok(());
    }
    directory::move_to_replacement(s, &pdu.room_id, &new)
}
