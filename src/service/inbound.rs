//! What other servers send us: transactions of PDUs and EDUs.
//!
//! Every PDU is verified (format, signatures, content hash), checked
//! against its auth events (fetched when missing) and against the state
//! before it (filling gaps with `get_missing_events`, then `state_ids`),
//! and then placed by [`Rooms::append_remote`], which soft-fails what the
//! current state forbids. No lock is held while another server is asked
//! for anything: placing is serialised (and idempotent) in `Rooms`, so a
//! slow or hostile participant cannot hold a room.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UInt,
    api::federation::event::{get_event, get_missing_events, get_room_state_ids},
    events::room::member::MembershipState,
};
use serde_json::{Value, value::RawValue as RawJsonValue};

use crate::{
    error::{Error, Result},
    pdu::{Pdu, StateMap},
    service::rooms::State,
    service::{Services, blocking, rooms::Placed},
};

/// Events fetched to fill one gap at most (auth events or missing state).
const MAX_FETCH: usize = 500;
const MISSING_EVENTS_LIMIT: u32 = 20;
/// The longest one incoming PDU may take, its gap-filling included.
const PDU_DEADLINE: Duration = Duration::from_secs(120);
/// Events fetched from another server at once.
const CONCURRENT_FETCHES: usize = 8;

#[derive(Default)]
pub struct Inbound {
    /// The last transactions each server sent and what we answered: a
    /// retried one (its answer lost) is answered again, not replayed, so
    /// to-device messages in it are not delivered twice.
    recent: Mutex<HashMap<OwnedServerName, VecDeque<(String, Results)>>>,
    /// One transaction per server at a time (servers send them in order),
    /// so a retry sent while the first is still running waits for its answer.
    origin_locks: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
}

type Results = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// Transactions remembered per server.
const RECENT_TRANSACTIONS: usize = 16;
/// Above this many server locks, the unused ones are dropped.
const ROOM_LOCKS_KEPT: usize = 1024;

impl Inbound {
    fn answered(&self, origin: &ServerName, txn_id: &str) -> Option<Results> {
        let recent = self.recent.lock().expect("recent transactions poisoned");
        recent.get(origin)?.iter().find(|(id, _)| id == txn_id).map(|(_, results)| results.clone())
    }

