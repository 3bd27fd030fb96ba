//! Spaces: the rooms under a space, for clients (`/hierarchy`) and for
//! other servers (federation `/hierarchy`). The walk is breadth first, each
//! space's children in the spec's order (`order`, then the child event's
//! timestamp, then room id). Rooms this server does not hold are asked of
//! the servers their `m.space.child` event names, and what they answer is
//! checked again here: another server cannot make a room visible to one of
//! our users that our own rules would hide.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UInt, UserId,
    api::{client::space::SpaceHierarchyRoomsChunk, federation::space::SpaceHierarchyParentSummary},
    events::room::member::MembershipState,
    room::{JoinRuleSummary, RestrictedSummary, RoomSummary, RoomType},
    serde::Raw,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    policy::{self, Action},
    service::{Services, blocking, users::Session},
};

/// Rooms in one page when the client names no `limit`, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// How deep a walk goes at most, whatever the client asks.
const MAX_DEPTH: usize = 32;
/// Rooms one request looks at, visible or not: a space graph is other
/// people's data, and each page walks it again from the root.
const MAX_WALK: usize = 1_000;
/// Other servers one request asks, and how long each may take.
const MAX_REMOTE_FETCHES: usize = 20;
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers tried for one remote room, from its `via`.
const MAX_VIA: usize = 3;
/// How long another server's answer is reused (pages of one walk, and
/// several people opening the same space).
const REMOTE_TTL: Duration = Duration::from_secs(60);
const REMOTE_CACHE_ENTRIES: usize = 1_000;
/// Children read from one room (ours or another server's).
const MAX_CHILDREN: usize = 200;
/// Children in one federation answer.
const MAX_FEDERATION_CHILDREN: usize = 100;

/// A room as the hierarchy shows it.
#[derive(Clone, Debug)]
pub struct RoomEntry {
    pub summary: RoomSummary,
    /// Stripped `m.space.child` events with a non-empty `via`, in the spec's order.
    pub children_state: Vec<Value>,
}

impl RoomEntry {
    fn is_space(&self) -> bool {
        self.summary.room_type == Some(RoomType::Space)
    }

    /// The children to walk into: room id, where to ask, and `suggested`.
    fn children(&self, suggested_only: bool) -> Vec<(OwnedRoomId, Vec<OwnedServerName>)> {
        self.children_state
            .iter()
            .filter(|event| !suggested_only || event["content"]["suggested"].as_bool() == Some(true))
            .filter_map(|event| {
                let room_id = OwnedRoomId::try_from(event["state_key"].as_str()?).ok()?;
                let via = event["content"]["via"]
                    .as_array()?
                    .iter()
                    .filter_map(|v| OwnedServerName::try_from(v.as_str()?).ok())
                    .collect();
                Some((room_id, via))
            })
            .collect()
    }

    fn into_chunk(self) -> SpaceHierarchyRoomsChunk {
        SpaceHierarchyRoomsChunk::new(self.summary, raw_events(self.children_state))
    }
}

fn raw_events<T>(events: Vec<Value>) -> Vec<Raw<T>> {
    events.iter().map(crate::service::sync::raw).collect()
}

/// What another server said about one of its rooms.
#[derive(Clone)]
struct RemoteAnswer {
    entry: RoomEntry,
    /// Summaries of its children the other server gave with it.
    children: HashMap<OwnedRoomId, RoomSummary>,
    /// Children the other server says the asking server may not see.
    inaccessible: HashSet<OwnedRoomId>,
}

/// A remote room and whether only suggested children were asked for.
type RemoteKey = (OwnedRoomId, bool);

/// In-memory state of the spaces service: other servers' recent answers.
#[derive(Default)]
pub struct Spaces {
    remote: Mutex<HashMap<RemoteKey, (Instant, Option<RemoteAnswer>)>>,
}

impl Spaces {
    fn cached(&self, room_id: &RoomId, suggested_only: bool) -> Option<Option<RemoteAnswer>> {
        let cache = self.remote.lock().expect("space cache poisoned");
        let (at, answer) = cache.get(&(room_id.to_owned(), suggested_only))?;
        (at.elapsed() < REMOTE_TTL).then(|| answer.clone())
    }

    fn remember(&self, room_id: &RoomId, suggested_only: bool, answer: Option<RemoteAnswer>) {
        let mut cache = self.remote.lock().expect("space cache poisoned");
        if cache.len() >= REMOTE_CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < REMOTE_TTL);
            if cache.len() >= REMOTE_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert((room_id.to_owned(), suggested_only), (Instant::now(), answer));
    }
}

/// A client's `/hierarchy` request.
pub struct HierarchyRequest {
    pub room_id: OwnedRoomId,
    pub from: Option<String>,
    pub limit: Option<UInt>,
    pub max_depth: Option<UInt>,
    pub suggested_only: bool,
}

