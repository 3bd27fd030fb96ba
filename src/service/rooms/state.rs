//! Room state in short ids. Every (event type, state key) pair and every
//! event a stored state holds is given a u64 once, so a state is a sorted
//! list of 16-byte pairs: copied with one allocation, compared with
//! `memcmp`, stored as a delta of a few bytes. The strings are read back
//! (through bounded caches) only where an answer needs them.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use ruma::{EventId, OwnedEventId};

use super::data;
use crate::{
    cache::ByteCache,
    error::{Error, Result},
    storage::Db,
};

/// The short id of an (event type, state key) pair.
pub type ShortKey = u64;
/// The short id of a state event.
pub type ShortEvent = u64;

/// A room state: for each pair present, the event that holds it, sorted by
/// the pair's short id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    entries: Vec<(ShortKey, ShortEvent)>,
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// From entries in any order; for a pair named twice the last one counts.
    pub fn from_entries(mut entries: Vec<(ShortKey, ShortEvent)>) -> Self {
        // A stable sort keeps the last of equal keys last; dedup keeps the first.
        entries.reverse();
        entries.sort_by_key(|(key, _)| *key);
        entries.dedup_by_key(|(key, _)| *key);
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: ShortKey) -> Option<ShortEvent> {
        self.entries.binary_search_by_key(&key, |(k, _)| *k).ok().map(|i| self.entries[i].1)
    }

    /// Set `key` to `event`; the event it replaces, if any.
    pub fn insert(&mut self, key: ShortKey, event: ShortEvent) -> Option<ShortEvent> {
        match self.entries.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, event)),
            Err(i) => {
                self.entries.insert(i, (key, event));
                None
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ShortKey, ShortEvent)> + '_ {
        self.entries.iter().copied()
    }

    /// The entries `base` does not hold as they are here, and whether
    /// `base` holds a pair this state lacks (a delta cannot express that).
    pub fn changes_from(&self, base: &State) -> (Vec<(ShortKey, ShortEvent)>, bool) {
        let mut changes = Vec::new();
        let mut removed = false;
        let (mut mine, mut theirs) = (self.entries.iter().peekable(), base.entries.iter().peekable());
        loop {
            match (mine.peek(), theirs.peek()) {
                (Some(a), Some(b)) if a.0 == b.0 => {
                    if a.1 != b.1 {
                        changes.push(**a);
                    }
                    mine.next();
                    theirs.next();
                }
                (Some(a), Some(b)) if a.0 < b.0 => {
                    changes.push(**a);
                    mine.next();
                }
                (Some(_), Some(_)) | (None, Some(_)) => {
                    removed = true;
                    theirs.next();
                }
                (Some(a), None) => {
                    changes.push(**a);
                    mine.next();
                }
                (None, None) => break,
            }
        }
        (changes, removed)
    }

    /// About what the state weighs in memory.
    pub fn bytes(&self) -> usize {
        self.entries.len() * 16 + 48
    }
}

/// A stored state: the entries that differ from `parent`'s, or all of them.
#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    pub parent: Option<u64>,
    pub depth: u32,
    pub changes: Vec<(ShortKey, ShortEvent)>,
}

/// An event type and state key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateKey {
    pub kind: String,
    pub state_key: String,
}

/// The short ids, both ways, with a bounded cache of each direction.
pub struct ShortIds {
    db: Arc<Db>,
    key_ids: ByteCache<Vec<u8>, ShortKey>,
    keys: ByteCache<ShortKey, Arc<StateKey>>,
    event_shorts: ByteCache<OwnedEventId, ShortEvent>,
    event_ids: ByteCache<ShortEvent, OwnedEventId>,
    last_key: AtomicU64,
    last_event: AtomicU64,
    /// Held while a new id is handed out, so that a pair or an event is
    /// never given two.
    minting: Mutex<()>,
}

impl ShortIds {
    /// `cache_bytes` is shared between the four caches.
    pub fn open(db: Arc<Db>, cache_bytes: usize) -> Result<Self> {
        Ok(Self {
            last_key: AtomicU64::new(data::last_state_key_id(&db)?),
            last_event: AtomicU64::new(data::last_event_short_id(&db)?),
            db,
            key_ids: ByteCache::new(cache_bytes / 8),
            keys: ByteCache::new(cache_bytes / 8),
            event_shorts: ByteCache::new(cache_bytes * 3 / 8),
            event_ids: ByteCache::new(cache_bytes * 3 / 8),
            minting: Mutex::new(()),
        })
    }