    fn remember(&self, origin: &ServerName, txn_id: &str, results: &Results) {
        let mut recent = self.recent.lock().expect("recent transactions poisoned");
        let list = recent.entry(origin.to_owned()).or_default();
        if list.len() >= RECENT_TRANSACTIONS {
            list.pop_front();
        }
        list.push_back((txn_id.to_owned(), results.clone()));
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Handle one `/send` transaction; returns each PDU's outcome.
pub async fn transaction(
    s: &Arc<Services>,
    origin: &ServerName,
    txn_id: &str,
    pdus: &[Box<RawJsonValue>],
    edus: &[Value],
) -> Results {
    let lock = {
        let mut locks = s.inbound.origin_locks.lock().expect("origin locks poisoned");
        if locks.len() > ROOM_LOCKS_KEPT {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(origin.to_owned()).or_default().clone()
    };
    let _one_at_a_time = lock.lock().await;
    if let Some(results) = s.inbound.answered(origin, txn_id) {
        tracing::debug!(%origin, txn_id, "answering a retried transaction again");
        return results;
    }
    let results = handle_transaction(s, origin, pdus, edus).await;
    s.inbound.remember(origin, txn_id, &results);
    results
}

async fn handle_transaction(
    s: &Arc<Services>,
    origin: &ServerName,
    pdus: &[Box<RawJsonValue>],
    edus: &[Value],
) -> Results {
    // One room's PDUs in the order sent; different rooms side by side
    // (nothing orders them, and one slow room must not hold the others).
    let mut by_room: Vec<(Option<OwnedRoomId>, Vec<&RawJsonValue>)> = Vec::new();
    for raw in pdus {
        #[derive(serde::Deserialize)]
        struct RoomOf {
            room_id: Option<OwnedRoomId>,
        }
        let room = serde_json::from_str::<RoomOf>(raw.get()).ok().and_then(|r| r.room_id);
        match by_room.iter_mut().find(|(r, _)| *r == room) {
            Some((_, list)) => list.push(raw),
            None => by_room.push((room, vec![raw])),
        }
    }
    let unacknowledged = Unacknowledged::default();
    let rooms = by_room.into_iter().map(|(_, list)| {
        let unacknowledged = &unacknowledged;
        async move {
            let mut out = Vec::new();
            for raw in list {
                out.extend(incoming_pdu(s, origin, raw, Some(unacknowledged)).await);
            }
            out
        }
    });
    let mut results = BTreeMap::new();
    for (event_id, result) in futures_util::future::join_all(rooms).await.into_iter().flatten() {
        results.insert(event_id, result);
    }
    // Answered only once everything taken in is on disk: one fsync for all.
    let pending = std::mem::take(&mut *unacknowledged.lock().expect("unacknowledged writes poisoned"));
    if !pending.is_empty() {
        let durable = blocking(s, move |_| pending.into_iter().try_for_each(|written| written.wait_durable())).await;
        if let Err(err) = durable {
            tracing::warn!(%origin, "the transaction's events could not be made durable: {err}");
            for result in results.values_mut() {
                *result = Err("The event could not be stored; send it again.".to_owned());
            }
        }
    }
    for edu in edus {
        if let Err(err) = incoming_edu(s, origin, edu).await {
            tracing::debug!(%origin, "ignoring an EDU: {err}");
        }
    }
    results
}

/// Parse a PDU of a room we know; `None` when we cannot even name it.
async fn incoming_pdu(
    s: &Arc<Services>,
    origin: &ServerName,
    raw: &RawJsonValue,
    unacknowledged: Option<&Unacknowledged>,
) -> Option<(OwnedEventId, std::result::Result<(), String>)> {
    let Ok(object) = serde_json::from_str::<CanonicalJsonObject>(raw.get()) else {
        tracing::info!(%origin, "ignoring a PDU that is not canonical JSON");
        return None;
    };
    let Some(Ok(room_id)) = object.get("room_id").and_then(|v| v.as_str()).map(OwnedRoomId::try_from) else {
        tracing::info!(%origin, "ignoring a PDU without a room id");
        return None;
    };
    let record = {
        let room_id = room_id.clone();
        blocking(s, move |s| s.rooms.room(&room_id)).await.ok().flatten()
    };
    let Some(record) = record else {
        return outside_membership(s, origin, &room_id, object).await;
    };
    let rules = ruma::RoomVersionId::rules(&record.version)?;
    let event_id = crate::pdu::event_id_of(&object, &rules).ok()?;
    let denied = {
        let (room_id, origin) = (room_id.clone(), origin.to_owned());
        blocking(s, move |s| crate::service::acl::check_server(s, &room_id, &origin)).await.err()
    };
    if let Some(err) = denied {
        return Some((event_id, Err(err.message)));
    }
    // Canonical JSON is never longer than the JSON it came as: only a large
    // PDU needs serialising to measure.
    if raw.get().len() > crate::api::MAX_PDU_BYTES
        && serde_json::to_string(&object).map_or(true, |json| json.len() > crate::api::MAX_PDU_BYTES)
    {
        return Some((event_id, Err(format!("The event is larger than {} bytes.", crate::api::MAX_PDU_BYTES))));
    }
    // A slow or hostile peer keeps this PDU (never the room) no longer than this.
    let received =
        tokio::time::timeout(PDU_DEADLINE, receive(s, origin, &room_id, &record.version, object, true, unacknowledged))
            .await
            .unwrap_or_else(|_| {
                Err(Error::forbidden("Taking this event in took too long (its gaps could not be filled)."))
            });
    let result = match received {
        Ok(_) => Ok(()),
        // Taken in and judged: the sending server did its part (as Synapse
        // answers, an event the auth rules reject is not a failed delivery).
        Err(err) if err.errcode == REJECTED => {
            tracing::info!(%origin, %room_id, %event_id, "rejected an event: {}", err.message);
            Ok(())
        }
        Err(err) => {
            tracing::info!(%origin, %room_id, %event_id, "refused an event: {}", err.message);
            Err(err.message.clone())
        }
    };
    Some((event_id, result))
}

/// The errcode of an event the auth rules reject (as opposed to one that
/// could not be read, verified or placed).
const REJECTED: &str = "DEV.PORCH.REJECTED";

fn rejected(why: String) -> Error {
    Error::new(http::StatusCode::FORBIDDEN, REJECTED, why)
}

/// A PDU for a room this server does not hold: only a change to one of
/// our users' pending invite or knock is taken (the invite withdrawn, the
/// knock refused), from the server that holds the room.
async fn outside_membership(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    object: CanonicalJsonObject,
) -> Option<(OwnedEventId, std::result::Result<(), String>)> {
    let target = object.get("state_key").and_then(|v| v.as_str()).and_then(|k| OwnedUserId::try_from(k).ok());
    let pending = match target {
        Some(target) if object.get("type").and_then(|v| v.as_str()) == Some("m.room.member") => {
            let room = room_id.to_owned();
            let user = target.clone();
            blocking(s, move |s| crate::service::remote_invite::pending_invite(s, &user, &room)).await.ok().flatten()
        }
        _ => None,
    };
    let Some((_, pending)) = pending else {
        tracing::info!(%origin, %room_id, "ignoring a PDU for a room this server is not in");
        return None;
    };
    if !pending.servers.iter().any(|server| server == origin) {
        tracing::info!(%origin, %room_id, "ignoring a membership change from a server the invite did not name");
        return None;
    }
    let rules = ruma::RoomVersionId::rules(&pending.version)?;
    let event_id = crate::pdu::event_id_of(&object, &rules).ok()?;
    let pdu = match verified_pdu(s, room_id, &pending.version, object).await {
        Ok(pdu) => pdu,
        Err(err) => return Some((event_id, Err(err.message))),
    };
    let membership = pdu.content_value().get("membership").and_then(Value::as_str).map(MembershipState::from);
    if pdu.sender.server_name() != origin || !matches!(membership, Some(MembershipState::Leave | MembershipState::Ban))
    {
        return Some((event_id, Ok(())));
    }
    let room = room_id.to_owned();
    let result = blocking(s, move |s| crate::service::remote_invite::withdrawn(s, &room, &pdu)).await;
    Some((event_id, result.map_err(|e| e.message)))
}

/// Verify, authorise and place one PDU. `fill_gaps` allows fetching
/// missing prev events (not done again for the events so fetched).
pub fn receive<'a>(
    s: &'a Arc<Services>,
    origin: &'a ServerName,
    room_id: &'a RoomId,
    version: &'a RoomVersionId,
    object: CanonicalJsonObject,
    fill_gaps: bool,
    unacknowledged: Option<&'a Unacknowledged>,
) -> BoxFuture<'a, Result<Placed>> {
    Box::pin(async move {
        let pdu = verified_pdu(s, room_id, version, object).await?;
        {
            let event_id = pdu.event_id.clone();
            if blocking(s, move |s| s.rooms.has_state_for(&event_id)).await? {
                return Ok(Placed::Known);
            }
        }
        fetch_auth_events(s, origin, room_id, version, std::slice::from_ref(&pdu)).await?;
        if let Err(err) = check_against_auth_events(s, version, &pdu).await {
            // Kept when the state before it is at hand, so what follows it can be placed.
            if err.errcode == REJECTED
                && let Some(state) = state_before(s, version, &pdu).await?
            {
                keep_rejected(s, room_id, &pdu, state).await?;
            }
            return Err(err);
        }

        let state_before = match state_before(s, version, &pdu).await? {
            Some(state) => state,
            None => {
                if fill_gaps {
                    fetch_missing_prev_events(s, origin, room_id, version, &pdu).await;
                    // An event pushed to us whose sender will not give its
                    // prev events is refused, as Synapse does: taking the
                    // state for it from elsewhere would let one server set
                    // the room's newest state.
                    let prevs = pdu.prev_events.clone();
                    let all_known = blocking(s, move |s| {
                        for id in &prevs {
                            if s.rooms.get_pdu(id)?.is_none() {
                                return Ok(false);
                            }
                        }
                        Ok(true)
                    })
                    .await?;
                    if !all_known {
                        return Err(Error::forbidden("The sending server did not give this event's prev events."));
                    }
                }
                match state_before(s, version, &pdu).await? {
                    Some(state) => state,
                    None => state_from_remote(s, origin, room_id, version, &pdu).await?,
                }
            }
        };
        let checked = match redacts_another_room(s, &pdu).await? {
            true => Err(rejected("The event redacts an event of another room.".to_owned())),
            false => check_against_state(s, version, &pdu, &state_before).await,
        };
        if let Err(err) = checked {
            if err.errcode == REJECTED {
                keep_rejected(s, room_id, &pdu, state_before).await?;
            }
            return Err(err);
        }
        let room_id = room_id.to_owned();
        let (placed, pending) = blocking(s, move |s| {
            let (placed, pending) = s.rooms.append_remote_deferred(&room_id, pdu, state_before, false)?;
            if let Placed::Timeline(pdu) = &placed {
                crate::service::push::on_invite(s, pdu)?;
                crate::service::room_upgrade::on_tombstone(s, pdu)?;
                crate::service::keys::on_remote_member(s, pdu);
            }
            Ok((placed, pending))
        })
        .await?;
        match (pending, unacknowledged) {
            (Some(pending), Some(unacknowledged)) => {
                unacknowledged.lock().expect("unacknowledged writes poisoned").push(pending);
            }
            (Some(pending), None) => blocking(s, move |_| pending.wait_durable()).await?,
            (None, _) => {}
        }
        Ok(placed)
    })
}

/// Room transactions written while an inbound transaction is taken in:
/// made durable together (one fsync) before it is answered.
type Unacknowledged = std::sync::Mutex<Vec<crate::service::rooms::DeferredCommit>>;

/// A redaction of an event we hold in another room is refused, as Synapse
/// does (it would never apply, and should not show in the timeline).
async fn redacts_another_room(s: &Arc<Services>, pdu: &Arc<Pdu>) -> Result<bool> {
    let Some(target) = pdu.redacts.clone().filter(|_| pdu.kind == ruma::events::TimelineEventType::RoomRedaction)
    else {
        return Ok(false);
    };
    let room_id = pdu.room_id.clone();
    blocking(s, move |s| Ok(s.rooms.get_pdu(&target)?.is_some_and(|(target, _)| target.room_id != room_id))).await
}

async fn keep_rejected(s: &Arc<Services>, room_id: &RoomId, pdu: &Arc<Pdu>, state: State) -> Result<()> {
    let (room_id, pdu) = (room_id.to_owned(), pdu.clone());
    blocking(s, move |s| s.rooms.store_rejected(&room_id, pdu, state)).await
}

/// The auth rules with `state` as the state before the event.
pub(crate) async fn check_against_state(
    s: &Arc<Services>,
    version: &RoomVersionId,
    pdu: &Arc<Pdu>,
    state: &State,
) -> Result<()> {
    let (version, pdu, state) = (version.clone(), pdu.clone(), state.clone());
    blocking(s, move |s| {
        s.rooms
            .check_auth(&version, &pdu, &state, &HashMap::new())
            .map_err(|why| rejected(format!("The event is not allowed by the state before it: {why}")))
    })
    .await
}

/// Signature and hash checks, then parsing.
pub async fn verified_pdu(
    s: &Arc<Services>,
    room_id: &RoomId,
    version: &RoomVersionId,
    object: CanonicalJsonObject,
) -> Result<Arc<Pdu>> {
    let (event_id, object) = s.federation.verify_pdu(version, object).await?;
    let json = RawJsonValue::from_string(serde_json::to_string(&object)?)?;
    let pdu =
        Pdu::from_json(event_id, room_id, json).map_err(|e| Error::bad_json(format!("The event is malformed: {e}")))?;
    if pdu.room_id != room_id {
        return Err(Error::bad_json("The event belongs to another room."));
    }
    Ok(Arc::new(pdu))
}

pub(crate) async fn check_against_auth_events(
    s: &Arc<Services>,
    version: &RoomVersionId,
    pdu: &Arc<Pdu>,
) -> Result<()> {
    let (version, pdu) = (version.clone(), pdu.clone());
    blocking(s, move |s| {
        let none = HashMap::new();
        let state = s
            .rooms
            .auth_state(&version, &pdu, &none)?
            .map_err(|missing| Error::forbidden(format!("The event's auth event {missing} could not be found.")))?;
        s.rooms
            .check_auth(&version, &pdu, &state, &none)
            .map_err(|why| rejected(format!("The event is not allowed by its auth events: {why}")))
    })
    .await
}

async fn state_before(s: &Arc<Services>, version: &RoomVersionId, pdu: &Arc<Pdu>) -> Result<Option<State>> {
    let (version, prev) = (version.clone(), pdu.prev_events.clone());
    blocking(s, move |s| s.rooms.state_before_event(&version, &prev)).await
}

/// Fetch the auth events we lack (recursively) from `origin`, check each
/// against its own auth events, and store them as outliers.
pub async fn fetch_auth_events(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    from: &[Arc<Pdu>],
) -> Result<()> {
    let mut wanted: Vec<OwnedEventId> = from.iter().flat_map(|p| p.auth_events.iter().cloned()).collect();
    let mut fetched: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    while let Some(id) = wanted.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let known = {
            let id = id.clone();
            blocking(s, move |s| Ok(s.rooms.get_pdu(&id)?.is_some())).await?
        };
        if known {
            continue;
        }
        if fetched.len() >= MAX_FETCH {
            return Err(Error::forbidden("The event's auth chain is too long to fetch."));
        }
        let pdu = fetch_event(s, origin, room_id, version, &id).await?;
        wanted.extend(pdu.auth_events.iter().cloned());
        fetched.insert(id, pdu);
    }
    store_authorised_outliers(s, room_id, version, fetched).await
}

