//! `/sync`: what changed for a user since a stream position.
//!
//! Tokens are stream positions. Everything sync reads carries the position
//! it was written at, and sync never reports past `Db::safe_count`, so a
//! change still being written is picked up by the next call, not lost.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    OwnedEventId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
        sync::sync_events::v3::{
            Ephemeral, GlobalAccountData, InviteState, InvitedRoom, JoinedRoom, KnockState, KnockedRoom, LeftRoom,
            Response, RoomAccountData, RoomSummary, State, StateEvents, Timeline,
        },
    },
    events::room::member::MembershipState,
    serde::Raw,
};
use serde_json::Value;

use crate::{
    error::Result,
    pdu::{Pdu, PduMeta},
    service::{Services, push, rooms::State as RoomState, users::Session},
};

/// Wrap a JSON value as a ruma `Raw`.
pub fn raw<T>(value: &Value) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(value).expect("JSON values serialize"))
}

/// Matching of events against a client's `RoomEventFilter`.
pub struct EventFilter<'a>(pub &'a RoomEventFilter);

impl EventFilter<'_> {
    pub fn allows_room(&self, room_id: &RoomId) -> bool {
        !self.0.not_rooms.iter().any(|r| r == room_id)
            && self.0.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
    }

    pub fn allows(&self, pdu: &Pdu) -> bool {
        let kind = pdu.kind.to_string();
        if self.0.not_types.iter().any(|t| type_matches(t, &kind)) {
            return false;
        }
        if let Some(types) = &self.0.types
            && !types.iter().any(|t| type_matches(t, &kind))
        {
            return false;
        }
        if self.0.not_senders.contains(&pdu.sender) {
            return false;
        }
        if let Some(senders) = &self.0.senders
            && !senders.contains(&pdu.sender)
        {
            return false;
        }
        true
    }

    pub fn lazy_load_members(&self) -> bool {
        matches!(self.0.lazy_load_options, LazyLoadOptions::Enabled { .. })
    }
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

pub struct SyncParams {
    pub since: Option<u64>,
    pub full_state: bool,
    pub filter: FilterDefinition,
}

