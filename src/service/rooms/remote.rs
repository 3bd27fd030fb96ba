//! Events that come from other servers: checking them against their auth
//! events and the state before them, placing them in the room's DAG
//! (soft-failing what the current state forbids, resolving forks with
//! ruma's state resolution v2), storing the outliers a join brings, and
//! the templates and state other servers need to join our rooms.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    state_res::{self, utils::event_id_set::EventIdSet},
};

use super::{
    NewEvent, RoomRecord, Rooms, Txn, data,
    state::{Snapshot, State},
};
use crate::{
    error::{Error, Result},
    pdu::{Pdu, PduMeta, StoredPdu},
};

/// Bounds the walks over auth chains, so a hostile DAG cannot exhaust us.
const MAX_AUTH_CHAIN: usize = 100_000;

/// Where an event from another server ended up.
#[derive(Debug)]
pub enum Placed {
    /// In the timeline, with its state.
    Timeline(Arc<Pdu>),
    /// Allowed by the state before it but not by the room's current state:
    /// stored, not shown, not built upon.
    SoftFailed,
    /// Already stored.
    Known,
}

impl Rooms {
    /// The other servers with members joined to the room.
    pub fn remote_servers(&self, room_id: &RoomId) -> Result<Arc<BTreeSet<OwnedServerName>>> {
        if let Some(hit) = self.servers.lock().expect("server cache poisoned").get(room_id) {
            return Ok(hit.clone());
        }
        let servers: BTreeSet<OwnedServerName> = self
            .joined_members(room_id)?
            .into_iter()
            .map(|user| user.server_name().to_owned())
            .filter(|server| *server != self.server_name)
            .collect();
        let servers = Arc::new(servers);
        self.servers.lock().expect("server cache poisoned").insert(room_id.to_owned(), servers.clone());
        Ok(servers)
    }