/// Check fetched events against their auth events (oldest first) and store
/// the ones that pass.
async fn store_authorised_outliers(
    s: &Arc<Services>,
    room_id: &RoomId,
    version: &RoomVersionId,
    fetched: HashMap<OwnedEventId, Arc<Pdu>>,
) -> Result<()> {
    if fetched.is_empty() {
        return Ok(());
    }
    let (room_id, version) = (room_id.to_owned(), version.clone());
    blocking(s, move |s| {
        let mut order: Vec<Arc<Pdu>> = fetched.values().cloned().collect();
        order.sort_by_key(|p| p.depth);
        let mut accepted = HashMap::new();
        for pdu in order {
            let state = match s.rooms.auth_state(&version, &pdu, &accepted)? {
                Ok(state) => state,
                Err(missing) => {
                    tracing::info!(event_id = %pdu.event_id, %missing, "dropping a fetched event without its auth events");
                    continue;
                }
            };
            match s.rooms.check_auth(&version, &pdu, &state, &accepted) {
                Ok(()) => {
                    accepted.insert(pdu.event_id.clone(), pdu);
                }
                Err(why) => tracing::info!(event_id = %pdu.event_id, "dropping a fetched event: {why}"),
            }
        }
        let accepted: Vec<Arc<Pdu>> = accepted.into_values().collect();
        s.rooms.store_outliers(&room_id, &accepted)
    })
    .await
}

