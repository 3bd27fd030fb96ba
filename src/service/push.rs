//! Push rules (stored as the `m.push_rules` account data, server defaults
//! until the user changes them), the unread notification counts sync
//! reports and the notifications `/notifications` lists; pushers and
//! delivery to push gateways.
//!
//! Rules are applied lazily: a user's events in a room are evaluated when
//! their counts are read (sync, `/notifications`, a receipt) or, for users
//! with pushers, by the gateway's dispatcher just after the events are
//! written. Sending an event costs nothing per member, and a member who
//! never syncs costs nothing at all.

pub(crate) mod data;
pub mod gateway;

pub use gateway::PushSignal;

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::push::{
        Pusher, PusherKind, get_notifications,
        set_pusher::v3::{PusherAction, PusherPostData},
    },
    events::room::member::MembershipState,
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
    cache::ByteCache,
    error::{Error, Result},
    pdu::Pdu,
    service::{Services, users::Session},
    storage::Batch,
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
    /// Every event of the room up to this position has been evaluated
    /// for the user (see [`counts_at`]).
    #[serde(default)]
    pub through: u64,
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

/// Parsed rulesets by user, so they are not re-read and re-parsed for
/// every event evaluated.
pub struct RulesetCache(ByteCache<OwnedUserId, Arc<Ruleset>>);

impl RulesetCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self(ByteCache::new(budget_bytes))
    }

    fn insert(&self, user_id: &UserId, ruleset: Arc<Ruleset>) {
        // Parsed, a ruleset takes about three times its JSON.
        let weight = serde_json::to_vec(&*ruleset).map_or(4096, |json| json.len() * 3);
        self.0.insert(user_id.to_owned(), ruleset, weight);
    }
}

/// The user's ruleset: stored, or the spec's defaults.
pub fn ruleset(services: &Services, user_id: &UserId) -> Result<Arc<Ruleset>> {
    #[derive(Deserialize)]
    struct Content {
        global: Ruleset,
    }
    if let Some(hit) = services.push_rules.0.get(user_id) {
        return Ok(hit);
    }
    let ruleset = match services.account_data.get(user_id, None, PUSH_RULES)? {
        Some(raw) => serde_json::from_str::<Content>(raw.get())
            .map(|c| c.global)
            .unwrap_or_else(|_| Ruleset::server_default(user_id)),
        None => Ruleset::server_default(user_id),
    };
    let ruleset = Arc::new(ruleset);
    services.push_rules.insert(user_id, ruleset.clone());
    Ok(ruleset)
}

pub fn save_ruleset(services: &Services, user_id: &UserId, ruleset: &Ruleset) -> Result<()> {
    settle(services, user_id)?;
    services.account_data.set(user_id, None, PUSH_RULES, &json!({ "global": ruleset }))?;
    services.push_rules.insert(user_id, Arc::new(ruleset.clone()));
    Ok(())
}

/// The user's counts in the room as stored, without evaluating anything new.
fn stored_counts(services: &Services, user_id: &UserId, room_id: &RoomId) -> Result<Counts> {
    Ok(data::counts(&services.db, user_id, room_id)?.unwrap_or_default())
}

/// The user's counts in the room with every event up to stream position
/// `upto` (at most the safe position, so every such event is written)
/// evaluated against their push rules: what sync reports. Events are
/// evaluated here, for the users who ask, not for every member when an
/// event is sent, so a message costs the same in a room of 8 or of 5,000.
/// (Counts another device's sync or the push dispatcher took further than
/// `upto` are returned as they are: they may count an event the caller's
/// response does not show yet, which its next sync brings.)
pub fn counts_at(services: &Services, user_id: &UserId, room_id: &RoomId, upto: u64) -> Result<Counts> {
    Ok(catch_up_and_write(services, user_id, room_id, upto)?.0)
}

/// [`catch_up`] on the stored counts, writing the result: the counts and
/// how many new notifications there are (their pushers are woken).
fn catch_up_and_write(services: &Services, user_id: &UserId, room_id: &RoomId, upto: u64) -> Result<(Counts, usize)> {
    let _guard = counts_lock(user_id, room_id);
    let mut counts = stored_counts(services, user_id, room_id)?;
    let mut batch = services.db.batch();
    let Some(notified) = catch_up(services, user_id, room_id, &mut counts, upto, &mut batch)? else {
        return Ok((counts, 0));
    };
    batch.commit()?;
    if notified > 0 {
        services.pushes.wake(user_id, false);
    }
    Ok((counts, notified))
}

/// The user's counts in the room did not change after `since`, and every
/// event up to `last_event` has been evaluated for them.
pub fn counts_settled(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    since: u64,
    last_event: u64,
) -> Result<bool> {
    let counts = stored_counts(services, user_id, room_id)?;
    let evaluated = counts.through.max(services.pushes.counts_floor(&services.db)?);
    Ok(counts.changed_at <= since && evaluated >= last_event)
}

