//! Per-user account data (global and per room, tags included) and stored
//! sync filters. Each change takes a stream position so sync sees it.

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue as RawJsonValue};

use crate::{
    error::Result,
    storage::{Cf, Db, decode, key, prefix},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub count: u64,
    pub content: Box<RawJsonValue>,
}

/// One account-data item as sync reports it.
pub struct Item {
    pub room_id: Option<OwnedRoomId>,
    pub kind: String,
    pub count: u64,
    pub content: Box<RawJsonValue>,
}

pub struct AccountData {
    db: Arc<Db>,
}

impl AccountData {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    fn entry_key(user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Vec<u8> {
        key(&[user_id.as_bytes(), room_id.map(|r| r.as_bytes()).unwrap_or(b""), kind.as_bytes()])
    }

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Box<RawJsonValue>>> {
        Ok(self.db.get_json::<Entry>(Cf::AccountData, &Self::entry_key(user_id, room_id, kind))?.map(|e| e.content))
    }

    pub fn get_value(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        Ok(self.get(user_id, room_id, kind)?.and_then(|raw| serde_json::from_str(raw.get()).ok()))
    }

    pub fn set(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str, content: &Value) -> Result<u64> {
        let mut batch = self.db.batch();
        let count = batch.next_count_quiet();
        batch.wake_user(user_id);
        let content = RawJsonValue::from_string(serde_json::to_string(content)?)?;
        batch.put_json(Cf::AccountData, &Self::entry_key(user_id, room_id, kind), &Entry { count, content });
        batch.commit()?;
        Ok(count)
    }

    /// Items changed after stream position `since`.
    pub fn changed_since(&self, user_id: &UserId, since: u64) -> Result<Vec<Item>> {
        let prefix = prefix(&[user_id.as_bytes()]);
        let mut out = Vec::new();
        for item in self.db.scan_prefix(Cf::AccountData, &prefix) {
            let (k, v) = item?;
            let entry: Entry = decode(Cf::AccountData, &v)?;
            if entry.count <= since {
                continue;
            }
            let rest = &k[prefix.len()..];
            let Some(split) = rest.iter().position(|b| *b == crate::storage::SEP) else { continue };
            let room = &rest[..split];
            let room_id = if room.is_empty() {
                None
            } else {
                match OwnedRoomId::try_from(String::from_utf8_lossy(room).into_owned()) {
                    Ok(room_id) => Some(room_id),
                    Err(_) => continue,
                }
            };
            out.push(Item {
                room_id,
                kind: String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
                count: entry.count,
                content: entry.content,
            });
        }
        Ok(out)
    }

    pub fn save_filter(&self, user_id: &UserId, filter: &Value) -> Result<String> {
        let id = crate::util::random_string(12);
        self.db.put_json(Cf::Filters, &key(&[user_id.as_bytes(), id.as_bytes()]), filter)?;
        Ok(id)
    }

    pub fn filter(&self, user_id: &UserId, id: &str) -> Result<Option<Value>> {
        Ok(self.db.get_json(Cf::Filters, &key(&[user_id.as_bytes(), id.as_bytes()]))?)
    }

    /// Whom the user ignores (`m.ignored_user_list`): their messages and
    /// invites are not shown to the user.
    pub fn ignored_users(&self, user_id: &UserId) -> Result<std::collections::HashSet<ruma::OwnedUserId>> {
        let Some(raw) = self.get(user_id, None, "m.ignored_user_list")? else { return Ok(Default::default()) };
        let content: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
        Ok(content["ignored_users"]
            .as_object()
            .into_iter()
            .flat_map(|users| users.keys())
            .filter_map(|u| ruma::OwnedUserId::try_from(u.as_str()).ok())
            .collect())
    }
}
