//! Per-user account data (global and per room, tags included) and stored
//! sync filters. Each change takes a stream position so sync sees it.

mod data;

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue as RawJsonValue};

use crate::{error::Result, storage::Db};

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

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Box<RawJsonValue>>> {
        Ok(data::entry(&self.db, user_id, room_id, kind)?.map(|e| e.content))
    }

    pub fn get_value(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        Ok(self.get(user_id, room_id, kind)?.and_then(|raw| serde_json::from_str(raw.get()).ok()))
    }

    pub fn set(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str, content: &Value) -> Result<u64> {
        let mut batch = self.db.batch();
        let count = batch.next_count_quiet();
        match room_id {
            Some(room_id) => batch.wake_user_in_room(user_id, room_id),
            None => batch.wake_user(user_id),
        }
        let content = RawJsonValue::from_string(serde_json::to_string(content)?)?;
        data::put_entry(&mut batch, user_id, room_id, kind, &Entry { count, content });
        batch.commit()?;
        Ok(count)
    }

    /// Items changed after stream position `since`.
    pub fn changed_since(&self, user_id: &UserId, since: u64) -> Result<Vec<Item>> {
        data::changed_since(&self.db, user_id, since)
    }

    /// The user's global account data changed after `since`.
    pub fn global_changed_since(&self, user_id: &UserId, since: u64) -> Result<Vec<Item>> {
        data::global_changed_since(&self.db, user_id, since)
    }

    /// The user's account data for one room.
    pub fn room_items(&self, user_id: &UserId, room_id: &RoomId) -> Result<Vec<Item>> {
        data::room_items(&self.db, user_id, room_id)
    }

    pub fn save_filter(&self, user_id: &UserId, filter: &Value) -> Result<String> {
        let id = crate::util::random_string(12);
        data::save_filter(&self.db, user_id, &id, filter)?;
        Ok(id)
    }

    pub fn filter(&self, user_id: &UserId, id: &str) -> Result<Option<Value>> {
        data::filter(&self.db, user_id, id)
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