/// Stripes of locks over (user, room): one read-modify-write of a user's
/// counts at a time, without a lock every sender shares.
fn counts_lock(user_id: &UserId, room_id: &RoomId) -> std::sync::MutexGuard<'static, ()> {
    use std::hash::{Hash, Hasher};
    static STRIPES: [Mutex<()>; 64] = [const { Mutex::new(()) }; 64];
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (user_id, room_id).hash(&mut hasher);
    STRIPES[(hasher.finish() % 64) as usize].lock().expect("counts lock poisoned")
}

/// A read receipt or marker from the user: their counts start again, for
/// the whole room (an unthreaded receipt, `thread` empty), the main
/// timeline (`main`) or one thread (its root's id).
pub fn reset_counts(services: &Services, user_id: &UserId, room_id: &RoomId, thread: &str) -> Result<()> {
    let _guard = counts_lock(user_id, room_id);
    let mut counts = stored_counts(services, user_id, room_id)?;
    let mut batch = services.db.batch();
    // What arrived before the receipt is read with it.
    let evaluated = catch_up(services, user_id, room_id, &mut counts, services.db.safe_count(), &mut batch)?;
    let changed = match thread {
        "" => {
            let through = counts.through;
            !std::mem::replace(&mut counts, Counts { through, ..Counts::default() }).is_zero()
        }
        "main" => {
            let had = counts.notification_count > 0 || counts.highlight_count > 0;
            (counts.notification_count, counts.highlight_count) = (0, 0);
            had
        }
        root => OwnedEventId::try_from(root).is_ok_and(|root| counts.threads.remove(&root).is_some()),
    };
    if changed {
        counts.changed_at = batch.next_count_quiet();
        batch.wake_user_in_room(user_id, room_id);
        data::put_counts(&mut batch, user_id, room_id, &counts);
    }
    if changed || evaluated.is_some() {
        batch.commit()?;
    }
    if evaluated.is_some_and(|notified| notified > 0) || changed {
        // New notifications to push, or (`changed`) the phones' badge to update.
        services.pushes.wake(user_id, changed);
    }
    Ok(())
}

/// Before the user's rules or ignore list change: what was sent until now
/// is evaluated with the ones it was sent under.
pub fn settle(services: &Services, user_id: &UserId) -> Result<()> {
    catch_up_user(services, user_id, services.db.safe_count())?;
    Ok(())
}

/// An invite of a local user is evaluated for them at once: by the time
/// they read their counts they may have joined, and what came before the
/// join is no longer theirs. Every event of the room up to the invite is
/// written (they were staged before it under the room's lock).
pub fn on_invite(services: &Services, pdu: &Pdu) -> Result<()> {
    let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else { return Ok(()) };
    if !services.users.is_local(&target) || crate::service::rooms::membership_of(pdu) != Some(MembershipState::Invite) {
        return Ok(());
    }
    let Some((_, meta)) = services.rooms.get_pdu(&pdu.event_id)? else { return Ok(()) };
    if meta.count > 0 {
        catch_up_room(services, &target, &pdu.room_id, meta.count)?;
    }
    Ok(())
}

/// Bring every room of the user up to `upto` (before listing
/// `/notifications`, or before a push gateway hears of them).
pub fn catch_up_user(services: &Services, user_id: &UserId, upto: u64) -> Result<usize> {
    let mut notified = 0;
    for (room_id, record) in services.rooms.user_rooms(user_id)? {
        if matches!(record.membership, MembershipState::Join | MembershipState::Invite) {
            notified += catch_up_room(services, user_id, &room_id, upto)?;
        }
    }
    Ok(notified)
}

/// Bring one room of the user up to `upto`; how many new notifications.
pub fn catch_up_room(services: &Services, user_id: &UserId, room_id: &RoomId, upto: u64) -> Result<usize> {
    Ok(catch_up_and_write(services, user_id, room_id, upto)?.1)
}

/// The most events evaluated per write (a user back after months in a
/// busy room is caught up in steps, each written whole).
const CATCH_UP_STEP: usize = 2_000;