    /// Whether the event is stored with its place in the DAG (not only as
    /// an outlier, whose state we do not know).
    pub fn has_state_for(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.get_pdu(event_id)?.is_some_and(|(_, meta)| meta.has_state()))
    }

    /// The room state after an event, if we know it.
    pub fn state_after_event(&self, event_id: &EventId) -> Result<Option<Arc<State>>> {
        match self.get_pdu(event_id)? {
            Some((_, meta)) if meta.has_state() => Ok(Some(self.state_at(meta.state_after)?)),
            _ => Ok(None),
        }
    }

    /// The room state before an event: the states after its prev events,
    /// resolved. `None` when one of them is unknown or an outlier.
    pub fn state_before_event(&self, version: &RoomVersionId, prev_events: &[OwnedEventId]) -> Result<Option<State>> {
        let mut states = Vec::new();
        for prev in prev_events {
            match self.state_after_event(prev)? {
                Some(state) => states.push(state),
                None => return Ok(None),
            }
        }
        self.resolve(version, states).map(Some)
    }

    /// State resolution (v2) of several forks of the room state.
    pub fn resolve(&self, version: &RoomVersionId, states: Vec<Arc<State>>) -> Result<State> {
        let mut distinct: Vec<Arc<State>> = Vec::new();
        for state in states {
            if !distinct.iter().any(|s| **s == *state) {
                distinct.push(state);
            }
        }
        match distinct.len() {
            0 => return Ok(State::new()),
            1 => return Ok((*distinct[0]).clone()),
            _ => {}
        }
        let rules = Self::rules(version)?;
        // Room version 1's own algorithm is not in ruma: its forks are
        // resolved with version 2's (see the README's note on version 1).
        let v2 = rules.state_res.v2_rules().unwrap_or(&ruma::room_version_rules::StateResolutionV2Rules::V2_0);
        let mut maps: Vec<state_res::StateMap<OwnedEventId>> = Vec::new();
        let mut chains = Vec::new();
        for state in &distinct {
            let mut map = state_res::StateMap::new();
            let mut events = Vec::with_capacity(state.len());
            for (key, event) in state.iter() {
                let pair = self.short.key(key)?;
                let event_id = self.short.event_id(event)?;
                events.push(event_id.clone());
                map.insert((StateEventType::from(pair.kind.as_str()), pair.state_key.clone()), event_id);
            }
            maps.push(map);
            chains.push(self.auth_chain(events)?.into_iter().collect::<EventIdSet<OwnedEventId>>());
        }
        let fetch = |id: &EventId| self.get_pdu(id).ok().flatten().map(|(pdu, _)| pdu);
        let resolved = state_res::resolve(&rules.authorization, v2, &maps, chains, fetch, |conflicted| {
            let starts: Vec<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            self.conflicted_subgraph(&starts).ok()
        })
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        let entries = resolved.iter().map(|((kind, key), event_id)| self.short.entry(&kind.to_string(), key, event_id));
        Ok(State::from_entries(entries.collect::<Result<_>>()?))
    }

    /// Every event reachable through `auth_events` from `start` (inclusive).
    pub fn auth_chain(&self, start: impl IntoIterator<Item = OwnedEventId>) -> Result<HashSet<OwnedEventId>> {
        let mut seen = HashSet::new();
        let mut todo: Vec<OwnedEventId> = start.into_iter().collect();
        while let Some(id) = todo.pop() {
            if seen.len() >= MAX_AUTH_CHAIN {
                return Err(Error::internal("auth chain too long"));
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some((pdu, _)) = self.get_pdu(&id)? {
                todo.extend(pdu.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
            }
        }
        Ok(seen)
    }

    /// Room v12's conflicted state subgraph: the events on auth-event paths
    /// from one conflicted state event to another. The graph may come from
    /// another server, so the walk is iterative and bounded by the auth
    /// chain's size (`MAX_AUTH_CHAIN`), never recursive.
    fn conflicted_subgraph(&self, conflicted: &[OwnedEventId]) -> Result<EventIdSet<OwnedEventId>> {
        let reachable = self.auth_chain(conflicted.iter().cloned())?;
        // Reverse edges: for each event, the reachable events citing it as an auth event.
        let mut cited_by: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        for id in &reachable {
            if let Some((pdu, _)) = self.get_pdu(id)? {
                for parent in &pdu.auth_events {
                    cited_by.entry(parent.clone()).or_default().push(id.clone());
                }
            }
        }
        // The conflicted events, and every event with a path to one, found
        // walking back from them (`out` is also the set already walked).
        let mut out: EventIdSet<OwnedEventId> = conflicted.iter().cloned().collect();
        let mut todo: Vec<&OwnedEventId> = conflicted.iter().collect();
        while let Some(id) = todo.pop() {
            for child in cited_by.get(id).into_iter().flatten() {
                if out.insert(child.clone()) {
                    todo.push(child);
                }
            }
        }
        Ok(out)
    }

    /// Check an event against the auth rules with `state` as the state
    /// before it. `extra` holds events not stored yet.
    pub fn check_auth(
        &self,
        version: &RoomVersionId,
        pdu: &Arc<Pdu>,
        state: &State,
        extra: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> std::result::Result<(), String> {
        let rules = Self::rules(version).map_err(|e| e.to_string())?;
        let fetch =
            |id: &EventId| extra.get(id).cloned().or_else(|| self.get_pdu(id).ok().flatten().map(|(pdu, _)| pdu));
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch)?;
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
            self.auth_lookup(state, kind, key, fetch)
        })
    }

    /// The state its own auth events describe, for the first auth check.
    pub fn auth_state(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
        extra: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<std::result::Result<State, OwnedEventId>> {
        let mut entries = Vec::new();
        // From v12 the create event is named by the room id, not listed.
        if Self::rules(version)?.authorization.room_create_event_id_as_room_id
            && pdu.kind != TimelineEventType::RoomCreate
            && let Ok(create) = OwnedEventId::try_from(format!("${}", &pdu.room_id.as_str()[1..]))
        {
            entries.push(self.short.entry("m.room.create", "", &create)?);
        }
        for id in &pdu.auth_events {
            let event = match extra.get(id) {
                Some(event) => event.clone(),
                None => match self.get_pdu(id)? {
                    Some((event, _)) => event,
                    None => return Ok(Err(id.clone())),
                },
            };
            if let Some(key) = &event.state_key {
                entries.push(self.short.entry(&event.kind.to_string(), key, id)?);
            }
        }
        Ok(Ok(State::from_entries(entries)))
    }

    /// Store events whose place in the DAG we do not know (auth chains,
    /// state from a join): readable by id, not in any timeline.
    pub fn store_outliers(&self, room_id: &RoomId, pdus: &[Arc<Pdu>]) -> Result<()> {
        let mut batch = self.db.batch();
        for pdu in pdus {
            if self.get_pdu(&pdu.event_id)?.is_some() {
                continue;
            }
            let meta = PduMeta::outlier(room_id.to_owned());
            data::put_pdu(&mut batch, &pdu.event_id, &StoredPdu { meta, pdu: pdu.json.clone() });
        }
        batch.commit()?;
        Ok(())
    }

    /// Keep an event the auth rules refused, so the events that follow it
    /// can be placed (its state is the state before it), as Synapse does.
    pub fn store_rejected(&self, room_id: &RoomId, pdu: Arc<Pdu>, state_before: State) -> Result<()> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        if self.get_pdu(&pdu.event_id)?.is_some_and(|(_, meta)| meta.has_state()) {
            return Ok(());
        }
        let record = self.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        let rules = Self::rules(&record.version)?;
        let current = self.state_at(record.current_state)?;
        let depth = self.snapshot_depth(record.current_state)?;
        let mut txn = Txn::new(self, room_id.to_owned(), record, rules, current, depth);
        txn.stage_without_timeline(&pdu, &state_before, true)?;
        txn.commit()?.wait_durable()
    }

    /// Place an event from another server, already checked against its
    /// auth events and `state_before`: soft-fail it if the current state
    /// forbids it, else append it and move the current state on (resolving
    /// when it does not extend every forward extremity). `broadcast` sends
    /// it on to the room's other servers (joins and leaves we sign off on).
    pub fn append_remote(
        &self,
        room_id: &RoomId,
        pdu: Arc<Pdu>,
        state_before: State,
        broadcast: bool,
    ) -> Result<Placed> {
        let (placed, written) = self.append_remote_deferred(room_id, pdu, state_before, broadcast)?;
        if let Some(written) = written {
            written.wait_durable()?;
        }
        Ok(placed)
    }

    /// [`Self::append_remote`], its fsync left to the caller (`None`:
    /// nothing was written, or it is on disk already).
    pub fn append_remote_deferred(
        &self,
        room_id: &RoomId,
        pdu: Arc<Pdu>,
        state_before: State,
        broadcast: bool,
    ) -> Result<(Placed, Option<super::DeferredCommit>)> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        if self.has_state_for(&pdu.event_id)? {
            return Ok((Placed::Known, None));
        }
        let record = self.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        let rules = Self::rules(&record.version)?;
        let current = self.state_at(record.current_state)?;
        let depth = self.snapshot_depth(record.current_state)?;
        let version = record.version.clone();
        let mut txn = Txn::new(self, room_id.to_owned(), record, rules, current, depth);
        if let Err(why) = self.check_auth(&version, &pdu, &txn.state, &Default::default()) {
            tracing::info!(%room_id, event_id = %pdu.event_id, "soft-failing an event the current state forbids: {why}");
            txn.stage_without_timeline(&pdu, &state_before, false)?;
            return Ok((Placed::SoftFailed, Some(txn.commit()?.defer(self.db.clone()))));
        }
        txn.stage_remote(pdu.clone(), state_before)?;
        if broadcast {
            txn.outgoing.push(pdu.clone());
        }
        Ok((Placed::Timeline(pdu), Some(txn.commit()?.defer(self.db.clone()))))
    }

    /// Put history fetched by backfill (oldest first, each checked against
    /// the state before it) under the oldest event of the timeline.
    pub fn append_backfilled(&self, room_id: &RoomId, events: Vec<(Arc<Pdu>, State)>) -> Result<usize> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        let record = self.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        let rules = Self::rules(&record.version)?;
        let current = self.state_at(record.current_state)?;
        let depth = self.snapshot_depth(record.current_state)?;
        let lowest = match self.oldest_event(room_id)? {
            Some((ordering, _)) if ordering < 0 => ordering.unsigned_abs(),
            _ => 0,
        };
        let mut txn = Txn::new(self, room_id.to_owned(), record, rules, current, depth);
        let events: Vec<_> =
            events.into_iter().filter(|(pdu, _)| !self.has_state_for(&pdu.event_id).unwrap_or(true)).collect();
        let total = events.len();
        let mut staged = HashMap::new();
        for (index, (pdu, state_before)) in events.into_iter().enumerate() {
            let event_id = pdu.event_id.clone();
            let after = txn.stage_backfilled(pdu, &state_before, lowest + (total - index) as u64, &staged)?;
            staged.insert(event_id, after);
        }
        txn.commit()?.wait_durable()?;
        Ok(total)
    }

    /// Create the room from the state a `send_join` answered with, then
    /// append our user's join on top. `outliers` are the state and auth
    /// chain, all verified and authorised by the caller.
    pub fn import_joined_room(
        &self,
        room_id: &RoomId,
        version: RoomVersionId,
        state: State,
        outliers: &[Arc<Pdu>],
        join: Arc<Pdu>,
    ) -> Result<Arc<Pdu>> {
        self.store_outliers(room_id, outliers)?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        let rules = Self::rules(&version)?;
        let existing = self.room(room_id)?;
        let depth = outliers.iter().map(|p| u64::from(p.depth)).max().unwrap_or(0);
        let record = match existing {
            Some(record) => record,
            None => RoomRecord {
                version: version.clone(),
                current_state: 0,
                extremities: Vec::new(),
                depth,
                last_count: 0,
                last_bump: 0,
            },
        };
        let current = self.state_at(record.current_state)?;
        let snapshot_depth = self.snapshot_depth(record.current_state)?;
        let mut txn = Txn::new(self, room_id.to_owned(), record, rules, current, snapshot_depth);
        // The joined state replaces whatever we knew (we were not in the room).
        let count = txn.batch.next_count_quiet();
        txn.set_current(state.clone(), count, true)?;
        txn.record.extremities = join.prev_events.clone();
        txn.stage_remote(join.clone(), state)?;
        txn.outgoing.clear();
        txn.commit()?.wait_durable()?;
        Ok(join)
    }

    /// The unsigned join (or leave, knock) event another server's user
    /// signs: our current state's auth and prev events.
    pub fn membership_template(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        content: serde_json::Value,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().expect("room lock poisoned");
        let record = self.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        let rules = Self::rules(&record.version)?;
        let state = self.state_at(record.current_state)?;
        let version = record.version.clone();
        let txn = Txn::new(self, room_id.to_owned(), record, rules, state, 0);
        let object = txn.template(sender, NewEvent::state(TimelineEventType::RoomMember, sender.as_str(), content))?;
        Ok((version, object))
    }

    /// Events of the room's timeline before `from` (for backfill).
    pub fn events_before(
        &self,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<(Arc<Pdu>, PduMeta)>> {
        self.walk_back(room_id, from.iter().cloned().collect(), &HashSet::new(), limit)
    }

    /// Timeline events following `earliest` up to `latest`, walking back
    /// from `latest` (for `get_missing_events`).
    pub fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<(Arc<Pdu>, PduMeta)>> {
        let mut start = VecDeque::new();
        for id in latest {
            if let Some((pdu, _)) = self.get_pdu(id)? {
                start.extend(pdu.prev_events.iter().cloned());
            }
        }
        let stop: HashSet<&OwnedEventId> = earliest.iter().collect();
        let mut out = self.walk_back(room_id, start, &stop, limit)?;
        out.sort_by_key(|(p, _)| p.depth);
        Ok(out)
    }

    /// Breadth-first through prev events from `todo`, not past `stop`, up
    /// to `limit` events of this room.
    fn walk_back(
        &self,
        room_id: &RoomId,
        mut todo: VecDeque<OwnedEventId>,
        stop: &HashSet<&OwnedEventId>,
        limit: usize,
    ) -> Result<Vec<(Arc<Pdu>, PduMeta)>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut out = Vec::new();
        while let Some(id) = todo.pop_front() {
            if out.len() >= limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some((pdu, meta)) = self.get_pdu(&id)? else { continue };
            if meta.room_id != room_id {
                continue;
            }
            todo.extend(pdu.prev_events.iter().cloned());
            out.push((pdu, meta));
        }
        Ok(out)
    }
}

