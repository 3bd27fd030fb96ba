//! Relations between events (`m.relates_to` with a `rel_type`): the index,
//! `/relations`, `/threads`, and the aggregations servers bundle into
//! `unsigned.m.relations` (`m.thread` summary, latest `m.replace`,
//! `m.reference` ids).
//!
//! Its column families, `relations` and `thread_roots`, are owned by its
//! `data` module.

mod data;

use std::collections::HashSet;

use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use self::data::Stored;
use crate::{
    error::{Error, Result},
    pdu::{Pdu, PduMeta},
    service::{Services, history},
    storage::{Batch, Db},
};

pub const THREAD: &str = "m.thread";
pub const REPLACE: &str = "m.replace";
pub const REFERENCE: &str = "m.reference";
/// How deep `recurse=true` follows relations of relations (as Synapse).
const MAX_DEPTH: u32 = 3;
/// The most children read for one aggregation or one page.
const MAX_SCAN: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Child {
    pub event_id: OwnedEventId,
    pub rel_type: String,
    pub kind: String,
    pub sender: OwnedUserId,
    pub ordering: i64,
}

/// The relation an event declares, if any: `(rel_type, parent)`.
pub fn relation_of(pdu: &Pdu) -> Option<(String, OwnedEventId)> {
    #[derive(Deserialize)]
    struct RelatesTo {
        rel_type: Option<String>,
        event_id: Option<OwnedEventId>,
    }
    #[derive(Deserialize)]
    struct Content {
        #[serde(rename = "m.relates_to")]
        relates_to: Option<RelatesTo>,
    }
    let content: Content = serde_json::from_str(pdu.content.get()).ok()?;
    let relates = content.relates_to?;
    Some((relates.rel_type?, relates.event_id?))
}

/// Index an event being stored (every path that stores events calls this).
pub fn stage_index(db: &Db, batch: &mut Batch<'_>, pdu: &Pdu, ordering: i64) -> Result<()> {
    let Some((rel_type, parent)) = relation_of(pdu) else { return Ok(()) };
    if parent == pdu.event_id {
        return Ok(());
    }
    let stored = Stored { rel_type: rel_type.clone(), kind: pdu.kind.to_string(), sender: pdu.sender.clone() };
    data::put_relation(batch, &parent, ordering, &pdu.event_id, &stored);
    if rel_type == THREAD {
        data::raise_thread_root(db, batch, &pdu.room_id, &parent, ordering)?;
    }
    Ok(())
}

/// Direct children of `parent`, oldest first.
fn children(db: &Db, parent: &ruma::EventId) -> Result<Vec<Child>> {
    data::children(db, parent, MAX_SCAN)
}

/// A child as the user may see it, still relating (a redaction removes the relation).
fn visible(s: &Services, user_id: &UserId, child: &Child) -> Result<Option<(std::sync::Arc<Pdu>, PduMeta)>> {
    let Some((pdu, meta)) = s.rooms.get_pdu(&child.event_id)? else { return Ok(None) };
    if meta.redacted_because.is_some() || relation_of(&pdu).is_none() || !history::may_see(s, user_id, &pdu, &meta)? {
        return Ok(None);
    }
    Ok(Some((pdu, meta)))
}

pub struct Query {
    pub rel_type: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: usize,
    pub forward: bool,
    pub recurse: bool,
}

pub struct Page {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
    pub recursion_depth: Option<u32>,
}

fn parse_token(token: &str) -> Result<i64> {
    token
        .strip_prefix('r')
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::invalid_param("The pagination token is not one this server gave."))
}

/// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
pub fn relations(s: &Services, user_id: &UserId, room_id: &RoomId, parent: &ruma::EventId, q: Query) -> Result<Page> {
    let not_found = || Error::not_found("No such event, or you may not see it.");
    let (root, root_meta) = s.rooms.get_pdu(parent)?.ok_or_else(not_found)?;
    if root.room_id != room_id || !history::may_see(s, user_id, &root, &root_meta)? {
        return Err(not_found());
    }
    let from = q.from.as_deref().map(parse_token).transpose()?;
    let to = q.to.as_deref().map(parse_token).transpose()?;
    // Breadth first, to `MAX_DEPTH` when recursing; each child once.
    let mut found: Vec<(Child, u32)> = Vec::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::from([parent.to_owned()]);
    let mut frontier = vec![parent.to_owned()];
    let mut depth = 0;
    let mut deepest = 0;
    while !frontier.is_empty() && depth < if q.recurse { MAX_DEPTH } else { 1 } {
        depth += 1;
        let mut next = Vec::new();
        for id in frontier {
            for child in children(&s.db, &id)? {
                if seen.insert(child.event_id.clone()) && found.len() < MAX_SCAN {
                    next.push(child.event_id.clone());
                    found.push((child, depth));
                }
            }
        }
        frontier = next;
    }
    found.retain(|(c, _)| {
        q.rel_type.as_deref().is_none_or(|t| t == c.rel_type) && q.event_type.as_deref().is_none_or(|t| t == c.kind)
    });
    found.sort_by_key(|(c, _)| c.ordering);
    if !q.forward {
        found.reverse();
    }
    let limit = q.limit.clamp(1, 100);
    let mut chunk = Vec::new();
    let mut next_batch = None;
    for (child, child_depth) in found {
        // `from` is exclusive (the last event of the page before), `to` inclusive.
        let already = |bound: i64| if q.forward { child.ordering <= bound } else { child.ordering >= bound };
        let past = |bound: i64| if q.forward { child.ordering > bound } else { child.ordering < bound };
        if from.is_some_and(already) {
            continue;
        }
        if to.is_some_and(past) {
            break;
        }
        if chunk.len() == limit {
            next_batch = Some(format!("r{}", last_ordering(&chunk)));
            break;
        }
        if let Some((pdu, meta)) = visible(s, user_id, &child)? {
            let mut event = pdu.to_client_event(&meta, true, None);
            event["_ordering"] = json!(meta.ordering());
            chunk.push(event);
            deepest = deepest.max(child_depth);
        }
    }
    for event in &mut chunk {
        event.as_object_mut().expect("object").remove("_ordering");
    }
    Ok(Page { chunk, next_batch, recursion_depth: q.recurse.then_some(deepest) })
}