/// The rooms whose changes a waiting sync of the user must wake for (a
/// change of membership wakes the user itself).
pub fn watched_rooms(services: &Services, user_id: &UserId) -> Result<Vec<ruma::OwnedRoomId>> {
    Ok(services
        .rooms
        .user_rooms(user_id)?
        .into_iter()
        .filter(|(_, record)| {
            matches!(record.membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
        })
        .map(|(room_id, _)| room_id)
        .collect())
}

/// The events of a sync for one user, or `None` if nothing is new.
pub fn build(services: &Services, session: &Session, params: &SyncParams) -> Result<Option<Response>> {
    let upto = services.db.safe_count();
    let user_id = &session.user_id;
    let since = params.since;
    let mut response = Response::new(upto.to_string());
    let room_filter = &params.filter.room;
    let rooms_filter = EventFilter(&room_filter.timeline);
    let ignored = services.account_data.ignored_users(user_id)?;
    let mut anything = false;

    for (room_id, record) in services.rooms.user_rooms(user_id)? {
        // A room forgotten with its leave still unseen (an ended guest
        // room) shows that leave once, so running clients drop it too.
        let leave_unseen = since.is_some_and(|s| record.count > s);
        if (record.forgotten && !leave_unseen) || record.count > upto {
            continue;
        }
        if room_filter.not_rooms.contains(&room_id) || room_filter.rooms.as_ref().is_some_and(|r| !r.contains(&room_id))
        {
            continue;
        }
        let changed = since.is_none_or(|s| record.count > s);
        match record.membership {
            // Forgotten and still joined: an ended room whose leave failed.
            MembershipState::Join if !record.forgotten => {
                if let Some(room) =
                    joined_room(services, session, &room_id, since, upto, params, &rooms_filter, &ignored, changed)?
                {
                    response.rooms.join.insert(room_id, room);
                    anything = true;
                }
            }
            MembershipState::Invite if changed && !invited_by_ignored(services, &record.event_id, &ignored)? => {
                let state = stripped_state(services, &room_id, &record.event_id)?;
                response.rooms.invite.insert(room_id, InvitedRoom::from(InviteState::from(state)));
                anything = true;
            }
            MembershipState::Knock if changed => {
                let state = stripped_state(services, &room_id, &record.event_id)?;
                let mut knock_state = KnockState::new();
                knock_state.events = state;
                response.rooms.knock.insert(room_id, KnockedRoom::from(knock_state));
                anything = true;
            }
            MembershipState::Leave | MembershipState::Ban
                if changed && (since.is_some() || room_filter.include_leave) =>
            {
                response
                    .rooms
                    .leave
                    .insert(room_id.clone(), left_room(services, session, &room_id, &record.event_id, since, params)?);
                anything = true;
            }
            _ => {}
        }
    }

    if presence_wanted(&params.filter.presence) {
        let events = presence(services, user_id, since, upto, &response)?;
        anything |= !events.is_empty();
        response.presence.events = events.iter().map(raw).collect();
    }

    let mut global = Vec::new();
    for item in services.account_data.changed_since(user_id, since.unwrap_or(0))? {
        if item.count > upto {
            continue;
        }
        let event =
            serde_json::json!({ "type": item.kind, "content": serde_json::from_str::<Value>(item.content.get())? });
        match item.room_id {
            None => global.push(raw(&event)),
            Some(room_id) => {
                if let Some(room) = response.rooms.join.get_mut(&room_id) {
                    room.account_data.events.push(raw(&event));
                } else if services.rooms.is_joined(&room_id, user_id)? {
                    let mut room = JoinedRoom::new();
                    room.account_data.events.push(raw(&event));
                    response.rooms.join.insert(room_id, room);
                }
            }
        }
        anything = true;
    }
    response.account_data = GlobalAccountData::new();
    response.account_data.events = global;

    // End-to-end encryption: to-device messages, key counts, device lists.
    let device_id = session.device_id.as_str();
    let to_device = services.keys.to_device_messages(user_id, device_id, since, upto)?;
    anything |= !to_device.is_empty();
    response.to_device.events = to_device.iter().map(raw).collect();
    let (one_time, fallback) = services.keys.sync_counts(user_id, device_id)?;
    response.device_one_time_keys_count = one_time;
    response.device_unused_fallback_key_types = Some(fallback);
    if let Some(since) = since {
        let (changed, left) = crate::service::keys::changes_between(services, user_id, since, upto)?;
        anything |= !changed.is_empty() || !left.is_empty();
        response.device_lists.changed = changed;
        response.device_lists.left = left;
    }

    if since.is_some() && !anything {
        return Ok(None);
    }
    Ok(Some(response))
}

/// Per device and room, the member events a lazy-loading client was sent,
/// so incremental syncs send a timeline sender's member once (kept in
/// memory: after a restart a member may be sent again, which is harmless).
#[derive(Default)]
pub struct LazyMembers(std::sync::Mutex<HashMap<DeviceRoom, HashMap<OwnedUserId, OwnedEventId>>>);

type DeviceRoom = (OwnedUserId, ruma::OwnedDeviceId, ruma::OwnedRoomId);

/// Device–room pairs remembered; past this the memory starts again.
const LAZY_MEMBERS_ENTRIES: usize = 50_000;

impl LazyMembers {
    fn sent(&self, key: &DeviceRoom) -> HashMap<OwnedUserId, OwnedEventId> {
        self.0.lock().expect("lazy members poisoned").get(key).cloned().unwrap_or_default()
    }

    /// Remember what was sent; a full view replaces what was known.
    fn record(&self, key: DeviceRoom, replace: bool, members: Vec<(OwnedUserId, OwnedEventId)>) {
        let mut all = self.0.lock().expect("lazy members poisoned");
        if all.len() >= LAZY_MEMBERS_ENTRIES && !all.contains_key(&key) {
            all.clear();
        }
        let known = all.entry(key).or_default();
        if replace {
            known.clear();
        }
        known.extend(members);
    }
}

/// An event as its PDU (`event_format: federation`), its id added as
/// Synapse does (from room version 3 the PDU carries none).
fn federation_event<T>(pdu: &Pdu) -> ruma::serde::Raw<T> {
    let mut event: Value = serde_json::from_str(pdu.json.get()).unwrap_or_default();
    event["event_id"] = Value::String(pdu.event_id.to_string());
    event["room_id"] = Value::String(pdu.room_id.to_string());
    raw(&event)
}

/// Events in one room's timeline: the filter's limit (0 allowed: state
/// only, as a client that keeps its own timeline asks), 10 by default, 100
/// at most.
fn timeline_limit(params: &SyncParams) -> usize {
    params.filter.room.timeline.limit.map(|l| u64::from(l) as usize).unwrap_or(10).min(100)
}

/// Events hidden by history visibility a fresh view looks past, for the
/// current state's events among them.
const MAX_HIDDEN_SCAN: usize = 200;

/// Events one room's timeline looks at in one sync, matching or not.
const MAX_TIMELINE_SCAN: usize = 5_000;

/// Nothing in the room to report after `since`: no event, typing, receipt
/// or change of counts, and every event evaluated for the user's counts.
/// A few point reads, so an incremental sync costs what changed, not the
/// number of rooms.
fn unchanged_since(services: &Services, user_id: &UserId, room_id: &RoomId, since: u64) -> Result<bool> {
    let Some(room) = services.rooms.room(room_id)? else { return Ok(false) };
    if room.last_count > since || services.ephemeral.changed_since(room_id, since)? {
        return Ok(false);
    }
    push::counts_settled(services, user_id, room_id, since, room.last_count)
}

#[allow(clippy::too_many_arguments)]
fn joined_room(
    services: &Services,
    session: &Session,
    room_id: &RoomId,
    since: Option<u64>,
    upto: u64,
    params: &SyncParams,
    timeline_filter: &EventFilter<'_>,
    ignored: &HashSet<OwnedUserId>,
    membership_changed: bool,
) -> Result<Option<JoinedRoom>> {
    let limit = timeline_limit(params);
    // A room joined since the token is sent whole, as in an initial sync.
    let room_since = if membership_changed { None } else { since };
    if let Some(since) = room_since
        && !params.full_state
        && unchanged_since(services, &session.user_id, room_id, since)?
    {
        return Ok(None);
    }
    let current_state = services.rooms.current_state(room_id)?;
    let scan = TimelineScan { since: room_since, upto, limit, filter: Some(timeline_filter), ignored };
    let (entries, limited) = recent_events(services, &session.user_id, room_id, &current_state, &scan)?;

    let ephemeral_since = room_since.unwrap_or(0);
    let mut ephemeral = Vec::new();
    if let Some(typing) = services.ephemeral.typing_event(room_id, ephemeral_since) {
        ephemeral.push(raw(&typing));
    }
    if let Some(receipts) = services.ephemeral.receipt_event(room_id, ephemeral_since, &session.user_id)? {
        ephemeral.push(raw(&receipts));
    }
    let counts = push::counts_at(services, &session.user_id, room_id, upto)?;
    let counts_changed = room_since.is_some_and(|s| counts.changed_at > s && counts.changed_at <= upto);
    if room_since.is_some() && entries.is_empty() && ephemeral.is_empty() && !counts_changed && !params.full_state {
        return Ok(None);
    }

    // State: everything before the timeline on a fresh view; on an
    // incremental one with a gap, what changed across the gap.
    let state_before_timeline = match entries.first() {
        Some((_, meta)) => Some(services.rooms.state_at(meta.state_before)?),
        None => None,
    };
    let current = current_state;
    let timeline_start_state = state_before_timeline.unwrap_or_else(|| current.clone());
    let incremental = room_since.is_some() && !params.full_state;
    let federation_format = params.filter.event_format == ruma::api::client::filter::EventFormat::Federation;
    let mut state_ids: Vec<OwnedEventId> = if !incremental {
        services.rooms.state_event_ids(&timeline_start_state)?
    } else if limited {
        let before_gap = state_at_position(services, room_id, room_since.unwrap_or(0))?;
        let (changed, _) = timeline_start_state.changes_from(&before_gap);
        changed.into_iter().map(|(_, event)| services.rooms.short.event_id(event)).collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let state_filter = EventFilter(&params.filter.room.state);
    let lazy = state_filter.lazy_load_members();
    let redundant = matches!(
        params.filter.room.state.lazy_load_options,
        LazyLoadOptions::Enabled { include_redundant_members: true }
    );
    let senders: HashSet<&UserId> =
        entries.iter().map(|(pdu, _)| &*pdu.sender).chain(std::iter::once(&*session.user_id)).collect();
    let device_room = (session.user_id.clone(), session.device_id.clone(), room_id.to_owned());
    if lazy && incremental {
        // The members of this timeline's senders that this device may not
        // have yet (all of them, if the client asks for redundant ones).
        let sent = services.lazy_members.sent(&device_room);
        for sender in entries.iter().map(|(pdu, _)| &pdu.sender).collect::<HashSet<_>>() {
            let Some(id) = services.rooms.state_event(&timeline_start_state, "m.room.member", sender.as_str())? else {
                continue;
            };
            let known = sent.get(sender) == Some(&id) && !redundant;
            if !known && !state_ids.contains(&id) && !entries.iter().any(|(pdu, _)| pdu.event_id == id) {
                state_ids.push(id);
            }
        }
    }
    let mut state_events = Vec::new();
    let mut members_sent = Vec::new();
    for event_id in state_ids {
        let Some((pdu, meta)) = services.rooms.get_pdu(&event_id)? else { continue };
        if !state_filter.allows(&pdu) {
            continue;
        }
        // A full view carries only the senders' members; an incremental
        // one carries every change across a gap, as Synapse does.
        if lazy
            && !incremental
            && pdu.kind == ruma::events::TimelineEventType::RoomMember
            && !pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()).is_some_and(|u| senders.contains(&*u))
        {
            continue;
        }
        if lazy
            && pdu.kind == ruma::events::TimelineEventType::RoomMember
            && let Some(member) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        {
            members_sent.push((member, pdu.event_id.clone()));
        }
        state_events.push(match federation_format {
            true => federation_event(&pdu),
            false => raw(&pdu.to_client_event(&meta, false, None)),
        });
    }

    if lazy {
        for (pdu, _) in &entries {
            if pdu.kind == ruma::events::TimelineEventType::RoomMember
                && let Some(member) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            {
                members_sent.push((member, pdu.event_id.clone()));
            }
        }
        services.lazy_members.record(device_room, !incremental, members_sent);
    }
    let device = Some(session.device_id.as_str());
    let mut timeline = Timeline::new();
    // A room joined since the token: the client holds none of it, so
    // anything before this timeline is a gap (as Synapse marks it).
    timeline.limited = limited
        || (membership_changed
            && since.is_some()
            && entries.first().is_some_and(|(p, _)| p.kind != ruma::events::TimelineEventType::RoomCreate));
    // With nothing new, going back starts from now (a bare stream position).
    timeline.prev_batch =
        Some(entries.first().map_or_else(|| upto.to_string(), |(_, meta)| format!("t{}", meta.ordering())));
    timeline.events = match federation_format {
        true => entries.iter().map(|(pdu, _)| federation_event(pdu)).collect(),
        false => crate::service::relations::client_events(services, &session.user_id, &entries, false, device)?,
    };

    let mut room = JoinedRoom::new();
    room.timeline = timeline;
    room.state = State::Before(StateEvents::from(state_events));
    room.ephemeral = Ephemeral::new();
    room.ephemeral.events = ephemeral;
    room.account_data = RoomAccountData::new();
    if params.filter.room.timeline.unread_thread_notifications {
        room.unread_notifications.notification_count = UInt::new(counts.notification_count);
        room.unread_notifications.highlight_count = UInt::new(counts.highlight_count);
        for (root, thread) in &counts.threads {
            let mut count = ruma::api::client::sync::sync_events::UnreadNotificationsCount::new();
            count.notification_count = UInt::new(thread.notification_count);
            count.highlight_count = UInt::new(thread.highlight_count);
            room.unread_thread_notifications.insert(root.clone(), count);
        }
    } else {
        let (notifications, highlights) = counts.total();
        room.unread_notifications.notification_count = UInt::new(notifications);
        room.unread_notifications.highlight_count = UInt::new(highlights);
    }
    if room_since.is_none() || entries.iter().any(|(p, _)| p.kind == ruma::events::TimelineEventType::RoomMember) {
        room.summary = summary(services, room_id, &session.user_id, &current)?;
    }
    Ok(Some(room))
}

/// What [`recent_events`] looks for.
pub(crate) struct TimelineScan<'a> {
    /// Only events after this position (`None`: a fresh view, where
    /// history visibility applies).
    pub since: Option<u64>,
    /// Only events at or before this position.
    pub upto: u64,
    pub limit: usize,
    pub filter: Option<&'a EventFilter<'a>>,
    pub ignored: &'a HashSet<OwnedUserId>,
}