async fn fetch_event(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    event_id: &OwnedEventId,
) -> Result<Arc<Pdu>> {
    let response = s.federation.send(origin, get_event::v1::Request::new(event_id.clone())).await?;
    let object: CanonicalJsonObject = serde_json::from_str(response.pdu.get())
        .map_err(|_| Error::bad_json(format!("{origin} sent an event that is not canonical JSON")))?;
    let pdu = verified_pdu(s, room_id, version, object).await?;
    if pdu.event_id != *event_id {
        return Err(Error::forbidden(format!("{origin} answered with another event than {event_id}")));
    }
    Ok(pdu)
}

/// Ask `origin` for the events between our forward extremities and this
/// one, and take them in, oldest first.
async fn fetch_missing_prev_events(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    pdu: &Arc<Pdu>,
) {
    let earliest = {
        let room_id = room_id.to_owned();
        match blocking(s, move |s| s.rooms.room(&room_id)).await {
            Ok(Some(record)) => record.extremities,
            _ => return,
        }
    };
    let mut request = get_missing_events::v1::Request::new(room_id.to_owned(), earliest, vec![pdu.event_id.clone()]);
    request.limit = UInt::from(MISSING_EVENTS_LIMIT);
    request.min_depth = UInt::from(0u32);
    let response = match s.federation.send(origin, request).await {
        Ok(response) => response,
        Err(err) => {
            tracing::info!(%origin, %room_id, "get_missing_events failed: {}", err.message);
            return;
        }
    };
    let mut events: Vec<(u64, CanonicalJsonObject)> = response
        .events
        .iter()
        .filter_map(|raw| serde_json::from_str::<CanonicalJsonObject>(raw.get()).ok())
        .map(|object| {
            let depth = match object.get("depth") {
                Some(CanonicalJsonValue::Integer(d)) => u64::try_from(i64::from(*d)).unwrap_or(0),
                _ => 0,
            };
            (depth, object)
        })
        .collect();
    events.sort_by_key(|(depth, _)| *depth);
    for (_, object) in events {
        if let Err(err) = receive(s, origin, room_id, version, object, false, None).await {
            tracing::info!(%origin, %room_id, "a missing event was refused: {}", err.message);
        }
    }
}

