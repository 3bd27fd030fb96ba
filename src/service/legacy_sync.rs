//! The deprecated views that predate `/sync` and are still in the spec:
//! `/initialSync`, `/rooms/{roomId}/initialSync` and the `/events` stream.
//! Older clients, bots and Matrix's own test suite use them. Tokens are
//! stream positions, as `/sync`'s, so each view's `end` continues in the
//! others.

use ruma::{OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    service::{
        Services,
        history::{self, PageRequest},
        sync::EventFilter,
        users::Session,
    },
};

/// The most events one room's `messages` or one `/events` answer carries.
pub const MAX_LIMIT: usize = 100;

/// `GET /initialSync`: every room the user is in (or was, with `archived`).
pub fn initial_sync(s: &Services, session: &Session, limit: usize, archived: bool) -> Result<Value> {
    let upto = s.db.safe_count();
    let user_id = &session.user_id;
    let mut rooms = Vec::new();
    let mut receipts = Vec::new();
    for (room_id, record) in s.rooms.user_rooms(user_id)? {
        if record.forgotten || record.count > upto {
            continue;
        }
        match record.membership {
            MembershipState::Join => {
                rooms.push(room_view(s, user_id, &room_id, "join", limit, upto)?);
                if let Some(mut receipt) = s.ephemeral.receipt_event(&room_id, 0, user_id)? {
                    receipt["room_id"] = json!(room_id);
                    receipts.push(receipt);
                }
            }
            MembershipState::Leave | MembershipState::Ban if archived || leave_is_visible(s, user_id, &room_id) => {
                let membership = if record.membership == MembershipState::Ban { "ban" } else { "leave" };
                if let Ok(view) = room_view(s, user_id, &room_id, membership, limit, upto) {
                    rooms.push(view);
                }
            }
            MembershipState::Invite => {
                let mut view = json!({ "room_id": room_id, "membership": "invite" });
                if let Some((pdu, meta)) = s.rooms.get_pdu(&record.event_id)? {
                    view["inviter"] = json!(pdu.sender);
                    view["invite"] = v1_format(pdu.to_client_event(&meta, true, None));
                }
                rooms.push(view);
            }
            _ => {}
        }
    }
    let mut account_data = Vec::new();
    for item in s.account_data.changed_since(user_id, 0)? {
        if item.room_id.is_none() {
            account_data
                .push(json!({ "type": item.kind, "content": serde_json::from_str::<Value>(item.content.get())? }));
        }
    }
    // Asking for a snapshot is activity, and the user's own presence is part of it.
    crate::service::profiles::presence_from_sync(s, user_id, ruma::presence::PresenceState::Online)?;
    let peers = crate::service::keys::room_peers(s, user_id)?;
    Ok(json!({
        "end": upto.to_string(),
        "rooms": rooms,
        "presence": presence_events(s, peers),
        "account_data": account_data,
        "receipts": receipts,
    }))
}

/// A room the user left is still shown (its history up to the leave), as Synapse does.
fn leave_is_visible(s: &Services, user_id: &UserId, room_id: &RoomId) -> bool {
    history::visible_state(s, room_id, user_id).is_ok()
}

/// `GET /rooms/{roomId}/initialSync`: members, and those who left (up to
/// their leave), see the room; anyone may see a world-readable one.
pub fn room_initial_sync(s: &Services, session: &Session, room_id: &RoomId, limit: usize) -> Result<Value> {
    let upto = s.db.safe_count();
    let user_id = &session.user_id;
    let membership = match s.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join) => "join",
        Some(MembershipState::Leave) if leave_is_visible(s, user_id, room_id) => "leave",
        Some(MembershipState::Ban) if leave_is_visible(s, user_id, room_id) => "ban",
        _ if history::world_readable_to(s, room_id, user_id)? => "leave",
        _ => return Err(Error::forbidden("You are not in this room.")),
    };
    let mut view = room_view(s, user_id, room_id, membership, limit, upto)?;
    if membership == "leave" && s.rooms.membership(room_id, user_id)?.is_none() {
        view.as_object_mut().expect("object").remove("membership");
    }
    // Presence is for those still in the room (a leaver sees none).
    let members: Vec<OwnedUserId> = if membership == "join" { s.rooms.joined_members(room_id)? } else { Vec::new() };
    view["presence"] = presence_events(s, members);
    Ok(view)
}