/// One page of the hierarchy under `request.room_id`, as `session` may see it.
pub async fn hierarchy(
    services: &Arc<Services>,
    session: &Session,
    request: HierarchyRequest,
) -> Result<(Vec<SpaceHierarchyRoomsChunk>, Option<String>)> {
    let limit = request.limit.map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT));
    let limit = limit.clamp(1, MAX_LIMIT);
    let max_depth = request.max_depth.map_or(MAX_DEPTH, |d| usize::try_from(u64::from(d)).unwrap_or(MAX_DEPTH));
    let max_depth = max_depth.min(MAX_DEPTH);
    let tag = token_tag(&request.room_id, &session.user_id, max_depth, request.suggested_only);
    let skip = match &request.from {
        None => 0,
        Some(token) => parse_token(token, &tag)?,
    };

    let root = {
        let (session, room_id) = (session.clone(), request.room_id.clone());
        blocking(services, move |s| {
            let Some(entry) = local_entry(s, &room_id)? else {
                return Err(Error::not_found("This room is not known to this server."));
            };
            if !user_may_see(s, &session, &entry.summary)? {
                return Err(Error::forbidden("You cannot preview this room."));
            }
            Ok(entry)
        })
        .await?
    };

    let mut queue = VecDeque::from([(request.room_id.clone(), 0usize, Vec::new(), Some(root))]);
    let mut seen = HashSet::from([request.room_id.clone()]);
    // Summaries other servers gave for children, used for rooms that are not spaces.
    let mut given: HashMap<OwnedRoomId, RoomSummary> = HashMap::new();
    let mut inaccessible: HashSet<OwnedRoomId> = HashSet::new();
    let (mut walked, mut visible, mut fetches) = (0usize, 0usize, 0usize);
    let mut page = Vec::new();
    let mut more = false;

    while let Some((room_id, depth, via, known)) = queue.pop_front() {
        if walked >= MAX_WALK {
            break;
        }
        walked += 1;
        if inaccessible.contains(&room_id) {
            continue;
        }
        let entry = match known {
            Some(entry) => Some(entry),
            None => {
                let local = {
                    let room_id = room_id.clone();
                    blocking(services, move |s| local_entry(s, &room_id)).await?
                };
                match local {
                    Some(entry) => Some(entry),
                    None => {
                        let walk_into = depth < max_depth;
                        match given.get(&room_id) {
                            // A room that is not a space needs nothing more than its summary.
                            Some(summary) if summary.room_type != Some(RoomType::Space) || !walk_into => {
                                Some(RoomEntry { summary: summary.clone(), children_state: Vec::new() })
                            }
                            _ if fetches < MAX_REMOTE_FETCHES => {
                                fetches += 1;
                                remote_answer(services, &room_id, &via, request.suggested_only).await.map(|answer| {
                                    given.extend(answer.children);
                                    inaccessible.extend(answer.inaccessible);
                                    answer.entry
                                })
                            }
                            _ => None,
                        }
                    }
                }
            }
        };
        let Some(entry) = entry else { continue };
        let may_see = {
            let (session, summary) = (session.clone(), entry.summary.clone());
            blocking(services, move |s| user_may_see(s, &session, &summary)).await?
        };
        if !may_see {
            continue;
        }
        visible += 1;
        if visible > skip && page.len() == limit {
            more = true;
            break;
        }
        if entry.is_space() && depth < max_depth {
            for (child, via) in entry.children(request.suggested_only) {
                if seen.insert(child.clone()) {
                    queue.push_back((child, depth + 1, via, None));
                }
            }
        }
        if visible > skip {
            page.push(entry.into_chunk());
        }
    }
    let next_batch = more.then(|| format!("{}~{tag}", skip + page.len()));
    Ok((page, next_batch))
}

/// Binds a pagination token to the walk it came from.
fn token_tag(room_id: &RoomId, user_id: &UserId, max_depth: usize, suggested_only: bool) -> String {
    let digest = Sha256::digest(format!("{room_id}\n{user_id}\n{max_depth}\n{suggested_only}"));
    hex::encode(&digest[..6])
}

fn parse_token(token: &str, tag: &str) -> Result<usize> {
    let (skip, token_tag) = token.split_once('~').ok_or_else(|| Error::invalid_param("Unknown `from` token."))?;
    if token_tag != tag {
        return Err(Error::invalid_param(
            "This `from` token belongs to another walk: `suggested_only` and `max_depth` must stay as they were.",
        ));
    }
    skip.parse().map_err(|_| Error::invalid_param("Unknown `from` token."))
}