/// The state before `pdu` as `origin` tells it: for each prev event whose
/// state we lack, its `state_ids`, with the events fetched and checked.
pub(crate) async fn state_from_remote(
    s: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    pdu: &Arc<Pdu>,
) -> Result<State> {
    let mut states = Vec::new();
    for prev in &pdu.prev_events {
        let known = {
            let prev = prev.clone();
            blocking(s, move |s| s.rooms.state_after_event(&prev)).await?
        };
        if let Some(state) = known {
            states.push(state);
            continue;
        }
        let request = get_room_state_ids::v1::Request::new(prev.clone(), room_id.to_owned());
        let ids = s.federation.send(origin, request).await?;
        if ids.pdu_ids.len() + ids.auth_chain_ids.len() > 10 * MAX_FETCH {
            return Err(Error::forbidden(format!("{origin} sent too much state to check")));
        }
        let mut wanted: Vec<OwnedEventId> = ids.pdu_ids.iter().chain(&ids.auth_chain_ids).cloned().collect();
        wanted.push(prev.clone());
        let missing = blocking(s, move |s| {
            let mut missing = Vec::new();
            for id in wanted.into_iter().collect::<HashSet<_>>() {
                if s.rooms.get_pdu(&id)?.is_none() {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await?;
        // Several at a time: a room's state can be thousands of events.
        let fetched: HashMap<OwnedEventId, Arc<Pdu>> = futures_util::stream::iter(missing)
            .map(|id| async move {
                match fetch_event(s, origin, room_id, version, &id).await {
                    Ok(event) => Some((id, event)),
                    Err(err) => {
                        tracing::info!(%origin, event_id = %id, "could not fetch a state event: {}", err.message);
                        None
                    }
                }
            })
            .buffer_unordered(CONCURRENT_FETCHES)
            .filter_map(std::future::ready)
            .collect()
            .await;
        store_authorised_outliers(s, room_id, version, fetched).await?;
        let (pdu_ids, prev_id) = (ids.pdu_ids.clone(), prev.clone());
        let state = blocking(s, move |s| {
            let mut state = StateMap::new();
            for id in pdu_ids.iter().chain(std::iter::once(&prev_id)) {
                if let Some((event, _)) = s.rooms.get_pdu(id)?
                    && let Some(key) = &event.state_key
                    && (id != &prev_id || event.is_state())
                {
                    state.insert((event.kind.to_string(), key.clone()), id.clone());
                }
            }
            s.rooms.compact(&state)
        })
        .await?;
        states.push(Arc::new(state));
    }
    let version = version.clone();
    blocking(s, move |s| s.rooms.resolve(&version, states)).await
}

/// How long a device-list resync may take.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetch a remote user's devices (`/user/devices`) and cache them, if one
/// of our users shares a room with them.
async fn resync_device_list(s: Arc<Services>, server: ruma::OwnedServerName, user: OwnedUserId) {
    let shares = {
        let user = user.clone();
        // No index of a remote user's rooms: each room is asked (a point
        // read per room; see the storage issue for an index).
        blocking(&s, move |s| {
            for room_id in s.rooms.all_room_ids()? {
                if s.rooms.is_joined(&room_id, &user)?
                    && s.rooms.joined_members(&room_id)?.iter().any(|m| s.users.is_local(m))
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    };
    if !matches!(shares, Ok(true)) {
        return;
    }
    let asked_at = std::time::Instant::now();
    let request = ruma::api::federation::device::get_devices::v1::Request::new(user.clone());
    match tokio::time::timeout(RESYNC_TIMEOUT, s.federation.send(&server, request)).await {
        Ok(Ok(answer)) if answer.user_id == user => {
            let keys = crate::service::keys::RemoteUserKeys {
                devices: answer.devices.into_iter().map(|device| (device.device_id, device.keys)).collect(),
                master: answer.master_key,
                self_signing: answer.self_signing_key,
                stream_id: Some(u64::from(answer.stream_id)),
            };
            s.keys.cache_remote(&user, keys, asked_at);
        }
        Ok(Ok(_)) => tracing::info!(%server, %user, "device list answer for another user, ignored"),
        Ok(Err(e)) => tracing::info!(%server, %user, "device list resync failed: {}", e.message),
        Err(_) => tracing::info!(%server, %user, "device list resync timed out"),
    }
}

/// Typing, receipts, presence, device lists and to-device messages from
/// `origin`'s users. A user of another server than `origin` is ignored.
async fn incoming_edu(s: &Arc<Services>, origin: &ServerName, edu: &Value) -> Result<()> {
    let kind = edu.get("edu_type").and_then(Value::as_str).unwrap_or_default().to_owned();
    let content = edu.get("content").cloned().unwrap_or(Value::Null);
    if kind == "m.device_list_update"
        && let Some(user) = content.get("user_id").and_then(Value::as_str).and_then(|u| OwnedUserId::try_from(u).ok())
        && user.server_name() == origin
    {
        let (update_content, updated) = (content.clone(), user.clone());
        let applied = blocking(s, move |s| {
            let update = crate::service::keys::DeviceListUpdate {
                device_id: update_content["device_id"].as_str().unwrap_or_default(),
                stream_id: update_content["stream_id"].as_u64().unwrap_or(0),
                prev_ids: update_content["prev_id"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect(),
                deleted: update_content["deleted"].as_bool().unwrap_or(false),
                keys: update_content.get("keys").cloned(),
                display_name: update_content["device_display_name"].as_str(),
            };
            s.keys.apply_remote_update(&updated, &update)
        })
        .await?;
        if applied {
            return Ok(());
        }
        // Otherwise the whole list is fetched again at once (as Synapse
        // resyncs), so our users' next key query has it without asking.
        tokio::spawn(resync_device_list(s.clone(), origin.to_owned(), user));
    }
    let origin = origin.to_owned();
    blocking(s, move |s| {
        let from_origin = |user: Option<&str>| -> Option<OwnedUserId> {
            let user = OwnedUserId::try_from(user?).ok()?;
            (user.server_name() == origin).then_some(user)
        };
        match kind.as_str() {
            "m.typing" => {
                let user = from_origin(content.get("user_id").and_then(Value::as_str));
                let room = content.get("room_id").and_then(Value::as_str).and_then(|r| OwnedRoomId::try_from(r).ok());
                if let (Some(user), Some(room)) = (user, room)
                    && s.rooms.membership(&room, &user)? == Some(MembershipState::Join)
                {
                    let typing = content.get("typing").and_then(Value::as_bool).unwrap_or(false);
                    s.ephemeral.set_typing(&room, &user, typing.then_some(Duration::from_secs(30)))?;
                }
            }
            "m.receipt" => {
                for (room, by_type) in content.as_object().into_iter().flatten() {
                    let Ok(room) = OwnedRoomId::try_from(room.as_str()) else { continue };
                    for (receipt_type, by_user) in by_type.as_object().into_iter().flatten() {
                        for (user, receipt) in by_user.as_object().into_iter().flatten() {
                            let Some(user) = from_origin(Some(user)) else { continue };
                            if s.rooms.membership(&room, &user)? != Some(MembershipState::Join) {
                                continue;
                            }
                            let thread = receipt["data"]["thread_id"].as_str().unwrap_or("").to_owned();
                            let events =
                                receipt.get("event_ids").and_then(Value::as_array).cloned().unwrap_or_default();
                            for event_id in events.iter().filter_map(Value::as_str) {
                                if let Ok(event_id) = OwnedEventId::try_from(event_id) {
                                    s.ephemeral.set_receipt(&room, &user, receipt_type, &thread, &event_id)?;
                                }
                            }
                        }
                    }
                }
            }
            "m.presence" => {
                for update in content.get("push").and_then(Value::as_array).into_iter().flatten() {
                    let Some(user) = from_origin(update.get("user_id").and_then(Value::as_str)) else { continue };
                    let Some(Ok(state)) = update
                        .get("presence")
                        .map(|p| serde_json::from_value::<ruma::presence::PresenceState>(p.clone()))
                    else {
                        continue;
                    };
                    let status = update.get("status_msg").and_then(Value::as_str).map(str::to_owned);
                    s.ephemeral.set_presence(&user, state, status)?;
                }
            }
            "m.device_list_update" | "m.signing_key_update" => {
                if let Some(user) = from_origin(content.get("user_id").and_then(Value::as_str)) {
                    s.keys.mark_remote_changed(&user)?;
                }
            }
            "m.direct_to_device" => {
                let Some(sender) = from_origin(content.get("sender").and_then(Value::as_str)) else { return Ok(()) };
                let message_type = content.get("type").and_then(Value::as_str).unwrap_or_default();
                let mut batch = s.keys.batch();
                for (user, devices) in content.get("messages").and_then(Value::as_object).into_iter().flatten() {
                    let Ok(user) = OwnedUserId::try_from(user.as_str()) else { continue };
                    if !s.users.is_local(&user) {
                        continue;
                    }
                    for (device, message) in devices.as_object().into_iter().flatten() {
                        let targets: Vec<String> = if device == "*" {
                            s.users.devices(&user)?.into_iter().map(|(d, _)| d.to_string()).collect()
                        } else {
                            vec![device.clone()]
                        };
                        for device in targets {
                            s.keys.queue_to_device(&mut batch, &sender, &user, &device, message_type, message);
                        }
                    }
                }
                batch.commit()?;
            }
            _ => {}
        }
        Ok(())
    })
    .await
}