/// Evaluate the room's events after `counts.through` up to `upto` against
/// the user's rules, adding to `counts` and staging the counts and the
/// notifications in `batch` (committing it between steps). `None` when
/// nothing needed writing; else how many notifications were made. The
/// caller holds [`counts_lock`].
fn catch_up<'a>(
    services: &'a Services,
    user_id: &UserId,
    room_id: &RoomId,
    counts: &mut Counts,
    upto: u64,
    batch: &mut Batch<'a>,
) -> Result<Option<usize>> {
    if !services.users.is_local(user_id) {
        return Ok(None);
    }
    let floor = services.pushes.counts_floor(&services.db)?;
    if counts.through.max(floor) >= upto {
        return Ok(None);
    }
    // Never in the room: nothing here is theirs.
    let Some(mut evaluator) = Evaluator::new(services, user_id, room_id)? else { return Ok(None) };
    let mut notified = None;
    loop {
        // What came before their join (or invite) is not theirs to read.
        let from = counts.through.max(floor).max(evaluator.since.saturating_sub(1));
        if from >= upto {
            return Ok(notified);
        }
        let mut events = services.rooms.timeline(room_id, from as i64, true, CATCH_UP_STEP)?;
        let full_step = events.len() == CATCH_UP_STEP;
        events.retain(|(ordering, _)| *ordering > 0 && *ordering as u64 <= upto);
        let Some(&(last, _)) = events.last() else { return Ok(notified) };
        if notified.is_some() {
            // The previous step is written whole before the next begins.
            std::mem::replace(batch, services.db.batch()).commit()?;
        }
        let mut made = 0;
        for (ordering, event_id) in events {
            if (ordering as u64) < evaluator.since {
                continue;
            }
            let Some((pdu, meta)) = services.rooms.get_pdu(&event_id)? else { continue };
            let Some(actions) = evaluator.actions(&pdu, &meta)? else { continue };
            let notify = actions.iter().any(|a| a.should_notify());
            let highlight = actions.iter().any(|a| a.is_highlight());
            if !notify && !highlight {
                continue;
            }
            match thread_root(&pdu) {
                Some(root) => {
                    let thread = counts.threads.entry(root).or_default();
                    thread.notification_count += u64::from(notify);
                    thread.highlight_count += u64::from(highlight);
                }
                None => {
                    counts.notification_count += u64::from(notify);
                    counts.highlight_count += u64::from(highlight);
                }
            }
            // (A reset may already stand at a later position.)
            counts.changed_at = counts.changed_at.max(meta.count);
            if notify {
                let record = NotificationRecord {
                    event_id: pdu.event_id.clone(),
                    room_id: room_id.to_owned(),
                    actions: serde_json::to_value(&actions)?,
                    // When it was sent; a remote server's clock is not trusted past ours.
                    ts: u64::from(pdu.origin_server_ts.get()).min(evaluator.now),
                    highlight,
                };
                data::put_notification(batch, user_id, meta.count, &record);
                made += 1;
            }
        }
        // Events past `upto` may still be in flight: a full step stops at
        // its last event, anything shorter covered everything to `upto`.
        counts.through = if full_step { last as u64 } else { upto };
        data::put_counts(batch, user_id, room_id, counts);
        notified = Some(notified.unwrap_or(0) + made);
    }
}

/// One user's push rules applied to a run of events in one room, each as
/// it was when sent: the member count, power levels and the user's name
/// come from the state at the event (read again only when it changed);
/// the rules and the ignore list are the user's now, which are the ones
/// the events were sent under ([`settle`] runs before they change).
struct Evaluator<'a> {
    services: &'a Services,
    user_id: &'a UserId,
    room_id: &'a RoomId,
    version: ruma::RoomVersionId,
    /// Position of the user's latest join or invite: earlier events are not theirs.
    since: u64,
    now: u64,
    rules: Arc<Ruleset>,
    ignored: std::collections::HashSet<OwnedUserId>,
    /// The state snapshot the joined member count is for, and the count.
    member_count: Option<(u64, UInt)>,
    /// The power levels event the context was made from, and the context.
    power_levels: Option<(Option<OwnedEventId>, PushConditionPowerLevelsCtx)>,
    /// The user's member event, their membership by it and their name.
    member: Option<(Option<OwnedEventId>, Option<MembershipState>, String)>,
}

impl<'a> Evaluator<'a> {
    /// `None` when the user never had a membership in the room.
    fn new(services: &'a Services, user_id: &'a UserId, room_id: &'a RoomId) -> Result<Option<Self>> {
        let Some(membership) = services.rooms.user_membership(user_id, room_id)? else { return Ok(None) };
        let since = match membership.membership {
            MembershipState::Join | MembershipState::Invite => membership.count,
            // Gone: what came after is not theirs.
            _ => u64::MAX,
        };
        let Some(record) = services.rooms.room(room_id)? else { return Ok(None) };
        Ok(Some(Self {
            services,
            user_id,
            room_id,
            version: record.version,
            since,
            now: crate::util::now_ms(),
            rules: ruleset(services, user_id)?,
            ignored: services.account_data.ignored_users(user_id)?,
            member_count: None,
            power_levels: None,
            member: None,
        }))
    }

