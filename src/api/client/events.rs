//! Sending and reading events: send, state, redact, event, messages, context.

use ruma::{
    api::{
        Direction,
        client::{
            context::get_context,
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::get_room_event,
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
    },
    events::{TimelineEventType, room::member::MembershipState},
};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    pdu::TxnRef,
    policy::{self, Action},
    service::{
        Services, backfill,
        history::{self, PageRequest, require_member},
        push, remote_invite,
        rooms::NewEvent,
        sync::{EventFilter, raw},
    },
};

fn content_object(json: &serde_json::value::RawValue) -> Result<Value> {
    let value: Value =
        serde_json::from_str(json.get()).map_err(|_| Error::not_json("The event content is not valid JSON."))?;
    if !value.is_object() {
        return Err(Error::bad_json("The event content must be a JSON object."));
    }
    Ok(value)
}

pub async fn send_message(
    state: AppState,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let pdu = blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        if !s.rooms.is_joined(&body.room_id, &session.user_id)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let mut event = NewEvent::message(body.event_type.to_string().as_str(), content_object(body.body.json())?);
        event.txn = Some(TxnRef { device_id: session.device_id.to_string(), txn_id: body.txn_id.to_string() });
        let pdu = s.rooms.append(&body.room_id, &session.user_id, event)?;
        push::on_event(s, &pdu)?;
        answer_command(s, session, &pdu)?;
        Ok(pdu)
    })
    .await?;
    Ok(send_message_event::v3::Response::new(pdu.event_id.clone()))
}

pub async fn send_state(
    state: AppState,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    if let Some((target, reason, is_direct)) = remote_invite_in(&state, &req)? {
        let session = req.session().clone();
        blocking(&state, move |s| policy::check(s, &session, Action::Invite)).await?;
        let session = req.session();
        let event_id =
            remote_invite::invite_user(&state, &req.body.room_id, &session.user_id, &target, reason, is_direct).await?;
        return Ok(send_state_event::v3::Response::new(event_id));
    }
    let event_id = blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        let content = content_object(body.body.json())?;
        let kind = body.event_type.to_string();
        if kind == "m.room.member" {
            return member_state(s, session, &body.room_id, &body.state_key, content);
        }
        if !s.rooms.is_joined(&body.room_id, &session.user_id)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        if kind == "m.room.canonical_alias" {
            check_canonical_alias(s, &body.room_id, &content)?;
        }
        let pdu = s.rooms.append(
            &body.room_id,
            &session.user_id,
            NewEvent::state(kind.as_str(), body.state_key.clone(), content),
        )?;
        push::on_event(s, &pdu)?;
        Ok(pdu.event_id.clone())
    })
    .await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

/// An invite of another server's user sent through the state API: it must
/// go through that server, as from the invite endpoint.
fn remote_invite_in(
    s: &Services,
    req: &Ruma<send_state_event::v3::Request>,
) -> Result<Option<(ruma::OwnedUserId, Option<String>, bool)>> {
    if req.body.event_type.to_string() != "m.room.member" {
        return Ok(None);
    }
    let content = content_object(req.body.body.json())?;
    if content.get("membership").and_then(|m| m.as_str()) != Some("invite") {
        return Ok(None);
    }
    let target = crate::service::membership::parse_user(&req.body.state_key)?;
    if s.users.is_local(&target) {
        return Ok(None);
    }
    let reason = content.get("reason").and_then(|r| r.as_str()).map(str::to_owned);
    let is_direct = content.get("is_direct").and_then(|d| d.as_bool()).unwrap_or(false);
    Ok(Some((target, reason, is_direct)))
}