/// Events with their metadata, in timeline order.
pub(crate) type Events = Vec<(Arc<Pdu>, PduMeta)>;

/// The last events of a room's timeline a user may see, oldest first, and
/// whether there are more before them.
pub(crate) fn recent_events(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    current_state: &RoomState,
    scan: &TimelineScan<'_>,
) -> Result<(Events, bool)> {
    let (room_since, limit, ignored) = (scan.since, scan.limit, scan.ignored);
    let mut entries: Events = Vec::new();
    let mut limited = false;
    let mut cursor = scan.upto as i64 + 1;
    let mut scanned = 0usize;
    let mut hidden = 0usize;
    'scan: loop {
        let batch = services.rooms.timeline(room_id, cursor, false, 50)?;
        if batch.is_empty() {
            break;
        }
        for (count, event_id) in batch {
            cursor = count;
            if room_since.is_some_and(|s| count <= s as i64) {
                break 'scan;
            }
            // A filter that matches little must not walk a whole long room:
            // past this, say there is more and let `/messages` page.
            scanned += 1;
            if scanned > MAX_TIMELINE_SCAN {
                limited = true;
                break 'scan;
            }
            let Some((pdu, meta)) = services.rooms.get_pdu(&event_id)? else { continue };
            // Ignored users' messages are hidden; their state changes still show.
            if !scan.filter.is_none_or(|f| f.allows(&pdu)) || (ignored.contains(&pdu.sender) && pdu.state_key.is_none())
            {
                continue;
            }
            // A fresh view reaches back before the join: history visibility
            // applies, except to events of the current state, which show
            // even if set while the user could not see (as Synapse; clients
            // rely on seeing who is in the room).
            if room_since.is_none() && !crate::service::history::may_see(services, user_id, &pdu, &meta)? {
                hidden += 1;
                let in_current_state = match &pdu.state_key {
                    Some(key) => {
                        services.rooms.state_event(current_state, &pdu.kind.to_string(), key)?.as_ref()
                            == Some(&pdu.event_id)
                    }
                    None => false,
                };
                if hidden > MAX_HIDDEN_SCAN {
                    break 'scan;
                }
                if !in_current_state {
                    continue;
                }
            }
            if entries.len() == limit {
                limited = true;
                break 'scan;
            }
            entries.push((pdu, meta));
        }
    }
    entries.reverse();
    Ok((entries, limited))
}