impl Txn<'_> {
    /// The delta-chain length of a snapshot, including ones this txn wrote.
    fn depth_of(&self, id: u64) -> Result<u32> {
        if let Some(depth) = self.snapshot_depths.get(&id) {
            return Ok(*depth);
        }
        if id == self.record.current_state {
            return Ok(self.snapshot_depth);
        }
        self.rooms.snapshot_depth(id)
    }

    /// Store `state` as a snapshot based on `base` (a delta when the chain
    /// is short and nothing was removed) and return its id.
    fn write_snapshot(&mut self, base: u64, base_state: &State, state: &State) -> Result<u64> {
        let id = self.batch.next_count_quiet();
        let base_depth = if base == 0 { MAX_CHAIN } else { self.depth_of(base)? };
        let (changes, removed) = state.changes_from(base_state);
        let snapshot = if base == 0 || removed || base_depth >= MAX_CHAIN {
            Snapshot { parent: None, depth: 0, changes: state.iter().collect() }
        } else {
            Snapshot { parent: Some(base), depth: base_depth + 1, changes }
        };
        data::put_snapshot(&mut self.batch, id, &snapshot);
        self.snapshot_depths.insert(id, snapshot.depth);
        self.rooms.cache_state(id, Arc::new(state.clone()));
        Ok(id)
    }

    /// Make `state` the room's current state, re-indexing the memberships
    /// that changed. `all_members` re-indexes every member (a join's import).
    fn set_current(&mut self, state: State, count: u64, all_members: bool) -> Result<()> {
        if state == *self.state && self.record.current_state != 0 {
            return Ok(());
        }
        let base = self.record.current_state;
        let old = std::mem::take(&mut self.state);
        let id = self.write_snapshot(base, &old, &state)?;
        for (key, event) in state.iter() {
            if !all_members && old.get(key) == Some(event) {
                continue;
            }
            let pair = self.rooms.short.key(key)?;
            if pair.kind != "m.room.member" {
                continue;
            }
            if let Some(pdu) = self.fetch(&self.rooms.short.event_id(event)?) {
                self.index_membership(&pdu, &pair.state_key, count)?;
            }
        }
        self.snapshot_depth = self.depth_of(id)?;
        self.state = Arc::new(state);
        self.record.current_state = id;
        Ok(())
    }

    /// Append a remote event with the state before it; the current state
    /// becomes the state after it, or the resolution of both when the
    /// event does not build on every forward extremity.
    fn stage_remote(&mut self, pdu: Arc<Pdu>, state_before: State) -> Result<()> {
        let count = self.batch.next_count_quiet();
        self.batch.wake_room(&self.room_id);
        let version = self.record.version.clone();
        let before_id = if state_before == *self.state && self.record.current_state != 0 {
            self.record.current_state
        } else {
            let base = self.record.current_state;
            let current = self.state.clone();
            self.write_snapshot(base, &current, &state_before)?
        };
        let mut meta = PduMeta { count, ..PduMeta::outlier(self.room_id.clone()) };
        let state_after = self.stage_state(&pdu, &mut meta, before_id, &state_before)?;
        // Readable by what follows: membership indexing and resolution.
        self.pending.insert(pdu.event_id.clone(), (pdu.clone(), meta.clone()));
        let extends_all = self.record.extremities.iter().all(|e| pdu.prev_events.contains(e));
        let new_current = if extends_all {
            state_after
        } else {
            // State resolution reads events through the cache.
            self.rooms.cache_pdu(pdu.clone(), meta.clone());
            let current = self.state.clone();
            self.rooms.resolve(&version, vec![current, Arc::new(state_after)])?
        };
        if pdu.kind == TimelineEventType::RoomRedaction
            && let Some(target) = pdu.redacts.clone()
            && self.remote_redaction_allowed(&pdu, &target, &state_before)
        {
            self.apply_redaction(&pdu, &target)?;
        }
        self.set_current(new_current, count, false)?;
        self.put_event(&pdu, &meta)?;
        let mut extremities: Vec<OwnedEventId> =
            self.record.extremities.iter().filter(|e| !pdu.prev_events.contains(e)).cloned().collect();
        extremities.push(pdu.event_id.clone());
        self.record.extremities = extremities;
        self.record.depth = self.record.depth.max(u64::from(pdu.depth));
        self.record.note_event(&pdu.kind, count);
        if pdu.kind == TimelineEventType::RoomMember {
            self.members_changed = true;
        }
        self.pending.insert(pdu.event_id.clone(), (pdu, meta));
        Ok(())
    }

    /// Set the event's state before and after (written as snapshots on
    /// `before_id`) and what it replaced; returns the state after it.
    fn stage_state(&mut self, pdu: &Pdu, meta: &mut PduMeta, before_id: u64, state_before: &State) -> Result<State> {
        meta.state_before = before_id;
        meta.state_after = before_id;
        let mut state_after = state_before.clone();
        if let Some(state_key) = &pdu.state_key {
            self.put_state_event(&mut state_after, pdu, state_key, meta)?;
            meta.state_after = self.write_snapshot(before_id, state_before, &state_after)?;
        }
        Ok(state_after)
    }

    /// Put a backfilled event at `below` places under the live timeline,
    /// its state snapshots written as deltas on a prev event's where one
    /// is known (`staged`: the ones this txn wrote). Neither the current
    /// state nor the memberships change. Returns its snapshot after.
    fn stage_backfilled(
        &mut self,
        pdu: Arc<Pdu>,
        state_before: &State,
        below: u64,
        staged: &HashMap<OwnedEventId, (u64, Arc<State>)>,
    ) -> Result<(u64, Arc<State>)> {
        let mut base = (0, Arc::new(State::new()));
        for prev in &pdu.prev_events {
            if let Some(hit) = staged.get(prev) {
                base = hit.clone();
                break;
            }
            if let Some((_, meta)) = self.rooms.get_pdu(prev)?
                && !meta.is_outlier()
            {
                base = (meta.state_after, self.rooms.state_at(meta.state_after)?);
                break;
            }
        }
        let before_id = if base.0 != 0 && *base.1 == *state_before {
            base.0
        } else {
            self.write_snapshot(base.0, &base.1, state_before)?
        };
        let mut meta = PduMeta { backfilled: Some(below), ..PduMeta::outlier(self.room_id.clone()) };
        let state_after = self.stage_state(&pdu, &mut meta, before_id, state_before)?;
        self.put_event(&pdu, &meta)?;
        let after_id = meta.state_after;
        let event_id = pdu.event_id.clone();
        self.pending.insert(event_id.clone(), (pdu.clone(), meta));
        if pdu.kind == TimelineEventType::RoomRedaction
            && let Some(target) = pdu.redacts.clone()
        {
            if self.fetch(&target).is_some() {
                if self.remote_redaction_allowed(&pdu, &target, state_before) {
                    self.apply_redaction(&pdu, &target)?;
                }
            } else {
                // History comes newest first: the target may come in a later
                // batch, and must not be shown whole then.
                data::put_pending_redaction(&mut self.batch, &target, &event_id);
            }
        }
        self.apply_pending_redaction(&event_id)?;
        Ok((after_id, Arc::new(state_after)))
    }

    /// A redaction stored before its target (see `stage_backfilled`): apply
    /// it now that the target is staged, if it was allowed.
    fn apply_pending_redaction(&mut self, target: &EventId) -> Result<()> {
        let Some(redaction_id) = data::take_pending_redaction(&self.rooms.db, &mut self.batch, target)? else {
            return Ok(());
        };
        let Some((redaction, meta)) = self.rooms.get_pdu(&redaction_id)? else { return Ok(()) };
        let state = self.rooms.state_at(meta.state_before)?;
        if self.remote_redaction_allowed(&redaction, target, &state) {
            self.apply_redaction(&redaction, target)?;
        }
        Ok(())
    }

    /// Keep an event out of the timeline, with the state before it as its
    /// state: soft-failed (other servers may ask for it), or `rejected` by
    /// the auth rules. Events that follow it can be placed on it.
    fn stage_without_timeline(&mut self, pdu: &Arc<Pdu>, state_before: &State, rejected: bool) -> Result<()> {
        let base = self.record.current_state;
        let current = self.state.clone();
        let before_id = self.write_snapshot(base, &current, state_before)?;
        let mut meta = PduMeta::outlier(self.room_id.clone());
        meta.state_before = before_id;
        meta.state_after = before_id;
        meta.rejected = rejected;
        data::put_pdu(&mut self.batch, &pdu.event_id, &StoredPdu { meta, pdu: pdu.json.clone() });
        Ok(())
    }

    /// From v3 a redaction is checked when applied: the same server as the
    /// target's sender, or the power to redact others.
    fn remote_redaction_allowed(&self, redaction: &Pdu, target: &EventId, state: &State) -> bool {
        let Some(target) = self.fetch(target) else { return false };
        // A redaction only ever reaches events of its own room.
        if target.room_id != redaction.room_id {
            return false;
        }
        if target.sender.server_name() == redaction.sender.server_name() {
            return true;
        }
        self.rooms
            .power_levels(&self.record.version, state)
            .is_ok_and(|power| power.user_can_redact_event_of_other(&redaction.sender))
    }
}

