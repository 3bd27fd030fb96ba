//! Simplified sliding sync (MSC4186), the sync Element X and matrix-rust-sdk
//! use: lists of the user's rooms in recency order, of which the client
//! asks for windows (`ranges`), rooms it subscribes to, and extensions
//! (to-device, end-to-end keys, account data, receipts, typing).
//!
//! Each request is answered from what its connection already holds (see
//! [`connections`]): a room is sent whole the first time, then only what
//! changed since the connection last sent it. Rooms are those the user is
//! in (joined, invited, knocking), so a guest's lists hold only the rooms
//! it is in, as its `/sync` does; a subscription to any other room sends
//! nothing.

pub mod connections;
pub mod room_list;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{
    JsOption, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::v5::{self, request, response},
    events::room::member::MembershipState,
};
use serde_json::Value;

use crate::storage::UserChanges;
use crate::{
    error::{Error, Result},
    pdu::{Pdu, PduMeta},
    service::{
        Services,
        account_data::Item,
        push,
        rooms::State as RoomState,
        sync::{Events, TimelineScan, raw, recent_events, state_at_position, stripped_state},
        users::Session,
    },
};
use connections::{Connection, MAX_LAZY_MEMBERS, RequiredState, RoomSent};
use room_list::{Candidate, Facts, RoomList};

/// Events one room's timeline may carry in one response.
const MAX_TIMELINE_LIMIT: usize = 100;

/// Lists, ranges per list and required-state entries a request may name.
const MAX_LISTS: usize = 100;
const MAX_RANGES: usize = 100;
const MAX_REQUIRED_STATE: usize = 200;
const MAX_SUBSCRIPTIONS: usize = 1_000;

/// To-device messages one response carries unless the client asks for fewer.
const DEFAULT_TO_DEVICE_LIMIT: usize = 100;
const MAX_TO_DEVICE_LIMIT: usize = 1_000;

/// Heroes named for a room without a name.
const MAX_HEROES: usize = 5;

/// A request, with what ruma's types leave out: each list's `spaces` filter.
pub struct Params {
    pub request: v5::Request,
    pub spaces: BTreeMap<String, Vec<OwnedRoomId>>,
    /// The to-device extension's `since`, parsed.
    pub to_device_since: Option<u64>,
}

impl Params {
    /// Check the request's bounds; `body` is its JSON object (for `spaces`).
    pub fn new(request: v5::Request, body: Option<&serde_json::Map<String, Value>>) -> Result<Self> {
        if request.conn_id.as_deref().is_some_and(|c| c.len() > 64) {
            return Err(Error::invalid_param("`conn_id` is limited to 64 characters."));
        }
        if request.lists.len() > MAX_LISTS || request.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
            return Err(Error::invalid_param("Too many lists or room subscriptions."));
        }
        for list in request.lists.values() {
            if list.ranges.len() > MAX_RANGES || list.room_details.required_state.len() > MAX_REQUIRED_STATE {
                return Err(Error::invalid_param("Too many ranges or required_state entries in a list."));
            }
            if list.ranges.iter().any(|(start, end)| start > end) {
                return Err(Error::invalid_param("A range's start is after its end."));
            }
        }
        if request.room_subscriptions.values().any(|s| s.required_state.len() > MAX_REQUIRED_STATE) {
            return Err(Error::invalid_param("Too many required_state entries in a room subscription."));
        }
        let mut spaces = BTreeMap::new();
        let lists = body.and_then(|b| b.get("lists")).and_then(Value::as_object);
        for (name, list) in lists.into_iter().flatten() {
            let Some(named) = list.pointer("/filters/spaces").and_then(Value::as_array) else { continue };
            let ids: Vec<OwnedRoomId> = named
                .iter()
                .map(|v| v.as_str().and_then(|s| OwnedRoomId::try_from(s).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::invalid_param("`filters.spaces` holds room ids."))?;
            if ids.len() > MAX_SUBSCRIPTIONS {
                return Err(Error::invalid_param("Too many spaces in a filter."));
            }
            spaces.insert(name.clone(), ids);
        }
        let to_device_since = match request.extensions.to_device.since.as_deref() {
            Some(token) => {
                Some(token.parse::<u64>().map_err(|_| Error::invalid_param("The to_device `since` is not valid."))?)
            }
            None => None,
        };
        Ok(Self { request, spaces, to_device_since })
    }
}

/// How one room is to be sent: the union of what the lists and
/// subscriptions that hold it ask for.
/// Shared by the rooms of a list (a list's windows may hold every room).
#[derive(Clone, Default)]
struct RoomConfig {
    timeline_limit: usize,
    required_state: Arc<RequiredState>,
}

