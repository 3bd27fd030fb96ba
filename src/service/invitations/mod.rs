//! Email invitations (kChat / Mattermost style): a server admin invites a
//! person by email to chosen rooms. The mail carries a link to the
//! invitation page; until it is redeemed the invitation shows in each room as
//! a standard `m.room.third_party_invite` (the masked address as its display
//! name). Redeeming makes an `external` account, which the inviter's
//! third-party-signed invite brings into each room, so every client and
//! server reads "accepted the invitation for a…@example.org".
//!
//! Decisions (see README, "External users"):
//! - Only server admins invite by email (external accounts count against the
//!   server's quota); they must be in each room with the power to invite.
//! - The quota `guests.max_external_users` counts active external accounts
//!   *and* pending invitations, so every invitation sent can be redeemed.
//! - An address that belongs to an account here gets Matrix invites for that
//!   account instead (and a mail saying so): no second account.
//! - A resend makes a new link; the old one stops working.

pub mod data;

use std::sync::Mutex;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

pub use self::data::Invitation;
use crate::{
    error::{Error, Result},
    policy::{self, Action},
    service::{
        Services, guests,
        mail::{self, Outgoing},
        membership,
        rooms::NewEvent,
        users::{self, AccountKind, Session},
    },
    util,
};

/// The state event that marks an invitation pending in a room.
const MARKER: &str = "m.room.third_party_invite";
/// Rooms one invitation may name.
const MAX_ROOMS: usize = 50;
/// Longest personal message, in characters.
const MAX_MESSAGE: usize = 1000;

/// Invitation changes (creation against the quota, acceptance, revocation)
/// happen one at a time: they are rare, and the quota must hold exactly.
static LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Accepted,
    Expired,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Accepted => "accepted",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }
}

impl Invitation {
    pub fn status(&self, now: u64) -> Status {
        if self.accepted_by.is_some() {
            Status::Accepted
        } else if self.revoked_at.is_some() {
            Status::Revoked
        } else if now >= self.expires_at {
            Status::Expired
        } else {
            Status::Pending
        }
    }
}

pub struct NewInvitation {
    pub email: String,
    pub rooms: Vec<String>,
    pub expires_in_ms: Option<u64>,
    pub message: Option<String>,
}

pub struct Created {
    pub invitation: Invitation,
    /// The invitation page's address; `None` when an existing account was invited.
    pub link: Option<String>,
}

/// `a…@example.org`: enough for the people in the room to recognise whom
/// they wait for, not the whole address.
pub fn mask(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}…@{domain}")
        }
        None => "…".to_owned(),
    }
}

fn link_for(s: &Services, token: &str) -> String {
    format!("{}/invite/{token}", s.settings.guest_base_url())
}

fn display_name(s: &Services, user_id: &UserId) -> Result<String> {
    Ok(s.users.get(user_id)?.and_then(|u| u.displayname).unwrap_or_else(|| user_id.to_string()))
}

/// Whether `inviter` may bring people into `room_id` now: in the room, with
/// the power to invite, not a guest, the room not an ended guest room.
fn may_invite_to(s: &Services, inviter: &UserId, room_id: &RoomId) -> Result<()> {
    let Some(record) = s.rooms.room(room_id)? else {
        return Err(Error::not_found(format!("{room_id} is not a room of this server.")));
    };
    match s.users.get(inviter)? {
        Some(user) if !user.deactivated && !user.kind.is_guest() => {}
        _ => return Err(Error::forbidden(format!("{inviter} can no longer invite anyone."))),
    }
    if !s.rooms.is_joined(room_id, inviter)? {
        return Err(Error::forbidden(format!("{inviter} is not in {room_id}, so cannot invite to it.")));
    }
    let state = s.rooms.current_state(room_id)?;
    if !s.rooms.power_levels(&record.version, &state)?.user_can_invite(inviter) {
        return Err(Error::forbidden(format!("{inviter} may not invite people to {room_id}.")));
    }
    if guests::room(s, room_id)?.is_some_and(|r| r.ended) {
        return Err(Error::forbidden(format!("{room_id} is a guest room that has ended.")));
    }
    Ok(())
}

