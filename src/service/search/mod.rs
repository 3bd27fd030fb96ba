//! Full-text search over room events (`POST /search`), on an inverted index
//! in RocksDB written in the same batch as each event, so it is exactly as
//! durable and current as the timeline (a separate engine such as tantivy
//! would add a second store to keep in step, and its build cost, for
//! features porch's rooms do not need).
//!
//! Its column family, `search_terms`, is in `data.rs`.
//!
//! Terms are lower-cased words (Unicode letters and digits); a query term
//! matches words it begins ("hel" finds "hello"), every query term must
//! match, and rank counts whole-word matches above prefix ones. Results
//! are checked against the stored event again, so a redacted event is
//! never found.

mod data;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    pdu::Pdu,
    service::{
        Services,
        history::{self, PageRequest},
        sync::EventFilter,
    },
    storage::Batch,
};

/// Words longer than this are not indexed (nobody searches for them).
const MAX_TERM: usize = 64;
/// Query terms considered.
const MAX_QUERY_TERMS: usize = 8;
/// Index entries read per term and room: bounds a query's cost.
const MAX_HITS_PER_TERM: usize = 5_000;
/// Results a query yields at most (pages of them).
const MAX_RESULTS: usize = 1_000;

const FIELDS: [(&str, &str, &str); 3] = [
    ("m.room.message", "body", "content.body"),
    ("m.room.name", "name", "content.name"),
    ("m.room.topic", "topic", "content.topic"),
];

/// Lower-cased words of a text, each once.
pub fn terms(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= MAX_TERM)
        .map(str::to_lowercase)
        .collect()
}

/// The searchable field of an event and its text.
fn field_of(pdu: &Pdu) -> Option<(&'static str, String)> {
    let kind = pdu.kind.to_string();
    let (_, name, field) = FIELDS.iter().find(|(k, _, _)| *k == kind)?;
    let content = pdu.content_value();
    Some((field, content.get(*name)?.as_str()?.to_owned()))
}

/// Index an event being stored (every path that stores events calls this).
pub fn stage_index(batch: &mut Batch<'_>, pdu: &Pdu, ordering: i64) {
    let Some((field, text)) = field_of(pdu) else { return };
    for term in terms(&text) {
        data::put_term(batch, &pdu.room_id, &term, ordering, &pdu.event_id, field);
    }
}

pub struct Criteria {
    pub search_term: String,
    pub keys: Option<Vec<String>>,
    pub filter: ruma::api::client::filter::RoomEventFilter,
    pub order_by_recent: bool,
    pub before_limit: Option<usize>,
    pub after_limit: Option<usize>,
    pub include_profile: bool,
    pub include_state: bool,
    pub group_by_room: bool,
    pub group_by_sender: bool,
    pub next_batch: Option<String>,
}

struct Hit {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    ordering: i64,
    rank: f64,
}

/// `POST /search` for the `room_events` category; returns its JSON.
pub fn search(s: &Services, user_id: &UserId, c: Criteria) -> Result<Value> {
    let query: Vec<String> = terms(&c.search_term).into_iter().take(MAX_QUERY_TERMS).collect();
    if query.is_empty() {
        return Err(Error::invalid_param("`search_term` has no word to search for."));
    }
    let offset = match &c.next_batch {
        Some(token) => token
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("`next_batch` is not a token this server gave."))?,
        None => 0,
    };
    let filter = EventFilter(&c.filter);
    let keys: Vec<String> =
        c.keys.clone().unwrap_or_else(|| FIELDS.iter().map(|(_, _, field)| (*field).to_owned()).collect());
    let rooms: Vec<OwnedRoomId> = s
        .rooms
        .user_rooms(user_id)?
        .into_iter()
        .filter(|(room_id, r)| r.membership == MembershipState::Join && !r.forgotten && filter.allows_room(room_id))
        .map(|(room_id, _)| room_id)
        .collect();

    let mut hits = Vec::new();
    for room_id in &rooms {
        hits.extend(room_hits(s, room_id, &query, &keys)?);
    }
    // Check each against the event itself: visible, matching the filter, still saying it.
    let mut results = Vec::new();
    let mut highlights: BTreeSet<String> = BTreeSet::new();
    if c.order_by_recent {
        hits.sort_by_key(|hit| std::cmp::Reverse(hit.ordering));
    } else {
        hits.sort_by(|a, b| b.rank.total_cmp(&a.rank).then(b.ordering.cmp(&a.ordering)));
    }
    for hit in hits {
        if results.len() >= MAX_RESULTS {
            break;
        }
        let Some((pdu, meta)) = s.rooms.get_pdu(&hit.event_id)? else { continue };
        if meta.redacted_because.is_some() || !filter.allows(&pdu) || !history::may_see(s, user_id, &pdu, &meta)? {
            continue;
        }
        let Some((field, text)) = field_of(&pdu) else { continue };
        if !keys.iter().any(|k| k == field) {
            continue;
        }
        let words = terms(&text);
        if !query.iter().all(|q| words.iter().any(|w| w.starts_with(q.as_str()))) {
            continue;
        }
        highlights.extend(words.into_iter().filter(|w| query.iter().any(|q| w.starts_with(q.as_str()))));
        results.push((hit, pdu, meta));
    }
    let count = results.len();
    let limit = c.filter.limit.map_or(10, |l| u64::from(l) as usize).clamp(1, 100);
    let mut out = Vec::new();
    let mut groups_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut groups_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut state_rooms: BTreeSet<OwnedRoomId> = BTreeSet::new();
    for (hit, pdu, meta) in results.iter().skip(offset).take(limit) {
        let mut result = json!({ "rank": hit.rank, "result": crate::service::relations::client_event(s, user_id, pdu, meta, true, None)? });
        if c.before_limit.is_some() || c.after_limit.is_some() || c.include_profile {
            result["context"] = context(s, user_id, pdu, meta.ordering(), &c)?;
        }
        groups_room.entry(hit.room_id.to_string()).or_default().push(hit.event_id.to_string());
        groups_sender.entry(pdu.sender.to_string()).or_default().push(hit.event_id.to_string());
        state_rooms.insert(hit.room_id.clone());
        out.push(result);
    }
    let mut answer = json!({
        "count": count,
        "results": out,
        "highlights": highlights.into_iter().collect::<Vec<_>>(),
    });
    if offset + limit < count {
        answer["next_batch"] = json!(format!("o{}", offset + limit));
    }
    let group = |groups: BTreeMap<String, Vec<String>>| -> Value {
        let mut map = serde_json::Map::new();
        for (order, (id, results)) in groups.into_iter().enumerate() {
            map.insert(id, json!({ "results": results, "order": order }));
        }
        Value::Object(map)
    };
    if c.group_by_room || c.group_by_sender {
        let mut groups = serde_json::Map::new();
        if c.group_by_room {
            groups.insert("room_id".into(), group(groups_room));
        }
        if c.group_by_sender {
            groups.insert("sender".into(), group(groups_sender));
        }
        answer["groups"] = Value::Object(groups);
    }
    if c.include_state {
        let mut state = serde_json::Map::new();
        for room_id in state_rooms {
            let mut events = Vec::new();
            for event_id in s.rooms.state_event_ids(&*s.rooms.current_state(&room_id)?)? {
                if let Some((pdu, meta)) = s.rooms.get_pdu(&event_id)? {
                    events.push(pdu.to_client_event(&meta, true, None));
                }
            }
            state.insert(room_id.to_string(), Value::Array(events));
        }
        answer["state"] = Value::Object(state);
    }
    Ok(json!({ "search_categories": { "room_events": answer } }))
}

