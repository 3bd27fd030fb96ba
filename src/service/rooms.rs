//! Rooms: building, signing, authorising and appending PDUs; room state as
//! delta snapshots; membership indexes; the timeline.
//!
//! Every append for one room happens under that room's lock, in a blocking
//! context (callers use `spawn_blocking`), and lands in one write batch.

pub(crate) mod data;
mod remote;
pub mod state;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{
            member::MembershipState,
            power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        },
    },
    room_version_rules::RoomVersionRules,
    state_res,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue as RawJsonValue};

pub use self::{
    remote::Placed,
    state::{ShortIds, State, StateKey},
};
use crate::{
    cache::ByteCache,
    error::{Error, Result},
    pdu::{Pdu, PduMeta, StateMap, StoredPdu, TxnRef, to_canonical},
    service::outbound::{self, OutboxItem, OutboxSignal},
    service::rooms::state::Snapshot,
    signing::SigningKey,
    storage::{Batch, Db},
};

/// A snapshot is stored in full after this many deltas.
const MAX_SNAPSHOT_CHAIN: u32 = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    pub current_state: u64,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    pub last_count: u64,
    /// Stream position of the last event that moves the room up a room
    /// list ([`BUMP_EVENT_TYPES`]); 0 in rooms stored before it was kept.
    #[serde(default)]
    pub last_bump: u64,
}

/// Events that move a room to the top of a sliding-sync room list (what
/// people see as activity; Synapse's default set): a member or a state
/// change does not.
pub const BUMP_EVENT_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

impl RoomRecord {
    /// Where the room stands in recency order: its last bump, or its last
    /// event in rooms stored before bumps were kept.
    pub fn bump_stamp(&self) -> u64 {
        if self.last_bump == 0 { self.last_count } else { self.last_bump }
    }

    /// Note an event at `count`, whatever its kind.
    pub(crate) fn note_event(&mut self, kind: &TimelineEventType, count: u64) {
        self.last_count = count;
        if BUMP_EVENT_TYPES.contains(&kind.to_string().as_str()) {
            self.last_bump = count;
        }
    }
}

/// A local user's membership in a room, as sync reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub membership: MembershipState,
    pub event_id: OwnedEventId,
    pub count: u64,
    #[serde(default)]
    pub forgotten: bool,
}

/// An event a local user wants to send.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    pub txn: Option<TxnRef>,
}

impl NewEvent {
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: Value) -> Self {
        Self { kind: kind.into(), content, state_key: Some(state_key.into()), redacts: None, txn: None }
    }

    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        Self { kind: kind.into(), content, state_key: None, redacts: None, txn: None }
    }
}

pub struct Rooms {
    db: Arc<Db>,
    server_name: OwnedServerName,
    signing: Arc<SigningKey>,
    locks: Mutex<HashMap<OwnedRoomId, Arc<Mutex<()>>>>,
    /// Half of `database.cache_mb`.
    pdu_cache: ByteCache<OwnedEventId, (Arc<Pdu>, PduMeta)>,
    /// A fifth of `database.cache_mb`.
    state_cache: ByteCache<u64, Arc<State>>,
    /// The pairs and events states hold, by short id (a quarter).
    pub short: ShortIds,
    /// Joined members by state snapshot (push rules' member count).
    joined_counts: ByteCache<u64, u64>,
    /// Per room, the other servers with joined members: where our events go.
    servers: Mutex<HashMap<OwnedRoomId, Arc<BTreeSet<OwnedServerName>>>>,
    outbox: Arc<OutboxSignal>,
    pub appended: Appended,
}

/// Rooms whose live timeline grew, each with the highest position written,
/// for work done after the write (push rules for users with pushers). A
/// room is marked before its positions are released, so whoever sees a
/// position as safe finds its room here or already taken care of.
#[derive(Default)]
pub struct Appended {
    rooms: Mutex<HashMap<OwnedRoomId, u64>>,
    notify: tokio::sync::Notify,
}

impl Appended {
    fn mark(&self, room_id: &RoomId, position: u64) {
        let mut rooms = self.rooms.lock().expect("appended rooms poisoned");
        let highest = rooms.entry(room_id.to_owned()).or_default();
        *highest = (*highest).max(position);
        drop(rooms);
        self.notify.notify_one();
    }

    /// The rooms marked, with their highest positions.
    pub fn pending(&self) -> Vec<(OwnedRoomId, u64)> {
        self.rooms.lock().expect("appended rooms poisoned").iter().map(|(r, p)| (r.clone(), *p)).collect()
    }

    /// The room was handled up to `upto`: unmarked unless it has more.
    pub fn handled(&self, room_id: &RoomId, upto: u64) {
        let mut rooms = self.rooms.lock().expect("appended rooms poisoned");
        if rooms.get(room_id).is_some_and(|highest| *highest <= upto) {
            rooms.remove(room_id);
        }
    }

    /// Until a room is marked (at once if one was since the last call).
    pub async fn marked(&self) {
        self.notify.notified().await;
    }
}

impl Rooms {
    pub fn new(
        db: Arc<Db>,
        server_name: OwnedServerName,
        signing: Arc<SigningKey>,
        outbox: Arc<OutboxSignal>,
        cache_bytes: usize,
    ) -> Result<Self> {
        Ok(Self {
            short: ShortIds::open(db.clone(), cache_bytes / 4)?,
            db,
            server_name,
            signing,
            servers: Mutex::new(HashMap::new()),
            outbox,
            locks: Mutex::new(HashMap::new()),
            pdu_cache: ByteCache::new(cache_bytes / 2),
            state_cache: ByteCache::new(cache_bytes / 5),
            joined_counts: ByteCache::new(cache_bytes / 20),
            appended: Appended::default(),
        })
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        self.locks.lock().expect("room locks poisoned").entry(room_id.to_owned()).or_default().clone()
    }