impl RoomConfig {
    fn new(timeline_limit: UInt, required_state: &[(ruma::events::StateEventType, String)]) -> Self {
        Self {
            timeline_limit: (u64::from(timeline_limit) as usize).min(MAX_TIMELINE_LIMIT),
            required_state: Arc::new(
                required_state.iter().map(|(kind, key)| (kind.to_string(), key.clone())).collect(),
            ),
        }
    }

    /// Give `room_id` this configuration, or the union with what it has.
    fn apply_to(&self, configs: &mut BTreeMap<OwnedRoomId, RoomConfig>, room_id: &RoomId) {
        match configs.get_mut(room_id) {
            None => {
                configs.insert(room_id.to_owned(), self.clone());
            }
            Some(config) => {
                config.timeline_limit = config.timeline_limit.max(self.timeline_limit);
                if !Arc::ptr_eq(&config.required_state, &self.required_state)
                    && !config.required_state.is_superset(&self.required_state)
                {
                    let union = config.required_state.union(&self.required_state).cloned().collect();
                    config.required_state = Arc::new(union);
                }
            }
        }
    }

    fn wants_all(&self) -> bool {
        self.required_state.contains(&("*".to_owned(), "*".to_owned()))
    }

    /// Whether a state pair is asked for (`$LAZY` members are added apart).
    fn wants(&self, kind: &str, state_key: &str, me: &UserId) -> bool {
        self.required_state.iter().any(|(k, key)| {
            (k == "*" || k == kind) && (key == "*" || key == state_key || (key == "$ME" && state_key == me.as_str()))
        })
    }

    fn lazy_members(&self) -> bool {
        self.required_state.iter().any(|(k, key)| k == "m.room.member" && key == "$LAZY")
    }
}

/// What changed since the connection's position, as the journal tells.
struct SinceBase {
    /// `None`: anything may have (a new connection, or a position older
    /// than the journal keeps).
    changes: Option<UserChanges>,
    /// The push rules or ignore list changed: every room's counts may have.
    counts_rules_changed: bool,
    /// Global account data changed since the position (all of it without one).
    global_account_data: Vec<Item>,
}

impl SinceBase {
    fn read(services: &Services, user_id: &UserId, base: Option<u64>, upto: u64, list: &RoomList) -> Result<Self> {
        let changes = base.and_then(|since| {
            services.db.journal().changes_for(user_id, since, upto, |room| list.rooms.contains_key(room))
        });
        let global_account_data = match &changes {
            Some(changes) if !changes.user => Vec::new(),
            _ => services
                .account_data
                .global_changed_since(user_id, base.unwrap_or(0))?
                .into_iter()
                .filter(|item| item.count <= upto)
                .collect(),
        };
        let counts_rules_changed =
            changes.is_none() || global_account_data.iter().any(|item| room_list::changes_counts(&item.kind));
        Ok(Self { changes, counts_rules_changed, global_account_data })
    }

    /// Whether a room may look different than at the position.
    fn dirty(&self, room_id: &RoomId) -> bool {
        self.counts_rules_changed
            || self.changes.as_ref().is_none_or(|c| c.rooms.contains(room_id) || c.own_rooms.contains(room_id))
    }

    /// Whether anyone's keys or room-mates may have changed: keys change
    /// for everyone to see, room-mates with a membership change.
    fn device_lists_may_change(&self) -> bool {
        self.changes.as_ref().is_none_or(|c| c.everyone || !c.member_rooms.is_empty() || !c.own_rooms.is_empty())
    }
}