/// Another server's answer about `room_id`, asked of the servers in `via`.
async fn remote_answer(
    services: &Arc<Services>,
    room_id: &RoomId,
    via: &[OwnedServerName],
    suggested_only: bool,
) -> Option<RemoteAnswer> {
    if let Some(answer) = services.spaces.cached(room_id, suggested_only) {
        return answer;
    }
    let own = services.server_name();
    let mut answer = None;
    for server in via.iter().filter(|s| s.as_str() != own.as_str()).take(MAX_VIA) {
        let mut request = ruma::api::federation::space::get_hierarchy::v1::Request::new(room_id.to_owned());
        request.suggested_only = suggested_only;
        match tokio::time::timeout(REMOTE_TIMEOUT, services.federation.send(server, request)).await {
            Ok(Ok(response)) => {
                answer = checked_answer(room_id, response);
                if answer.is_some() {
                    break;
                }
                tracing::debug!(%server, %room_id, "hierarchy answer for another room, ignored");
            }
            Ok(Err(e)) => tracing::debug!(%server, %room_id, "hierarchy request failed: {e}"),
            Err(_) => tracing::debug!(%server, %room_id, "hierarchy request timed out"),
        }
    }
    services.spaces.remember(room_id, suggested_only, answer.clone());
    answer
}

/// Keep of another server's answer only what is about the room asked and
/// the children it names, bounded.
fn checked_answer(
    room_id: &RoomId,
    response: ruma::api::federation::space::get_hierarchy::v1::Response,
) -> Option<RemoteAnswer> {
    let parent = response.room;
    if parent.summary.room_id != room_id {
        return None;
    }
    let mut children_state: Vec<Value> = parent
        .children_state
        .iter()
        .filter_map(|raw| serde_json::from_str::<Value>(raw.json().get()).ok())
        .filter(|event| {
            event["type"] == "m.space.child"
                && event["state_key"].as_str().is_some_and(|k| RoomId::parse(k).is_ok())
                && event["content"]["via"].as_array().is_some_and(|via| !via.is_empty())
        })
        .take(MAX_CHILDREN)
        .map(|event| {
            json!({
                "type": "m.space.child",
                "state_key": event["state_key"],
                "content": event["content"],
                "sender": event["sender"],
                "origin_server_ts": event["origin_server_ts"],
            })
        })
        .collect();
    sort_children(&mut children_state);
    let named: HashSet<&str> = children_state.iter().filter_map(|e| e["state_key"].as_str()).collect();
    let children = response
        .children
        .into_iter()
        .filter(|summary| named.contains(summary.room_id.as_str()))
        .map(|summary| (summary.room_id.clone(), summary))
        .collect();
    let inaccessible = response.inaccessible_children.into_iter().filter(|id| named.contains(id.as_str())).collect();
    Some(RemoteAnswer { entry: RoomEntry { summary: parent.summary, children_state }, children, inaccessible })
}