    // ----- reads -----

    /// Every room this server holds.
    pub fn all_room_ids(&self) -> Result<Vec<OwnedRoomId>> {
        data::room_ids(&self.db)
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        data::room_record(&self.db, room_id)
    }

    pub fn exists(&self, room_id: &RoomId) -> Result<bool> {
        data::room_exists(&self.db, room_id)
    }

    pub fn get_pdu(&self, event_id: &EventId) -> Result<Option<(Arc<Pdu>, PduMeta)>> {
        if let Some(hit) = self.pdu_cache.get(event_id) {
            return Ok(Some(hit));
        }
        let Some(stored) = data::get_pdu_record(&self.db, event_id)? else {
            return Ok(None);
        };
        let pdu = Arc::new(Pdu::from_stored(event_id.to_owned(), &stored)?);
        self.cache_pdu(pdu.clone(), stored.meta.clone());
        Ok(Some((pdu, stored.meta)))
    }

    fn cache_pdu(&self, pdu: Arc<Pdu>, meta: PduMeta) {
        // The JSON twice (as text and parsed), and the meta.
        let weight = pdu.json.get().len() * 2 + 512;
        self.pdu_cache.insert(pdu.event_id.clone(), (pdu, meta), weight);
    }

    pub fn state_at(&self, snapshot: u64) -> Result<Arc<State>> {
        if snapshot == 0 {
            return Ok(Arc::default());
        }
        if let Some(hit) = self.state_cache.get(&snapshot) {
            return Ok(hit);
        }
        let mut chain = Vec::new();
        let mut next = Some(snapshot);
        while let Some(id) = next {
            // A cached ancestor saves reading the rest of the chain.
            if let Some(hit) = self.state_cache.get(&id) {
                chain.push(hit.iter().collect());
                break;
            }
            let snap = data::snapshot(&self.db, id)?
                .ok_or_else(|| Error::internal(format!("state snapshot {id} is missing")))?;
            next = snap.parent;
            chain.push(snap.changes);
        }
        let entries: Vec<_> = chain.into_iter().rev().flatten().collect();
        let state = Arc::new(State::from_entries(entries));
        self.cache_state(snapshot, state.clone());
        Ok(state)
    }

    fn cache_state(&self, snapshot: u64, state: Arc<State>) {
        let weight = state.bytes() + 64;
        self.state_cache.insert(snapshot, state, weight);
    }

    /// How many members were joined in state snapshot `snapshot` (`state`).
    /// A delta on a snapshot whose count is known costs its changed pairs,
    /// not the room's members (a catch-up across a burst of joins).
    pub fn joined_count_at(&self, snapshot: u64, state: &State) -> Result<u64> {
        if let Some(hit) = self.joined_counts.get(&snapshot) {
            return Ok(hit);
        }
        let from_parent = match data::snapshot(&self.db, snapshot)? {
            Some(Snapshot { parent: Some(parent), changes, .. }) => match self.joined_counts.get(&parent) {
                Some(base) => Some(self.joined_after_changes(base, &*self.state_at(parent)?, &changes)?),
                None => None,
            },
            _ => None,
        };
        let joined = match from_parent {
            Some(joined) => joined,
            None => {
                let mut joined = 0;
                for (_, event_id) in self.state_of_kind(state, "m.room.member")? {
                    joined += u64::from(self.is_join_event(&event_id)?);
                }
                joined
            }
        };
        self.joined_counts.insert(snapshot, joined, 64);
        Ok(joined)
    }

    /// `base` joined members in `parent`, moved on by a delta's `changes`.
    fn joined_after_changes(&self, base: u64, parent: &State, changes: &[(u64, u64)]) -> Result<u64> {
        let mut joined = base;
        for (key, event) in changes {
            if self.short.key(*key)?.kind != "m.room.member" {
                continue;
            }
            let now = self.is_join_event(&self.short.event_id(*event)?)?;
            let before = match parent.get(*key) {
                Some(old) => self.is_join_event(&self.short.event_id(old)?)?,
                None => false,
            };
            joined = (joined + u64::from(now)).saturating_sub(u64::from(before));
        }
        Ok(joined)
    }