/// Build the response for `params` on `connection`, and whether anything
/// changed since its position (if not, the caller may wait and ask
/// again; the response keeps the position).
pub fn build(
    services: &Services,
    session: &Session,
    params: &Params,
    connection: &Mutex<Connection>,
) -> Result<(v5::Response, bool)> {
    let started = std::time::Instant::now();
    let mut connection = connection.lock().expect("connection poisoned");
    let upto = services.db.safe_count();
    let user_id = &session.user_id;
    let base_stream = connection.base().stream;
    let request = &params.request;

    let mut list = match connection.room_list.take() {
        Some(mut list) => match list.update(services, user_id, upto)? {
            true => list,
            false => RoomList::read(services, user_id, upto)?,
        },
        None => RoomList::read(services, user_id, upto)?,
    };
    let since_base = SinceBase::read(services, user_id, base_stream, upto, &list)?;
    let gone = gone_rooms(services, user_id, &connection, &list, &since_base, base_stream, upto)?;
    let RoomList { rooms: user_rooms, facts, .. } = &mut list;
    let candidates = room_list::in_order(user_rooms);
    let direct = direct_rooms(services, user_id)?;

    // Lists: each filtered, counted, and its windows taken.
    let mut configs: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
    // Which lists' windows hold a room (for the extensions' `lists`).
    let mut in_lists: Coverage<'_> = Coverage::default();
    let mut list_counts = BTreeMap::new();
    let mut response = v5::Response::new(String::new());
    for (name, wanted) in &request.lists {
        let spaces = match params.spaces.get(name) {
            Some(spaces) => Some(space_children(services, user_rooms, facts, spaces)?),
            None => None,
        };
        let mut matching = Vec::new();
        for candidate in &candidates {
            if passes(services, candidate, wanted.filters.as_ref(), spaces.as_ref(), &direct, facts)? {
                matching.push(*candidate);
            }
        }
        let config = RoomConfig::new(wanted.room_details.timeline_limit, &wanted.room_details.required_state);
        let config = stable_config(&mut connection, name, config);
        list_counts.insert(name.clone(), matching.len() as u64);
        let mut entry = response::List::default();
        entry.count = UInt::new_saturating(matching.len() as u64);
        response.lists.insert(name.clone(), entry);
        for (start, end) in &wanted.ranges {
            let (start, end) = (u64::from(*start) as usize, u64::from(*end) as usize);
            for candidate in matching.iter().skip(start).take(end.saturating_sub(start).saturating_add(1)) {
                config.apply_to(&mut configs, &candidate.room_id);
                in_lists.insert(&candidate.room_id, name.as_str());
            }
        }
    }
    // Rooms the client holds that the user left: sent once more, as they
    // were, with the leave.
    for candidate in &gone {
        if let Some(held) = connection.room(&candidate.room_id) {
            let config =
                RoomConfig { timeline_limit: held.timeline_limit, required_state: held.required_state.clone() };
            configs.insert(candidate.room_id.clone(), config);
        }
    }
    // Subscriptions: only to rooms the user is in.
    let by_id: HashMap<&RoomId, &Candidate> =
        candidates.iter().copied().chain(&gone).map(|c| (&*c.room_id, c)).collect();
    for (room_id, subscription) in &request.room_subscriptions {
        if by_id.contains_key(&**room_id) {
            RoomConfig::new(subscription.timeline_limit, &subscription.required_state).apply_to(&mut configs, room_id);
            in_lists.subscribed.insert(&**room_id);
        }
    }

    // Rooms: sent whole the first time (or when asked for more), then what
    // changed; a room nothing happened in is not looked at.
    let ignored = services.account_data.ignored_users(user_id)?;
    let mut sent = Vec::new();
    for (room_id, config) in &configs {
        let candidate = by_id[&**room_id];
        let held = connection.room(room_id).filter(|held| holds(held, &candidate.record.membership, config));
        if held.is_some() && !since_base.dirty(room_id) {
            continue;
        }
        let context = RoomContext { services, session, upto, base_stream, ignored: &ignored, direct: &direct };
        if let Some((room, record)) = room_update(&context, candidate, config, held)? {
            response.rooms.insert(room_id.clone(), room);
            sent.push((room_id.clone(), record));
        }
    }

    let window: Vec<&OwnedRoomId> = configs.keys().collect();
    let scope = ExtensionScope {
        base_stream,
        upto,
        window: &window,
        coverage: &in_lists,
        sent_rooms: &response.rooms,
        since_base: &since_base,
    };
    let extensions = extensions(services, session, params, &scope)?;
    let changed = !response.rooms.is_empty()
        || !extensions.is_empty_of_changes()
        || base_stream.is_none()
        || list_counts != connection.base().list_counts;
    response.extensions = extensions.into_response();
    response.txn_id = request.txn_id.clone();
    response.pos = match changed {
        true => connection.advance(upto, list_counts, sent),
        false => connection.pos(),
    };
    connection.room_list = Some(list);
    tracing::debug!(
        user = %user_id, rooms = response.rooms.len(), changed, took_us = started.elapsed().as_micros() as u64,
        "sliding sync: response built"
    );
    Ok((response, changed))
}

/// The list's configuration as the connection last saw it, if unchanged:
/// the rooms it sent share its `required_state`, so checking that they
/// hold what is asked for is a pointer comparison, not one per room.
fn stable_config(connection: &mut Connection, list: &str, config: RoomConfig) -> RoomConfig {
    let kept = connection.list_required_state.get(list);
    if let Some(kept) = kept.filter(|kept| ***kept == *config.required_state) {
        return RoomConfig { timeline_limit: config.timeline_limit, required_state: kept.clone() };
    }
    // A client renaming its lists forever keeps no more than this.
    if connection.list_required_state.len() >= 2 * MAX_LISTS {
        connection.list_required_state.clear();
    }
    connection.list_required_state.insert(list.to_owned(), config.required_state.clone());
    config
}