/// Guest-room commands (`!guest …`) typed in any client are answered with a notice.
fn answer_command(
    s: &crate::service::Services,
    session: &crate::service::users::Session,
    pdu: &crate::pdu::Pdu,
) -> Result<()> {
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
    s: &crate::service::Services,
    session: &crate::service::users::Session,
    room_id: &ruma::RoomId,
    state_key: &str,
    mut content: Value,
) -> Result<ruma::OwnedEventId> {
    use crate::service::membership::{self, Moderation};
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
            policy::check(s, session, Action::Join { room_id })?;
            membership::join(s, room_id, &session.user_id, reason.as_deref())
        }
        Some(MembershipState::Leave) if own => {
            membership::leave(s, room_id, &session.user_id, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        Some(MembershipState::Knock) if own => {
            policy::check(s, session, Action::Knock)?;
            membership::knock(s, room_id, &session.user_id, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        Some(MembershipState::Invite) => {
            policy::check(s, session, Action::Invite)?;
            // Other servers' users were sent through their server before this.
            let is_direct = content.get("is_direct").and_then(|d| d.as_bool()).unwrap_or(false);
            membership::invite(s, room_id, &session.user_id, &target, reason.as_deref(), is_direct)
        }
        Some(MembershipState::Ban) => {
            policy::check(s, session, Action::Ban)?;
            membership::moderate(s, room_id, &session.user_id, &target, Moderation::Ban, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        Some(MembershipState::Leave) => {
            let (action, moderation) = if current == Some(MembershipState::Ban) {
                (Action::Unban, Moderation::Unban)
            } else {
                (Action::Kick, Moderation::Kick)
            };
            policy::check(s, session, action)?;
            membership::moderate(s, room_id, &session.user_id, &target, moderation, reason.as_deref())?;
            latest_member_event(s, room_id, &target)
        }
        _ => Err(Error::bad_json("This membership change is not possible through the state API.")),
    }
}

fn latest_member_event(
    s: &crate::service::Services,
    room_id: &ruma::RoomId,
    user_id: &ruma::UserId,
) -> Result<ruma::OwnedEventId> {
    s.rooms
        .current_state_pdu(room_id, "m.room.member", user_id.as_str())?
        .map(|pdu| pdu.event_id.clone())
        .ok_or_else(|| Error::internal("member event vanished"))
}

/// Aliases named in `m.room.canonical_alias` must point at this room.
fn check_canonical_alias(s: &crate::service::Services, room_id: &ruma::RoomId, content: &Value) -> Result<()> {
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

pub async fn state_for_key(
    state: AppState,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let user_id = &req.session().user_id;
        let room_state = history::visible_state(s, &body.room_id, user_id)?;
        let pdu = s
            .rooms
            .state_pdu(&room_state, &body.event_type.to_string(), &body.state_key)?
            .ok_or_else(|| Error::not_found("There is no such state in this room."))?;
        let value = match body.format {
            ruma::api::client::state::get_state_event_for_key::v3::StateEventFormat::Event => {
                let meta = s
                    .rooms
                    .get_pdu(&pdu.event_id)?
                    .map(|(_, m)| m)
                    .ok_or_else(|| Error::internal("state event vanished"))?;
                pdu.to_client_event(&meta, true, None)
            }
            _ => pdu.content_value(),
        };
        Ok(get_state_event_for_key::v3::Response::new(serde_json::value::to_raw_value(&value)?))
    })
    .await
}

pub async fn all_state(
    state: AppState,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    blocking(&state, move |s| {
        let room_state = history::visible_state(s, &req.body.room_id, &req.session().user_id)?;
        let mut events = Vec::new();
        for event_id in room_state.values() {
            if let Some((pdu, meta)) = s.rooms.get_pdu(event_id)? {
                events.push(raw(&pdu.to_client_event(&meta, true, None)));
            }
        }
        Ok(get_state_events::v3::Response::new(events))
    })
    .await
}

pub async fn redact(state: AppState, req: Ruma<redact_event::v3::Request>) -> Result<redact_event::v3::Response> {
    let pdu = blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        let room =
            s.rooms.room(&body.room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        if !s.rooms.is_joined(&body.room_id, &session.user_id)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let (target, _) = s
            .rooms
            .get_pdu(&body.event_id)?
            .filter(|(p, _)| p.room_id == body.room_id)
            .ok_or_else(|| Error::not_found("No such event in this room."))?;
        if target.sender != session.user_id {
            let room_state = s.rooms.state_at(room.current_state)?;
            let power = s.rooms.power_levels(&room.version, &room_state)?;
            if !power.user_can_redact_event_of_other(&session.user_id) {
                return Err(Error::forbidden("You may not redact other people's events in this room."));
            }
        }
        let mut content = Map::new();
        if let Some(reason) = &body.reason {
            content.insert("reason".into(), json!(reason));
        }
        if crate::service::rooms::Rooms::rules(&room.version)?.redaction.keep_room_redaction_redacts {
            content.insert("redacts".into(), json!(body.event_id));
        }
        let mut event = NewEvent::message(TimelineEventType::RoomRedaction, Value::Object(content));
        event.redacts = Some(body.event_id.clone());
        event.txn = Some(TxnRef { device_id: session.device_id.to_string(), txn_id: body.txn_id.to_string() });
        s.rooms.append(&body.room_id, &session.user_id, event)
    })
    .await?;
    Ok(redact_event::v3::Response::new(pdu.event_id.clone()))
}

pub async fn event(state: AppState, req: Ruma<get_room_event::v3::Request>) -> Result<get_room_event::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        require_member(s, &req.body.room_id, &session.user_id)?;
        let (pdu, meta) = s
            .rooms
            .get_pdu(&req.body.event_id)?
            .filter(|(p, _)| p.room_id == req.body.room_id)
            .ok_or_else(|| Error::not_found("No such event in this room."))?;
        if !history::may_see(s, &session.user_id, &pdu, &meta)? {
            return Err(Error::not_found("No such event in this room."));
        }
        Ok(get_room_event::v3::Response::new(raw(&pdu.to_client_event(&meta, true, Some(session.device_id.as_str())))))
    })
    .await
}