    fn is_join_event(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.get_pdu(event_id)?.is_some_and(|(pdu, _)| membership_of(&pdu) == Some(MembershipState::Join)))
    }

    pub fn current_state(&self, room_id: &RoomId) -> Result<Arc<State>> {
        match self.room(room_id)? {
            Some(room) => self.state_at(room.current_state),
            None => Ok(Arc::default()),
        }
    }

    /// The event holding `kind`/`state_key` in `state`.
    pub fn state_event(&self, state: &State, kind: &str, state_key: &str) -> Result<Option<OwnedEventId>> {
        let Some(key) = self.short.find_key(kind, state_key)? else { return Ok(None) };
        state.get(key).map(|event| self.short.event_id(event)).transpose()
    }

    /// Whether `state` holds `kind`/`state_key`.
    pub fn state_has(&self, state: &State, kind: &str, state_key: &str) -> Result<bool> {
        Ok(self.short.find_key(kind, state_key)?.is_some_and(|key| state.get(key).is_some()))
    }

    /// For each pair of `kind` in `state`, the state key and its event.
    pub fn state_of_kind(&self, state: &State, kind: &str) -> Result<Vec<(String, OwnedEventId)>> {
        let mut out = Vec::new();
        for (key, event) in state.iter() {
            let pair = self.short.key(key)?;
            if pair.kind == kind {
                out.push((pair.state_key.clone(), self.short.event_id(event)?));
            }
        }
        Ok(out)
    }

    /// The ids of every event `state` holds.
    pub fn state_event_ids(&self, state: &State) -> Result<Vec<OwnedEventId>> {
        state.iter().map(|(_, event)| self.short.event_id(event)).collect()
    }

    /// `state` with its strings, for what needs all of them (state
    /// resolution, whole-state answers).
    pub fn expand(&self, state: &State) -> Result<StateMap> {
        let mut out = StateMap::new();
        for (key, event) in state.iter() {
            let pair = self.short.key(key)?;
            out.insert((pair.kind.clone(), pair.state_key.clone()), self.short.event_id(event)?);
        }
        Ok(out)
    }

    /// A state given as strings, in short ids (giving ids to what has none).
    pub fn compact(&self, map: &StateMap) -> Result<State> {
        let entries = map.iter().map(|((kind, key), event_id)| self.short.entry(kind, key, event_id));
        Ok(State::from_entries(entries.collect::<Result<_>>()?))
    }

    /// The event of `kind`/`state_key` in `state`, for ruma's auth checks,
    /// which take an `Option`: a read that fails counts as no event (the
    /// checks then refuse more, never less) and is logged.
    fn auth_lookup(
        &self,
        state: &State,
        kind: &StateEventType,
        state_key: &str,
        fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
    ) -> Option<Arc<Pdu>> {
        match self.state_event(state, &kind.to_string(), state_key) {
            Ok(event_id) => event_id.and_then(|id| fetch(&id)),
            Err(e) => {
                tracing::error!(%kind, state_key, "cannot read room state for an auth check: {e}");
                None
            }
        }
    }

    pub fn state_pdu(&self, state: &State, kind: &str, state_key: &str) -> Result<Option<Arc<Pdu>>> {
        match self.state_event(state, kind, state_key)? {
            Some(event_id) => Ok(self.get_pdu(&event_id)?.map(|(pdu, _)| pdu)),
            None => Ok(None),
        }
    }

    pub fn current_state_pdu(&self, room_id: &RoomId, kind: &str, state_key: &str) -> Result<Option<Arc<Pdu>>> {
        let state = self.current_state(room_id)?;
        self.state_pdu(&state, kind, state_key)
    }

    /// The state content of `kind`/`state_key`, or `None`.
    pub fn state_content(&self, state: &State, kind: &str, state_key: &str) -> Result<Option<Value>> {
        Ok(self.state_pdu(state, kind, state_key)?.map(|pdu| pdu.content_value()))
    }

    /// The room's name (`m.room.name`) in `state`, if it has one.
    pub fn name_in(&self, state: &State) -> Result<Option<String>> {
        Ok(self.state_content(state, "m.room.name", "")?.and_then(|c| c["name"].as_str().map(str::to_owned)))
    }

    /// The room's name now, if it has one.
    pub fn name(&self, room_id: &RoomId) -> Result<Option<String>> {
        self.name_in(&*self.current_state(room_id)?)
    }

    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipState>> {
        data::membership(&self.db, room_id, user_id)
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.membership(room_id, user_id)? == Some(MembershipState::Join))
    }

    /// Every user with a membership in the room.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipState)>> {
        data::members(&self.db, room_id)
    }

    pub fn joined_members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        Ok(self.members(room_id)?.into_iter().filter(|(_, m)| *m == MembershipState::Join).map(|(u, _)| u).collect())
    }

    /// The rooms a local user has (or had) a membership in.
    pub fn user_rooms(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
        data::user_rooms(&self.db, user_id)
    }

    pub fn user_membership(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<MembershipRecord>> {
        data::user_membership(&self.db, user_id, room_id)
    }

    pub fn forget(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        data::set_forgotten(&self.db, user_id, room_id)
    }

    /// Timeline entries from `from` (exclusive) onwards (`forward`) or
    /// backwards, at most `limit`, as (ordering, event id). Orderings are
    /// stream positions for live events and negative for backfilled history.
    pub fn timeline(
        &self,
        room_id: &RoomId,
        from: i64,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<(i64, OwnedEventId)>> {
        data::timeline(&self.db, room_id, from, forward, limit)
    }

    /// The oldest event of the room's timeline.
    pub fn oldest_event(&self, room_id: &RoomId) -> Result<Option<(i64, OwnedEventId)>> {
        Ok(self.timeline(room_id, i64::MIN + 1, true, 1)?.pop())
    }

    pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
        version
            .rules()
            .ok_or_else(|| Error::unsupported_room_version(format!("Room version {version} is not supported.")))
    }

    /// The room's creators (sender of the create event plus, from v12, `additional_creators`).
    pub fn creators(&self, state: &State) -> Result<Vec<OwnedUserId>> {
        let Some(create) = self.state_pdu(state, "m.room.create", "")? else { return Ok(Vec::new()) };
        let mut creators = vec![create.sender.clone()];
        if let Some(extra) = create.content_value().get("additional_creators").and_then(|v| v.as_array()) {
            creators.extend(extra.iter().filter_map(|v| v.as_str()).filter_map(|s| OwnedUserId::try_from(s).ok()));
        }
        Ok(creators)
    }

    pub fn power_levels(&self, version: &RoomVersionId, state: &State) -> Result<RoomPowerLevels> {
        let rules = Self::rules(version)?;
        let source = match self.state_pdu(state, "m.room.power_levels", "")? {
            Some(pdu) => serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get())
                .map(RoomPowerLevelsSource::Original)
                .unwrap_or_default(),
            None => RoomPowerLevelsSource::None,
        };
        let creators =
            if rules.authorization.explicitly_privilege_room_creators { self.creators(state)? } else { Vec::new() };
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// Delete a room's history (events and timeline); the room record stays so
    /// its id is never reused. For guest rooms past their retention.
    pub fn purge_history(&self, room_id: &RoomId) -> Result<()> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        let mut batch = self.db.batch();
        let purged = data::purge_timeline(&self.db, &mut batch, room_id)?;
        crate::service::relations::stage_purge(&self.db, &mut batch, room_id, &purged)?;
        crate::service::search::stage_purge_room(&self.db, &mut batch, room_id)?;
        batch.commit()?;
        for event_id in purged {
            if let Ok(event_id) = OwnedEventId::try_from(String::from_utf8_lossy(&event_id).into_owned()) {
                self.pdu_cache.remove(&event_id);
            }
        }
        tracing::info!(%room_id, "purged room history");
        Ok(())
    }

    // ----- writes -----

    /// Create a room: `create_content` becomes the `m.room.create` event,
    /// followed by `events` in order. All events land in one batch, or none.
    pub fn create_room(
        &self,
        sender: &UserId,
        version: RoomVersionId,
        create_content: Value,
        events: Vec<NewEvent>,
    ) -> Result<(OwnedRoomId, Vec<Arc<Pdu>>)> {
        let rules = Self::rules(&version)?;
        let placeholder: OwnedRoomId = if rules.authorization.room_create_event_id_as_room_id {
            // Replaced by the create event's reference hash below.
            OwnedRoomId::try_from(format!("!pending:{}", self.server_name)).map_err(Error::internal)?
        } else {
            OwnedRoomId::try_from(format!("!{}:{}", crate::util::random_string(18), self.server_name))
                .map_err(Error::internal)?
        };
        // v12 room ids are the create event's hash: two creates by one user in
        // the same millisecond would collide, so a taken id is retried with a
        // later timestamp.
        for _ in 0..20 {
            let record = RoomRecord {
                version: version.clone(),
                current_state: 0,
                extremities: Vec::new(),
                depth: 0,
                last_count: 0,
                last_bump: 0,
            };
            let mut txn = Txn::new(self, placeholder.clone(), record, rules.clone(), Arc::default(), 0);
            let (create, _) =
                txn.build(sender, NewEvent::state(TimelineEventType::RoomCreate, "", create_content.clone()))?;
            if txn.rules.authorization.room_create_event_id_as_room_id {
                txn.room_id =
                    OwnedRoomId::try_from(format!("!{}", &create.event_id.as_str()[1..])).map_err(Error::internal)?;
            }
            let room_id = txn.room_id.clone();
            let lock = self.room_lock(&room_id);
            let _guard = lock.lock().expect("room lock poisoned");
            if self.exists(&room_id)? {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let create = Arc::new(Pdu { room_id: room_id.clone(), ..(*create).clone() });
            let mut pdus = vec![txn.stage((create, None))?];
            for event in events {
                let pdu = txn.build(sender, event)?;
                pdus.push(txn.stage(pdu)?);
            }
            txn.commit()?.wait_durable()?;
            return Ok((room_id, pdus));
        }
        Err(Error::room_in_use("Could not find a free room id; try again."))
    }

    /// Build, authorise and append one event from a local user.
    pub fn append(&self, room_id: &RoomId, sender: &UserId, event: NewEvent) -> Result<Arc<Pdu>> {
        Ok(self.append_all(room_id, vec![(sender.to_owned(), event)])?.remove(0))
    }

    /// Append several events in order, atomically.
    pub fn append_all(&self, room_id: &RoomId, events: Vec<(OwnedUserId, NewEvent)>) -> Result<Vec<Arc<Pdu>>> {
        let lock = self.room_lock(room_id);
        let guard = lock.lock().expect("room lock poisoned");
        let record = self.room(room_id)?.ok_or_else(|| Error::not_found("This room does not exist on this server."))?;
        let rules = Self::rules(&record.version)?;
        let state = self.state_at(record.current_state)?;
        let depth = self.snapshot_depth(record.current_state)?;
        let mut txn = Txn::new(self, room_id.to_owned(), record, rules, state, depth);
        let mut out = Vec::new();
        for (sender, event) in events {
            if let Some(existing) = self.event_for_txn(room_id, &sender, event.txn.as_ref())? {
                out.push(existing);
                continue;
            }
            let pdu = txn.build(&sender, event)?;
            out.push(txn.stage(pdu)?);
        }
        let committed = txn.commit()?;
        // The next writer to this room builds on our events while we wait for the disk.
        drop(guard);
        committed.wait_durable()?;
        Ok(out)
    }

    /// Build and sign an event on the current state without appending it:
    /// an invite that the invitee's server must co-sign first.
    pub fn prepare(&self, room_id: &RoomId, sender: &UserId, event: NewEvent) -> Result<(RoomVersionId, Arc<Pdu>)> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        let record = self.room(room_id)?.ok_or_else(|| Error::not_found("This room does not exist on this server."))?;
        let rules = Self::rules(&record.version)?;
        let state = self.state_at(record.current_state)?;
        let version = record.version.clone();
        let txn = Txn::new(self, room_id.to_owned(), record, rules, state, 0);
        let (pdu, _) = txn.build(sender, event)?;
        Ok((version, pdu))
    }

    /// The event a client already sent with this transaction id, if any.
    fn event_for_txn(&self, room_id: &RoomId, sender: &UserId, txn: Option<&TxnRef>) -> Result<Option<Arc<Pdu>>> {
        let Some(txn) = txn else { return Ok(None) };
        let Some(event_id) = data::txn_event(&self.db, room_id, sender, txn)? else { return Ok(None) };
        Ok(self.get_pdu(&event_id)?.map(|(pdu, _)| pdu))
    }

    fn snapshot_depth(&self, snapshot: u64) -> Result<u32> {
        if snapshot == 0 {
            return Ok(0);
        }
        let snap = data::snapshot(&self.db, snapshot)?;
        Ok(snap.map(|s| s.depth).unwrap_or(0))
    }
}