    /// The pair's id, if a stored state ever held it.
    pub fn find_key(&self, kind: &str, state_key: &str) -> Result<Option<ShortKey>> {
        let pair = data::state_key_bytes(kind, state_key);
        if let Some(hit) = self.key_ids.get(&pair) {
            return Ok(Some(hit));
        }
        let found = data::state_key_id(&self.db, &pair)?;
        if let Some(id) = found {
            self.key_ids.insert(pair.clone(), id, pair.len() + 64);
        }
        Ok(found)
    }

    /// The pair's id, given one now if it has none.
    pub fn key_id(&self, kind: &str, state_key: &str) -> Result<ShortKey> {
        if let Some(id) = self.find_key(kind, state_key)? {
            return Ok(id);
        }
        let pair = data::state_key_bytes(kind, state_key);
        let _minting = self.minting.lock().expect("short id lock poisoned");
        // Another thread may have minted it since the look above.
        let id = match data::state_key_id(&self.db, &pair)? {
            Some(id) => id,
            None => {
                let id = self.last_key.fetch_add(1, Ordering::Relaxed) + 1;
                data::put_state_key_id(&self.db, &pair, id)?;
                id
            }
        };
        self.key_ids.insert(pair.clone(), id, pair.len() + 64);
        Ok(id)
    }

    /// A state entry in short ids: the pair's and the event's, given now
    /// where they have none.
    pub fn entry(&self, kind: &str, state_key: &str, event_id: &EventId) -> Result<(ShortKey, ShortEvent)> {
        Ok((self.key_id(kind, state_key)?, self.event_short(event_id)?))
    }

    /// The pair with id `id`.
    pub fn key(&self, id: ShortKey) -> Result<Arc<StateKey>> {
        if let Some(hit) = self.keys.get(&id) {
            return Ok(hit);
        }
        let (kind, state_key) = data::state_key_by_id(&self.db, id)?
            .ok_or_else(|| Error::internal(format!("state key {id} has no entry in state_keys_by_id")))?;
        let weight = kind.len() + state_key.len() + 96;
        let pair = Arc::new(StateKey { kind, state_key });
        self.keys.insert(id, pair.clone(), weight);
        Ok(pair)
    }

    /// The event's id, if a stored state ever held it.
    pub fn find_event(&self, event_id: &EventId) -> Result<Option<ShortEvent>> {
        if let Some(hit) = self.event_shorts.get(event_id) {
            return Ok(Some(hit));
        }
        let found = data::event_short_id(&self.db, event_id)?;
        if let Some(id) = found {
            self.event_shorts.insert(event_id.to_owned(), id, event_id.as_str().len() + 64);
        }
        Ok(found)
    }

    /// The event's short id, given one now if it has none.
    pub fn event_short(&self, event_id: &EventId) -> Result<ShortEvent> {
        if let Some(id) = self.find_event(event_id)? {
            return Ok(id);
        }
        let _minting = self.minting.lock().expect("short id lock poisoned");
        let id = match data::event_short_id(&self.db, event_id)? {
            Some(id) => id,
            None => {
                let id = self.last_event.fetch_add(1, Ordering::Relaxed) + 1;
                data::put_event_short_id(&self.db, event_id, id)?;
                id
            }
        };
        self.event_shorts.insert(event_id.to_owned(), id, event_id.as_str().len() + 64);
        self.event_ids.insert(id, event_id.to_owned(), event_id.as_str().len() + 64);
        Ok(id)
    }

    /// The event with short id `id`.
    pub fn event_id(&self, id: ShortEvent) -> Result<OwnedEventId> {
        if let Some(hit) = self.event_ids.get(&id) {
            return Ok(hit);
        }
        let event_id = data::event_id_by_short(&self.db, id)?
            .ok_or_else(|| Error::internal(format!("event short id {id} has no entry in event_ids_by_short")))?;
        self.event_ids.insert(id, event_id.clone(), event_id.as_str().len() + 64);
        Ok(event_id)
    }
}