    /// The actions the user's rules give `pdu`, or `None` when it is not
    /// for them: their own, from someone they ignore, or sent while they
    /// were not in the room (unless it is their invite).
    fn actions(&mut self, pdu: &Pdu, meta: &crate::pdu::PduMeta) -> Result<Option<Vec<ruma::push::Action>>> {
        if pdu.sender == self.user_id || (pdu.state_key.is_none() && self.ignored.contains(&pdu.sender)) {
            return Ok(None);
        }
        let rooms = &self.services.rooms;
        let state = rooms.state_at(meta.state_after)?;
        let member_event = rooms.state_event(&state, "m.room.member", self.user_id.as_str())?;
        if self.member.as_ref().is_none_or(|(id, _, _)| *id != member_event) {
            let content = match &member_event {
                Some(id) => rooms.get_pdu(id)?.map(|(member, _)| member.content_value()),
                None => None,
            };
            let field = |name: &str| content.as_ref().and_then(|c| c.get(name)).and_then(|v| v.as_str());
            let membership = field("membership").map(MembershipState::from);
            let name = field("displayname").map_or_else(|| self.user_id.localpart().to_owned(), str::to_owned);
            self.member = Some((member_event.clone(), membership, name));
        }
        let Some((_, membership, display_name)) = &self.member else { return Ok(None) };
        let invites_user = *membership == Some(MembershipState::Invite) && member_event.as_ref() == Some(&pdu.event_id);
        if *membership != Some(MembershipState::Join) && !invites_user {
            return Ok(None);
        }
        if self.member_count.is_none_or(|(snapshot, _)| snapshot != meta.state_after) {
            let count = rooms.joined_count_at(meta.state_after, &state)?;
            self.member_count = Some((meta.state_after, UInt::try_from(count).unwrap_or(UInt::MAX)));
        }
        let member_count = self.member_count.map_or(UInt::MIN, |(_, count)| count);
        let mut ctx = PushConditionRoomCtx::new(
            self.room_id.to_owned(),
            member_count,
            self.user_id.to_owned(),
            display_name.clone(),
        );
        let power_event = rooms.state_event(&state, "m.room.power_levels", "")?;
        if self.power_levels.as_ref().is_none_or(|(id, _)| *id != power_event) {
            let levels = rooms.power_levels(&self.version, &state)?;
            self.power_levels = Some((power_event, PushConditionPowerLevelsCtx::from(levels)));
        }
        ctx.power_levels = self.power_levels.as_ref().map(|(_, levels)| levels.clone());
        let raw: Raw<ruma::events::AnySyncTimelineEvent> =
            Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event(meta, false, None))?);
        Ok(Some(poll_ready(self.rules.get_actions(&raw, &ctx)).map(<[_]>::to_vec).unwrap_or_default()))
    }
}

/// Drive a future that does no I/O (push rule evaluation) to its end here,
/// on whatever thread this is; `None` if it would wait.
fn poll_ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    match future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// The thread an event is part of (its `m.thread` relation's root).
fn thread_root(pdu: &Pdu) -> Option<OwnedEventId> {
    crate::service::relations::relation_of(pdu).filter(|(rel_type, _)| rel_type == "m.thread").map(|(_, root)| root)
}

/// Rooms with unread notifications: the badge number sent to phones
/// (grouped by room, as Synapse does by default).
pub fn unread_rooms(services: &Services, user_id: &UserId) -> Result<u64> {
    let all = data::all_counts(&services.db, user_id)?;
    Ok(all.iter().filter(|counts| counts.total().0 > 0).count() as u64)
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
    let pusher_json = serde_json::to_value(&pusher)?;
    let mut batch = services.db.batch();
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
    // The dispatcher covers the user from now on, before the position the
    // pusher starts from is read: no event after it can be passed over.
    // Nothing between here and the commit can fail but the commit itself.
    let had_pushers = services.pushes.has_pushers(user_id);
    services.pushes.set_has_pushers(user_id, true);
    let record = data::PusherRecord {
        user_id: user_id.to_owned(),
        pusher: pusher_json,
        app_id: app_id.clone(),
        pushkey: pushkey.clone(),
        device_id: Some(session.device_id.to_string()),
        created_ms: existing.as_ref().map_or_else(crate::util::now_ms, |e| e.created_ms),
        // A new pusher pushes what happens from now on, not the backlog.
        last_pushed: existing.as_ref().map_or_else(|| services.db.current_count(), |e| e.last_pushed),
    };
    data::put_pusher(&mut batch, &record);
    if let Err(err) = batch.commit() {
        services.pushes.set_has_pushers(user_id, had_pushers);
        return Err(err.into());
    }
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
    catch_up_user(services, user_id, services.db.safe_count())?;
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