/// The hierarchy entry of a room this server holds.
pub fn local_entry(s: &Services, room_id: &RoomId) -> Result<Option<RoomEntry>> {
    let Some(room) = s.rooms.room(room_id)? else {
        return Ok(None);
    };
    let state = s.rooms.state_at(room.current_state)?;
    let Some(create) = s.rooms.state_content(&state, "m.room.create", "")? else {
        return Ok(None);
    };
    let content = |kind: &str| s.rooms.state_content(&state, kind, "");
    let text = |value: &Option<Value>, field: &str| {
        value.as_ref().and_then(|c| c.get(field)).and_then(Value::as_str).map(str::to_owned)
    };
    let join_rules = content("m.room.join_rules")?;
    let allowed: Vec<OwnedRoomId> = join_rules
        .as_ref()
        .and_then(|c| c.get("allow"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|rule| rule["type"] == "m.room_membership")
        .filter_map(|rule| OwnedRoomId::try_from(rule["room_id"].as_str()?).ok())
        .collect();
    let join_rule = match text(&join_rules, "join_rule").as_deref() {
        Some("public") => JoinRuleSummary::Public,
        Some("knock") => JoinRuleSummary::Knock,
        Some("private") => JoinRuleSummary::Private,
        Some("restricted") => JoinRuleSummary::Restricted(RestrictedSummary::new(allowed)),
        Some("knock_restricted") => JoinRuleSummary::KnockRestricted(RestrictedSummary::new(allowed)),
        _ => JoinRuleSummary::Invite,
    };
    let guest_can_join = text(&content("m.room.guest_access")?, "guest_access").as_deref() == Some("can_join");
    let world_readable =
        text(&content("m.room.history_visibility")?, "history_visibility").as_deref() == Some("world_readable");
    let joined = UInt::new_saturating(s.rooms.joined_members(room_id)?.len() as u64);
    let mut summary = RoomSummary::new(room_id.to_owned(), join_rule, guest_can_join, joined, world_readable);
    summary.name = text(&content("m.room.name")?, "name");
    summary.topic = text(&content("m.room.topic")?, "topic");
    summary.canonical_alias =
        text(&content("m.room.canonical_alias")?, "alias").and_then(|a| a.as_str().try_into().ok());
    summary.avatar_url = text(&content("m.room.avatar")?, "url").map(Into::into);
    summary.room_type = create.get("type").and_then(Value::as_str).map(RoomType::from);
    summary.encryption = text(&content("m.room.encryption")?, "algorithm").map(|a| a.as_str().into());
    summary.room_version = Some(room.version.clone());

    let mut children_state = Vec::new();
    for (_, event_id) in s.rooms.state_of_kind(&state, "m.space.child")? {
        if children_state.len() >= MAX_CHILDREN {
            break;
        }
        let Some((pdu, _)) = s.rooms.get_pdu(&event_id)? else { continue };
        let content = pdu.content_value();
        if content["via"].as_array().is_none_or(|via| via.is_empty()) {
            continue; // an empty or missing `via` removes the child
        }
        children_state.push(json!({
            "type": "m.space.child",
            "state_key": pdu.state_key,
            "content": content,
            "sender": pdu.sender,
            "origin_server_ts": pdu.origin_server_ts,
        }));
    }
    sort_children(&mut children_state);
    Ok(Some(RoomEntry { summary, children_state }))
}

/// The spec's order of a space's children: those with a valid `order`
/// first, by it; then by the child event's timestamp; then by room id.
fn sort_children(children: &mut [Value]) {
    fn order(event: &Value) -> Option<&str> {
        event["content"]["order"].as_str().filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
    }
    children.sort_by(|a, b| {
        let key = |e: &Value| {
            let order = order(e);
            (order.is_none(), order.map(str::to_owned), e["origin_server_ts"].as_u64(), e["state_key"].to_string())
        };
        key(a).cmp(&key(b))
    });
}

/// Whether a local user may see a room in a hierarchy: a member (joined or
/// invited) always; otherwise as the room's join rule and history let anyone
/// preview it. Guests only ever see their own rooms (the guest policy).
fn user_may_see(s: &Services, session: &Session, summary: &RoomSummary) -> Result<bool> {
    let room_id = &summary.room_id;
    if matches!(s.rooms.membership(room_id, &session.user_id)?, Some(MembershipState::Join | MembershipState::Invite)) {
        return Ok(true);
    }
    if policy::check(s, session, Action::PreviewRoom { room_id }).is_err() {
        return Ok(false);
    }
    if summary.world_readable {
        return Ok(true);
    }
    Ok(match &summary.join_rule {
        JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_) => true,
        JoinRuleSummary::Restricted(restricted) => {
            let mut any = false;
            for allowed in &restricted.allowed_room_ids {
                if s.rooms.is_joined(allowed, &session.user_id)? {
                    any = true;
                    break;
                }
            }
            any
        }
        _ => false,
    })
}

/// Whether another server may see one of our rooms in a hierarchy: anyone
/// may preview it, or one of its users is in it (or, for a restricted room,
/// in a room that lets them in).
fn server_may_see(s: &Services, server: &ServerName, summary: &RoomSummary) -> Result<bool> {
    if summary.world_readable
        || matches!(
            summary.join_rule,
            JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_)
        )
    {
        return Ok(true);
    }
    let has_member = |room_id: &RoomId| -> Result<bool> {
        Ok(s.rooms.members(room_id)?.iter().any(|(user, membership)| {
            user.server_name() == server && matches!(membership, MembershipState::Join | MembershipState::Invite)
        }))
    };
    if has_member(&summary.room_id)? {
        return Ok(true);
    }
    if let JoinRuleSummary::Restricted(restricted) = &summary.join_rule {
        for allowed in &restricted.allowed_room_ids {
            if has_member(allowed)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The federation answer about one of our rooms for `server`: the room, its
/// children we hold that the server may see, and those it may not.
pub fn for_server(
    s: &Services,
    server: &ServerName,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<ruma::api::federation::space::get_hierarchy::v1::Response> {
    let not_found = || Error::not_found("This room is not known to this server.");
    let entry = local_entry(s, room_id)?.ok_or_else(not_found)?;
    if !server_may_see(s, server, &entry.summary)? {
        return Err(not_found());
    }
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for (child, _) in entry.children(suggested_only).into_iter().take(MAX_FEDERATION_CHILDREN) {
        let Some(child_entry) = local_entry(s, &child)? else { continue };
        if server_may_see(s, server, &child_entry.summary)? {
            children.push(child_entry.summary);
        } else {
            inaccessible.push(child);
        }
    }
    let parent = SpaceHierarchyParentSummary::new(entry.summary, raw_events(entry.children_state));
    let mut response = ruma::api::federation::space::get_hierarchy::v1::Response::new(parent);
    response.children = children;
    response.inaccessible_children = inaccessible;
    Ok(response)
}