/// Whether an invite came from someone the user ignores (it is not shown).
fn invited_by_ignored(services: &Services, invite: &ruma::EventId, ignored: &HashSet<OwnedUserId>) -> Result<bool> {
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(services.rooms.get_pdu(invite)?.is_some_and(|(pdu, _)| ignored.contains(&pdu.sender)))
}

fn presence_wanted(filter: &ruma::api::client::filter::Filter) -> bool {
    let named = |list: &[String]| list.iter().any(|t| type_matches(t, "m.presence"));
    !named(&filter.not_types) && filter.types.as_deref().is_none_or(named) && filter.limit != Some(UInt::MIN)
}

/// Presence of the people the user shares a room with: all of it on a
/// fresh view, else what changed since the token, and everyone in a room
/// newly joined.
fn presence(
    services: &Services,
    user_id: &UserId,
    since: Option<u64>,
    upto: u64,
    response: &Response,
) -> Result<Vec<Value>> {
    let mut wanted: BTreeSet<OwnedUserId> = BTreeSet::new();
    let mut newcomers: BTreeSet<OwnedUserId> = BTreeSet::new();
    match since {
        None => wanted = crate::service::keys::room_peers(services, user_id)?,
        Some(since) => {
            let changed = services.ephemeral.presence_changed(since, upto);
            if !changed.is_empty() {
                let peers = crate::service::keys::room_peers(services, user_id)?;
                wanted.extend(changed.into_iter().filter(|u| peers.contains(u)));
            }
            // Whoever joins (us, a room; others, one of ours) is new to
            // this device: their presence is sent, offline if unknown.
            for (room_id, room) in &response.rooms.join {
                for event in &room.timeline.events {
                    let event: Value = serde_json::from_str(event.json().get()).unwrap_or_default();
                    if event["type"] != "m.room.member" || event["content"]["membership"] != "join" {
                        continue;
                    }
                    match event["state_key"].as_str() {
                        Some(member) if member == user_id.as_str() => {
                            newcomers.extend(services.rooms.joined_members(room_id)?)
                        }
                        Some(member) => newcomers.extend(OwnedUserId::try_from(member).ok()),
                        None => {}
                    }
                }
            }
        }
    }
    newcomers.retain(|u| !wanted.contains(u));
    let mut events: Vec<Value> =
        wanted.iter().filter_map(|u| crate::service::profiles::presence_event(services, u)).collect();
    for user in newcomers {
        events.push(crate::service::profiles::presence_event_or_offline(services, &user));
    }
    Ok(events)
}

