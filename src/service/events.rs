//! Events a signed-in user sends: messages and state. The guest policy,
//! the per-user limit and an event's side effects (`!guest` room commands)
//! live here, so every path that sends gets them; push rules are applied
//! by `push` to whatever the room's timeline holds.

use ruma::{
    OwnedEventId, RoomId,
    events::{TimelineEventType, room::member::MembershipState},
};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    pdu::{Pdu, TxnRef},
    policy::{self, Action},
    service::{
        Services,
        membership::{self, Moderation},
        ratelimit::UserAction,
        rooms::NewEvent,
        users::Session,
    },
};

/// Send a message-like event (`txn`: the client's transaction, so a retry
/// returns the first event).
pub fn send_message(
    s: &Services,
    session: &Session,
    room_id: &RoomId,
    event_type: &str,
    content: Value,
    txn: Option<TxnRef>,
) -> Result<std::sync::Arc<Pdu>> {
    if !s.rooms.is_joined(room_id, &session.user_id)? {
        return Err(Error::forbidden("You are not in this room."));
    }
    s.user_limits.check(&session.user_id, UserAction::SendEvent)?;
    let mut event = NewEvent::message(event_type, content);
    event.txn = txn;
    let pdu = s.rooms.append(room_id, &session.user_id, event)?;
    answer_command(s, session, &pdu)?;
    Ok(pdu)
}

/// Send a state event. `m.room.member` goes the way of the membership
/// endpoints; other types ask the guest policy first.
pub fn send_state(
    s: &Services,
    session: &Session,
    room_id: &RoomId,
    event_type: &str,
    state_key: &str,
    content: Value,
) -> Result<OwnedEventId> {
    if event_type == "m.room.member" {
        return member_state(s, session, room_id, state_key, content);
    }
    if !s.rooms.is_joined(room_id, &session.user_id)? {
        return Err(Error::forbidden("You are not in this room."));
    }
    policy::check(s, session, Action::SendState { room_id, event_type, state_key })?;
    s.user_limits.check(&session.user_id, UserAction::SendEvent)?;
    if event_type == "m.room.canonical_alias" {
        check_canonical_alias(s, room_id, &content)?;
    }
    if event_type == "m.room.tombstone"
        && content.get("replacement_room").and_then(Value::as_str) == Some(room_id.as_str())
    {
        return Err(Error::invalid_param("A room cannot be replaced by itself."));
    }
    // The same state from the same sender again changes nothing: the
    // event already there is the answer (as Synapse), not a new one.
    if let Some(current) = s.rooms.current_state_pdu(room_id, event_type, state_key)?
        && current.sender == session.user_id
        && current.content_value() == content
    {
        return Ok(current.event_id.clone());
    }
    let pdu = s.rooms.append(room_id, &session.user_id, NewEvent::state(event_type, state_key, content))?;
    Ok(pdu.event_id.clone())
}

/// Guest-room commands (`!guest …`) typed in any client are answered with a notice.
fn answer_command(s: &Services, session: &Session, pdu: &Pdu) -> Result<()> {
    if pdu.kind != TimelineEventType::RoomMessage {
        return Ok(());
    }
    let content = pdu.content_value();
    let Some(body) = content.get("body").and_then(|b| b.as_str()).filter(|b| b.starts_with("!guest")) else {
        return Ok(());
    };
    if content.get("msgtype").and_then(|m| m.as_str()) != Some("m.text") {
        return Ok(());
    }
    if let Some(answer) = crate::service::guests::command(s, session, &pdu.room_id, body)? {
        let notice = json!({ "msgtype": "m.notice", "body": answer, "m.relates_to": { "m.in_reply_to": { "event_id": pdu.event_id } } });
        s.rooms.append(&pdu.room_id, &session.user_id, NewEvent::message(TimelineEventType::RoomMessage, notice))?;
    }
    Ok(())
}