pub async fn messages(
    state: AppState,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let req = Arc::new(req);
    let mut backfills = 0;
    loop {
        let (response, reached_start) = {
            let req = req.clone();
            blocking(&state, move |s| messages_page(s, &req)).await?
        };
        // History from before this server joined lives on other servers.
        if !reached_start || backfills == MAX_BACKFILLS_PER_PAGE {
            return Ok(response);
        }
        backfills += 1;
        // A slow server delays the page by this much at most; the client may page again.
        let fetched = tokio::time::timeout(BACKFILL_WAIT, backfill::backfill(&state, &req.body.room_id)).await;
        match fetched.unwrap_or(Ok(0)) {
            Ok(0) => return Ok(response),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(room_id = %req.body.room_id, "backfill failed: {}", err.message);
                return Ok(response);
            }
        }
    }
}

/// Backfill requests one `/messages` page may wait for.
const MAX_BACKFILLS_PER_PAGE: usize = 3;
/// How long one of them may take.
const BACKFILL_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// One `/messages` page, and whether it ran out of history going backwards.
fn messages_page(
    s: &Services,
    req: &Ruma<get_message_events::v3::Request>,
) -> Result<(get_message_events::v3::Response, bool)> {
    let session = req.session();
    let body = &req.body;
    require_member(s, &body.room_id, &session.user_id)?;
    let forward = body.dir == Direction::Forward;
    let from = match &body.from {
        Some(token) => {
            history::parse_token(token).ok_or_else(|| Error::invalid_param("The `from` token is not valid."))?
        }
        // The very start, backfilled history included.
        None if forward => i64::MIN + 1,
        None => s.db.safe_count() as i64 + 1,
    };
    let to = body
        .to
        .as_deref()
        .map(|t| history::parse_token(t).ok_or_else(|| Error::invalid_param("The `to` token is not valid.")))
        .transpose()?;
    let limit = (u64::from(body.limit) as usize).clamp(1, 1000);
    let filter = EventFilter(&body.filter);
    let page = history::page(s, &session.user_id, &body.room_id, PageRequest { from, forward, limit, to }, &filter)?;
    let reached_start = !forward && to.is_none() && page.end.is_none();
    let mut response = get_message_events::v3::Response::new();
    response.start = format!("t{from}");
    response.end = page.end.map(|e| format!("t{e}"));
    if filter.lazy_load_members() {
        response.state = history::member_state_for(s, &body.room_id, &page.events)?.iter().map(raw).collect();
    }
    let device = Some(session.device_id.as_str());
    response.chunk = page.events.iter().map(|(pdu, meta)| raw(&pdu.to_client_event(meta, true, device))).collect();
    Ok((response, reached_start))
}

pub async fn context(state: AppState, req: Ruma<get_context::v3::Request>) -> Result<get_context::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        require_member(s, &body.room_id, &session.user_id)?;
        let (pdu, meta) = s
            .rooms
            .get_pdu(&body.event_id)?
            .filter(|(p, _)| p.room_id == body.room_id)
            .ok_or_else(|| Error::not_found("No such event in this room."))?;
        if !history::may_see(s, &session.user_id, &pdu, &meta)? {
            return Err(Error::not_found("No such event in this room."));
        }
        let limit = (u64::from(body.limit) as usize).min(100);
        let filter = EventFilter(&body.filter);
        let around = |forward: bool, limit: usize| PageRequest { from: meta.ordering(), forward, limit, to: None };
        let before = history::page(s, &session.user_id, &body.room_id, around(false, limit / 2), &filter)?;
        let after = history::page(s, &session.user_id, &body.room_id, around(true, limit - limit / 2), &filter)?;
        let device = Some(session.device_id.as_str());
        let mut response = get_context::v3::Response::new();
        response.start = Some(format!("t{}", before.end.unwrap_or(0)));
        response.end = Some(format!("t{}", after.end.unwrap_or(meta.ordering())));
        response.event = Some(raw(&pdu.to_client_event(&meta, true, device)));
        response.events_before = before.events.iter().map(|(p, m)| raw(&p.to_client_event(m, true, device))).collect();
        response.events_after = after.events.iter().map(|(p, m)| raw(&p.to_client_event(m, true, device))).collect();
        let mut all = before.events;
        all.extend(after.events);
        response.state = history::member_state_for(s, &body.room_id, &all)?.iter().map(raw).collect();
        Ok(response)
    })
    .await
}
