//! Delivery to push gateways (`POST {url}` with the push gateway API's
//! `notification`), off the request path: one task per user with pushers,
//! woken when a notification is stored or a read receipt clears counts.
//! The dispatcher applies the push rules of users with pushers to every
//! room's new events as soon as they are written (everyone else's wait
//! until they read their counts).
//!
//! Each pusher remembers the position of the last notification it
//! delivered, so delivery resumes after a restart; a gateway that fails is
//! retried with back-off, and a notification it could not take while it
//! failed for [`GIVE_UP_AFTER`] is skipped. Pushkeys the gateway reports `rejected`
//! are removed, as the spec asks. Connections pass the address guard.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedUserId, UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};

use super::data::{self, NotificationRecord, PusherRecord};
use crate::{
    error::Result,
    service::{Services, blocking},
};

/// A notification the gateway could not take for this long is dropped.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Notifications sent per pusher before others get their turn.
const BATCH: usize = 20;
/// The most a gateway's answer may take.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Default, Clone, Copy)]
struct Wanted {
    notifications: bool,
    badge: bool,
}

/// Who needs delivery, and who has pushers at all (so events for users
/// without any cost nothing here).
pub struct PushSignal {
    pending: Mutex<HashMap<OwnedUserId, Wanted>>,
    running: Mutex<HashSet<OwnedUserId>>,
    with_pushers: Mutex<HashSet<OwnedUserId>>,
    notify: Notify,
    /// The position up to which the dispatcher has applied every pusher
    /// holder's rules in every room. Delivery stops there: a notification
    /// stored later for an earlier event (a sync caught up one room first)
    /// is then never behind a pusher's mark.
    dispatched: watch::Sender<u64>,
    /// `u64::MAX` until read.
    counts_floor: std::sync::atomic::AtomicU64,
}

impl Default for PushSignal {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            running: Mutex::default(),
            with_pushers: Mutex::default(),
            notify: Notify::new(),
            dispatched: watch::channel(0).0,
            counts_floor: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

impl PushSignal {
    fn any_pushers(&self) -> bool {
        !self.with_pushers.lock().expect("push signal poisoned").is_empty()
    }

    /// The database's `notification_counts_floor`, read once (it is set
    /// by a migration before anything runs, and never changes after).
    pub fn counts_floor(&self, db: &crate::storage::Db) -> Result<u64> {
        let known = self.counts_floor.load(std::sync::atomic::Ordering::Relaxed);
        if known != u64::MAX {
            return Ok(known);
        }
        let floor = data::counts_floor(db)?;
        self.counts_floor.store(floor, std::sync::atomic::Ordering::Relaxed);
        Ok(floor)
    }

    pub fn has_pushers(&self, user_id: &UserId) -> bool {
        self.with_pushers.lock().expect("push signal poisoned").contains(user_id)
    }

    pub fn set_has_pushers(&self, user_id: &UserId, has: bool) {
        let mut users = self.with_pushers.lock().expect("push signal poisoned");
        if has {
            users.insert(user_id.to_owned());
        } else {
            users.remove(user_id);
        }
    }

    /// New notifications for `user_id` (or, with `badge`, its counts went to zero).
    pub fn wake(&self, user_id: &UserId, badge: bool) {
        if !self.has_pushers(user_id) {
            return;
        }
        let mut pending = self.pending.lock().expect("push signal poisoned");
        let wanted = pending.entry(user_id.to_owned()).or_default();
        wanted.notifications = true;
        wanted.badge |= badge;
        drop(pending);
        self.notify.notify_one();
    }