/// Whether what the client holds of a room is enough for `config`: the
/// same membership, and at least what is asked for.
fn holds(held: &RoomSent, membership: &MembershipState, config: &RoomConfig) -> bool {
    held.membership == *membership
        && held.timeline_limit >= config.timeline_limit
        && (Arc::ptr_eq(&held.required_state, &config.required_state)
            || held.required_state.is_superset(&config.required_state))
}

/// Rooms the connection holds that the user left, was banned from or saw
/// end since its position: not in any list (nor counted), but sent once
/// more with the leave, so the client drops them.
fn gone_rooms(
    services: &Services,
    user_id: &UserId,
    connection: &Connection,
    list: &RoomList,
    since_base: &SinceBase,
    base_stream: Option<u64>,
    upto: u64,
) -> Result<Vec<Candidate>> {
    let Some(base) = base_stream else { return Ok(Vec::new()) };
    let held: Vec<OwnedRoomId> = match &since_base.changes {
        Some(changes) => changes.own_rooms.iter().filter(|r| connection.room(r).is_some()).cloned().collect(),
        None => connection.held_rooms().cloned().collect(),
    };
    let mut out = Vec::new();
    for room_id in held.into_iter().filter(|room_id| !list.rooms.contains_key(room_id)) {
        if let Some(record) = services.rooms.user_membership(user_id, &room_id)?
            && record.count > base
            && record.count <= upto
        {
            out.push(Candidate { room_id, bump: record.count, record });
        }
    }
    Ok(out)
}

