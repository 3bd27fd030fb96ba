//! Push rules (stored as the `m.push_rules` account data, server defaults
//! until the user changes them), the unread notification counts sync
//! reports and the notifications `/notifications` lists, computed when an
//! event is appended; pushers and delivery to push gateways.

mod data;
pub mod gateway;

pub use gateway::PushSignal;

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::push::{
        Pusher, PusherKind, get_notifications,
        set_pusher::v3::{PusherAction, PusherPostData},
    },
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use data::NotificationRecord;

use crate::{
    error::{Error, Result},
    pdu::Pdu,
    service::{Services, users::Session},
    storage::{Cf, key},
};

pub const PUSH_RULES: &str = "m.push_rules";

/// A user's unread counts in a room: the main timeline's, and each
/// thread's apart (clients that ask for thread counts show them per
/// thread; others get the sum).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// The main timeline's (events outside any thread).
    pub notification_count: u64,
    pub highlight_count: u64,
    /// By thread root.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub threads: BTreeMap<OwnedEventId, ThreadCounts>,
    /// Stream position of the last change, so sync reports it.
    #[serde(default)]
    pub changed_at: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ThreadCounts {
    pub notification_count: u64,
    pub highlight_count: u64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.notification_count == 0 && self.highlight_count == 0 && self.threads.is_empty()
    }

    /// Notifications and highlights in the main timeline and every thread.
    pub fn total(&self) -> (u64, u64) {
        self.threads.values().fold((self.notification_count, self.highlight_count), |(n, h), t| {
            (n + t.notification_count, h + t.highlight_count)
        })
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

/// A read receipt or marker from the user: their counts start again, for
/// the whole room (an unthreaded receipt, `thread` empty), the main
/// timeline (`main`) or one thread (its root's id).
pub fn reset_counts(services: &Services, user_id: &UserId, room_id: &RoomId, thread: &str) -> Result<()> {
    let _guard = COUNTS_LOCK.lock().expect("counts lock poisoned");
    let mut counts = counts(services, user_id, room_id)?;
    let changed = match thread {
        "" => !std::mem::take(&mut counts).is_zero(),
        "main" => {
            let had = counts.notification_count > 0 || counts.highlight_count > 0;
            (counts.notification_count, counts.highlight_count) = (0, 0);
            had
        }
        root => OwnedEventId::try_from(root).is_ok_and(|root| counts.threads.remove(&root).is_some()),
    };
    if !changed {
        return Ok(());
    }
    let mut batch = services.db.batch();
    counts.changed_at = batch.next_count();
    batch.put_json(Cf::NotificationCounts, &key(&[user_id.as_bytes(), room_id.as_bytes()]), &counts);
    batch.commit()?;
    // The user's phones update their badge.
    services.pushes.wake(user_id, true);
    Ok(())
}

/// Evaluate every local member's push rules against a new event and bump
/// their unread counts. Runs on a blocking thread (the rule evaluation is
/// driven to completion there; it does no I/O).
pub fn on_event(services: &Services, pdu: &Pdu) -> Result<()> {
    let room_id: OwnedRoomId = pdu.room_id.clone();
    let Some(record) = services.rooms.room(&room_id)? else { return Ok(()) };
    let Some((pdu, meta)) = services.rooms.get_pdu(&pdu.event_id)? else { return Ok(()) };
    let mut members = services.rooms.joined_members(&room_id)?;
    let member_count = UInt::try_from(members.len() as u64).unwrap_or(UInt::MAX);
    // An invitee is not a member yet, but the invite is for them.
    if pdu.kind == ruma::events::TimelineEventType::RoomMember
        && pdu.content_value().get("membership").and_then(|m| m.as_str()) == Some("invite")
        && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        && !members.contains(&target)
    {
        members.push(target);
    }
    let state = services.rooms.state_at(meta.state_after)?;
    let power_levels = services.rooms.power_levels(&record.version, &state)?;
    let raw: Raw<ruma::events::AnySyncTimelineEvent> =
        Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event(&meta, false, None))?);
    let runtime = tokio::runtime::Handle::current();
    let mut changed = Vec::new();
    for user_id in members {
        if user_id == pdu.sender || !services.users.is_local(&user_id) {
            continue;
        }
        // Nothing from someone the user ignores counts or notifies.
        if pdu.state_key.is_none() && services.account_data.ignored_users(&user_id)?.contains(&pdu.sender) {
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
            changed.push((user_id, notify, highlight, actions.to_vec()));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let _guard = COUNTS_LOCK.lock().expect("counts lock poisoned");
    let mut batch = services.db.batch();
    let changed_at = batch.next_count();
    let ts = crate::util::now_ms();
    let mut notified = Vec::new();
    let thread_root = thread_root(&pdu);
    for (user_id, notify, highlight, actions) in changed {
        let mut counts = counts(services, &user_id, &room_id)?;
        match &thread_root {
            Some(root) => {
                let thread = counts.threads.entry(root.clone()).or_default();
                thread.notification_count += u64::from(notify);
                thread.highlight_count += u64::from(highlight);
            }
            None => {
                counts.notification_count += u64::from(notify);
                counts.highlight_count += u64::from(highlight);
            }
        }
        counts.changed_at = changed_at;
        batch.put_json(Cf::NotificationCounts, &key(&[user_id.as_bytes(), room_id.as_bytes()]), &counts);
        if notify {
            let record = NotificationRecord {
                event_id: pdu.event_id.clone(),
                room_id: room_id.clone(),
                actions: serde_json::to_value(&actions)?,
                ts,
                highlight,
            };
            data::put_notification(&mut batch, &user_id, changed_at, &record);
            notified.push(user_id);
        }
    }
    batch.commit()?;
    for user_id in notified {
        services.pushes.wake(&user_id, false);
    }
    Ok(())
}

/// The thread an event is part of (its `m.thread` relation's root).
fn thread_root(pdu: &Pdu) -> Option<OwnedEventId> {
    crate::service::relations::relation_of(pdu).filter(|(rel_type, _)| rel_type == "m.thread").map(|(_, root)| root)
}

/// Rooms with unread notifications: the badge number sent to phones
/// (grouped by room, as Synapse does by default).
pub fn unread_rooms(services: &Services, user_id: &UserId) -> Result<u64> {
    let prefix = crate::storage::prefix(&[user_id.as_bytes()]);
    let mut rooms = 0;
    for item in services.db.scan_prefix(Cf::NotificationCounts, &prefix) {
        let (_, v) = item?;
        let counts: Counts = crate::storage::decode(Cf::NotificationCounts, &v)?;
        rooms += u64::from(counts.total().0 > 0);
    }
    Ok(rooms)
}

/// The most pushers one account may have.
const MAX_PUSHERS: usize = 32;
/// The path every HTTP pusher's URL must have (push gateway API).
const GATEWAY_PATH: &str = "/_matrix/push/v1/notify";

/// The user's pushers, as set.
pub fn pushers(services: &Services, user_id: &UserId) -> Result<Vec<Pusher>> {
    let mut out = Vec::new();
    for record in data::pushers(&services.db, user_id)? {
        match serde_json::from_value(record.pusher) {
            Ok(pusher) => out.push(pusher),
            Err(err) => tracing::warn!(user = %user_id, "a stored pusher cannot be read: {err}"),
        }
    }
    Ok(out)
}

/// `POST /pushers/set`: add, replace or (kind `null`) delete a pusher.
pub fn set_pusher(services: &Services, session: &Session, action: PusherAction) -> Result<()> {
    let user_id = &session.user_id;
    let (pusher, append) = match action {
        PusherAction::Delete(ids) => return remove_pusher(services, user_id, &ids.app_id, &ids.pushkey),
        PusherAction::Post(PusherPostData { pusher, append, .. }) => (pusher, append),
        _ => return Err(Error::invalid_param("Unknown pusher action.")),
    };
    let (app_id, pushkey) = (pusher.ids.app_id.clone(), pusher.ids.pushkey.clone());
    if app_id.is_empty() || app_id.len() > 64 {
        return Err(Error::invalid_param("`app_id` must have 1 to 64 characters."));
    }
    if pushkey.is_empty() || pushkey.len() > 512 {
        return Err(Error::invalid_param("`pushkey` must have 1 to 512 bytes."));
    }
    match &pusher.kind {
        PusherKind::Http(http) => {
            let url = url::Url::parse(&http.url)
                .map_err(|_| Error::invalid_param("`data.url` must be an absolute URL of a push gateway."))?;
            if !matches!(url.scheme(), "http" | "https") || url.path() != GATEWAY_PATH {
                return Err(Error::invalid_param(format!(
                    "`data.url` must be an http or https URL whose path is {GATEWAY_PATH}."
                )));
            }
            if services.federation.guard().check_url(&url).is_err() {
                return Err(Error::invalid_param("porch may not connect to that push gateway's address."));
            }
        }
        PusherKind::Email(_) => {
            return Err(Error::invalid_param("porch does not send notifications by email: use an http pusher."));
        }
        _ => return Err(Error::invalid_param("Pushers are `http` (or `email`, which porch does not send).")),
    }
    let existing = data::pusher(&services.db, user_id, &app_id, &pushkey)?;
    if existing.is_none() && data::pushers(&services.db, user_id)?.len() >= MAX_PUSHERS {
        return Err(Error::forbidden(format!("An account may have {MAX_PUSHERS} pushers; delete one first.")));
    }
    let record = data::PusherRecord {
        user_id: user_id.to_owned(),
        pusher: serde_json::to_value(&pusher)?,
        app_id: app_id.clone(),
        pushkey: pushkey.clone(),
        device_id: Some(session.device_id.to_string()),
        created_ms: existing.as_ref().map_or_else(crate::util::now_ms, |e| e.created_ms),
        // A new pusher pushes what happens from now on, not the backlog.
        last_pushed: existing.as_ref().map_or_else(|| services.db.current_count(), |e| e.last_pushed),
    };
    let mut batch = services.db.batch();
    data::put_pusher(&mut batch, &record);
    let mut others = Vec::new();
    if !append {
        // The spec: the same app and pushkey for other users goes.
        for other in data::all_pushers(&services.db)? {
            if other.app_id == app_id && other.pushkey == pushkey && other.user_id != *user_id {
                data::delete_pusher(&mut batch, &other.user_id, &app_id, &pushkey);
                others.push(other.user_id);
            }
        }
    }
    batch.commit()?;
    services.pushes.set_has_pushers(user_id, true);
    for other in others {
        let left = !data::pushers(&services.db, &other)?.is_empty();
        services.pushes.set_has_pushers(&other, left);
    }
    Ok(())
}

pub fn remove_pusher(services: &Services, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
    let mut batch = services.db.batch();
    data::delete_pusher(&mut batch, user_id, app_id, pushkey);
    batch.commit()?;
    let left = !data::pushers(&services.db, user_id)?.is_empty();
    services.pushes.set_has_pushers(user_id, left);
    Ok(())
}

pub use data::forget_device;

/// A deactivated account's pushers and notifications go.
pub fn forget_user(services: &Services, user_id: &UserId) -> Result<()> {
    data::delete_user(&services.db, user_id)?;
    services.pushes.set_has_pushers(user_id, false);
    Ok(())
}

/// Notifications kept this long for `/notifications`.
const NOTIFICATIONS_KEPT_MS: u64 = 30 * 24 * 3600 * 1000;

pub fn prune_notifications(services: &Services, now: u64) -> Result<usize> {
    data::prune_notifications(&services.db, now.saturating_sub(NOTIFICATIONS_KEPT_MS))
}

/// One page of `/notifications`: newest first, before `from`; the token
/// for the next page when there may be one.
pub fn notifications(
    services: &Services,
    user_id: &UserId,
    from: Option<&str>,
    limit: usize,
    only_highlight: bool,
) -> Result<(Vec<get_notifications::v3::Notification>, Option<String>)> {
    let mut before = match from {
        Some(token) => {
            Some(token.parse::<u64>().map_err(|_| Error::invalid_param("`from` is not a token this server gave."))?)
        }
        None => None,
    };
    let limit = limit.clamp(1, 100);
    let mut out = Vec::new();
    let mut read_marks: HashMap<OwnedRoomId, u64> = HashMap::new();
    let tag = data::pushers(&services.db, user_id)?
        .into_iter()
        .find_map(|p| p.pusher.get("profile_tag").and_then(|t| t.as_str()).map(str::to_owned));
    'pages: loop {
        let page = data::notifications_before(&services.db, user_id, before, limit)?;
        let exhausted = page.len() < limit;
        for (position, record) in page {
            before = Some(position);
            if only_highlight && !record.highlight {
                continue;
            }
            let Some((pdu, meta)) = services.rooms.get_pdu(&record.event_id)? else { continue };
            let read_at = match read_marks.get(&record.room_id) {
                Some(at) => *at,
                None => {
                    let at = read_position(services, &record.room_id, user_id)?;
                    read_marks.insert(record.room_id.clone(), at);
                    at
                }
            };
            let event = Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event(&meta, true, None))?);
            let actions = serde_json::from_value(record.actions.clone()).unwrap_or_default();
            let mut notification = get_notifications::v3::Notification::new(
                actions,
                event,
                meta.count > 0 && meta.count <= read_at,
                record.room_id.clone(),
                ruma::MilliSecondsSinceUnixEpoch(UInt::try_from(record.ts).unwrap_or(UInt::MAX)),
            );
            notification.profile_tag = tag.clone();
            out.push(notification);
            if out.len() == limit {
                break 'pages;
            }
        }
        if exhausted {
            before = None;
            break;
        }
    }
    Ok((out, before.map(|p| p.to_string())))
}

/// Stream position of the event the user's (public or private) read receipt is at.
fn read_position(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<u64> {
    let mut at = 0;
    for kind in ["m.read", "m.read.private"] {
        if let Some(event_id) = services.ephemeral.receipt(room_id, user_id, kind, "")?
            && let Some((_, meta)) = services.rooms.get_pdu(&event_id)?
        {
            at = at.max(meta.count);
        }
    }
    Ok(at)
}

/// A room was replaced: the user's rules for it apply to the new room too.
pub fn copy_room_rules(services: &Services, user_id: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
    let ruleset = ruleset(services, user_id)?;
    let mut updated = (*ruleset).clone();
    let mut added = false;
    for rule in ruleset.room.iter().filter(|r| r.rule_id == old) {
        if !ruleset.room.iter().any(|r| r.rule_id == new) {
            let mut copy = rule.clone();
            copy.rule_id = new.to_owned();
            updated.room.insert(copy);
            added = true;
        }
    }
    if added {
        save_ruleset(services, user_id, &updated)?;
    }
    Ok(())
}