/// Active external accounts plus pending invitations (for the quota; an
/// invitation of an existing account is accepted at once, so never pending).
fn external_in_use(s: &Services) -> Result<u64> {
    let accounts = s.users.all()?.iter().filter(|(_, u)| u.kind == AccountKind::External && !u.deactivated).count();
    Ok((accounts + pending_count(s)?) as u64)
}

fn quota_error(max: u64) -> Error {
    Error::new(
        http::StatusCode::FORBIDDEN,
        "M_USER_LIMIT_EXCEEDED",
        format!(
            "This server may have {max} external users at most (pending invitations included); \
             revoke an invitation or deactivate an external user first."
        ),
    )
    .with("can_upgrade", Value::Bool(false))
}

pub fn pending_count(s: &Services) -> Result<usize> {
    let now = util::now_ms();
    Ok(data::all(&s.db)?.iter().filter(|i| i.status(now) == Status::Pending).count())
}

fn local_account_with_email(s: &Services, email: &str) -> Result<Option<OwnedUserId>> {
    Ok(s.users
        .all()?
        .into_iter()
        .find(|(_, u)| !u.deactivated && u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email)))
        .map(|(id, _)| id))
}

/// Invite a person by email. Every check happens before anything is
/// written; a refusal leaves no marker, record or mail behind.
pub fn create(s: &Services, session: &Session, req: NewInvitation) -> Result<Created> {
    policy::check(s, session, Action::InviteByEmail)?;
    let email = mail::normalise_address(&req.email)
        .ok_or_else(|| Error::invalid_param(format!("`{}` is not a mail address.", req.email.trim())))?;
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    let allowed = &s.settings.raw.guests.allowed_email_domains;
    if !allowed.is_empty()
        && !allowed.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            domain == a || domain.ends_with(&format!(".{a}"))
        })
    {
        return Err(Error::forbidden(format!(
            "Invitations may only go to addresses at {}; {domain} is not one of them.",
            allowed.join(", ")
        )));
    }
    if req.rooms.is_empty() || req.rooms.len() > MAX_ROOMS {
        return Err(Error::invalid_param(format!("Name between 1 and {MAX_ROOMS} rooms to invite to.")));
    }
    let mut rooms: Vec<OwnedRoomId> = Vec::new();
    for room in &req.rooms {
        let room_id = util::parse_room_id(room)?;
        if !rooms.contains(&room_id) {
            may_invite_to(s, &session.user_id, &room_id)?;
            rooms.push(room_id);
        }
    }
    let message = req.message.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty());
    if message.as_ref().is_some_and(|m| m.chars().count() > MAX_MESSAGE) {
        return Err(Error::invalid_param(format!("The message may have {MAX_MESSAGE} characters at most.")));
    }
    let guests_config = &s.settings.raw.guests;
    let lifetime = match req.expires_in_ms {
        None => guests_config.invitation_default_lifetime.as_millis() as u64,
        Some(0) => return Err(Error::invalid_param("`expires_in_ms` must be above zero.")),
        Some(ms) if ms > guests_config.invitation_max_lifetime.as_millis() as u64 => {
            return Err(Error::invalid_param(format!(
                "Invitations last {} days at most here.",
                guests_config.invitation_max_lifetime.as_secs() / 86_400
            )));
        }
        Some(ms) => ms,
    };

    let _guard = LOCK.lock().expect("invitation lock poisoned");
    let now = util::now_ms();
    let existing = local_account_with_email(s, &email)?;
    if existing.is_none() {
        let max = guests_config.max_external_users;
        if max > 0 && external_in_use(s)? >= max {
            return Err(quota_error(max));
        }
    }
    let token = util::random_string(32);
    let mut invitation = Invitation {
        id: util::random_string(16),
        email: email.clone(),
        rooms: rooms.clone(),
        invited_by: session.user_id.clone(),
        created_at: now,
        expires_at: now.saturating_add(lifetime),
        message,
        token_hash: data::token_hash(&token),
        mail_id: None,
        revoked_at: None,
        accepted_by: None,
        accepted_at: None,
        existing_account: existing.is_some(),
        markers_removed: existing.is_some(),
    };

    if let Some(user_id) = &existing {
        // Already here: Matrix invites, and a mail that says where to look.
        for room_id in &rooms {
            if let Err(err) = membership::invite_as(s, room_id, &session.user_id, user_id, None, false) {
                tracing::info!(%room_id, %user_id, "not invited by email to a room: {err}");
            }
        }
        invitation.accepted_by = Some(user_id.clone());
        invitation.accepted_at = Some(now);
        let outgoing = existing_account_mail(s, &invitation, user_id)?;
        let mail = mail::prepare(s, outgoing);
        invitation.mail_id = Some(mail.id.clone());
        let mut batch = s.db.batch();
        data::put(&mut batch, &invitation);
        mail::data::put(&mut batch, &mail);
        batch.commit_durable()?;
        mail::wake(s, &mail);
        tracing::info!(invitation = %invitation.id, %user_id, by = %session.user_id, "invited an existing account by email");
        return Ok(Created { invitation, link: None });
    }

    // The markers first: if one cannot be placed, the others are taken back.
    let mut placed: Vec<&RoomId> = Vec::new();
    for room_id in &rooms {
        match s.rooms.append(
            room_id,
            &session.user_id,
            NewEvent::state(MARKER, invitation.id.as_str(), marker(s, &email)),
        ) {
            Ok(_) => placed.push(room_id),
            Err(err) => {
                for done in placed {
                    withdraw_marker(s, done, &session.user_id, &invitation.id);
                }
                return Err(err);
            }
        }
    }
    let link = link_for(s, &token);
    let mail = mail::prepare(s, invitation_mail(s, &invitation, &link)?);
    invitation.mail_id = Some(mail.id.clone());
    let mut batch = s.db.batch();
    data::put(&mut batch, &invitation);
    data::put_token(&mut batch, &invitation.token_hash, &invitation.id);
    mail::data::put(&mut batch, &mail);
    if let Err(err) = batch.commit_durable() {
        for room_id in &rooms {
            withdraw_marker(s, room_id, &session.user_id, &invitation.id);
        }
        return Err(err.into());
    }
    mail::wake(s, &mail);
    tracing::info!(invitation = %invitation.id, rooms = rooms.len(), by = %session.user_id, "invited a person by email");
    Ok(Created { invitation, link: Some(link) })
}

