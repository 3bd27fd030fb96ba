//! Reading room history: visibility rules, `/messages` pages and `/context`.

use std::sync::Arc;

use ruma::{RoomId, ServerName, UserId, events::room::member::MembershipState};
use serde_json::{Value, value::RawValue as RawJsonValue};

use crate::{
    error::{Error, Result},
    pdu::{Pdu, PduMeta},
    service::{Services, sync::EventFilter},
};

/// Whether `user_id` may see an event, by the room's history visibility at it.
pub fn may_see(s: &Services, user_id: &UserId, pdu: &Pdu, meta: &PduMeta) -> Result<bool> {
    // One's own membership changes are always one's own to see (a leave,
    // a rejected invite), as on Synapse.
    if pdu.kind == ruma::events::TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(user_id.as_str()) {
        return Ok(true);
    }
    let state = s.rooms.state_at(meta.state_after)?;
    let mut visibility = visibility_in(s, &state)?;
    // A change of visibility is seen by whoever could see it under either
    // the old or the new setting.
    if pdu.kind == ruma::events::TimelineEventType::RoomHistoryVisibility {
        let previous = meta
            .prev_content
            .as_ref()
            .and_then(|c| serde_json::from_str::<Value>(c.get()).ok())
            .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        let rank =
            |v: &str| ["world_readable", "shared", "invited", "joined"].iter().position(|x| *x == v).unwrap_or(1);
        if rank(&previous) < rank(&visibility) {
            visibility = previous;
        }
    }
    let membership_then = membership_in(s, &state, user_id.as_str())?;
    let joined_then = membership_then.as_deref() == Some("join");
    Ok(match visibility.as_str() {
        "world_readable" => true,
        "shared" => joined_then || s.rooms.is_joined(&pdu.room_id, user_id)?,
        "invited" => joined_then || membership_then.as_deref() == Some("invite"),
        _ => joined_then,
    })
}

/// An event as another server may have it: whole when, by the room's
/// history visibility at the event, one of that server's users could see
/// it; redacted otherwise (what auth needs stays), so a server that joins
/// a `joined`-visibility room learns no earlier content through backfill.
pub fn for_server(s: &Services, server: &ServerName, pdu: &Pdu, meta: &PduMeta) -> Result<Box<RawJsonValue>> {
    // Events without known state (auth chains, a join's state) are needed
    // for auth; soft-failed ones have state and are checked like any other.
    if meta.state_after == 0 || server_may_see(s, server, meta)? {
        return Ok(pdu.json.clone());
    }
    let version = s.rooms.room(&pdu.room_id)?.map(|r| r.version).ok_or_else(|| Error::not_found("No such room."))?;
    let rules = crate::service::rooms::Rooms::rules(&version)?;
    let redacted = ruma::canonical_json::redact(pdu.canonical_object(), &rules.redaction, None)
        .map_err(|e| Error::internal(format!("cannot redact {}: {e}", pdu.event_id)))?;
    Ok(RawJsonValue::from_string(serde_json::to_string(&redacted)?)?)
}

/// The room's history visibility in `state` (`shared` when unset).
fn visibility_in(s: &Services, state: &crate::service::rooms::State) -> Result<String> {
    Ok(s.rooms
        .state_content(state, "m.room.history_visibility", "")?
        .and_then(|c| c.get("history_visibility").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "shared".to_owned()))
}

/// A user's membership in `state`, if any.
fn membership_in(s: &Services, state: &crate::service::rooms::State, user_id: &str) -> Result<Option<String>> {
    Ok(s.rooms
        .state_content(state, "m.room.member", user_id)?
        .and_then(|c| c.get("membership").and_then(|v| v.as_str()).map(str::to_owned)))
}

fn server_may_see(s: &Services, server: &ServerName, meta: &PduMeta) -> Result<bool> {
    let state = s.rooms.state_at(meta.state_after)?;
    let visibility = visibility_in(s, &state)?;
    let allowed: &[&str] = match visibility.as_str() {
        "world_readable" | "shared" => return Ok(true),
        "invited" => &["join", "invite"],
        _ => &["join"],
    };
    for (key, event_id) in s.rooms.state_of_kind(&state, "m.room.member")? {
        if <&UserId>::try_from(key.as_str()).map_or(true, |user| user.server_name() != server) {
            continue;
        }
        let membership = s.rooms.get_pdu(&event_id)?.and_then(|(pdu, _)| crate::service::rooms::membership_of(&pdu));
        if membership.is_some_and(|m| allowed.contains(&m.as_str())) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuse unless the user may read the room: they are in it or were
/// (leavers keep their past), or it is world-readable (to anyone but
/// guests, who see only their own rooms).
pub fn require_reader(s: &Services, room_id: &RoomId, user_id: &UserId) -> Result<()> {
    match s.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join | MembershipState::Leave | MembershipState::Ban) => Ok(()),
        _ if world_readable_to(s, room_id, user_id)? => Ok(()),
        _ => Err(Error::forbidden("You are not in this room.")),
    }
}

/// Whether a room is world-readable now and the user may read rooms they
/// are not in (the guest policy says guests may not). A room this server
/// does not hold has no state, so it is not.
pub fn world_readable_to(s: &Services, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
    if visibility_in(s, &*s.rooms.current_state(room_id)?)? != "world_readable" {
        return Ok(false);
    }
    Ok(crate::policy::check_user(s, user_id, crate::policy::Action::PreviewRoom { room_id }).is_ok())
}