/// `m.room.member` through the state API goes the same way as the
/// membership endpoints, so joins are authorised and the guest policy holds.
fn member_state(
    s: &Services,
    session: &Session,
    room_id: &ruma::RoomId,
    state_key: &str,
    mut content: Value,
) -> Result<ruma::OwnedEventId> {
    let target = membership::parse_user(state_key)?;
    let wanted = content.get("membership").and_then(|m| m.as_str()).map(MembershipState::from);
    let reason = content.get("reason").and_then(|r| r.as_str()).map(str::to_owned);
    let current = s.rooms.membership(room_id, &target)?;
    let own = target == session.user_id;
    match wanted {
        Some(MembershipState::Join) if own && current == Some(MembershipState::Join) => {
            // A profile change in this room. Authorisation fields are the
            // resident server's to set, and the guest marker stays.
            let object = content.as_object_mut().ok_or_else(|| Error::bad_json("Content must be an object."))?;
            object.remove("join_authorised_via_users_server");
            object.remove(policy::GUEST_MARKER);
            if session.is_guest() {
                object.insert(policy::GUEST_MARKER.into(), Value::Bool(true));
                let name = object.get("displayname").and_then(|n| n.as_str()).unwrap_or(session.user_id.localpart());
                let name = policy::guest_display_name(s, name);
                object.insert("displayname".into(), Value::String(name));
            }
            let event = NewEvent::state(TimelineEventType::RoomMember, state_key, content);
            Ok(s.rooms.append(room_id, &session.user_id, event)?.event_id.clone())
        }
        Some(MembershipState::Join) if own => {
            let extra = content.as_object().cloned().unwrap_or_default();
            membership::join(s, session, room_id, reason.as_deref(), &extra)
        }
        Some(MembershipState::Leave) if own => {
            membership::leave(s, room_id, &session.user_id, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        Some(MembershipState::Knock) if own => {
            membership::knock(s, session, room_id, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        Some(MembershipState::Invite) => {
            // Other servers' users were sent through their server before this.
            let is_direct = content.get("is_direct").and_then(|d| d.as_bool()).unwrap_or(false);
            membership::invite(s, session, room_id, &target, reason.as_deref(), is_direct)
        }
        Some(MembershipState::Ban) => {
            membership::moderate(s, session, room_id, &target, Moderation::Ban, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        Some(MembershipState::Leave) => {
            let moderation = if current == Some(MembershipState::Ban) { Moderation::Unban } else { Moderation::Kick };
            membership::moderate(s, session, room_id, &target, moderation, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        _ => Err(Error::bad_json("This membership change is not possible through the state API.")),
    }
}

fn latest_member_event(s: &Services, room_id: &ruma::RoomId, user_id: &ruma::UserId) -> Result<ruma::OwnedEventId> {
    s.rooms
        .current_state_pdu(room_id, "m.room.member", user_id.as_str())?
        .map(|pdu| pdu.event_id.clone())
        .ok_or_else(|| Error::internal("member event vanished"))
}

/// Aliases named in `m.room.canonical_alias` must point at this room.
fn check_canonical_alias(s: &Services, room_id: &ruma::RoomId, content: &Value) -> Result<()> {
    let mut aliases: Vec<&str> = content.get("alias").and_then(|a| a.as_str()).into_iter().collect();
    if let Some(alt) = content.get("alt_aliases").and_then(|a| a.as_array()) {
        aliases.extend(alt.iter().filter_map(|a| a.as_str()));
    }
    for alias in aliases {
        let alias = ruma::OwnedRoomAliasId::try_from(alias)
            .map_err(|_| Error::invalid_param(format!("`{alias}` is not a valid alias.")))?;
        if alias.server_name() == s.server_name()
            && crate::service::directory::resolve_alias(s, &alias)?.as_deref() != Some(room_id)
        {
            return Err(Error::bad_alias(format!("{alias} does not point to this room.")));
        }
    }
    Ok(())
}