/// One atomic group of appends to one room.
struct Txn<'a> {
    rooms: &'a Rooms,
    batch: Batch<'a>,
    room_id: OwnedRoomId,
    record: RoomRecord,
    rules: RoomVersionRules,
    /// Shared with the state cache until a state event changes it: a
    /// message copies nothing, however many members the room has.
    state: Arc<State>,
    snapshot_depth: u32,
    /// Changes since the last stored full or delta snapshot in this txn.
    pending: HashMap<OwnedEventId, (Arc<Pdu>, PduMeta)>,
    /// Events whose stored copy this txn replaces with a redacted one.
    redacted: Vec<OwnedEventId>,
    /// Local users' membership records written by this txn.
    membership_updates: HashMap<OwnedUserId, MembershipRecord>,
    /// Chain depths of the snapshots this txn wrote.
    snapshot_depths: HashMap<u64, u32>,
    /// Events to send to the room's other servers.
    outgoing: Vec<Arc<Pdu>>,
    /// Whether a member event was staged (the server list may change).
    members_changed: bool,
    /// The highest live timeline position staged.
    last_live: Option<u64>,
}

impl<'a> Txn<'a> {
    fn new(
        rooms: &'a Rooms,
        room_id: OwnedRoomId,
        record: RoomRecord,
        rules: RoomVersionRules,
        state: Arc<State>,
        snapshot_depth: u32,
    ) -> Self {
        Self {
            batch: rooms.db.batch(),
            rooms,
            room_id,
            record,
            rules,
            state,
            snapshot_depth,
            pending: HashMap::new(),
            redacted: Vec::new(),
            membership_updates: HashMap::new(),
            snapshot_depths: HashMap::new(),
            outgoing: Vec::new(),
            members_changed: false,
            last_live: None,
        }
    }