/// The pending marker's content, as the spec's third-party invites have it.
/// The server's own key signs the acceptance, so the key named is ours.
fn marker(s: &Services, email: &str) -> Value {
    let key = s.signing.public_key_base64();
    let validity = format!("{}/_porch/client/v1/invitations/key/isvalid", s.settings.client_base_url());
    json!({
        "display_name": mask(email),
        "key_validity_url": validity,
        "public_key": key,
        "public_keys": [{ "public_key": key, "key_validity_url": validity }],
    })
}

/// Whether a key named in one of our markers is the server's (the
/// `key_validity_url` of the markers).
pub fn key_is_valid(s: &Services, public_key: &str) -> bool {
    public_key == s.signing.public_key_base64()
}

/// Take an invitation's marker out of a room (an empty third-party invite,
/// as clients show "revoked the invitation"). Best effort: a room the
/// inviter has left keeps it, and that is logged.
fn withdraw_marker(s: &Services, room_id: &RoomId, inviter: &UserId, id: &str) {
    let current = s.rooms.current_state_pdu(room_id, MARKER, id).ok().flatten();
    if current.is_none_or(|pdu| pdu.content_value().as_object().is_none_or(|c| c.is_empty())) {
        return;
    }
    if let Err(err) = s.rooms.append(room_id, inviter, NewEvent::state(MARKER, id, json!({}))) {
        tracing::info!(%room_id, invitation = id, "cannot withdraw an invitation's marker: {err}");
    }
}

fn withdraw_markers(s: &Services, invitation: &mut Invitation) {
    if !invitation.markers_removed {
        for room_id in &invitation.rooms {
            withdraw_marker(s, room_id, &invitation.invited_by, &invitation.id);
        }
        invitation.markers_removed = true;
    }
}

pub fn get(s: &Services, id: &str) -> Result<Invitation> {
    data::get(&s.db, id)?.ok_or_else(|| Error::not_found("No invitation with this id."))
}

/// Every invitation, newest first.
pub fn list(s: &Services) -> Result<Vec<Invitation>> {
    let mut all = data::all(&s.db)?;
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(all)
}