/// The room's state as of a stream position (after the last event at or before it).
pub(crate) fn state_at_position(
    services: &Services,
    room_id: &RoomId,
    position: u64,
) -> Result<std::sync::Arc<RoomState>> {
    let last = services.rooms.timeline(room_id, position as i64 + 1, false, 1)?;
    match last.first() {
        Some((_, event_id)) => match services.rooms.get_pdu(event_id)? {
            Some((_, meta)) => services.rooms.state_at(meta.state_after),
            None => Ok(Default::default()),
        },
        None => Ok(Default::default()),
    }
}

fn summary(services: &Services, room_id: &RoomId, user_id: &UserId, state: &RoomState) -> Result<RoomSummary> {
    let members = services.rooms.members(room_id)?;
    let joined = members.iter().filter(|(_, m)| *m == MembershipState::Join).count() as u64;
    let invited = members.iter().filter(|(_, m)| *m == MembershipState::Invite).count() as u64;
    let mut summary = RoomSummary::new();
    summary.joined_member_count = UInt::new(joined);
    summary.invited_member_count = UInt::new(invited);
    let named = services.rooms.state_has(state, "m.room.name", "")?
        || services.rooms.state_has(state, "m.room.canonical_alias", "")?;
    if !named {
        let heroes: BTreeSet<OwnedUserId> = members
            .into_iter()
            .filter(|(u, m)| u != user_id && matches!(m, MembershipState::Join | MembershipState::Invite))
            .map(|(u, _)| u)
            .take(5)
            .collect();
        summary.heroes = heroes.into_iter().collect();
    }
    Ok(summary)
}

