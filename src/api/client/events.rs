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
    events::TimelineEventType,
};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    pdu::TxnRef,
    service::{
        Services, backfill, events,
        history::{self, PageRequest, require_reader},
        relations, remote_invite,
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
        let body = &req.body;
        let content = content_object(body.body.json())?;
        let txn = TxnRef { device_id: req.session().device_id.to_string(), txn_id: body.txn_id.to_string() };
        events::send_message(s, req.session(), &body.room_id, &body.event_type.to_string(), content, Some(txn))
    })
    .await?;
    Ok(send_message_event::v3::Response::new(pdu.event_id.clone()))
}

pub async fn send_state(
    state: AppState,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    if let Some((target, reason, is_direct)) = remote_invite_in(&state, &req)? {
        let session = req.session();
        let event_id =
            remote_invite::invite_user(&state, session, &req.body.room_id, &target, reason, is_direct).await?;
        return Ok(send_state_event::v3::Response::new(event_id));
    }
    let event_id = blocking(&state, move |s| {
        let body = &req.body;
        let content = content_object(body.body.json())?;
        events::send_state(s, req.session(), &body.room_id, &body.event_type.to_string(), &body.state_key, content)
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
        for event_id in s.rooms.state_event_ids(&room_state)? {
            if let Some((pdu, meta)) = s.rooms.get_pdu(&event_id)? {
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
        s.user_limits.check(&session.user_id, crate::service::ratelimit::UserAction::SendEvent)?;
        let (target, _) =
            s.rooms.get_pdu(&body.event_id)?.ok_or_else(|| Error::not_found("No such event in this room."))?;
        if target.room_id != body.room_id {
            // As Synapse: a redaction names an event of its own room.
            return Err(Error::invalid_param("That event belongs to another room."));
        }
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
        // As Synapse: an event one may not see is not found, whatever the reason.
        require_reader(s, &req.body.room_id, &session.user_id)
            .map_err(|_| Error::not_found("No such event in this room."))?;
        let (pdu, meta) = s
            .rooms
            .get_pdu(&req.body.event_id)?
            .filter(|(p, _)| p.room_id == req.body.room_id)
            .ok_or_else(|| Error::not_found("No such event in this room."))?;
        if !history::may_see(s, &session.user_id, &pdu, &meta)? {
            return Err(Error::not_found("No such event in this room."));
        }
        let device = Some(session.device_id.as_str());
        Ok(get_room_event::v3::Response::new(raw(&relations::client_event(
            s,
            &session.user_id,
            &pdu,
            &meta,
            true,
            device,
        )?)))
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
    require_reader(s, &body.room_id, &session.user_id)?;
    let forward = body.dir == Direction::Forward;
    let from = match &body.from {
        Some(token) => history::parse_token(token, forward)
            .ok_or_else(|| Error::invalid_param("The `from` token is not valid."))?,
        // The very start, backfilled history included.
        None if forward => i64::MIN + 1,
        None => s.db.safe_count() as i64 + 1,
    };
    let to = body
        .to
        .as_deref()
        // A `to` stops the page at the same place whichever kind of token it is.
        .map(|t| history::parse_token(t, true).ok_or_else(|| Error::invalid_param("The `to` token is not valid.")))
        .transpose()?;
    let limit = (u64::from(body.limit) as usize).clamp(1, 1000);
    let filter = EventFilter(&body.filter);
    let mut page =
        history::page(s, &session.user_id, &body.room_id, PageRequest { from, forward, limit, to }, &filter)?;
    let ignored = s.account_data.ignored_users(&session.user_id)?;
    if !ignored.is_empty() {
        page.events.retain(|(pdu, _)| !ignored.contains(&pdu.sender) || pdu.state_key.is_some());
    }
    let reached_start = !forward && to.is_none() && page.end.is_none();
    let mut response = get_message_events::v3::Response::new();
    response.start = format!("t{from}");
    // As Synapse: a page with events has an `end`; one that found none
    // because the room's history ran out has none, which is how clients
    // (matrix-rust-sdk's event cache) learn they reached the start.
    let last = page.events.last().map(|(_, meta)| meta.ordering());
    response.end = page.end.or(last).map(|end| format!("t{end}"));
    if filter.lazy_load_members() {
        response.state = history::member_state_for(s, &body.room_id, &page.events)?.iter().map(raw).collect();
    }
    let device = Some(session.device_id.as_str());
    response.chunk = relations::client_events(s, &session.user_id, &page.events, true, device)?;
    Ok((response, reached_start))
}

pub async fn context(state: AppState, req: Ruma<get_context::v3::Request>) -> Result<get_context::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let body = &req.body;
        require_reader(s, &body.room_id, &session.user_id)?;
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
        response.event = Some(raw(&relations::client_event(s, &session.user_id, &pdu, &meta, true, device)?));
        response.events_before = relations::client_events(s, &session.user_id, &before.events, true, device)?;
        response.events_after = relations::client_events(s, &session.user_id, &after.events, true, device)?;
        let mut all = before.events;
        all.extend(after.events);
        response.state = history::member_state_for(s, &body.room_id, &all)?.iter().map(raw).collect();
        Ok(response)
    })
    .await
}

/// `POST …/send/{eventType}` and `POST …/redact/{eventId}`: the forms
/// without a transaction id, deprecated but still in the spec and used by
/// older clients and bots. Each call is its own transaction.
pub async fn send_message_without_txn(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(args): axum::extract::Path<Vec<String>>,
    req: axum::extract::Request,
) -> Result<crate::api::RumaResponse<send_message_event::v3::Response>> {
    let req = with_new_txn(&state, args, req).await?;
    send_message(state, req).await.map(crate::api::RumaResponse)
}

pub async fn redact_without_txn(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(args): axum::extract::Path<Vec<String>>,
    req: axum::extract::Request,
) -> Result<crate::api::RumaResponse<redact_event::v3::Response>> {
    let req = with_new_txn(&state, args, req).await?;
    redact(state, req).await.map(crate::api::RumaResponse)
}

/// The request as the `PUT …/{txnId}` form ruma knows, with a fresh
/// transaction id; `args` are the route's (the API version first).
async fn with_new_txn<T>(state: &AppState, mut args: Vec<String>, req: axum::extract::Request) -> Result<Ruma<T>>
where
    T: ruma::api::IncomingRequest + Send + 'static,
    T::Authentication: 'static,
{
    let txn_id = format!("porch-{}", crate::util::random_string(16));
    let (mut parts, body) = req.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    parts.uri = format!("{}/{txn_id}{query}", parts.uri.path().trim_end_matches('/'))
        .parse()
        .map_err(|_| Error::invalid_param("The request path is not valid."))?;
    parts.method = http::Method::PUT;
    args.remove(0);
    args.push(txn_id);
    Ruma::parse(axum::extract::Request::from_parts(parts, body), args, state).await
}

pub async fn timestamp_to_event(
    state: AppState,
    req: Ruma<ruma::api::client::room::get_event_by_timestamp::v1::Request>,
) -> Result<ruma::api::client::room::get_event_by_timestamp::v1::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        let forward = body.dir == Direction::Forward;
        let found =
            history::event_at_time(s, &req.session().user_id, &body.room_id, u64::from(body.ts.get()), forward)?;
        let (event_id, at) = found.ok_or_else(|| Error::not_found("No event in this room at that time."))?;
        Ok(ruma::api::client::room::get_event_by_timestamp::v1::Response::new(
            event_id,
            ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(at)),
        ))
    })
    .await
}
