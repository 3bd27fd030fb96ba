//! Push rules (stored as the `m.push_rules` account data, server defaults
//! until the user changes them) and the unread notification counts sync
//! reports, computed when an event is appended.

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    error::Result,
    pdu::Pdu,
    service::Services,
    storage::{Cf, key},
};

pub const PUSH_RULES: &str = "m.push_rules";

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub notification_count: u64,
    pub highlight_count: u64,
    /// Stream position of the last change, so sync reports it.
    #[serde(default)]
    pub changed_at: u64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.notification_count == 0 && self.highlight_count == 0
    }
}

/// Parsed rulesets by user: every new event is checked against every local
/// member's rules, so they are not re-read and re-parsed each time.
#[derive(Default)]
pub struct RulesetCache(Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>);

/// The user's ruleset: stored, or the spec's defaults.
pub fn ruleset(services: &Services, user_id: &UserId) -> Result<Arc<Ruleset>> {
    #[derive(Deserialize)]
    struct Content {
        global: Ruleset,
    }
    if let Some(hit) = services.push_rules.0.lock().expect("ruleset cache poisoned").get(user_id) {
        return Ok(hit.clone());
    }
    let ruleset = match services.account_data.get(user_id, None, PUSH_RULES)? {
        Some(raw) => serde_json::from_str::<Content>(raw.get())
            .map(|c| c.global)
            .unwrap_or_else(|_| Ruleset::server_default(user_id)),
        None => Ruleset::server_default(user_id),
    };
    let ruleset = Arc::new(ruleset);
    let mut cache = services.push_rules.0.lock().expect("ruleset cache poisoned");
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(user_id.to_owned(), ruleset.clone());
    Ok(ruleset)
}

pub fn save_ruleset(services: &Services, user_id: &UserId, ruleset: &Ruleset) -> Result<()> {
    services.account_data.set(user_id, None, PUSH_RULES, &json!({ "global": ruleset }))?;
    services.push_rules.0.lock().expect("ruleset cache poisoned").insert(user_id.to_owned(), Arc::new(ruleset.clone()));
    Ok(())
}

pub fn counts(services: &Services, user_id: &UserId, room_id: &RoomId) -> Result<Counts> {
    Ok(services
        .db
        .get_json(Cf::NotificationCounts, &key(&[user_id.as_bytes(), room_id.as_bytes()]))?
        .unwrap_or_default())
}

/// Serialises read-modify-write of the counts.
static COUNTS_LOCK: Mutex<()> = Mutex::new(());

/// A read receipt or marker from the user: their counts for the room start again.
pub fn reset_counts(services: &Services, user_id: &UserId, room_id: &RoomId) -> Result<()> {
    let _guard = COUNTS_LOCK.lock().expect("counts lock poisoned");
    if counts(services, user_id, room_id)?.is_zero() {
        return Ok(());
    }
    let mut batch = services.db.batch();
    let changed_at = batch.next_count();
    batch.put_json(
        Cf::NotificationCounts,
        &key(&[user_id.as_bytes(), room_id.as_bytes()]),
        &Counts { changed_at, ..Counts::default() },
    );
    batch.commit()?;
    Ok(())
}

/// Evaluate every local member's push rules against a new event and bump
/// their unread counts. Runs on a blocking thread (the rule evaluation is
/// driven to completion there; it does no I/O).
pub fn on_event(services: &Services, pdu: &Pdu) -> Result<()> {
    let room_id: OwnedRoomId = pdu.room_id.clone();
    let Some(record) = services.rooms.room(&room_id)? else { return Ok(()) };
    let Some((pdu, meta)) = services.rooms.get_pdu(&pdu.event_id)? else { return Ok(()) };
    let members = services.rooms.joined_members(&room_id)?;
    let state = services.rooms.state_at(meta.state_after)?;
    let power_levels = services.rooms.power_levels(&record.version, &state)?;
    let member_count = UInt::try_from(members.len() as u64).unwrap_or(UInt::MAX);
    let raw: Raw<ruma::events::AnySyncTimelineEvent> =
        Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event(&meta, false, None))?);
    let runtime = tokio::runtime::Handle::current();
    let mut changed = Vec::new();
    for user_id in members {
        if user_id == pdu.sender || !services.users.is_local(&user_id) {
            continue;
        }
        let display_name = services
            .rooms
            .state_content(&state, "m.room.member", user_id.as_str())?
            .and_then(|c| c.get("displayname").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or_else(|| user_id.localpart().to_owned());
        let mut ctx = PushConditionRoomCtx::new(room_id.clone(), member_count, user_id.clone(), display_name);
        ctx.power_levels = Some(PushConditionPowerLevelsCtx::from(power_levels.clone()));
        let rules = ruleset(services, &user_id)?;
        let actions = runtime.block_on(rules.get_actions(&raw, &ctx));
        let notify = actions.iter().any(|a| a.should_notify());
        let highlight = actions.iter().any(|a| a.is_highlight());
        if notify || highlight {
            changed.push((user_id, notify, highlight));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let _guard = COUNTS_LOCK.lock().expect("counts lock poisoned");
    let mut batch = services.db.batch();
    let changed_at = batch.next_count();
    for (user_id, notify, highlight) in changed {
        let mut counts = counts(services, &user_id, &room_id)?;
        counts.notification_count += u64::from(notify);
        counts.highlight_count += u64::from(highlight);
        counts.changed_at = changed_at;
        batch.put_json(Cf::NotificationCounts, &key(&[user_id.as_bytes(), room_id.as_bytes()]), &counts);
    }
    batch.commit()?;
    Ok(())
}