    fn take(&self, user_id: &UserId) -> Option<Wanted> {
        self.pending.lock().expect("push signal poisoned").remove(user_id)
    }
}

/// Runs for the server's life: starts a delivery task for each woken user
/// that has none running.
pub async fn run(services: Arc<Services>) {
    let http = services.federation.web_client();
    match blocking(&services, |s| data::all_pushers(&s.db)).await {
        Ok(all) => {
            for record in all {
                services.pushes.set_has_pushers(&record.user_id, true);
                services.pushes.wake(&record.user_id, false);
            }
        }
        Err(err) => tracing::warn!("cannot read the pushers to resume delivery: {err}"),
    }
    tokio::spawn(dispatch(services.clone()));
    loop {
        let notified = services.pushes.notify.notified();
        let users: Vec<OwnedUserId> =
            services.pushes.pending.lock().expect("push signal poisoned").keys().cloned().collect();
        for user_id in users {
            if services.pushes.running.lock().expect("push signal poisoned").insert(user_id.clone()) {
                tokio::spawn(deliver_for(services.clone(), http.clone(), user_id));
            }
        }
        notified.await;
    }
}

/// Runs for the server's life: applies the rules of the users with pushers
/// to each room's new events, then moves [`PushSignal::dispatched`] on.
async fn dispatch(services: Arc<Services>) {
    // Whatever was written before a restart, for everyone with a pusher.
    let upto = services.db.safe_count();
    let users: Vec<OwnedUserId> =
        services.pushes.with_pushers.lock().expect("push signal poisoned").iter().cloned().collect();
    let resumed = blocking(&services, move |s| {
        for user_id in users {
            // One user's trouble (logged) holds back nobody else's pushes.
            if let Err(err) = super::catch_up_user(s, &user_id, upto) {
                tracing::warn!(user = %user_id, "cannot apply push rules to the events written before the restart: {err}");
            }
        }
        Ok(())
    })
    .await;
    if let Err(err) = resumed {
        tracing::warn!("cannot apply push rules to the events written before the restart: {err}");
    }
    services.pushes.dispatched.send_replace(upto);
    let mut positions = services.db.subscribe();
    loop {
        let upto = services.db.safe_count();
        let rooms = services.rooms.appended.pending();
        if !rooms.is_empty() && services.pushes.any_pushers() {
            let marked = rooms.clone();
            let applied = blocking(&services, move |s| {
                for (room_id, _) in &marked {
                    for user_id in pusher_holders_in(s, room_id)? {
                        // Logged and passed over: one bad event must not
                        // hold back every pusher on the server.
                        if let Err(err) = super::catch_up_room(s, &user_id, room_id, upto) {
                            tracing::warn!(user = %user_id, room = %room_id, "cannot apply push rules to new events: {err}");
                        }
                    }
                }
                Ok(())
            })
            .await;
            if let Err(err) = applied {
                // The room's members could not be read: try the round again.
                tracing::warn!("cannot apply push rules to new events: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        for (room_id, _) in &rooms {
            services.rooms.appended.handled(room_id, upto);
        }
        services.pushes.dispatched.send_replace(upto);
        if rooms.iter().any(|(_, highest)| *highest > upto) {
            // Some were still being written: go again once they are.
            tokio::select! {
                () = services.rooms.appended.marked() => {}
                _ = positions.changed() => {}
            }
        } else {
            services.rooms.appended.marked().await;
        }
    }
}

/// The room's local members and invitees with pushers: looked up one by
/// one when few users have pushers, else from the room's member list.
fn pusher_holders_in(s: &Services, room_id: &ruma::RoomId) -> Result<Vec<OwnedUserId>> {
    const FEW: usize = 64;
    let wanted = |m: &MembershipState| matches!(m, MembershipState::Join | MembershipState::Invite);
    let few: Option<Vec<OwnedUserId>> = {
        let users = s.pushes.with_pushers.lock().expect("push signal poisoned");
        (users.len() <= FEW).then(|| users.iter().cloned().collect())
    };
    let Some(holders) = few else {
        return Ok(s
            .rooms
            .members(room_id)?
            .into_iter()
            .filter(|(user_id, m)| wanted(m) && s.pushes.has_pushers(user_id) && s.users.is_local(user_id))
            .map(|(user_id, _)| user_id)
            .collect());
    };
    let mut out = Vec::new();
    for user_id in holders {
        if s.rooms.membership(room_id, &user_id)?.as_ref().is_some_and(wanted) {
            out.push(user_id);
        }
    }
    Ok(out)
}

async fn deliver_for(services: Arc<Services>, http: reqwest::Client, user_id: OwnedUserId) {
    let mut backoff = Duration::from_secs(1);
    let mut wanted = Wanted::default();
    // Since when the gateway has been failing (a notification it could not
    // take for GIVE_UP_AFTER is dropped).
    let mut failing_since = None;
    loop {
        if let Some(more) = services.pushes.take(&user_id) {
            wanted.notifications |= more.notifications;
            wanted.badge |= more.badge;
        }
        if !wanted.notifications && !wanted.badge {
            // Release, then look again: a wake between `take` and here must not be lost.
            services.pushes.running.lock().expect("push signal poisoned").remove(&user_id);
            let raced = services.pushes.pending.lock().expect("push signal poisoned").contains_key(&user_id);
            if raced && services.pushes.running.lock().expect("push signal poisoned").insert(user_id.clone()) {
                continue;
            }
            return;
        }
        let failing_for = failing_since.map_or(Duration::ZERO, |since: std::time::Instant| since.elapsed());
        match deliver_once(&services, &http, &user_id, wanted.badge, failing_for).await {
            Ok(Progress::Done) => {
                wanted = Wanted::default();
                backoff = Duration::from_secs(1);
                failing_since = None;
            }
            Ok(Progress::More) => {
                wanted.badge = false;
                backoff = Duration::from_secs(1);
                failing_since = None;
            }
            Ok(Progress::Ahead(dispatched)) => {
                wanted.badge = false;
                let mut moved = services.pushes.dispatched.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(30), moved.wait_for(|at| *at > dispatched)).await;
            }
            Ok(Progress::Failing) | Err(_) => {
                failing_since.get_or_insert_with(std::time::Instant::now);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

enum Progress {
    /// Everything pending was delivered (or given up on).
    Done,
    /// A batch went out; there may be more.
    More,
    /// Stored notifications wait for the dispatcher to pass this position.
    Ahead(u64),
    /// A gateway failed; try again after a pause.
    Failing,
}

async fn deliver_once(
    services: &Arc<Services>,
    http: &reqwest::Client,
    user_id: &UserId,
    badge: bool,
    failing_for: Duration,
) -> Result<Progress> {
    let user = user_id.to_owned();
    let pushers = blocking(services, move |s| data::pushers(&s.db, &user)).await?;
    let mut progress = Progress::Done;
    for pusher in pushers {
        let Some(url) = pusher_url(&pusher) else { continue };
        let (user, after) = (user_id.to_owned(), pusher.last_pushed);
        let dispatched = *services.pushes.dispatched.borrow();
        let mut pending = blocking(services, move |s| data::notifications_after(&s.db, &user, after, BATCH)).await?;
        if pending.len() == BATCH {
            progress = Progress::More;
        }
        if pending.last().is_some_and(|(position, _)| *position > dispatched) {
            pending.retain(|(position, _)| *position <= dispatched);
            if matches!(progress, Progress::Done) || pending.is_empty() {
                progress = Progress::Ahead(dispatched);
            }
        }
        let mut failed = false;
        for (position, notification) in pending {
            let record = pusher.clone();
            let payload = blocking(services, move |s| payload(s, &record, &notification)).await?;
            let Some(payload) = payload else {
                mark(services, &pusher, position).await?;
                continue;
            };
            match post(http, &url, &payload).await {
                Ok(rejected) => {
                    mark(services, &pusher, position).await?;
                    if rejected.contains(&pusher.pushkey) {
                        remove_rejected(services, &pusher).await?;
                        break;
                    }
                }
                Err(why) => {
                    if failing_for > GIVE_UP_AFTER {
                        tracing::warn!(user = %user_id, %url, "push gateway failed for an hour, notification dropped: {why}");
                        mark(services, &pusher, position).await?;
                    } else {
                        tracing::info!(user = %user_id, %url, "push gateway failed, will retry: {why}");
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            progress = Progress::Failing;
            continue;
        }
        if badge {
            let (user, record) = (user_id.to_owned(), pusher.clone());
            let payload = blocking(services, move |s| badge_payload(s, &user, &record)).await?;
            if let Err(why) = post(http, &url, &payload).await {
                tracing::info!(user = %user_id, %url, "push gateway did not take the badge update: {why}");
            }
        }
    }
    Ok(progress)
}

async fn mark(services: &Arc<Services>, pusher: &PusherRecord, position: u64) -> Result<()> {
    let pusher = pusher.clone();
    blocking(services, move |s| data::mark_pushed(&s.db, &pusher.user_id, &pusher.app_id, &pusher.pushkey, position))
        .await
}

async fn remove_rejected(services: &Arc<Services>, pusher: &PusherRecord) -> Result<()> {
    tracing::info!(user = %pusher.user_id, app_id = %pusher.app_id, "the push gateway rejected a pushkey: pusher removed");
    let pusher = pusher.clone();
    blocking(services, move |s| super::remove_pusher(s, &pusher.user_id, &pusher.app_id, &pusher.pushkey)).await
}

fn pusher_url(pusher: &PusherRecord) -> Option<String> {
    if pusher.pusher.get("kind").and_then(Value::as_str) != Some("http") {
        return None;
    }
    pusher.pusher.get("data")?.get("url")?.as_str().map(str::to_owned)
}

/// POST the payload; the gateway's `rejected` pushkeys on success.
async fn post(http: &reqwest::Client, url: &str, payload: &Value) -> std::result::Result<Vec<String>, String> {
    let response =
        http.post(url).timeout(Duration::from_secs(15)).json(payload).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = crate::service::federation::read_bounded(response, MAX_ANSWER_BYTES).await?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    let rejected = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("rejected").cloned())
        .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
        .unwrap_or_default();
    Ok(rejected)
}

/// The pusher as the gateway's `devices` entry.
fn device(pusher: &PusherRecord, tweaks: Value) -> Value {
    let mut data = pusher.pusher.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    data.remove("url");
    json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.created_ms / 1000,
        "data": data,
        "tweaks": tweaks,
    })
}

fn badge_payload(s: &Services, user_id: &UserId, pusher: &PusherRecord) -> Result<Value> {
    let unread = super::unread_rooms(s, user_id)?;
    Ok(json!({ "notification": {
        "id": "", "type": null, "sender": "",
        "counts": { "unread": unread },
        "devices": [device(pusher, json!({}))],
    }}))
}

/// The gateway's request for one notification, or `None` when the event
/// is gone.
fn payload(s: &Services, pusher: &PusherRecord, notification: &NotificationRecord) -> Result<Option<Value>> {
    let Some((pdu, meta)) = s.rooms.get_pdu(&notification.event_id)? else { return Ok(None) };
    let mut tweaks = Map::new();
    for action in notification.actions.as_array().into_iter().flatten() {
        if let Some(name) = action.get("set_tweak").and_then(Value::as_str) {
            let value = action.get("value").cloned().unwrap_or(Value::Bool(true));
            tweaks.insert(name.to_owned(), value);
        }
    }
    let high = pdu.kind.to_string() == "m.room.encrypted" || tweaks.contains_key("sound") || notification.highlight;
    let counts = json!({ "unread": super::unread_rooms(s, &pusher.user_id)? });
    // What Element X registers: the client fetches and decrypts the event
    // itself, so the gateway is told ids only, and (as Synapse) no tweaks.
    let event_id_only =
        pusher.pusher.get("data").and_then(|d| d.get("format")).and_then(Value::as_str) == Some("event_id_only");
    let device = device(pusher, if event_id_only { json!({}) } else { Value::Object(tweaks) });
    let mut out = json!({
        "event_id": pdu.event_id,
        "room_id": pdu.room_id,
        "counts": counts,
        "devices": [device],
        "prio": if high { "high" } else { "low" },
    });
    if !event_id_only {
        let state = s.rooms.state_at(meta.state_after)?;
        let sender_name = s
            .rooms
            .state_content(&state, "m.room.member", pdu.sender.as_str())?
            .and_then(|c| c.get("displayname").and_then(Value::as_str).map(str::to_owned));
        let room_name = s.rooms.state_content(&state, "m.room.name", "")?.and_then(|c| c.get("name").cloned());
        let alias = s.rooms.state_content(&state, "m.room.canonical_alias", "")?.and_then(|c| c.get("alias").cloned());
        let n = out.as_object_mut().expect("object");
        n.insert("id".into(), json!(pdu.event_id));
        n.insert("type".into(), json!(pdu.kind.to_string()));
        n.insert("sender".into(), json!(pdu.sender));
        n.insert("content".into(), pdu.content_value());
        if let Some(name) = sender_name {
            n.insert("sender_display_name".into(), json!(name));
        }
        if let Some(alias) = &alias {
            n.insert("room_alias".into(), alias.clone());
        }
        if let Some(name) = room_name.filter(|n| n.as_str().is_some_and(|s| !s.is_empty())).or(alias) {
            n.insert("room_name".into(), name);
        }
        if let Some(state_key) = &pdu.state_key {
            n.insert("user_is_target".into(), json!(state_key == pusher.user_id.as_str()));
            if pdu.kind.to_string() == "m.room.member"
                && let Some(membership) = pdu.content_value().get("membership")
            {
                n.insert("membership".into(), membership.clone());
            }
        }
    }
    Ok(Some(json!({ "notification": out })))
}