/// Candidates in one room: events with every query term (as a word prefix).
fn room_hits(s: &Services, room_id: &RoomId, query: &[String], keys: &[String]) -> Result<Vec<Hit>> {
    let mut per_event: HashMap<OwnedEventId, (i64, usize, f64)> = HashMap::new();
    for term in query {
        let mut seen: HashMap<OwnedEventId, bool> = HashMap::new();
        for hit in data::term_hits(&s.db, room_id, term, MAX_HITS_PER_TERM)? {
            if !keys.iter().any(|f| f.as_bytes() == hit.field) {
                continue;
            }
            let (ordering, event_id) = (hit.ordering, hit.event_id);
            let whole = hit.word == term.as_bytes();
            let entry = seen.entry(event_id.clone()).or_insert(false);
            *entry |= whole;
            per_event.entry(event_id).or_insert((ordering, 0, 0.0));
        }
        for (event_id, whole) in seen {
            if let Some(entry) = per_event.get_mut(&event_id) {
                entry.1 += 1;
                entry.2 += if whole { 1.0 } else { 0.5 };
            }
        }
    }
    Ok(per_event
        .into_iter()
        .filter(|(_, (_, matched, _))| *matched == query.len())
        .map(|(event_id, (ordering, _, rank))| Hit { room_id: room_id.to_owned(), event_id, ordering, rank })
        .collect())
}

/// Events around a result, and the senders' profiles if asked.
fn context(s: &Services, user_id: &UserId, pdu: &Pdu, ordering: i64, c: &Criteria) -> Result<Value> {
    let filter = ruma::api::client::filter::RoomEventFilter::default();
    let around = |forward: bool, limit: usize| PageRequest { from: ordering, forward, limit, to: None };
    let before = history::page(
        s,
        user_id,
        &pdu.room_id,
        around(false, c.before_limit.unwrap_or(5).min(20)),
        &EventFilter(&filter),
    )?;
    let after = history::page(
        s,
        user_id,
        &pdu.room_id,
        around(true, c.after_limit.unwrap_or(5).min(20)),
        &EventFilter(&filter),
    )?;
    let mut context = json!({
        "events_before": before.events.iter().map(|(p, m)| p.to_client_event(m, true, None)).collect::<Vec<_>>(),
        "events_after": after.events.iter().map(|(p, m)| p.to_client_event(m, true, None)).collect::<Vec<_>>(),
        "start": format!("t{}", before.end.unwrap_or(ordering)),
        "end": format!("t{}", after.end.unwrap_or(ordering)),
    });
    if c.include_profile {
        let state = s.rooms.current_state(&pdu.room_id)?;
        let mut profiles = serde_json::Map::new();
        for sender in before.events.iter().chain(after.events.iter()).map(|(p, _)| &p.sender).chain([&pdu.sender]) {
            if profiles.contains_key(sender.as_str()) {
                continue;
            }
            let member = s.rooms.state_content(&state, "m.room.member", sender.as_str())?.unwrap_or_default();
            profiles.insert(
                sender.to_string(),
                json!({ "displayname": member.get("displayname"), "avatar_url": member.get("avatar_url") }),
            );
        }
        context["profile_info"] = Value::Object(profiles);
    }
    Ok(context)
}

/// Stage the removal of a room's whole index (its history was purged).
pub fn stage_purge_room(db: &crate::storage::Db, batch: &mut Batch<'_>, room_id: &RoomId) -> Result<()> {
    data::stage_purge_room(db, batch, room_id)
}