/// The admin API's view of an invitation.
pub fn to_json(s: &Services, invitation: &Invitation) -> Result<Value> {
    let now = util::now_ms();
    let mut rooms = Vec::new();
    for room_id in &invitation.rooms {
        rooms.push(json!({ "room_id": room_id, "name": s.rooms.name(room_id)? }));
    }
    let delivery = match invitation.mail_id.as_deref().map(|id| mail::get(s, id)).transpose()?.flatten() {
        Some(m) => {
            let state = match m.state {
                mail::MailState::Queued => "queued",
                mail::MailState::Failing | mail::MailState::Failed => "failing",
                mail::MailState::Sent => "sent",
                mail::MailState::Logged => "logged",
                mail::MailState::Cancelled => "cancelled",
            };
            json!({ "state": state, "attempts": m.attempts, "last_error": m.last_error, "sent_at": m.sent_at })
        }
        None => json!({ "state": "unknown", "attempts": 0 }),
    };
    Ok(json!({
        "id": invitation.id,
        "email": invitation.email,
        "rooms": rooms,
        "invited_by": { "user_id": invitation.invited_by, "displayname": display_name(s, &invitation.invited_by)? },
        "created_at": invitation.created_at,
        "expires_at": invitation.expires_at,
        "message": invitation.message,
        "status": invitation.status(now).as_str(),
        "delivery": delivery,
        "accepted_by": invitation.accepted_by,
        "accepted_at": invitation.accepted_at,
        "existing_account": invitation.existing_account,
    }))
}

/// Revoke a pending (or expired) invitation: its link stops working, its
/// mail is withdrawn if not sent yet, the markers leave the rooms.
pub fn revoke(s: &Services, id: &str) -> Result<Invitation> {
    let _guard = LOCK.lock().expect("invitation lock poisoned");
    let mut invitation = get(s, id)?;
    match invitation.status(util::now_ms()) {
        Status::Accepted => {
            return Err(Error::invalid_param("This invitation was accepted; deactivate the account instead."));
        }
        Status::Revoked => return Ok(invitation),
        Status::Pending | Status::Expired => {}
    }
    if let Some(mail_id) = &invitation.mail_id {
        mail::cancel(s, mail_id)?;
    }
    invitation.revoked_at = Some(util::now_ms());
    withdraw_markers(s, &mut invitation);
    let mut batch = s.db.batch();
    data::delete_token(&mut batch, &invitation.token_hash);
    data::put(&mut batch, &invitation);
    batch.commit_durable()?;
    tracing::info!(invitation = %invitation.id, "revoked an invitation");
    Ok(invitation)
}

/// Send a pending invitation again, with a new link (the old one stops
/// working, and an unsent earlier mail is withdrawn).
pub fn resend(s: &Services, id: &str) -> Result<Invitation> {
    let _guard = LOCK.lock().expect("invitation lock poisoned");
    let mut invitation = get(s, id)?;
    if invitation.status(util::now_ms()) != Status::Pending {
        return Err(Error::invalid_param("Only a pending invitation can be sent again; make a new one."));
    }
    if let Some(mail_id) = &invitation.mail_id {
        mail::cancel(s, mail_id)?;
    }
    let token = util::random_string(32);
    let old_hash = std::mem::replace(&mut invitation.token_hash, data::token_hash(&token));
    let mail = mail::prepare(s, invitation_mail(s, &invitation, &link_for(s, &token))?);
    invitation.mail_id = Some(mail.id.clone());
    let mut batch = s.db.batch();
    data::delete_token(&mut batch, &old_hash);
    data::put_token(&mut batch, &invitation.token_hash, &invitation.id);
    data::put(&mut batch, &invitation);
    mail::data::put(&mut batch, &mail);
    batch.commit_durable()?;
    mail::wake(s, &mail);
    Ok(invitation)
}

fn page_error(status: http::StatusCode, errcode: &'static str, message: &str) -> Error {
    Error::new(status, errcode, message)
}