/// Rooms the user marks as direct chats (`m.direct`).
fn direct_rooms(services: &Services, user_id: &UserId) -> Result<HashSet<OwnedRoomId>> {
    let Some(direct) = services.account_data.get_value(user_id, None, "m.direct")? else { return Ok(HashSet::new()) };
    Ok(direct
        .as_object()
        .into_iter()
        .flat_map(|by_user| by_user.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|room| room.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
        .collect())
}

/// The rooms the spaces (those the user is in) list as children, read once
/// per change of a space.
fn space_children(
    services: &Services,
    rooms: &HashMap<OwnedRoomId, Candidate>,
    facts: &mut Facts,
    spaces: &[OwnedRoomId],
) -> Result<HashSet<OwnedRoomId>> {
    let mut children = HashSet::new();
    for space in spaces {
        // Only a space the user is in tells which of their rooms are its children.
        if rooms.get(space).is_none_or(|c| c.record.membership != MembershipState::Join) {
            continue;
        }
        if !facts.space_children.contains_key(space) {
            let read = room_list::read_space_children(services, space)?;
            facts.space_children.insert(space.clone(), read);
        }
        children.extend(facts.space_children[space].iter().cloned());
    }
    Ok(children)
}

fn is_dm(services: &Services, candidate: &Candidate, direct: &HashSet<OwnedRoomId>) -> Result<bool> {
    if direct.contains(&candidate.room_id) {
        return Ok(true);
    }
    if candidate.record.membership != MembershipState::Invite {
        return Ok(false);
    }
    Ok(services
        .rooms
        .get_pdu(&candidate.record.event_id)?
        .is_some_and(|(pdu, _)| pdu.content_value()["is_direct"].as_bool() == Some(true)))
}

fn passes(
    services: &Services,
    candidate: &Candidate,
    filters: Option<&request::ListFilters>,
    spaces: Option<&HashSet<OwnedRoomId>>,
    direct: &HashSet<OwnedRoomId>,
    facts: &mut Facts,
) -> Result<bool> {
    if spaces.is_some_and(|children| !children.contains(&candidate.room_id)) {
        return Ok(false);
    }
    let Some(filters) = filters else { return Ok(true) };
    let room_id = &candidate.room_id;
    if let Some(wanted) = filters.is_invite
        && wanted != (candidate.record.membership == MembershipState::Invite)
    {
        return Ok(false);
    }
    if let Some(wanted) = filters.is_dm
        && wanted != is_dm(services, candidate, direct)?
    {
        return Ok(false);
    }
    if let Some(wanted) = filters.is_encrypted {
        let encrypted = match facts.encrypted.get(room_id) {
            Some(known) => *known,
            None => {
                let known = room_is_encrypted(services, candidate)?;
                facts.encrypted.insert(room_id.clone(), known);
                known
            }
        };
        if wanted != encrypted {
            return Ok(false);
        }
    }
    if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
        let room_type = match facts.room_types.get(room_id) {
            Some(known) => known.clone(),
            None => {
                let known = room_type(services, candidate)?;
                facts.room_types.insert(room_id.clone(), known.clone());
                known
            }
        };
        let matches = |filter: &ruma::directory::RoomTypeFilter| {
            serde_json::to_value(filter).ok().is_some_and(|f| f.as_str() == room_type.as_deref())
        };
        if !filters.room_types.is_empty() && !filters.room_types.iter().any(matches) {
            return Ok(false);
        }
        if filters.not_room_types.iter().any(matches) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A room's state as the user may know it: the stripped state of an
/// invite or knock to a room we do not hold, else the room's state.
fn known_state_content(services: &Services, candidate: &Candidate, kind: &str) -> Result<Option<Value>> {
    if matches!(candidate.record.membership, MembershipState::Invite | MembershipState::Knock)
        && !services.rooms.exists(&candidate.room_id)?
    {
        for event in stripped_state(services, &candidate.room_id, &candidate.record.event_id)? {
            let event: Value = serde_json::from_str(event.json().get())?;
            if event["type"] == kind && event["state_key"] == "" {
                return Ok(Some(event["content"].clone()));
            }
        }
        return Ok(None);
    }
    let state = services.rooms.current_state(&candidate.room_id)?;
    services.rooms.state_content(&state, kind, "")
}

fn room_is_encrypted(services: &Services, candidate: &Candidate) -> Result<bool> {
    Ok(known_state_content(services, candidate, "m.room.encryption")?.is_some())
}

fn room_type(services: &Services, candidate: &Candidate) -> Result<Option<String>> {
    Ok(known_state_content(services, candidate, "m.room.create")?
        .and_then(|content| content.get("type").and_then(Value::as_str).map(str::to_owned)))
}

/// What every room of one request is built with.
struct RoomContext<'a> {
    services: &'a Services,
    session: &'a Session,
    upto: u64,
    base_stream: Option<u64>,
    ignored: &'a HashSet<OwnedUserId>,
    direct: &'a HashSet<OwnedRoomId>,
}

/// What to send of one room, and what the connection then holds of it;
/// `None` if the client already has all of it.
fn room_update(
    context: &RoomContext<'_>,
    candidate: &Candidate,
    config: &RoomConfig,
    held: Option<&RoomSent>,
) -> Result<Option<(response::Room, RoomSent)>> {
    let services = context.services;
    let user_id = &context.session.user_id;
    let room_id = &candidate.room_id;
    let membership = candidate.record.membership.clone();
    // `held` is `None` (sent whole) the first time, after a change of
    // membership, or when more is asked for than was sent (see `holds`).
    let mut room = response::Room::new();
    room.bump_stamp = Some(UInt::new_saturating(candidate.bump));
    let mut record = RoomSent {
        upto: context.upto,
        membership: membership.clone(),
        timeline_limit: config.timeline_limit,
        required_state: config.required_state.clone(),
        lazy_members: held.map(|h| h.lazy_members.clone()).unwrap_or_default(),
    };

    if matches!(membership, MembershipState::Invite | MembershipState::Knock) {
        if held.is_some() {
            return Ok(None);
        }
        let stripped = stripped_state(services, room_id, &candidate.record.event_id)?;
        room.initial = Some(true);
        room.is_dm = Some(is_dm(services, candidate, context.direct)?);
        if membership == MembershipState::Invite {
            room.invite_state = Some(stripped);
        } else if let Some((pdu, meta)) = services.rooms.get_pdu(&candidate.record.event_id)? {
            // A knock shows the user's own knock; the room is not theirs to see yet.
            room.required_state = vec![raw(&pdu.to_client_event(&meta, false, None))];
        }
        return Ok(Some((room, record)));
    }

    // Joined, or left since the connection's position: a left room's
    // events end at the leave.
    let joined = membership == MembershipState::Join;
    let end = if joined { context.upto } else { candidate.record.count };
    let since = held.map(|h| h.upto);
    let room_record = services.rooms.room(room_id)?;
    let last_event = room_record.as_ref().map_or(0, |r| r.last_count).min(end);
    let counts = if joined { Some(push::counts_at(services, user_id, room_id, context.upto)?) } else { None };
    let counts_changed = counts.as_ref().is_some_and(|c| since.is_none_or(|s| c.changed_at > s));
    if let Some(since) = since
        && last_event <= since
        && candidate.record.count <= since
        && !counts_changed
    {
        return Ok(None);
    }

    let current = services.rooms.current_state(room_id)?;
    let state_at_end = if joined {
        current.clone()
    } else {
        match services.rooms.get_pdu(&candidate.record.event_id)? {
            Some((_, meta)) => services.rooms.state_at(meta.state_after)?,
            None => current.clone(),
        }
    };
    let scan = TimelineScan { since, upto: end, limit: config.timeline_limit, filter: None, ignored: context.ignored };
    let (entries, limited) = recent_events(services, user_id, room_id, &current, &scan)?;

    // Required state: whole on a first send, else what changed in it.
    let state_events = required_state(context, room_id, config, &state_at_end, since, &entries, &mut record)?;
    let state_changed_kinds: HashSet<String> = state_events
        .iter()
        .map(|(pdu, _)| pdu.kind.to_string())
        .chain(entries.iter().filter(|(pdu, _)| pdu.state_key.is_some()).map(|(pdu, _)| pdu.kind.to_string()))
        .collect();
    room.required_state = state_events.iter().map(|(pdu, meta)| raw(&pdu.to_client_event(meta, false, None))).collect();

    let first_send = since.is_none();
    if first_send {
        room.initial = Some(true);
    }
    let name = services.rooms.name_in(&state_at_end)?;
    if first_send || state_changed_kinds.contains("m.room.name") {
        room.name = name.clone();
    }
    let avatar = services
        .rooms
        .state_content(&state_at_end, "m.room.avatar", "")?
        .and_then(|c| c["url"].as_str().map(OwnedMxcUri::from));
    room.avatar = match avatar {
        Some(url) => JsOption::Some(url),
        None if !first_send && state_changed_kinds.contains("m.room.avatar") => JsOption::Null,
        None => JsOption::Undefined,
    };
    if first_send || state_changed_kinds.contains("m.room.member") {
        let members = services.rooms.members(room_id)?;
        let count = |m: MembershipState| members.iter().filter(|(_, s)| *s == m).count() as u64;
        room.joined_count = Some(UInt::new_saturating(count(MembershipState::Join)));
        room.invited_count = Some(UInt::new_saturating(count(MembershipState::Invite)));
        let named = name.is_some() || services.rooms.state_has(&state_at_end, "m.room.canonical_alias", "")?;
        if !named {
            room.heroes = Some(heroes(services, &state_at_end, user_id, &members)?);
        }
    }
    if first_send {
        room.is_dm = Some(is_dm(services, candidate, context.direct)?);
    }
    if let Some(counts) = &counts {
        let (notifications, highlights) = counts.total();
        room.unread_notifications.notification_count = UInt::new(notifications);
        room.unread_notifications.highlight_count = UInt::new(highlights);
    }
    room.limited = limited;
    room.prev_batch = entries.first().map(|(_, meta)| format!("t{}", meta.ordering()));
    if room.prev_batch.is_none() && first_send {
        room.prev_batch = Some(format!("t{}", end));
    }
    let live = context.base_stream.map_or(0, |s| entries.iter().filter(|(_, m)| m.count > s).count());
    room.num_live = Some(UInt::new_saturating(live as u64));
    let device = Some(context.session.device_id.as_str());
    room.timeline = crate::service::relations::client_events(services, user_id, &entries, false, device)?;
    Ok(Some((room, record)))
}

/// The state events to send: on a first send those the configuration
/// asks for in `state`; later, the ones of them that changed since
/// `since`. `$LAZY` adds the members of the timeline's senders the
/// connection has not sent.
fn required_state(
    context: &RoomContext<'_>,
    room_id: &RoomId,
    config: &RoomConfig,
    state: &RoomState,
    since: Option<u64>,
    timeline: &[(Arc<Pdu>, PduMeta)],
    record: &mut RoomSent,
) -> Result<Events> {
    let services = context.services;
    let me = &context.session.user_id;
    let mut ids = Vec::new();
    match since {
        None => {
            record.lazy_members.clear();
            if config.wants_all() {
                ids = services.rooms.state_event_ids(state)?;
            } else {
                for (kind, key) in config.required_state.iter() {
                    match key.as_str() {
                        "$LAZY" => {}
                        "*" => ids.extend(services.rooms.state_of_kind(state, kind)?.into_iter().map(|(_, id)| id)),
                        "$ME" => ids.extend(services.rooms.state_event(state, kind, me.as_str())?),
                        key if kind == "*" => {
                            for (pair, event) in services.rooms.expand(state)? {
                                if pair.1 == key {
                                    ids.push(event);
                                }
                            }
                        }
                        key => ids.extend(services.rooms.state_event(state, kind, key)?),
                    }
                }
            }
        }
        Some(since) => {
            let before = state_at_position(services, room_id, since)?;
            let (changed, _) = state.changes_from(&before);
            for (key, event) in changed {
                let pair = services.rooms.short.key(key)?;
                if config.wants(&pair.kind, &pair.state_key, me)
                    || (pair.kind == "m.room.member"
                        && config.lazy_members()
                        && UserId::parse(&pair.state_key).is_ok_and(|u| record.lazy_members.contains(&u)))
                {
                    ids.push(services.rooms.short.event_id(event)?);
                }
            }
        }
    }
    if config.lazy_members() {
        if record.lazy_members.len() > MAX_LAZY_MEMBERS {
            record.lazy_members.clear();
        }
        let senders: BTreeSet<&UserId> = timeline.iter().map(|(pdu, _)| &*pdu.sender).collect();
        for sender in senders {
            if record.lazy_members.insert(sender.to_owned())
                && let Some(id) = services.rooms.state_event(state, "m.room.member", sender.as_str())?
            {
                ids.push(id);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in ids {
        if seen.insert(id.clone())
            && let Some(event) = services.rooms.get_pdu(&id)?
        {
            out.push(event);
        }
    }
    Ok(out)
}

/// Up to five members other than the user, for a room without a name.
fn heroes(
    services: &Services,
    state: &RoomState,
    user_id: &UserId,
    members: &[(OwnedUserId, MembershipState)],
) -> Result<Vec<response::Hero>> {
    let mut chosen: Vec<&OwnedUserId> = members
        .iter()
        .filter(|(u, m)| u != user_id && matches!(m, MembershipState::Join | MembershipState::Invite))
        .map(|(u, _)| u)
        .collect();
    chosen.sort();
    let mut out = Vec::new();
    for member in chosen.into_iter().take(MAX_HEROES) {
        let content = services.rooms.state_content(state, "m.room.member", member.as_str())?.unwrap_or_default();
        let mut hero = response::Hero::new(member.clone());
        hero.name = content["displayname"].as_str().map(str::to_owned);
        hero.avatar = content["avatar_url"].as_str().map(OwnedMxcUri::from);
        out.push(hero);
    }
    Ok(out)
}

/// The extensions' part of a response.
#[derive(Default)]
struct Extensions {
    response: response::Extensions,
    /// Whether anything beyond key counts is new.
    changes: bool,
}

impl Extensions {
    fn is_empty_of_changes(&self) -> bool {
        !self.changes
    }

    fn into_response(self) -> response::Extensions {
        self.response
    }
}

/// Which lists' windows and which subscriptions hold each room of a response.
#[derive(Default)]
struct Coverage<'a> {
    lists: HashMap<&'a RoomId, BTreeSet<&'a str>>,
    subscribed: HashSet<&'a RoomId>,
}

impl<'a> Coverage<'a> {
    fn insert(&mut self, room_id: &'a RoomId, list: &'a str) {
        self.lists.entry(room_id).or_default().insert(list);
    }
}

/// Which rooms of the response an extension covers (MSC4186): those of
/// the lists it names (`*` or none named: every list) and of the
/// subscriptions it names (`*` or none named: every subscription).
fn extension_rooms<'a>(
    scope: &ExtensionScope<'_>,
    window: &[&'a OwnedRoomId],
    rooms: Option<&[request::ExtensionRoomConfig]>,
    lists: Option<&[String]>,
) -> Vec<&'a OwnedRoomId> {
    let all_lists = lists.is_none_or(|names| names.iter().any(|n| n == "*"));
    let all_subscribed =
        rooms.is_none_or(|named| named.iter().any(|r| matches!(r, request::ExtensionRoomConfig::AllSubscribed)));
    let coverage = scope.coverage;
    window
        .iter()
        .filter(|room_id| {
            let by_list = coverage.lists.get(room_id.as_ref() as &RoomId).is_some_and(|held_by| {
                all_lists || lists.into_iter().flatten().any(|name| held_by.contains(name.as_str()))
            });
            let by_subscription = coverage.subscribed.contains(room_id.as_ref() as &RoomId)
                && (all_subscribed
                    || rooms
                        .into_iter()
                        .flatten()
                        .any(|r| matches!(r, request::ExtensionRoomConfig::Room(id) if id == **room_id)));
            by_list || by_subscription
        })
        .copied()
        .collect()
}

/// What the extensions of one response are built from.
struct ExtensionScope<'a> {
    base_stream: Option<u64>,
    upto: u64,
    /// The rooms the lists' windows and the subscriptions hold.
    window: &'a [&'a OwnedRoomId],
    coverage: &'a Coverage<'a>,
    /// The rooms this response sends.
    sent_rooms: &'a BTreeMap<OwnedRoomId, response::Room>,
    since_base: &'a SinceBase,
}