    fn fetch(&self, event_id: &EventId) -> Option<Arc<Pdu>> {
        if let Some((pdu, _)) = self.pending.get(event_id) {
            return Some(pdu.clone());
        }
        self.rooms.get_pdu(event_id).ok().flatten().map(|(pdu, _)| pdu)
    }

    /// Make the signed PDU for `event` on top of the working state and check
    /// it against the auth rules. Nothing is written.
    fn build(&self, sender: &UserId, event: NewEvent) -> Result<(Arc<Pdu>, Option<TxnRef>)> {
        let is_create = event.kind == TimelineEventType::RoomCreate;
        let txn = event.txn.clone();
        let mut object = self.template(sender, event)?;
        crate::pdu::assign_event_id(&mut object, &self.rules, &self.rooms.server_name);
        ruma::signatures::hash_and_sign_event(
            self.rooms.server_name.as_str(),
            &self.rooms.signing.key_pair,
            &mut object,
            &self.rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => {
                Error::too_large("The event is larger than the 65536 bytes a Matrix event may take.")
            }
            other => Error::internal(format!("signing: {other}")),
        })?;
        let hash = ruma::signatures::reference_hash(&object, &self.rules).map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => {
                Error::too_large("The event is larger than the 65536 bytes a Matrix event may take.")
            }
            other => Error::internal(format!("reference hash: {other}")),
        })?;
        // Versions 1 and 2 carry the id; later ones are named by the hash just made.
        let event_id = if self.rules.event_format.require_event_id {
            crate::pdu::event_id_of(&object, &self.rules).map_err(Error::internal)?
        } else {
            OwnedEventId::try_from(format!("${hash}")).map_err(Error::internal)?
        };
        let room_id = if is_create && self.rules.authorization.room_create_event_id_as_room_id {
            OwnedRoomId::try_from(format!("!{hash}")).map_err(Error::internal)?
        } else {
            self.room_id.clone()
        };
        let json = RawJsonValue::from_string(serde_json::to_string(&object)?)?;
        let pdu = Pdu::from_json(event_id, &room_id, json).map_err(Error::internal)?;

        // Room version rules checked by ruma: the same checks a remote server runs.
        state_res::check_state_independent_auth_rules(&self.rules.authorization, &pdu, |id| self.fetch(id))
            .map_err(|e| Error::forbidden(format!("This event is not allowed: {e}")))?;
        state_res::check_state_dependent_auth_rules(
            &self.rules.authorization,
            &pdu,
            |kind: &StateEventType, state_key: &str| {
                self.rooms.auth_lookup(&self.state, kind, state_key, |id| self.fetch(id))
            },
        )
        .map_err(|e| Error::forbidden(format!("This event is not allowed: {e}")))?;
        let mut pdu = pdu;
        pdu.room_id = self.room_id.clone();
        if let Some(target) = &pdu.redacts {
            self.check_redaction(sender, target)?;
        }
        Ok((Arc::new(pdu), txn))
    }

    /// The unsigned event object for `event` on top of the working state:
    /// auth events, prev events, depth, time. `build` signs it; for a remote
    /// user's join it is the `make_join` template their server signs.
    fn template(&self, sender: &UserId, event: NewEvent) -> Result<CanonicalJsonObject> {
        let is_create = event.kind == TimelineEventType::RoomCreate;
        let content = to_canonical(event.content).map_err(Error::bad_json)?;
        let content_raw = RawJsonValue::from_string(serde_json::to_string(&content)?)?;
        let auth_types = state_res::auth_types_for_event(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &self.rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("The event content is not valid: {e}")))?;
        let mut auth_events: Vec<OwnedEventId> = Vec::new();
        for (kind, state_key) in auth_types {
            if let Some(id) = self.rooms.state_event(&self.state, &kind.to_string(), &state_key)? {
                auth_events.push(id);
            }
        }
        let depth = self.record.depth + 1;
        let mut object = CanonicalJsonObject::new();
        let string = |s: &str| CanonicalJsonValue::String(s.to_owned());
        // Versions 1 and 2 cite events as `[id, {hashes}]` pairs, later ones by id.
        let pairs = self.rules.events_reference_format == ruma::room_version_rules::EventsReferenceFormatVersion::V1;
        let reference = |id: &OwnedEventId| {
            if !pairs {
                return string(id.as_str());
            }
            let hashes = self
                .fetch(id)
                .and_then(|pdu| pdu.canonical_object().remove("hashes"))
                .unwrap_or_else(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
            CanonicalJsonValue::Array(vec![string(id.as_str()), hashes])
        };
        let ids = |list: &[OwnedEventId]| CanonicalJsonValue::Array(list.iter().map(reference).collect());
        object.insert("type".into(), string(&event.kind.to_string()));
        object.insert("content".into(), CanonicalJsonValue::Object(content));
        object.insert("sender".into(), string(sender.as_str()));
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().get().into()),
        );
        object.insert("depth".into(), CanonicalJsonValue::Integer((depth as u32).into()));
        object.insert("prev_events".into(), ids(&self.record.extremities));
        object.insert("auth_events".into(), ids(&auth_events));
        if !(is_create && self.rules.authorization.room_create_event_id_as_room_id) {
            object.insert("room_id".into(), string(self.room_id.as_str()));
        }
        if let Some(state_key) = &event.state_key {
            object.insert("state_key".into(), string(state_key));
        }
        if let Some(redacts) = &event.redacts
            && !self.rules.redaction.keep_room_redaction_redacts
        {
            object.insert("redacts".into(), string(redacts.as_str()));
        }
        Ok(object)
    }

    /// From room version 3 the auth rules leave redactions to the server: a
    /// user may redact their own events, or others' with the `redact` level.
    fn check_redaction(&self, sender: &UserId, target: &EventId) -> Result<()> {
        let Some(target) = self.fetch(target) else { return Ok(()) };
        if target.sender == sender {
            return Ok(());
        }
        let power = self.rooms.power_levels(&self.record.version, &self.state)?;
        if power.user_can_redact_event_of_other(sender) {
            Ok(())
        } else {
            Err(Error::forbidden("You may not redact other people's events in this room."))
        }
    }

    /// Put an authorised event into the batch and move the working state on.
    fn stage(&mut self, (pdu, txn): (Arc<Pdu>, Option<TxnRef>)) -> Result<Arc<Pdu>> {
        let count = self.batch.next_count_quiet();
        self.batch.wake_room(&self.room_id);
        let state_before = self.record.current_state;
        let mut meta = PduMeta {
            room_id: self.room_id.clone(),
            count,
            backfilled: None,
            state_before,
            state_after: state_before,
            txn,
            replaces_state: None,
            prev_content: None,
            redacted_because: None,
            rejected: false,
        };
        if let Some(state_key) = &pdu.state_key {
            // A copy of 16 bytes per pair, once per transaction.
            let mut state = std::mem::take(&mut self.state);
            let (key, event) = self.put_state_event(Arc::make_mut(&mut state), &pdu, state_key, &mut meta)?;
            self.state = state;
            let snapshot_id = self.batch.next_count_quiet();
            let snapshot = if self.snapshot_depth >= MAX_SNAPSHOT_CHAIN || state_before == 0 {
                self.snapshot_depth = 0;
                Snapshot { parent: None, depth: 0, changes: self.state.iter().collect() }
            } else {
                self.snapshot_depth += 1;
                Snapshot { parent: Some(state_before), depth: self.snapshot_depth, changes: vec![(key, event)] }
            };
            data::put_snapshot(&mut self.batch, snapshot_id, &snapshot);
            meta.state_after = snapshot_id;
            self.record.current_state = snapshot_id;
            self.rooms.cache_state(snapshot_id, self.state.clone());

            if pdu.kind == TimelineEventType::RoomMember {
                self.index_membership(&pdu, state_key, count)?;
                self.members_changed = true;
            }
        }
        if pdu.kind == TimelineEventType::RoomRedaction
            && let Some(target) = pdu.redacts.clone()
        {
            self.apply_redaction(&pdu, &target)?;
        }
        if let Some(txn) = &meta.txn {
            data::put_txn_event(&mut self.batch, &self.room_id, &pdu.sender, txn, &pdu.event_id);
        }
        self.put_event(&pdu, &meta)?;
        self.record.extremities = vec![pdu.event_id.clone()];
        self.record.depth += 1;
        self.record.note_event(&pdu.kind, count);
        self.pending.insert(pdu.event_id.clone(), (pdu.clone(), meta));
        self.outgoing.push(pdu.clone());
        Ok(pdu)
    }

    /// Make `pdu` (a state event) hold its pair in `state`, noting in
    /// `meta` what it replaces; the pair and the event as short ids.
    fn put_state_event(&self, state: &mut State, pdu: &Pdu, state_key: &str, meta: &mut PduMeta) -> Result<(u64, u64)> {
        let key = self.rooms.short.key_id(&pdu.kind.to_string(), state_key)?;
        let event = self.rooms.short.event_short(&pdu.event_id)?;
        if let Some(old) = state.insert(key, event) {
            let old = self.rooms.short.event_id(old)?;
            if let Some(old_pdu) = self.fetch(&old) {
                meta.prev_content = Some(old_pdu.content.clone());
            }
            meta.replaces_state = Some(old);
        }
        Ok((key, event))
    }

    /// The event and its timeline entry at its stream position.
    fn put_event(&mut self, pdu: &Pdu, meta: &PduMeta) -> Result<()> {
        crate::service::relations::stage_index(&self.rooms.db, &mut self.batch, pdu, meta.ordering())?;
        crate::service::search::stage_index(&mut self.batch, pdu, meta.ordering());
        data::put_timeline(&mut self.batch, &self.room_id, meta.ordering(), &pdu.event_id);
        if meta.ordering() > 0 {
            self.last_live = self.last_live.max(Some(meta.count));
        }
        data::put_pdu(&mut self.batch, &pdu.event_id, &StoredPdu { meta: meta.clone(), pdu: pdu.json.clone() });
        Ok(())
    }

    fn index_membership(&mut self, pdu: &Pdu, state_key: &str, count: u64) -> Result<()> {
        let Some(membership) = membership_of(pdu) else { return Ok(()) };
        let Ok(user_id) = OwnedUserId::try_from(state_key) else { return Ok(()) };
        data::put_member(&mut self.batch, &self.room_id, &user_id, &membership);
        self.batch.members_changed(&self.room_id);
        if user_id.server_name() == self.rooms.server_name {
            // Their sync may not be watching this room yet (a join, an
            // invite): `put_user_membership` wakes them.
            // A profile change (join to join) is not a membership change: keep
            // the position of the transition, so sync does not resend the room.
            let previous = match self.membership_updates.get(&user_id) {
                Some(record) => Some(record.clone()),
                None => data::user_membership(&self.rooms.db, &user_id, &self.room_id)?,
            };
            let since = previous.filter(|p| p.membership == membership).map_or(count, |p| p.count);
            let record =
                MembershipRecord { membership, event_id: pdu.event_id.clone(), count: since, forgotten: false };
            data::put_user_membership(&mut self.batch, &user_id, &self.room_id, &record);
            self.membership_updates.insert(user_id, record);
        }
        Ok(())
    }

    fn apply_redaction(&mut self, redaction: &Pdu, target: &EventId) -> Result<()> {
        let stored = match self.pending.get(target) {
            Some((pdu, meta)) => Some(StoredPdu { meta: meta.clone(), pdu: pdu.json.clone() }),
            None => data::get_pdu_record(&self.rooms.db, target)?,
        };
        let Some(mut stored) = stored else { return Ok(()) };
        if stored.meta.room_id != self.room_id {
            return Ok(());
        }
        let object: CanonicalJsonObject = serde_json::from_str(stored.pdu.get())?;
        let redacted = ruma::canonical_json::redact(object, &self.rules.redaction, None).map_err(Error::internal)?;
        stored.pdu = RawJsonValue::from_string(serde_json::to_string(&redacted)?)?;
        stored.meta.redacted_because = Some(RawJsonValue::from_string(serde_json::to_string(
            &redaction.to_client_event(&PduMeta { txn: None, ..stored.meta.clone() }, true, None),
        )?)?);
        data::put_pdu(&mut self.batch, target, &stored);
        if let Some((_, meta)) = self.pending.get_mut(target) {
            meta.redacted_because = stored.meta.redacted_because.clone();
        }
        self.redacted.push(target.to_owned());
        Ok(())
    }

    /// Write the batch; the caller then releases the room lock and waits
    /// with [`Committed::wait_durable`], so that writers to other rooms and
    /// the next writer to this one share the fsync.
    fn commit(self) -> Result<Committed<&'a Db>> {
        let Txn { rooms, mut batch, room_id, record, pending, redacted, outgoing, members_changed, last_live, .. } =
            self;
        data::put_room_record(&mut batch, &room_id, &record);
        // Our events go to every server in the room before the change (a
        // kicked server hears of its kick), in the same batch as the event.
        let mut woken = BTreeSet::new();
        if !outgoing.is_empty() {
            let servers = rooms.remote_servers(&room_id)?;
            for pdu in &outgoing {
                let mut destinations: BTreeSet<OwnedServerName> = servers.iter().cloned().collect();
                // A membership change reaches its subject's server even if it
                // has nobody joined (a withdrawn invite, a refused knock). An
                // invite itself went there through `/invite`: a server holding
                // no room cannot place it from a transaction.
                if pdu.kind == TimelineEventType::RoomMember
                    && pdu.content_value()["membership"] != "invite"
                    && let Some(target) = pdu.state_key.as_deref().and_then(|k| <&UserId>::try_from(k).ok())
                    && target.server_name() != rooms.server_name
                {
                    destinations.insert(target.server_name().to_owned());
                }
                destinations.remove(pdu.sender.server_name());
                outbound::queue(&mut batch, &destinations, &OutboxItem::Pdu(pdu.event_id.clone()));
                woken.extend(destinations);
            }
        }
        if let Some(position) = last_live {
            rooms.appended.mark(&room_id, position);
        }
        let unsynced = batch.commit_unsynced()?;
        if members_changed {
            rooms.servers.lock().expect("server cache poisoned").remove(&room_id);
        }
        // After the write: a reader racing the commit may have cached the
        // unredacted copy, so redaction targets are evicted only now.
        for target in &redacted {
            rooms.pdu_cache.remove(target);
        }
        for (_, (pdu, meta)) in pending.into_iter().filter(|(id, _)| !redacted.contains(id)) {
            rooms.cache_pdu(pdu, meta);
        }
        Ok(Committed { unsynced, outbox: rooms.outbox.clone(), woken })
    }
}