/// The invitation behind a link, if it may be used now.
fn usable(s: &Services, token: &str) -> Result<Invitation> {
    let invitation = data::by_token(&s.db, token)?
        .ok_or_else(|| Error::not_found("This invitation is unknown or was withdrawn."))?;
    match invitation.status(util::now_ms()) {
        Status::Pending => Ok(invitation),
        Status::Revoked => Err(Error::not_found("This invitation is unknown or was withdrawn.")),
        Status::Accepted => Err(page_error(
            http::StatusCode::FORBIDDEN,
            "DEV.PORCH.INVITATION_USED",
            "This invitation has been used already; sign in with the account made with it.",
        )),
        Status::Expired => Err(page_error(
            http::StatusCode::FORBIDDEN,
            "DEV.PORCH.INVITATION_EXPIRED",
            "This invitation has expired; ask the person who invited you for a new one.",
        )),
    }
}

/// What the invitation page shows before the person signs up.
pub fn preview(s: &Services, token: &str) -> Result<Value> {
    let invitation = usable(s, token)?;
    let mut rooms = Vec::new();
    for room_id in &invitation.rooms {
        let state = s.rooms.current_state(room_id)?;
        let text = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(s.rooms.state_content(&state, kind, "")?.and_then(|c| c[field].as_str().map(str::to_owned)))
        };
        rooms.push(json!({ "room_id": room_id, "name": text("m.room.name", "name")?, "topic": text("m.room.topic", "topic")? }));
    }
    Ok(json!({
        "email": mask(&invitation.email),
        "inviter": { "user_id": invitation.invited_by, "displayname": display_name(s, &invitation.invited_by)? },
        "rooms": rooms,
        "expires_at": invitation.expires_at,
        "message": invitation.message,
        "server_name": s.server_name(),
        "homeserver": s.settings.client_base_url(),
    }))
}

pub struct Accepted {
    pub user_id: OwnedUserId,
    pub access_token: String,
    pub device_id: String,
    pub rooms: Vec<OwnedRoomId>,
}

/// Redeem an invitation: an `external` account with the address on it,
/// brought into each room the inviter may still invite to. Refused (and
/// nothing made) when the invitation cannot be used, the quota is full,
/// the name or password will not do, or no room is left to join.
pub fn accept(
    s: &Services,
    token: &str,
    username: &str,
    password: &str,
    display_name: Option<&str>,
) -> Result<Accepted> {
    let _guard = LOCK.lock().expect("invitation lock poisoned");
    let mut invitation = usable(s, token)?;
    users::check_new_password(password)?;
    let user_id = s.users.local_user_id(username.trim())?;
    if s.users.exists(&user_id)? {
        return Err(Error::user_in_use());
    }
    let max = s.settings.raw.guests.max_external_users;
    // This invitation is counted among the pending ones already.
    if max > 0 && external_in_use(s)? > max {
        return Err(quota_error(max));
    }
    let (open, closed): (Vec<OwnedRoomId>, Vec<OwnedRoomId>) =
        invitation.rooms.iter().cloned().partition(|room| may_invite_to(s, &invitation.invited_by, room).is_ok());
    if open.is_empty() {
        return Err(Error::forbidden(
            "The person who invited you can no longer bring anyone into these rooms; ask them for a new invitation.",
        ));
    }

    let name = display_name.map(str::trim).filter(|n| !n.is_empty()).unwrap_or(user_id.localpart());
    let name = policy::guest_display_name(s, name);
    let mut record = s.users.create(&user_id, Some(password), AccountKind::External, false, Some(name))?;
    record.email = Some(invitation.email.clone());
    s.users.save(&user_id, &record)?;
    invitation.accepted_by = Some(user_id.clone());
    invitation.accepted_at = Some(util::now_ms());
    // The link stays known, so a second visit hears "used" rather than "unknown".
    let mut batch = s.db.batch();
    data::put(&mut batch, &invitation);
    batch.commit_durable()?;
    tracing::info!(%user_id, invitation = %invitation.id, "an email invitation was accepted");

    let mut joined = Vec::new();
    for room_id in &open {
        match bring_in(s, &invitation, room_id, &user_id) {
            Ok(()) => joined.push(room_id.clone()),
            Err(err) => {
                tracing::warn!(%room_id, %user_id, "an invited external user could not join: {err}");
                withdraw_marker(s, room_id, &invitation.invited_by, &invitation.id);
            }
        }
    }
    for room_id in &closed {
        withdraw_marker(s, room_id, &invitation.invited_by, &invitation.id);
    }
    invitation.markers_removed = true;
    let mut batch = s.db.batch();
    data::put(&mut batch, &invitation);
    batch.commit_durable()?;
    let (device_id, access_token) = s.users.create_device(&user_id, None, Some("invitation page".to_owned()), None)?;
    Ok(Accepted { user_id, access_token, device_id: device_id.to_string(), rooms: joined })
}