/// Rewrite the snapshots schema version 2 stored with their strings in
/// short ids, a thousand per write; how many there were.
pub fn convert_legacy_snapshots(db: &Arc<Db>) -> Result<usize> {
    let ids = ShortIds::open(db.clone(), 8 << 20)?;
    let (mut after, mut total) = (0, 0);
    loop {
        let step = data::legacy_snapshots(db, after, 1000)?;
        let Some((last, _)) = step.last() else { return Ok(total) };
        after = *last;
        let mut batch = db.batch();
        for (id, old) in &step {
            let changes = old
                .changes
                .iter()
                .map(|(kind, key, event_id)| ids.entry(kind, key, event_id))
                .collect::<Result<_>>()?;
            data::put_snapshot(&mut batch, *id, &Snapshot { parent: old.parent, depth: old.depth, changes });
        }
        batch.commit()?;
        total += step.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Cf;

    #[test]
    fn a_state_keeps_one_event_per_pair_and_reports_its_changes_against_another() {
        let state = State::from_entries(vec![(3, 30), (1, 10), (3, 31), (2, 20)]);
        assert_eq!(state.iter().collect::<Vec<_>>(), vec![(1, 10), (2, 20), (3, 31)], "sorted, the last of a pair");
        assert_eq!(state.get(3), Some(31));
        assert_eq!(state.get(4), None);

        let mut next = state.clone();
        assert_eq!(next.insert(2, 21), Some(20));
        assert_eq!(next.insert(5, 50), None);
        assert_eq!(next.changes_from(&state), (vec![(2, 21), (5, 50)], false));
        // The other way round: 5 is gone, which a delta cannot say.
        assert_eq!(state.changes_from(&next), (vec![(2, 20)], true));
        assert_eq!(state.changes_from(&state), (vec![], false));
        assert_eq!(State::new().changes_from(&state), (vec![], true));
    }

    #[test]
    fn short_ids_are_given_once_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let event = OwnedEventId::try_from("$event:example.org").unwrap();
        let (key, short) = {
            let db = Arc::new(Db::open(dir.path(), false).unwrap());
            let ids = ShortIds::open(db, 1 << 20).unwrap();
            assert_eq!(ids.find_key("m.room.member", "@a:x").unwrap(), None);
            let key = ids.key_id("m.room.member", "@a:x").unwrap();
            assert_eq!(ids.key_id("m.room.member", "@a:x").unwrap(), key, "the same pair, the same id");
            assert_ne!(ids.key_id("m.room.member", "@b:x").unwrap(), key);
            // A separator inside would make these two one pair if keys were joined naively.
            assert_ne!(ids.key_id("m.room", "member").unwrap(), ids.key_id("m.roo", "mmember").unwrap());
            let short = ids.event_short(&event).unwrap();
            assert_eq!(ids.event_short(&event).unwrap(), short);
            (key, short)
        };
        let db = Arc::new(Db::open(dir.path(), false).unwrap());
        let ids = ShortIds::open(db, 1 << 20).unwrap();
        let pair = ids.key(key).unwrap();
        assert_eq!((pair.kind.as_str(), pair.state_key.as_str()), ("m.room.member", "@a:x"));
        assert_eq!(ids.event_id(short).unwrap(), event);
        assert_eq!(ids.find_key("m.room.member", "@a:x").unwrap(), Some(key));
        let fresh = ids.key_id("m.room.name", "").unwrap();
        assert!(fresh > key, "ids go on from the highest stored, never reusing one");
        assert!(ids.event_short(&OwnedEventId::try_from("$other:example.org").unwrap()).unwrap() > short);
    }

    #[test]
    fn snapshots_stored_with_strings_are_converted_to_short_ids() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path(), false).unwrap());
        let full = serde_json::json!({ "parent": null, "depth": 0, "changes": [
            ["m.room.create", "", "$create"], ["m.room.member", "@a:x", "$join"],
        ]});
        let delta = serde_json::json!({ "parent": 7, "depth": 1, "changes": [["m.room.member", "@a:x", "$leave"]] });
        let mut batch = db.batch();
        batch.put_json(Cf::StateSnapshots, &7u64.to_be_bytes(), &full);
        batch.put_json(Cf::StateSnapshots, &9u64.to_be_bytes(), &delta);
        batch.commit().unwrap();
        assert!(data::snapshot(&db, 7).is_err(), "the old format is not read as the new one");

        assert_eq!(convert_legacy_snapshots(&db).unwrap(), 2);
        assert_eq!(convert_legacy_snapshots(&db).unwrap(), 0, "run again, nothing is left to convert");
        let ids = ShortIds::open(db.clone(), 1 << 20).unwrap();
        let strings = |snapshot: Snapshot| -> Vec<(String, String, String)> {
            snapshot
                .changes
                .into_iter()
                .map(|(key, event)| {
                    let pair = ids.key(key).unwrap();
                    (pair.kind.clone(), pair.state_key.clone(), ids.event_id(event).unwrap().to_string())
                })
                .collect()
        };
        let seven = data::snapshot(&db, 7).unwrap().unwrap();
        assert_eq!((seven.parent, seven.depth), (None, 0));
        let mut seven = strings(seven);
        seven.sort();
        assert_eq!(
            seven,
            vec![
                ("m.room.create".into(), "".into(), "$create".into()),
                ("m.room.member".into(), "@a:x".into(), "$join".into())
            ]
        );
        let nine = data::snapshot(&db, 9).unwrap().unwrap();
        assert_eq!((nine.parent, nine.depth), (Some(7), 1));
        assert_eq!(strings(nine), vec![("m.room.member".into(), "@a:x".into(), "$leave".into())]);
    }
}
