//! History from before this server joined a room: when `/messages` reaches
//! the oldest event we hold and its prev events are unknown, ask the
//! room's other servers for what precedes it (`/backfill`), check each
//! event as an incoming one (signatures, hash, auth events, the state
//! before it) and put it under the live timeline.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::backfill::get_backfill,
};

use crate::{
    error::Result,
    pdu::Pdu,
    service::rooms::State,
    service::{Services, blocking, inbound},
};

/// Events asked for per `/backfill` request.
const BATCH: u32 = 50;

/// What is missing below the oldest event and who may have it.
struct Gap {
    version: RoomVersionId,
    missing: Vec<OwnedEventId>,
    servers: Vec<OwnedServerName>,
}

/// After a backfill that brought nothing, the room's servers are not asked
/// again for this long (clients paging at the top would ask every time).
const RETRY_AFTER: Duration = Duration::from_secs(60);
const ROOMS_REMEMBERED: usize = 10_000;

/// Rooms whose last backfill brought nothing, and when.
#[derive(Default)]
pub struct Backfills {
    fruitless: Mutex<HashMap<OwnedRoomId, Instant>>,
}

impl Backfills {
    fn recently_fruitless(&self, room_id: &RoomId) -> bool {
        let fruitless = self.fruitless.lock().expect("backfills poisoned");
        fruitless.get(room_id).is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    fn note(&self, room_id: &RoomId, added: usize) {
        let mut fruitless = self.fruitless.lock().expect("backfills poisoned");
        if added > 0 {
            fruitless.remove(room_id);
            return;
        }
        if fruitless.len() >= ROOMS_REMEMBERED {
            fruitless.retain(|_, at| at.elapsed() < RETRY_AFTER);
        }
        fruitless.insert(room_id.to_owned(), Instant::now());
    }
}

/// Fetch one batch of history older than the room's oldest known event.
/// Returns how many events were added (0 when the room's start is reached
/// or no server could help). No lock is held while other servers are
/// asked: placing the events checks, under the room's lock, that nothing
/// placed them meanwhile.
pub async fn backfill(s: &Arc<Services>, room_id: &RoomId) -> Result<usize> {
    if s.backfills.recently_fruitless(room_id) {
        return Ok(0);
    }
    let added = fetch(s, room_id).await;
    s.backfills.note(room_id, *added.as_ref().unwrap_or(&0));
    added
}

async fn fetch(s: &Arc<Services>, room_id: &RoomId) -> Result<usize> {
    let gap = {
        let room_id = room_id.to_owned();
        blocking(s, move |s| find_gap(s, &room_id)).await?
    };
    let Some(gap) = gap else { return Ok(0) };
    for server in &gap.servers {
        let request = get_backfill::v1::Request::new(room_id.to_owned(), gap.missing.clone(), UInt::from(BATCH));
        let response = match s.federation.send(server, request).await {
            Ok(response) => response,
            Err(err) => {
                tracing::info!(%server, %room_id, "backfill failed: {}", err.message);
                continue;
            }
        };
        let added = take_in(s, server, room_id, &gap.version, response.pdus).await?;
        if added > 0 {
            tracing::debug!(%server, %room_id, added, "backfilled history");
            return Ok(added);
        }
    }
    Ok(0)
}

fn find_gap(s: &Services, room_id: &RoomId) -> Result<Option<Gap>> {
    let Some(record) = s.rooms.room(room_id)? else { return Ok(None) };
    let Some((_, oldest)) = s.rooms.oldest_event(room_id)? else { return Ok(None) };
    let Some((pdu, _)) = s.rooms.get_pdu(&oldest)? else { return Ok(None) };
    let mut missing = Vec::new();
    for prev in &pdu.prev_events {
        if !s.rooms.has_state_for(prev)? {
            missing.push(prev.clone());
        }
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let mut servers: Vec<OwnedServerName> = s.rooms.remote_servers(room_id)?.iter().cloned().collect();
    for candidate in [Some(pdu.sender.server_name()), room_id.server_name()].into_iter().flatten() {
        if candidate != s.settings.server_name && !servers.iter().any(|s| s == candidate) {
            servers.push(candidate.to_owned());
        }
    }
    Ok(Some(Gap { version: record.version, missing, servers }))
}

/// Verify and check `raw` events from `origin`, oldest first, and store
/// the ones that pass; returns how many.
async fn take_in(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    raw: Vec<Box<serde_json::value::RawValue>>,
) -> Result<usize> {
    let mut events = Vec::new();
    for raw in raw.iter().take(BATCH as usize * 2) {
        let Ok(object) = serde_json::from_str::<CanonicalJsonObject>(raw.get()) else { continue };
        match inbound::verified_pdu(s, room_id, version, object).await {
            Ok(pdu) => events.push(pdu),
            Err(err) => tracing::info!(%origin, %room_id, "dropping a backfilled event: {}", err.message),
        }
    }
    events.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.event_id.cmp(&b.event_id)));
    events.dedup_by(|a, b| a.event_id == b.event_id);

    let mut accepted: Vec<(Arc<Pdu>, State)> = Vec::new();
    let mut states_after: HashMap<OwnedEventId, Arc<State>> = HashMap::new();
    for pdu in events {
        {
            let event_id = pdu.event_id.clone();
            if blocking(s, move |s| s.rooms.has_state_for(&event_id)).await? {
                continue;
            }
        }
        match check(s, origin, room_id, version, &pdu, &states_after).await {
            Ok(state_before) => {
                let mut state_after = state_before.clone();
                if let Some(key) = pdu.state_key.clone() {
                    let (kind, event_id) = (pdu.kind.to_string(), pdu.event_id.clone());
                    let (key, event) = blocking(s, move |s| s.rooms.short.entry(&kind, &key, &event_id)).await?;
                    state_after.insert(key, event);
                }
                states_after.insert(pdu.event_id.clone(), Arc::new(state_after));
                accepted.push((pdu, state_before));
            }
            Err(err) => {
                tracing::info!(%origin, %room_id, event_id = %pdu.event_id, "refused a backfilled event: {}", err.message)
            }
        }
    }
    let room_id = room_id.to_owned();
    blocking(s, move |s| s.rooms.append_backfilled(&room_id, accepted)).await
}

/// Check one event against its auth events and the state before it (from
/// events of this batch, stored ones, or `origin`'s `state_ids`); returns
/// that state.
async fn check(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    pdu: &Arc<Pdu>,
    batch_states: &HashMap<OwnedEventId, Arc<State>>,
) -> Result<State> {
    inbound::fetch_auth_events(s, origin, room_id, version, std::slice::from_ref(pdu)).await?;
    inbound::check_against_auth_events(s, version, pdu).await?;
    let mut states = Vec::new();
    let mut stored = Vec::new();
    for prev in &pdu.prev_events {
        match batch_states.get(prev) {
            Some(state) => states.push(state.clone()),
            None => stored.push(prev.clone()),
        }
    }
    let known = {
        let version = version.clone();
        blocking(s, move |s| {
            for prev in &stored {
                match s.rooms.state_after_event(prev)? {
                    Some(state) => states.push(state),
                    None => return Ok(None),
                }
            }
            s.rooms.resolve(&version, states).map(Some)
        })
        .await?
    };
    let state_before = match known {
        Some(state) => state,
        None => inbound::state_from_remote(s, origin, room_id, version, pdu).await?,
    };
    inbound::check_against_state(s, version, pdu, &state_before).await?;
    Ok(state_before)
}