/// The inviter's invite, signed by this server for the marker's token (the
/// spec's third-party invite), then the new account's join.
fn bring_in(s: &Services, invitation: &Invitation, room_id: &RoomId, user_id: &UserId) -> Result<()> {
    let mut signed: ruma::CanonicalJsonObject = ruma::CanonicalJsonObject::new();
    signed.insert("mxid".into(), ruma::CanonicalJsonValue::String(user_id.to_string()));
    signed.insert("token".into(), ruma::CanonicalJsonValue::String(invitation.id.clone()));
    ruma::signatures::sign_json(s.server_name().as_str(), &s.signing.key_pair, &mut signed)
        .map_err(|e| Error::internal(format!("cannot sign a third-party invite: {e}")))?;
    let mut content = membership::member_content(s, user_id, MembershipState::Invite, None)?;
    content.insert(
        "third_party_invite".into(),
        json!({ "display_name": mask(&invitation.email), "signed": serde_json::to_value(&signed)? }),
    );
    membership::append_member(s, room_id, &invitation.invited_by, user_id, content)?;
    membership::join_as(s, room_id, user_id, None, &Map::new())?;
    Ok(())
}

/// Markers of invitations that expired unused leave their rooms (run by housekeeping).
pub fn withdraw_expired(s: &Services) -> Result<()> {
    let now = util::now_ms();
    for mut invitation in data::all(&s.db)? {
        if invitation.status(now) == Status::Expired && !invitation.markers_removed {
            let _guard = LOCK.lock().expect("invitation lock poisoned");
            withdraw_markers(s, &mut invitation);
            let mut batch = s.db.batch();
            data::put(&mut batch, &invitation);
            batch.commit_durable()?;
        }
    }
    Ok(())
}

/// Rooms `session`'s user may invite people to by email, for the console's picker.
pub fn invitable_rooms(s: &Services, session: &Session) -> Result<Vec<Value>> {
    policy::check(s, session, Action::InviteByEmail)?;
    let mut rooms = Vec::new();
    for (room_id, record) in s.rooms.user_rooms(&session.user_id)? {
        if record.membership == MembershipState::Join && may_invite_to(s, &session.user_id, &room_id).is_ok() {
            let guest_room = guests::room(s, &room_id)?.is_some();
            rooms.push(json!({ "room_id": room_id, "name": s.rooms.name(&room_id)?, "guest_room": guest_room }));
        }
    }
    Ok(rooms)
}

/// An admin brings an external account into more rooms: their invite, the
/// account's join.
pub fn add_to_rooms(s: &Services, session: &Session, user_id: &UserId, rooms: &[String]) -> Result<Vec<OwnedRoomId>> {
    policy::check(s, session, Action::InviteByEmail)?;
    let user = s.users.get(user_id)?.filter(|u| !u.deactivated).ok_or_else(|| Error::not_found("No such account."))?;
    if user.kind != AccountKind::External {
        return Err(Error::invalid_param("Only external accounts are managed this way."));
    }
    let mut room_ids = Vec::new();
    for room in rooms {
        let room_id = util::parse_room_id(room)?;
        may_invite_to(s, &session.user_id, &room_id)?;
        room_ids.push(room_id);
    }
    for room_id in &room_ids {
        if s.rooms.membership(room_id, user_id)? != Some(MembershipState::Invite) {
            membership::invite_as(s, room_id, &session.user_id, user_id, None, false)?;
        }
        membership::join_as(s, room_id, user_id, None, &Map::new())?;
    }
    Ok(room_ids)
}

/// An admin takes an external account out of a room (the account leaves).
pub fn remove_from_room(s: &Services, session: &Session, user_id: &UserId, room_id: &RoomId) -> Result<()> {
    policy::check(s, session, Action::InviteByEmail)?;
    let user = s.users.get(user_id)?.ok_or_else(|| Error::not_found("No such account."))?;
    if user.kind != AccountKind::External {
        return Err(Error::invalid_param("Only external accounts are managed this way."));
    }
    membership::leave(s, room_id, user_id, Some("Removed by a server administrator"))
}

