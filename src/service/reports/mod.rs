//! Reports of events, rooms and users (`/report`), kept for the server's
//! admins (`GET /_porch/admin/v1/reports`). Its column family, `reports`,
//! is owned by its `data` module.

mod data;

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    service::{Services, history},
};

/// Longest reason kept.
const MAX_REASON: usize = 4096;
/// Reports listed at most per page.
const MAX_PAGE: usize = 100;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub id: u64,
    pub reporter: OwnedUserId,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<OwnedRoomId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<OwnedEventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<OwnedUserId>,
    pub reason: String,
}

fn store(s: &Services, mut report: Report) -> Result<u64> {
    if report.reason.len() > MAX_REASON {
        return Err(Error::invalid_param(format!("A reason may have {MAX_REASON} bytes at most.")));
    }
    s.user_limits.check(&report.reporter, crate::service::ratelimit::UserAction::SendEvent)?;
    let mut batch = s.db.batch();
    let id = batch.next_count_quiet();
    report.id = id;
    data::put_report(&mut batch, id, &report);
    batch.commit()?;
    tracing::info!(id, reporter = %report.reporter, room = ?report.room_id, event = ?report.event_id, user = ?report.user_id, "a report was filed");
    Ok(id)
}

fn report(reporter: &UserId, reason: Option<String>) -> Report {
    Report {
        id: 0,
        reporter: reporter.to_owned(),
        ts: crate::util::now_ms(),
        room_id: None,
        event_id: None,
        user_id: None,
        reason: reason.unwrap_or_default(),
    }
}

/// An event the reporter can see (else 404, so nothing is learnt).
pub fn event(
    s: &Services,
    reporter: &UserId,
    room_id: &RoomId,
    event_id: &EventId,
    reason: Option<String>,
) -> Result<()> {
    let not_found = || Error::not_found("No such event, or you may not see it.");
    let (pdu, meta) = s.rooms.get_pdu(event_id)?.ok_or_else(not_found)?;
    if pdu.room_id != room_id || !history::may_see(s, reporter, &pdu, &meta)? {
        return Err(not_found());
    }
    let mut r = report(reporter, reason);
    r.room_id = Some(room_id.to_owned());
    r.event_id = Some(event_id.to_owned());
    store(s, r).map(|_| ())
}

/// A room this server knows.
pub fn room(s: &Services, reporter: &UserId, room_id: &RoomId, reason: String) -> Result<()> {
    if !s.rooms.exists(room_id)? {
        return Err(Error::not_found("This room is not known to this server."));
    }
    let mut r = report(reporter, Some(reason));
    r.room_id = Some(room_id.to_owned());
    store(s, r).map(|_| ())
}

/// A user of this server, or one seen in a room the reporter shares.
pub fn user(s: &Services, reporter: &UserId, user_id: &UserId, reason: String) -> Result<()> {
    let known = if s.users.is_local(user_id) {
        s.users.get(user_id)?.is_some()
    } else {
        crate::policy::shares_room(s, reporter, user_id)?
    };
    if !known {
        return Err(Error::not_found("This user is not known here."));
    }
    let mut r = report(reporter, Some(reason));
    r.user_id = Some(user_id.to_owned());
    store(s, r).map(|_| ())
}

/// Newest first, before `before` (an id) if given.
pub fn list(s: &Services, before: Option<u64>, limit: usize) -> Result<Vec<Report>> {
    data::reports(&s.db, before, limit.clamp(1, MAX_PAGE))
}