impl ExtensionScope<'_> {
    /// Since when a room's ephemera and account data are sent: whole
    /// (`None`) for a room sent whole in this response.
    fn since_for(&self, room_id: &RoomId) -> Option<u64> {
        match self.sent_rooms.get(room_id) {
            Some(room) if room.initial == Some(true) => None,
            _ => self.base_stream,
        }
    }

    /// The covered rooms whose ephemera or account data may be news: those
    /// sent whole, and those that changed since the position.
    fn news<'b>(&self, covered: Vec<&'b OwnedRoomId>) -> impl Iterator<Item = (&'b OwnedRoomId, Option<u64>)> {
        covered.into_iter().filter_map(|room_id| {
            let since = self.since_for(room_id);
            (since.is_none() || self.since_base.dirty(room_id)).then_some((room_id, since))
        })
    }
}

fn extensions(
    services: &Services,
    session: &Session,
    params: &Params,
    scope: &ExtensionScope<'_>,
) -> Result<Extensions> {
    let mut out = Extensions::default();
    let user_id = &session.user_id;
    let device_id = session.device_id.as_str();
    let wanted = &params.request.extensions;
    let (base_stream, upto, window) = (scope.base_stream, scope.upto, scope.window);

    if wanted.to_device.enabled == Some(true) {
        let since = params.to_device_since;
        let limit = wanted
            .to_device
            .limit
            .map_or(DEFAULT_TO_DEVICE_LIMIT, |l| (u64::from(l) as usize).clamp(1, MAX_TO_DEVICE_LIMIT));
        let (events, next) = services.keys.to_device_page(user_id, device_id, since, upto, limit)?;
        out.changes |= !events.is_empty();
        let mut to_device = response::ToDevice::default();
        to_device.next_batch = next.to_string();
        to_device.events = events.iter().map(raw).collect();
        out.response.to_device = Some(to_device);
    }

    if wanted.e2ee.enabled == Some(true) {
        let e2ee = &mut out.response.e2ee;
        let (one_time, fallback) = services.keys.sync_counts(user_id, device_id)?;
        e2ee.device_one_time_keys_count = one_time;
        e2ee.device_unused_fallback_key_types = Some(fallback);
        // On a new connection the client treats every device list as changed itself.
        if let Some(since) = base_stream
            && scope.since_base.device_lists_may_change()
        {
            let (changed, left) = crate::service::keys::changes_between(services, user_id, since, upto)?;
            out.changes |= !changed.is_empty() || !left.is_empty();
            e2ee.device_lists.changed = changed;
            e2ee.device_lists.left = left;
        }
    }

    if wanted.account_data.enabled == Some(true) {
        let config = &wanted.account_data;
        let covered = extension_rooms(scope, window, config.rooms.as_deref(), config.lists.as_deref());
        fn event<T>(item: &Item) -> Result<ruma::serde::Raw<T>> {
            let content = serde_json::from_str::<Value>(item.content.get())?;
            Ok(raw(&serde_json::json!({ "type": item.kind, "content": content })))
        }
        let global = scope.since_base.global_account_data.iter().map(event).collect::<Result<Vec<_>>>()?;
        let mut rooms: BTreeMap<OwnedRoomId, Vec<_>> = BTreeMap::new();
        for (room_id, since) in scope.news(covered) {
            for item in services.account_data.room_items(user_id, room_id)? {
                if item.count <= upto && since.is_none_or(|since| item.count > since) {
                    rooms.entry(room_id.clone()).or_default().push(event(&item)?);
                }
            }
        }
        out.changes |= !global.is_empty() || !rooms.is_empty();
        out.response.account_data.global = global;
        out.response.account_data.rooms = rooms;
    }

    if wanted.receipts.enabled == Some(true) {
        let config = &wanted.receipts;
        for (room_id, since) in
            scope.news(extension_rooms(scope, window, config.rooms.as_deref(), config.lists.as_deref()))
        {
            if let Some(event) = services.ephemeral.receipt_event(room_id, since.unwrap_or(0), user_id)? {
                out.changes = true;
                out.response.receipts.rooms.insert(room_id.clone(), raw(&event));
            }
        }
    }

    if wanted.typing.enabled == Some(true) {
        let config = &wanted.typing;
        for (room_id, since) in
            scope.news(extension_rooms(scope, window, config.rooms.as_deref(), config.lists.as_deref()))
        {
            let Some(event) = services.ephemeral.typing_event(room_id, since.unwrap_or(0)) else { continue };
            // A first look at a room where nobody types is no news.
            if since.is_none() && event["content"]["user_ids"].as_array().is_none_or(|u| u.is_empty()) {
                continue;
            }
            out.changes = true;
            out.response.typing.rooms.insert(room_id.clone(), raw(&event));
        }
    }
    Ok(out)
}