const MAX_CHAIN: u32 = super::MAX_SNAPSHOT_CHAIN;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::{OwnedEventId, OwnedRoomId};
    use serde_json::json;

    use crate::pdu::Pdu;

    /// A chain of auth events as long as another server cares to send,
    /// stored as outliers, then walked: the walk must neither overflow the
    /// stack (a recursive one aborts the process here) nor lose an event.
    #[test]
    fn a_long_auth_chain_from_another_server_is_walked_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let services = crate::service::open_for_test(dir.path());
        let room_id = OwnedRoomId::try_from("!chain:elsewhere.example").unwrap();
        const LENGTH: usize = 50_000;
        let id = |i: usize| OwnedEventId::try_from(format!("$event{i}")).unwrap();
        let pdus: Vec<Arc<Pdu>> = (0..LENGTH)
            .map(|i| {
                let auth: Vec<OwnedEventId> = if i == 0 { Vec::new() } else { vec![id(i - 1)] };
                let json = json!({
                    "type": "m.room.member", "state_key": "@m:elsewhere.example", "room_id": room_id,
                    "sender": "@m:elsewhere.example", "origin_server_ts": i, "depth": i,
                    "prev_events": [], "auth_events": auth, "content": { "membership": "join" },
                });
                let raw = serde_json::value::to_raw_value(&json).unwrap();
                Arc::new(Pdu::from_json(id(i), &room_id, raw).unwrap())
            })
            .collect();
        services.rooms.store_outliers(&room_id, &pdus).unwrap();
        // Run where a recursion's depth would show: a thread with a 2 MiB stack.
        let rooms = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || services.rooms.conflicted_subgraph(&[id(0), id(LENGTH - 1)]).unwrap().len())
            .unwrap()
            .join()
            .expect("the walk overflowed its stack");
        assert_eq!(rooms, LENGTH, "every event on the path between the two conflicted ones");
    }
}