/// A room transaction written but not yet fsynced: borrowing the database
/// while its writer waits, or put off with [`Committed::defer`].
#[must_use = "acknowledge the events only after `wait_durable`"]
pub struct Committed<D: std::ops::Deref<Target = Db>> {
    unsynced: crate::storage::Unsynced<D>,
    outbox: Arc<OutboxSignal>,
    /// Servers with new events queued for them.
    woken: BTreeSet<OwnedServerName>,
}

/// A room transaction whose fsync was put off.
pub type DeferredCommit = Committed<Arc<Db>>;

impl<D: std::ops::Deref<Target = Db>> Committed<D> {
    /// Once the events are on disk, the other servers may hear of them.
    pub fn wait_durable(self) -> Result<()> {
        let Committed { unsynced, outbox, woken } = self;
        unsynced.wait_durable()?;
        for server in &woken {
            outbox.wake(server);
        }
        Ok(())
    }
}

impl Committed<&Db> {
    /// Wait later, together with other transactions (an inbound
    /// transaction's PDUs share one fsync before it is answered); `db` is
    /// the database it was written to.
    pub(crate) fn defer(self, db: Arc<Db>) -> DeferredCommit {
        let Committed { unsynced, outbox, woken } = self;
        Committed { unsynced: unsynced.defer(db), outbox, woken }
    }
}