/// The state events (empty state key) that invites and knocks carry.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// The stripped state sent with invites and knocks.
pub fn stripped_state(
    services: &Services,
    room_id: &RoomId,
    membership_event: &OwnedEventId,
) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
    if !services.rooms.exists(room_id)?
        && let Some(invite) = crate::service::remote_invite::remote_invite(services, membership_event)?
    {
        return Ok(invite.stripped.iter().map(raw).collect());
    }
    let state = services.rooms.current_state(room_id)?;
    let mut out = Vec::new();
    for kind in STRIPPED_STATE_TYPES {
        if let Some(pdu) = services.rooms.state_pdu(&state, kind, "")? {
            out.push(raw(&pdu.to_stripped_state()));
        }
    }
    if let Some((pdu, _)) = services.rooms.get_pdu(membership_event)? {
        if let Some(inviter) = services.rooms.state_pdu(&state, "m.room.member", pdu.sender.as_str())? {
            out.push(raw(&inviter.to_stripped_state()));
        }
        out.push(raw(&pdu.to_stripped_state()));
    }
    Ok(out)
}

fn left_room(
    services: &Services,
    session: &Session,
    room_id: &RoomId,
    leave_event: &OwnedEventId,
    since: Option<u64>,
    params: &SyncParams,
) -> Result<LeftRoom> {
    let (timeline_filter, state_filter) =
        (EventFilter(&params.filter.room.timeline), EventFilter(&params.filter.room.state));
    let mut room = LeftRoom::new();
    let Some((leave, leave_meta)) = services.rooms.get_pdu(leave_event)? else { return Ok(room) };
    let leave_json = leave.to_client_event(&leave_meta, false, None);
    let leave_event = raw(&leave_json);
    room.timeline.prev_batch = Some(format!("t{}", leave_meta.count));
    if !crate::service::rooms::replaced_a_join(&leave_meta) {
        // A rejected invite, a withdrawn knock or a ban of an outsider shows
        // nothing of the room beyond the membership change itself.
        room.timeline.events = vec![leave_event.clone()];
        room.state = State::Before(StateEvents::from(vec![raw(&leave_json)]));
        return Ok(room);
    }
    // The last events up to the leave that the user could see, and the
    // state before them (clients such as matrix-nio expect state here).
    let limit = timeline_limit(params);
    let mut entries = Vec::new();
    let mut reached_since = false;
    for (count, event_id) in services.rooms.timeline(room_id, leave_meta.count as i64 + 1, false, 200)? {
        if since.is_some_and(|s| count <= s as i64) {
            reached_since = true;
            break;
        }
        let Some((pdu, meta)) = services.rooms.get_pdu(&event_id)? else { continue };
        if !crate::service::history::may_see(services, &session.user_id, &pdu, &meta)? {
            break;
        }
        if !timeline_filter.allows(&pdu) {
            continue;
        }
        if entries.len() == limit {
            break;
        }
        entries.push((pdu, meta));
    }
    entries.reverse();
    let first_state = entries.first().map_or(leave_meta.state_before, |(_, meta)| meta.state_before);
    let before_timeline = services.rooms.state_at(first_state)?;
    // An incremental sync gets what changed across a gap, not the state
    // again; one that last saw the user outside the room (joined and left
    // since) gets it whole, as it never had it.
    let at_since = match since {
        Some(since) => Some(state_at_position(services, room_id, since)?),
        None => None,
    };
    let joined_at_since = match &at_since {
        Some(at_since) => services
            .rooms
            .state_content(at_since, "m.room.member", session.user_id.as_str())?
            .is_some_and(|c| c["membership"] == "join"),
        None => false,
    };
    let ids: Vec<OwnedEventId> = match at_since {
        Some(_) if joined_at_since && reached_since => Vec::new(),
        Some(at_since) if joined_at_since => {
            let (changed, _) = before_timeline.changes_from(&at_since);
            changed.into_iter().map(|(_, event)| services.rooms.short.event_id(event)).collect::<Result<_>>()?
        }
        _ => services.rooms.state_event_ids(&before_timeline)?,
    };
    let mut state = Vec::new();
    for event_id in ids {
        if let Some((pdu, meta)) = services.rooms.get_pdu(&event_id)?
            && state_filter.allows(&pdu)
        {
            state.push(raw(&pdu.to_client_event(&meta, false, None)));
        }
    }
    let device = Some(session.device_id.as_str());
    room.timeline.events =
        crate::service::relations::client_events(services, &session.user_id, &entries, false, device)?;
    if room.timeline.events.is_empty() && timeline_filter.allows(&leave) {
        room.timeline.events.push(leave_event);
    }
    room.state = State::Before(StateEvents::from(state));
    Ok(room)
}

/// Parse a sync token: the stream position as a decimal string.
pub fn parse_since(token: &str) -> Option<u64> {
    token.strip_prefix('s').unwrap_or(token).parse().ok()
}