/// One room as the deprecated views show it: its state, the latest
/// messages the user may see, its account data and receipts.
fn room_view(
    s: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    membership: &str,
    limit: usize,
    upto: u64,
) -> Result<Value> {
    let state = if membership == "join" {
        s.rooms.current_state(room_id)?
    } else {
        history::visible_state(s, room_id, user_id).or_else(|_| s.rooms.current_state(room_id))?
    };
    let mut state_events = Vec::new();
    for event_id in s.rooms.state_event_ids(&state)? {
        if let Some((pdu, meta)) = s.rooms.get_pdu(&event_id)? {
            state_events.push(v1_format(pdu.to_client_event(&meta, true, None)));
        }
    }
    let filter = ruma::api::client::filter::RoomEventFilter::default();
    let request = PageRequest { from: upto as i64 + 1, forward: false, limit: limit.min(MAX_LIMIT), to: None };
    let page = history::page(s, user_id, room_id, request, &EventFilter(&filter))?;
    let mut chunk: Vec<Value> =
        page.events.iter().map(|(pdu, meta)| v1_format(pdu.to_client_event(meta, true, None))).collect();
    chunk.reverse();
    let start = match page.events.last() {
        Some((_, meta)) => format!("t{}", meta.ordering()),
        None => upto.to_string(),
    };
    let mut account_data = Vec::new();
    for item in s.account_data.changed_since(user_id, 0)? {
        if item.room_id.as_deref() == Some(room_id) {
            account_data
                .push(json!({ "type": item.kind, "content": serde_json::from_str::<Value>(item.content.get())? }));
        }
    }
    let receipts: Vec<Value> = s.ephemeral.receipt_event(room_id, 0, user_id)?.into_iter().collect();
    let visibility = if crate::service::directory::is_published(s, room_id)? { "public" } else { "private" };
    Ok(json!({
        "room_id": room_id,
        "membership": membership,
        "messages": { "chunk": chunk, "start": start, "end": upto.to_string() },
        "state": state_events,
        "account_data": account_data,
        "receipts": receipts,
        "visibility": visibility,
    }))
}

/// Events as these older views had them: `user_id` beside `sender`
/// (clients of that era, and Matrix's test suite, read it).
fn v1_format(mut event: Value) -> Value {
    event["user_id"] = event["sender"].clone();
    event
}

/// `m.presence` events for these users, as far as presence is known (with
/// `user_id` in the content too, as these older views had it).
fn presence_events(s: &Services, users: impl IntoIterator<Item = OwnedUserId>) -> Value {
    let mut out = Vec::new();
    for user_id in users {
        let mut event = crate::service::profiles::presence_event_or_offline(s, &user_id);
        event["content"]["user_id"] = json!(user_id);
        out.push(event);
    }
    Value::Array(out)
}

/// `GET /events`: the events after `from` in the rooms the user is in (or
/// in one room), oldest first, or `None` when there are none yet.
pub fn events_after(
    s: &Services,
    session: &Session,
    from: u64,
    room: Option<&RoomId>,
    limit: usize,
) -> Result<Option<(Vec<Value>, u64)>> {
    let user_id = &session.user_id;
    if let Some(room_id) = room {
        history::require_reader(s, room_id, user_id)?;
    }
    let upto = s.db.safe_count();
    if upto <= from {
        return Ok(None);
    }
    let rooms: Vec<ruma::OwnedRoomId> = match room {
        Some(room_id) => vec![room_id.to_owned()],
        None => s
            .rooms
            .user_rooms(user_id)?
            .into_iter()
            .filter(|(_, r)| !r.forgotten && (r.membership == MembershipState::Join || r.count > from))
            .map(|(room_id, _)| room_id)
            .collect(),
    };
    let filter = ruma::api::client::filter::RoomEventFilter::default();
    // Room events, and the user's account data (tags included), each at its
    // stream position; receipts changed since `from` come last.
    let mut events: Vec<(u64, Value)> = Vec::new();
    for room_id in &rooms {
        let request = PageRequest { from: from as i64, forward: true, limit, to: Some(upto as i64) };
        let page = history::page(s, user_id, room_id, request, &EventFilter(&filter))?;
        events.extend(
            page.events.iter().map(|(pdu, meta)| (meta.count, v1_format(pdu.to_client_event(meta, true, None)))),
        );
    }
    if room.is_none() {
        for item in s.account_data.changed_since(user_id, from)? {
            if item.count > upto {
                continue;
            }
            let mut event = json!({ "type": item.kind, "content": serde_json::from_str::<Value>(item.content.get())? });
            if let Some(room_id) = &item.room_id {
                event["room_id"] = json!(room_id);
            }
            events.push((item.count, event));
        }
    }
    events.sort_by_key(|(count, _)| *count);
    events.truncate(limit);
    // Stop where the last event shown is, so nothing after it is skipped.
    let end = if events.len() == limit { events.last().map_or(upto, |(count, _)| *count) } else { upto };
    let mut events: Vec<Value> = events.into_iter().map(|(_, event)| event).collect();
    if end == upto {
        for room_id in &rooms {
            if let Some(mut receipt) = s.ephemeral.receipt_event(room_id, from, user_id)? {
                receipt["room_id"] = json!(room_id);
                events.push(receipt);
            }
        }
    }
    if events.is_empty() {
        return Ok(None);
    }
    Ok(Some((events, end)))
}