fn last_ordering(chunk: &[Value]) -> i64 {
    chunk.last().and_then(|e| e["_ordering"].as_i64()).unwrap_or(0)
}

/// Add `unsigned.m.relations` to a client event: the thread summary, the
/// latest edit by the original sender, and references.
pub fn bundle(s: &Services, user_id: &UserId, pdu: &Pdu, event: &mut Value) -> Result<()> {
    let kids = children(&s.db, &pdu.event_id)?;
    if kids.is_empty() {
        return Ok(());
    }
    let mut relations = serde_json::Map::new();
    let mut thread: Option<(usize, Option<Value>, bool)> = None;
    let mut edit: Option<Value> = None;
    let mut references = Vec::new();
    for child in &kids {
        match child.rel_type.as_str() {
            THREAD | REPLACE | REFERENCE => {}
            _ => continue,
        }
        if child.rel_type == REPLACE && (child.sender != pdu.sender || child.kind != pdu.kind.to_string()) {
            continue;
        }
        let Some((child_pdu, child_meta)) = visible(s, user_id, child)? else { continue };
        match child.rel_type.as_str() {
            THREAD => {
                let entry = thread.get_or_insert((0, None, pdu.sender == user_id));
                entry.0 += 1;
                entry.1 = Some(child_pdu.to_client_event(&child_meta, true, None));
                entry.2 |= child.sender == user_id;
            }
            REPLACE => edit = Some(child_pdu.to_client_event(&child_meta, true, None)),
            _ => references.push(json!({ "event_id": child.event_id })),
        }
    }
    if let Some((count, latest, participated)) = thread {
        relations.insert(
            THREAD.into(),
            json!({ "count": count, "latest_event": latest, "current_user_participated": participated }),
        );
    }
    if let Some(edit) = edit {
        relations.insert(REPLACE.into(), edit);
    }
    if !references.is_empty() {
        relations.insert(REFERENCE.into(), json!({ "chunk": references }));
    }
    if !relations.is_empty() {
        event["unsigned"]["m.relations"] = Value::Object(relations);
    }
    Ok(())
}

/// A client event with its aggregations bundled.
pub fn client_event(
    s: &Services,
    user_id: &UserId,
    pdu: &Pdu,
    meta: &PduMeta,
    with_room_id: bool,
    device: Option<&str>,
) -> Result<Value> {
    let mut event = pdu.to_client_event(meta, with_room_id, device);
    bundle(s, user_id, pdu, &mut event)?;
    Ok(event)
}

/// `GET /rooms/{roomId}/threads`: thread roots by latest activity, newest
/// first; `participated` keeps those the user started or replied in.
pub fn threads(
    s: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    participated_only: bool,
    from: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>)> {
    history::require_reader(s, room_id, user_id)?;
    let before = from.map(parse_token).transpose()?;
    let roots = data::thread_roots(&s.db, room_id)?;
    let limit = limit.clamp(1, 100);
    let mut chunk = Vec::new();
    let mut next = None;
    for (latest, root) in roots.into_iter().rev() {
        if before.is_some_and(|b| latest >= b) {
            continue;
        }
        if chunk.len() == limit {
            next = Some(format!("r{}", latest + 1));
            break;
        }
        let Some((pdu, meta)) = s.rooms.get_pdu(&root)? else { continue };
        if !history::may_see(s, user_id, &pdu, &meta)? {
            continue;
        }
        let event = client_event(s, user_id, &pdu, &meta, true, None)?;
        if participated_only && event["unsigned"]["m.relations"][THREAD]["current_user_participated"] != true {
            continue;
        }
        if event["unsigned"]["m.relations"][THREAD].is_null() {
            continue;
        }
        chunk.push(event);
    }
    Ok((chunk, next))
}

/// Client events for a list, each with its aggregations bundled.
pub fn client_events<'a, T>(
    s: &Services,
    user_id: &UserId,
    events: impl IntoIterator<Item = &'a (std::sync::Arc<Pdu>, PduMeta)>,
    with_room_id: bool,
    device: Option<&str>,
) -> Result<Vec<ruma::serde::Raw<T>>> {
    let mut out = Vec::new();
    for (pdu, meta) in events {
        out.push(crate::service::sync::raw(&client_event(s, user_id, pdu, meta, with_room_id, device)?));
    }
    Ok(out)
}

/// Stage the removal of what the index holds for purged events of a room.
pub fn stage_purge(db: &Db, batch: &mut Batch<'_>, room_id: &RoomId, purged: &[Vec<u8>]) -> Result<()> {
    data::delete_purged(db, batch, room_id, purged)
}