/// The membership a member event's content gives (`None` if it names none
/// that can be read).
pub fn membership_of(pdu: &Pdu) -> Option<MembershipState> {
    #[derive(Deserialize)]
    struct Content {
        membership: MembershipState,
    }
    serde_json::from_str::<Content>(pdu.content.get()).ok().map(|c| c.membership)
}

/// Whether the member event this is the metadata of replaced a join (its
/// `prev_content` says `join`).
pub fn replaced_a_join(meta: &crate::pdu::PduMeta) -> bool {
    #[derive(Deserialize)]
    struct Content {
        membership: MembershipState,
    }
    meta.prev_content
        .as_ref()
        .and_then(|c| serde_json::from_str::<Content>(c.get()).ok())
        .is_some_and(|c| c.membership == MembershipState::Join)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Joined counts taken from a parent's count and the delta must be what
    /// counting every member of each state gives.
    #[test]
    fn joined_counts_moved_on_by_deltas_match_a_full_count() {
        let dir = tempfile::tempdir().unwrap();
        let services = crate::service::open_for_test(dir.path());
        let rooms = &services.rooms;
        let server = services.server_name().to_owned();
        let user = |name: &str| OwnedUserId::try_from(format!("@{name}:{server}")).unwrap();
        let member = |name: &str, membership: &str| {
            NewEvent::state("m.room.member", user(name).as_str(), json!({ "membership": membership }))
        };
        let (room_id, created) = rooms
            .create_room(
                &user("alice"),
                RoomVersionId::V11,
                json!({ "creator": user("alice") }),
                vec![
                    member("alice", "join"),
                    NewEvent::state("m.room.join_rules", "", json!({ "join_rule": "public" })),
                ],
            )
            .unwrap();
        let mut snapshots: Vec<u64> =
            created.iter().map(|pdu| rooms.get_pdu(&pdu.event_id).unwrap().unwrap().1.state_after).collect();
        let steps = [("bob", "join"), ("carol", "join"), ("bob", "leave"), ("dave", "join"), ("carol", "join")];
        for (name, membership) in steps {
            let pdu = rooms.append(&room_id, &user(name), member(name, membership)).unwrap();
            snapshots.push(rooms.get_pdu(&pdu.event_id).unwrap().unwrap().1.state_after);
        }
        let counted = |snapshot: u64| {
            let state = rooms.state_at(snapshot).unwrap();
            let members = rooms.state_of_kind(&state, "m.room.member").unwrap();
            members.iter().filter(|(_, id)| rooms.is_join_event(id).unwrap()).count() as u64
        };
        let last = data::snapshot(&rooms.db, *snapshots.last().unwrap()).unwrap().unwrap();
        assert_eq!(last.parent, Some(snapshots[snapshots.len() - 2]), "the last join is a delta on the one before");
        // In order, so each delta finds its parent's count cached.
        let joined: Vec<u64> =
            snapshots.iter().map(|s| rooms.joined_count_at(*s, &rooms.state_at(*s).unwrap()).unwrap()).collect();
        assert_eq!(joined, snapshots.iter().map(|s| counted(*s)).collect::<Vec<_>>());
        assert_eq!(joined[joined.len() - steps.len()..], [2, 3, 2, 3, 3], "bob, carol, bob leaves, dave, carol again");
    }
}
