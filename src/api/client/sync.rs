//! `/sync` (long-polling) and stored filters.

use std::{sync::Arc, time::Duration};

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::{
        sliding_sync as sliding_service,
        sync::{self as sync_service, SyncParams},
    },
};

pub async fn sync(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    let response = long_poll(state, req).await?;
    Ok(axum::Json(complete(response)?))
}

/// The response as JSON with every section a client may look for, even
/// when empty, as Synapse sends it.
fn complete(response: sync_events::v3::Response) -> Result<serde_json::Value> {
    use serde_json::{Value, json};
    let mut body = crate::api::response_json(response)?;
    let object = body.as_object_mut().ok_or_else(|| Error::internal("a sync response is an object"))?;
    for section in ["presence", "account_data", "to_device"] {
        object.entry(section).or_insert_with(|| json!({ "events": [] }));
    }
    object.entry("device_lists").or_insert_with(|| json!({ "changed": [], "left": [] }));
    let rooms = object.entry("rooms").or_insert_with(|| json!({}));
    for kind in ["join", "invite", "leave", "knock"] {
        rooms.as_object_mut().map(|r| r.entry(kind).or_insert_with(|| json!({})));
    }
    let sections: &[(&str, &[&str])] =
        &[("join", &["state", "ephemeral", "account_data"]), ("leave", &["state", "account_data"])];
    for (kind, parts) in sections {
        let Some(by_room) = rooms.get_mut(*kind).and_then(Value::as_object_mut) else { continue };
        for room in by_room.values_mut() {
            let Some(room) = room.as_object_mut() else { continue };
            for part in *parts {
                room.entry(*part).or_insert_with(|| json!({ "events": [] }));
            }
            let timeline = room.entry("timeline").or_insert_with(|| json!({ "events": [] }));
            if let Some(timeline) = timeline.as_object_mut() {
                timeline.entry("events").or_insert_with(|| json!([]));
                timeline.entry("limited").or_insert(Value::Bool(false));
            }
            if *kind == "join" {
                room.entry("unread_notifications")
                    .or_insert_with(|| json!({ "notification_count": 0, "highlight_count": 0 }));
            }
        }
    }
    Ok(body)
}

async fn long_poll(state: AppState, req: Ruma<sync_events::v3::Request>) -> Result<sync_events::v3::Response> {
    let session = req.session().clone();
    let body = req.body;
    let filter = match &body.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(definition)) => definition.clone(),
        Some(Filter::FilterId(id)) => {
            let user_id = session.user_id.clone();
            let id = id.clone();
            let stored = blocking(&state, move |s| s.account_data.filter(&user_id, &id)).await?;
            match stored {
                Some(value) => serde_json::from_value(value)
                    .map_err(|_| Error::invalid_param("The stored filter is no longer valid."))?,
                None => return Err(Error::invalid_param("No filter with this id.")),
            }
        }
        Some(_) => return Err(Error::invalid_param("The filter is not valid.")),
    };
    let since = match &body.since {
        Some(token) => Some(
            sync_service::parse_since(token).ok_or_else(|| Error::invalid_param("The `since` token is not valid."))?,
        ),
        None => None,
    };
    let (user, presence) = (session.user_id.clone(), body.set_presence.clone());
    blocking(&state, move |s| crate::service::profiles::presence_from_sync(s, &user, presence)).await?;
    let params = std::sync::Arc::new(SyncParams { since, full_state: body.full_state, filter });
    let timeout = body.timeout.unwrap_or_default().min(state.settings.sync_timeout_max);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiting = register_waiting(&state, &session.user_id, timeout).await?;
    loop {
        waiting.mark_seen();
        let (p, sess) = (params.clone(), session.clone());
        if let Some(response) = blocking(&state, move |s| sync_service::build(s, &sess, &p)).await? {
            return Ok(response);
        }
        // Nothing new: wait for a change, or give up at the deadline.
        match tokio::time::timeout_at(deadline, waiting.changed()).await {
            Ok(()) => continue,
            // Nothing new: answer with the same position, so nothing that
            // became visible meanwhile can be skipped.
            _ => return Ok(sync_events::v3::Response::new(since.unwrap_or(0).to_string())),
        }
    }
}

/// Simplified sliding sync (MSC4186): answered at once when something
/// changed since `pos` (or without `pos`), else when something does or at
/// `timeout`.
pub async fn sliding_sync(state: AppState, req: Ruma<sync_events::v5::Request>) -> Result<sync_events::v5::Response> {
    let session = req.session().clone();
    let params = Arc::new(sliding_service::Params::new(req.body, req.body_object.as_ref())?);
    let request = &params.request;
    let (user, presence) = (session.user_id.clone(), request.set_presence.clone());
    blocking(&state, move |s| crate::service::profiles::presence_from_sync(s, &user, presence)).await?;
    let conn_id = request.conn_id.as_deref().unwrap_or_default();
    let connection = state.sliding_sync.open(&session.user_id, &session.device_id, conn_id, request.pos.as_deref())?;
    let timeout = match request.pos {
        Some(_) => request.timeout.unwrap_or_default().min(state.settings.sync_timeout_max),
        None => Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiting = register_waiting(&state, &session.user_id, timeout).await?;
    loop {
        waiting.mark_seen();
        let (p, sess, conn) = (params.clone(), session.clone(), connection.clone());
        let (response, changed) = blocking(&state, move |s| sliding_service::build(s, &sess, &p, &conn)).await?;
        if changed || tokio::time::Instant::now() >= deadline {
            return Ok(response);
        }
        if tokio::time::timeout_at(deadline, waiting.changed()).await.is_err() {
            return Ok(response);
        }
    }
}

/// A sync's place among the waiters: woken only by changes for this user
/// or the rooms they are in (a sync that will not wait needs no rooms).
async fn register_waiting(
    state: &AppState,
    user_id: &ruma::UserId,
    timeout: Duration,
) -> Result<crate::storage::Registration> {
    let rooms = if timeout.is_zero() {
        Vec::new()
    } else {
        let user = user_id.to_owned();
        blocking(state, move |s| sync_service::watched_rooms(s, &user)).await?
    };
    Ok(state.db.waiters().register(user_id, rooms))
}

pub const MAX_FILTER_BYTES: usize = 65_536;

pub async fn create_filter(
    state: AppState,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if req.body.user_id != session.user_id {
            return Err(Error::forbidden("You can only create filters for yourself."));
        }
        let value = serde_json::to_value(&req.body.filter)?;
        if serde_json::to_vec(&value)?.len() > MAX_FILTER_BYTES {
            return Err(Error::too_large("Filters are limited to 64 KiB."));
        }
        Ok(create_filter::v3::Response::new(s.account_data.save_filter(&session.user_id, &value)?))
    })
    .await
}

pub async fn get_filter(state: AppState, req: Ruma<get_filter::v3::Request>) -> Result<get_filter::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        if req.body.user_id != session.user_id {
            return Err(Error::forbidden("You can only read your own filters."));
        }
        let value = s
            .account_data
            .filter(&session.user_id, &req.body.filter_id)?
            .ok_or_else(|| Error::not_found("No filter with this id."))?;
        Ok(get_filter::v3::Response::new(serde_json::from_value(value)?))
    })
    .await
}

/// Tick that expires typing notifications so long-polling syncs see them stop.
pub fn spawn_typing_expiry(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let s = state.clone();
            // Expiring takes a stream position, which wakes waiting syncs.
            if let Ok(Err(err)) = tokio::task::spawn_blocking(move || s.ephemeral.expire_typing()).await {
                tracing::warn!("expiring typing notifications failed: {err}");
            }
        }
    });
}