/// The room state a user may read: the current state for members; for
/// those who left, the state when they left, if they had been joined.
pub fn visible_state(s: &Services, room_id: &RoomId, user_id: &UserId) -> Result<Arc<crate::service::rooms::State>> {
    let refused = || Error::forbidden("You are not in this room.");
    match s.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join) => s.rooms.current_state(room_id),
        Some(MembershipState::Leave | MembershipState::Ban) => {
            let record = s.rooms.user_membership(user_id, room_id)?.ok_or_else(refused)?;
            let (_, meta) = s.rooms.get_pdu(&record.event_id)?.ok_or_else(refused)?;
            if !crate::service::rooms::replaced_a_join(&meta) {
                return if world_readable_to(s, room_id, user_id)? {
                    s.rooms.current_state(room_id)
                } else {
                    Err(refused())
                };
            }
            s.rooms.state_at(meta.state_after)
        }
        _ if world_readable_to(s, room_id, user_id)? => s.rooms.current_state(room_id),
        _ => Err(refused()),
    }
}

/// Tokens for `/messages`: `t<ordering>` (negative in backfilled history);
/// the page holds events strictly before (backward) or after (forward) it.
/// A sync's `next_batch` (a bare stream position, or `s<position>`) sits
/// just after the event at that position: going back, that event comes first.
pub fn parse_token(token: &str, forward: bool) -> Option<i64> {
    if let Some(ordering) = token.strip_prefix('t') {
        return ordering.parse().ok();
    }
    let position: i64 = token.strip_prefix('s').unwrap_or(token).parse().ok()?;
    Some(if forward { position } else { position.checked_add(1)? })
}

pub struct Page {
    pub events: Vec<(Arc<Pdu>, PduMeta)>,
    pub end: Option<i64>,
}

/// Where a page starts, which way it goes, how long it is and where it must stop.
pub struct PageRequest {
    pub from: i64,
    pub forward: bool,
    pub limit: usize,
    pub to: Option<i64>,
}

/// One page of visible, filter-matching events.
pub fn page(
    s: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    request: PageRequest,
    filter: &EventFilter<'_>,
) -> Result<Page> {
    let PageRequest { from, forward, limit, to } = request;
    let left_at = match s.rooms.user_membership(user_id, room_id)? {
        Some(record) if record.membership != MembershipState::Join => Some(record.count as i64),
        _ => None,
    };
    // Never read past what is fully written: a later page picks it up.
    let safe = s.db.safe_count() as i64;
    let to = if forward { Some(to.map_or(safe, |t| t.min(safe))) } else { to };
    let mut events = Vec::new();
    let mut cursor = from;
    let mut exhausted = false;
    while events.len() < limit {
        let batch = s.rooms.timeline(room_id, cursor, forward, 100)?;
        if batch.is_empty() {
            exhausted = true;
            break;
        }
        for (count, event_id) in batch {
            if to.is_some_and(|to| if forward { count > to } else { count <= to }) {
                exhausted = true;
                break;
            }
            cursor = count;
            // Leavers see nothing after they left.
            if left_at.is_some_and(|left| count > left) {
                continue;
            }
            let Some((pdu, meta)) = s.rooms.get_pdu(&event_id)? else { continue };
            if !filter.allows(&pdu) || !may_see(s, user_id, &pdu, &meta)? {
                continue;
            }
            events.push((pdu, meta));
            if events.len() >= limit {
                break;
            }
        }
        if exhausted {
            break;
        }
    }
    let end = if exhausted && events.len() < limit { None } else { Some(cursor) };
    Ok(Page { events, end })
}

/// State events for the senders of `events` (lazy-loaded members).
pub fn member_state_for(s: &Services, room_id: &RoomId, events: &[(Arc<Pdu>, PduMeta)]) -> Result<Vec<Value>> {
    let state = s.rooms.current_state(room_id)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (pdu, _) in events {
        if seen.insert(pdu.sender.clone())
            && let Some(member) = s.rooms.state_pdu(&state, "m.room.member", pdu.sender.as_str())?
            && let Some((member, meta)) = s.rooms.get_pdu(&member.event_id)?
        {
            out.push(member.to_client_event(&meta, true, None));
        }
    }
    Ok(out)
}

/// Events `timestamp_to_event` looks through at most (the timeline has no
/// time index; a room's recent history is what clients jump to).
const MAX_TIMESTAMP_SCAN: usize = 20_000;

/// `timestamp_to_event`: the last visible event at or before `ts` (going
/// back), or the first at or after it (going forward).
pub fn event_at_time(
    s: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    ts: u64,
    forward: bool,
) -> Result<Option<(ruma::OwnedEventId, u64)>> {
    require_reader(s, room_id, user_id)?;
    let mut best: Option<(ruma::OwnedEventId, u64)> = None;
    let mut cursor = s.db.safe_count() as i64 + 1;
    let mut scanned = 0;
    'scan: loop {
        let batch = s.rooms.timeline(room_id, cursor, false, 200)?;
        if batch.is_empty() {
            break;
        }
        for (count, event_id) in batch {
            cursor = count;
            scanned += 1;
            if scanned > MAX_TIMESTAMP_SCAN {
                break 'scan;
            }
            let Some((pdu, meta)) = s.rooms.get_pdu(&event_id)? else { continue };
            let at = u64::from(pdu.origin_server_ts.get());
            if !may_see(s, user_id, &pdu, &meta)? {
                continue;
            }
            if forward {
                // Going back through time: the earliest event still at or after `ts`.
                if at >= ts {
                    best = Some((pdu.event_id.clone(), at));
                } else if best.is_some() {
                    break 'scan;
                }
            } else if at <= ts {
                best = Some((pdu.event_id.clone(), at));
                break 'scan;
            }
        }
    }
    Ok(best)
}
