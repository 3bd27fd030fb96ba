//! The deprecated `/initialSync`, `/rooms/{roomId}/initialSync`, `/events`
//! and `/events/{eventId}`, still in the spec (see `service::legacy_sync`).

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{Value, json};

use crate::{
    api::{AppState, Authenticated, blocking},
    error::{Error, Result},
    service::legacy_sync::{self, MAX_LIMIT},
};

type Params = Query<HashMap<String, String>>;

/// A numeric query parameter; 400 when it is not a number.
fn number(params: &HashMap<String, String>, name: &str, default: u64) -> Result<u64> {
    match params.get(name) {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| Error::invalid_param(format!("`{name}` must be a number."))),
    }
}

fn limit(params: &HashMap<String, String>) -> Result<usize> {
    Ok((number(params, "limit", 10)? as usize).min(MAX_LIMIT))
}

pub async fn initial_sync(
    State(state): State<AppState>,
    Authenticated(session): Authenticated,
    Query(params): Params,
) -> Result<Json<Value>> {
    let limit = limit(&params)?;
    let archived = params.get("archived").is_some_and(|v| v == "true");
    Ok(Json(blocking(&state, move |s| legacy_sync::initial_sync(s, &session, limit, archived)).await?))
}

pub async fn room_initial_sync(
    State(state): State<AppState>,
    Authenticated(session): Authenticated,
    Path(args): Path<Vec<String>>,
    Query(params): Params,
) -> Result<Json<Value>> {
    let room_id = room_arg(&args)?;
    let limit = limit(&params)?;
    Ok(Json(blocking(&state, move |s| legacy_sync::room_initial_sync(s, &session, &room_id, limit)).await?))
}

fn room_arg(args: &[String]) -> Result<OwnedRoomId> {
    let raw = args.last().ok_or_else(|| Error::invalid_param("No room id."))?;
    OwnedRoomId::try_from(raw.as_str()).map_err(|_| Error::invalid_param("Not a room id."))
}

pub async fn events(
    State(state): State<AppState>,
    Authenticated(session): Authenticated,
    Query(params): Params,
) -> Result<Json<Value>> {
    let timeout = Duration::from_millis(number(&params, "timeout", 30_000)?).min(state.settings.sync_timeout_max);
    let limit = (number(&params, "limit", MAX_LIMIT as u64)? as usize).clamp(1, MAX_LIMIT);
    let from = match params.get("from") {
        Some(token) => crate::service::sync::parse_since(token)
            .ok_or_else(|| Error::invalid_param("`from` is not a token this server gave."))?,
        None => state.db.safe_count(),
    };
    let room = match params.get("room_id") {
        Some(raw) => Some(OwnedRoomId::try_from(raw.as_str()).map_err(|_| Error::invalid_param("Not a room id."))?),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = state.db.subscribe();
    loop {
        changes.borrow_and_update();
        let (sess, room) = (session.clone(), room.clone());
        let found =
            blocking(&state, move |s| legacy_sync::events_after(s, &sess, from, room.as_deref(), limit)).await?;
        if let Some((chunk, end)) = found {
            return Ok(Json(json!({ "start": from.to_string(), "end": end.to_string(), "chunk": chunk })));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(Json(json!({ "start": from.to_string(), "end": from.to_string(), "chunk": [] }))),
        }
    }
}

/// `GET /events/{eventId}`: one event the user may see, wherever it is.
pub async fn event(
    State(state): State<AppState>,
    Authenticated(session): Authenticated,
    Path(args): Path<Vec<String>>,
) -> Result<Json<Value>> {
    let raw = args.last().ok_or_else(|| Error::invalid_param("No event id."))?;
    let event_id = OwnedEventId::try_from(raw.as_str()).map_err(|_| Error::invalid_param("Not an event id."))?;
    let event = blocking(&state, move |s| {
        let not_found = || Error::not_found("No such event, or you may not see it.");
        let (pdu, meta) = s.rooms.get_pdu(&event_id)?.ok_or_else(not_found)?;
        if !crate::service::history::may_see(s, &session.user_id, &pdu, &meta)? {
            return Err(not_found());
        }
        Ok(pdu.to_client_event(&meta, true, Some(session.device_id.as_str())))
    })
    .await?;
    Ok(Json(event))
}