fn lines_for_rooms(s: &Services, rooms: &[OwnedRoomId]) -> Result<Vec<String>> {
    rooms.iter().map(|r| Ok(s.rooms.name(r)?.unwrap_or_else(|| r.to_string()))).collect()
}

fn invitation_mail(s: &Services, invitation: &Invitation, link: &str) -> Result<Outgoing> {
    let inviter = display_name(s, &invitation.invited_by)?;
    let rooms = lines_for_rooms(s, &invitation.rooms)?;
    let server = s.server_name().to_string();
    let homeserver = s.settings.client_base_url();
    let days = invitation.expires_at.saturating_sub(invitation.created_at).div_ceil(86_400_000);
    let french = s.settings.raw.email.language == "fr";
    let subject = if french {
        format!("{inviter} vous invite à discuter sur {server}")
    } else {
        format!("{inviter} invited you to chat on {server}")
    };
    let (intro, open, apps, expiry) = if french {
        (
            format!("{inviter} vous invite à rejoindre ces salons sur {server} :"),
            "Ouvrez ce lien pour choisir votre nom d'utilisateur et votre mot de passe :".to_owned(),
            format!(
                "Ensuite, vous pourrez aussi utiliser n'importe quelle application Matrix (Element, par exemple) avec l'adresse de serveur {homeserver}."
            ),
            format!("Cette invitation est valable {days} jour{}.", if days > 1 { "s" } else { "" }),
        )
    } else {
        (
            format!("{inviter} invited you to these rooms on {server}:"),
            "Open this link to choose your username and password:".to_owned(),
            format!(
                "Afterwards you can also use any Matrix app (Element, for example) with the server address {homeserver}."
            ),
            format!("This invitation is valid for {days} day{}.", if days > 1 { "s" } else { "" }),
        )
    };
    let mut text = format!("{intro}\n\n");
    for room in &rooms {
        text.push_str(&format!("  - {room}\n"));
    }
    if let Some(message) = &invitation.message {
        text.push_str(&format!("\n{inviter}: \"{message}\"\n"));
    }
    text.push_str(&format!("\n{open}\n{link}\n\n{expiry}\n{apps}\n"));
    let e = mail::escape_html;
    let mut html = format!(
        "<!doctype html><html lang=\"{}\"><body style=\"font-family:sans-serif\"><p>{}</p><ul>",
        if french { "fr" } else { "en" },
        e(&intro)
    );
    for room in &rooms {
        html.push_str(&format!("<li>{}</li>", e(room)));
    }
    html.push_str("</ul>");
    if let Some(message) = &invitation.message {
        html.push_str(&format!("<blockquote>{}</blockquote>", e(message)));
    }
    html.push_str(&format!(
        "<p>{}</p><p><a href=\"{}\">{}</a></p><p>{}</p><p>{}</p></body></html>",
        e(&open),
        e(link),
        e(link),
        e(&expiry),
        e(&apps)
    ));
    Ok(Outgoing { to: invitation.email.clone(), subject, text, html })
}

fn existing_account_mail(s: &Services, invitation: &Invitation, user_id: &UserId) -> Result<Outgoing> {
    let inviter = display_name(s, &invitation.invited_by)?;
    let rooms = lines_for_rooms(s, &invitation.rooms)?.join(", ");
    let server = s.server_name().to_string();
    let french = s.settings.raw.email.language == "fr";
    let (subject, body) = if french {
        (
            format!("{inviter} vous invite à discuter sur {server}"),
            format!(
                "{inviter} a invité votre compte {user_id} dans ces salons : {rooms}. Ouvrez votre application Matrix pour accepter."
            ),
        )
    } else {
        (
            format!("{inviter} invited you to chat on {server}"),
            format!(
                "{inviter} invited your account {user_id} to these rooms: {rooms}. Open your Matrix app to accept."
            ),
        )
    };
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\"><p>{}</p></body></html>",
        mail::escape_html(&body)
    );
    Ok(Outgoing { to: invitation.email.clone(), subject, text: format!("{body}\n"), html })
}
