//! Guest rooms: creation with the contract's state, links, redemption, and
//! ending. What guests may do elsewhere is `policy.rs`'s business.

mod data;

use std::sync::{Arc, Mutex};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    policy::{self, Action},
    service::{
        Services, blocking,
        create_room::{self, CreateRoom},
        membership, remote_invite,
        rooms::NewEvent,
        users::{AccountKind, Session},
    },
    util,
};

pub const GUEST_ROOM_EVENT: &str = "dev.porch.guest_room";
pub const SECURITY_LEVEL_EVENT: &str = "dev.porch.security_level";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestRoom {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
    pub created_at: u64,
    pub ends_at: Option<u64>,
    pub ended: bool,
    pub ended_at: Option<u64>,
    /// When the ended room's history is purged.
    pub purge_at: Option<u64>,
    #[serde(default)]
    pub purged: bool,
    pub security_level: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkJoin {
    pub user_id: OwnedUserId,
    pub at: u64,
    pub kind: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Link {
    pub id: String,
    pub room_id: OwnedRoomId,
    pub token: String,
    pub created_by: OwnedUserId,
    pub created_at: u64,
    pub expires_at: u64,
    pub max_uses: Option<u64>,
    pub uses: u64,
    pub password_hash: Option<String>,
    pub revoked: bool,
    #[serde(default)]
    pub joins: Vec<LinkJoin>,
}

impl Link {
    /// Whether the link can still be used: not revoked, expired or used up.
    pub fn is_active(&self, now: u64) -> bool {
        !self.revoked && self.expires_at > now && self.max_uses.is_none_or(|max| self.uses < max)
    }

    /// The link as its managers see it (the password hash never leaves).
    /// Each person who used it is listed with their membership now, so a
    /// user of another server shows `invite` until they accept.
    pub fn to_json(&self, s: &Services) -> Value {
        let base_url = s.settings.guest_base_url();
        let joined: Vec<Value> = self
            .joins
            .iter()
            .map(|j| {
                let membership = s.rooms.membership(&self.room_id, &j.user_id).ok().flatten();
                json!({ "user_id": j.user_id, "at": j.at, "kind": j.kind, "membership": membership })
            })
            .collect();
        json!({
            "id": self.id,
            "room_id": self.room_id,
            "url": format!("{base_url}/guest/{}", self.token),
            "token": self.token,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "requires_password": self.password_hash.is_some(),
            "revoked": self.revoked,
            "active": self.is_active(crate::util::now_ms()),
            "joined": joined,
        })
    }
}

/// Options for a new link.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LinkOptions {
    pub expires_in_ms: Option<u64>,
    pub max_uses: Option<u64>,
    pub password: Option<String>,
}

pub struct NewGuestRoom {
    pub name: String,
    pub topic: Option<String>,
    pub ends_at: Option<u64>,
    pub history_visibility: Option<String>,
    pub link: LinkOptions,
}

/// Who redeems a link.
pub enum Redeemer<'a> {
    Account(&'a Session),
    NewGuest { display_name: String },
}

pub struct Redeemed {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    /// For a new temporary account.
    pub login: Option<(String, String, u64)>,
}

pub struct Guests {
    /// Serialises link use counting and room ending.
    lock: Mutex<()>,
    /// When the accounts were last checked against the temporary TTL.
    ttl_checked_at: Mutex<u64>,
}

impl Default for Guests {
    fn default() -> Self {
        Self { lock: Mutex::new(()), ttl_checked_at: Mutex::new(0) }
    }
}

fn guest_error(status: http::StatusCode, errcode: &'static str, message: &str) -> Error {
    Error::new(status, errcode, message)
}

pub fn room(s: &Services, room_id: &RoomId) -> Result<Option<GuestRoom>> {
    data::room(&s.db, room_id)
}

fn save_room(s: &Services, record: &GuestRoom) -> Result<()> {
    data::save_room(&s.db, record)
}

pub fn link(s: &Services, link_id: &str) -> Result<Option<Link>> {
    data::link(&s.db, link_id)
}

fn link_by_token(s: &Services, token: &str) -> Result<Option<Link>> {
    data::link_by_token(&s.db, token)
}

fn save_link(s: &Services, link: &Link) -> Result<()> {
    data::save_link(&s.db, link)
}

pub fn links_of(s: &Services, room_id: &RoomId) -> Result<Vec<Link>> {
    let mut out = data::links_of(&s.db, room_id)?;
    out.sort_by_key(|l| l.created_at);
    Ok(out)
}

pub fn all_rooms(s: &Services) -> Result<Vec<GuestRoom>> {
    data::rooms(&s.db)
}

/// The security level a user's rooms carry.
pub fn user_level(s: &Services, user_id: &UserId) -> Result<String> {
    let user = s.users.get(user_id)?;
    Ok(user.and_then(|u| u.security_level).unwrap_or_else(|| s.settings.raw.default_security_level.clone()))
}

fn require_enabled(s: &Services) -> Result<()> {
    if !s.settings.raw.guests.enabled {
        return Err(Error::forbidden("Guest access is disabled on this server."));
    }
    Ok(())
}

/// Create a guest room with the contract's state, and its first link.
pub fn create(s: &Services, session: &Session, req: NewGuestRoom) -> Result<(OwnedRoomId, Link)> {
    require_enabled(s)?;
    policy::check(s, session, Action::CreateGuestRoom)?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.len() > 255 {
        return Err(Error::invalid_param("A guest room needs a name of 1 to 255 bytes."));
    }
    let now = util::now_ms();
    if req.ends_at.is_some_and(|at| at <= now) {
        return Err(Error::invalid_param("`ends_at` must be in the future."));
    }
    let history = req.history_visibility.unwrap_or_else(|| "joined".to_owned());
    if !matches!(history.as_str(), "joined" | "shared") {
        return Err(Error::invalid_param("`history_visibility` may be `joined` or `shared`."));
    }
    check_link_options(s, &req.link)?;
    let level_id = user_level(s, &session.user_id)?;
    let level = s
        .settings
        .security_level(&level_id)
        .cloned()
        .ok_or_else(|| Error::internal(format!("unknown security level {level_id}")))?;

    let allow: Vec<Value> = match s.settings.raw.guests.team_room.as_str() {
        "" => Vec::new(),
        team => vec![json!({ "type": "m.room_membership", "room_id": team })],
    };
    let mut guest_room = json!({ "creator": session.user_id, "created_at": now });
    if let Some(at) = req.ends_at {
        guest_room["ends_at"] = json!(at);
    }
    let mut initial_state = vec![
        ("m.room.join_rules".to_owned(), String::new(), json!({ "join_rule": "restricted", "allow": allow })),
        ("m.room.guest_access".to_owned(), String::new(), json!({ "guest_access": "can_join" })),
        ("m.room.history_visibility".to_owned(), String::new(), json!({ "history_visibility": history })),
        (GUEST_ROOM_EVENT.to_owned(), String::new(), guest_room),
        (
            SECURITY_LEVEL_EVENT.to_owned(),
            String::new(),
            json!({ "level": level.id, "label": level.label, "color": level.color }),
        ),
    ];
    if level.classified {
        let mut allowed = vec![s.server_name().to_string()];
        allowed.extend(level.cleared_servers.iter().cloned());
        initial_state.push((
            "m.room.server_acl".to_owned(),
            String::new(),
            json!({ "allow": allowed, "deny": [], "allow_ip_literals": false }),
        ));
    }
    let power = json!({
        "invite": 50, "kick": 50, "ban": 50, "redact": 50, "state_default": 50, "events_default": 0,
        "events": {
            "m.room.pinned_events": 0,
            SECURITY_LEVEL_EVENT: 100, GUEST_ROOM_EVENT: 100,
            "m.room.power_levels": 100, "m.room.server_acl": 100,
            "m.room.name": 50, "m.room.topic": 50, "m.room.avatar": 50,
            "m.room.history_visibility": 100, "m.room.encryption": 100, "m.room.tombstone": 100
        }
    });
    let room_id = create_room::create_as(
        s,
        &session.user_id,
        CreateRoom {
            version: None,
            creation_content: None,
            preset: Some(ruma::api::client::room::create_room::v3::RoomPreset::PrivateChat),
            public: false,
            initial_state,
            power_level_override: power.as_object().cloned(),
            invite: Vec::new(),
            is_direct: false,
            name: Some(name),
            topic: req.topic.filter(|t| !t.trim().is_empty()),
            alias_localpart: None,
        },
    )?;
    let record = GuestRoom {
        room_id: room_id.clone(),
        creator: session.user_id.clone(),
        created_at: now,
        ends_at: req.ends_at,
        ended: false,
        ended_at: None,
        purge_at: None,
        purged: false,
        security_level: level.id.clone(),
    };
    save_room(s, &record)?;
    let link = new_link(s, &room_id, &session.user_id, req.link)?;
    tracing::info!(%room_id, creator = %session.user_id, level = %level.id, "created a guest room");
    Ok((room_id, link))
}

fn check_link_options(s: &Services, options: &LinkOptions) -> Result<()> {
    let max = s.settings.raw.guests.link_max_lifetime.as_millis() as u64;
    if options.expires_in_ms.is_some_and(|ms| ms == 0 || ms > max) {
        return Err(Error::invalid_param(format!("`expires_in_ms` must be between 1 and {max}.")));
    }
    if options.max_uses == Some(0) {
        return Err(Error::invalid_param("`max_uses` must be at least 1, or left out for no limit."));
    }
    if options.password.as_ref().is_some_and(|p| p.chars().count() < 8) {
        return Err(Error::invalid_param("A link password needs at least 8 characters."));
    }
    Ok(())
}

fn new_link(s: &Services, room_id: &RoomId, creator: &UserId, options: LinkOptions) -> Result<Link> {
    check_link_options(s, &options)?;
    let now = util::now_ms();
    let lifetime = options.expires_in_ms.unwrap_or(s.settings.raw.guests.link_default_lifetime.as_millis() as u64);
    let link = Link {
        id: util::random_string(12),
        room_id: room_id.to_owned(),
        // 32 alphanumeric characters: about 190 random bits.
        token: util::random_string(32),
        created_by: creator.to_owned(),
        created_at: now,
        expires_at: now + lifetime,
        max_uses: options.max_uses,
        uses: 0,
        password_hash: options.password.as_deref().map(crate::password::hash).transpose().map_err(Error::internal)?,
        revoked: false,
        joins: Vec::new(),
    };
    save_link(s, &link)?;
    Ok(link)
}

/// A guest room that `session` may manage: a non-guest of this server with
/// invite power in it (or a server admin).
pub fn managed_room(s: &Services, session: &Session, room_id: &RoomId) -> Result<GuestRoom> {
    policy::check(s, session, Action::ManageLinks)?;
    let record = room(s, room_id)?.ok_or_else(|| Error::not_found("No guest room with this id."))?;
    if session.user.is_admin {
        return Ok(record);
    }
    let room = s.rooms.room(room_id)?.ok_or_else(|| Error::not_found("No guest room with this id."))?;
    let state = s.rooms.state_at(room.current_state)?;
    let power = s.rooms.power_levels(&room.version, &state)?;
    if !s.rooms.is_joined(room_id, &session.user_id)? || !power.user_can_invite(&session.user_id) {
        return Err(Error::forbidden("Only the room's moderators may manage its links."));
    }
    Ok(record)
}

pub fn create_link(s: &Services, session: &Session, room_id: &RoomId, options: LinkOptions) -> Result<Link> {
    require_enabled(s)?;
    let record = managed_room(s, session, room_id)?;
    if record.ended {
        return Err(guest_error(http::StatusCode::GONE, "DEV.PORCH.ROOM_ENDED", "This guest room has ended."));
    }
    new_link(s, room_id, &session.user_id, options)
}

pub fn revoke_link(s: &Services, link_id: &str) -> Result<Link> {
    let _guard = s.guests.lock.lock().expect("guest lock poisoned");
    let mut link = link(s, link_id)?.ok_or_else(|| Error::not_found("No link with this id."))?;
    link.revoked = true;
    save_link(s, &link)?;
    Ok(link)
}

/// The link behind a token and its room. Links of ended rooms answer 410
/// (the ending revoked them), so people learn the conversation ended.
fn usable_link(s: &Services, token: &str) -> Result<(Link, GuestRoom)> {
    let not_found = || Error::not_found("This link does not exist or was revoked.");
    let link = link_by_token(s, token)?.ok_or_else(not_found)?;
    let record = room(s, &link.room_id)?.ok_or_else(not_found)?;
    if record.ended {
        return Err(guest_error(http::StatusCode::GONE, "DEV.PORCH.ROOM_ENDED", "This conversation has ended."));
    }
    if link.revoked {
        return Err(not_found());
    }
    Ok((link, record))
}

/// What anyone holding the token may see before joining.
pub fn preview(s: &Services, token: &str) -> Result<Value> {
    let (link, record) = usable_link(s, token)?;
    let state = s.rooms.current_state(&link.room_id)?;
    let text = |kind: &str, field: &str| -> Result<Option<String>> {
        Ok(s.rooms
            .state_content(&state, kind, "")?
            .and_then(|c| c.get(field).and_then(|v| v.as_str()).map(str::to_owned)))
    };
    let level = s.rooms.state_content(&state, SECURITY_LEVEL_EVENT, "")?.unwrap_or_default();
    Ok(json!({
        "room_id": link.room_id,
        "name": text("m.room.name", "name")?,
        "topic": text("m.room.topic", "topic")?,
        "avatar_url": text("m.room.avatar", "url")?,
        "security_level": level,
        "member_count": s.rooms.joined_members(&link.room_id)?.len(),
        "requires_password": link.password_hash.is_some(),
        "expires_at": link.expires_at,
        "ended": record.ended,
        "server_name": s.server_name(),
    }))
}

/// A link that may be used now with `password`; refusals per the contract.
fn checked_link(s: &Services, token: &str, password: Option<&str>) -> Result<Link> {
    let (link, _) = usable_link(s, token)?;
    require_enabled(s)?;
    if util::now_ms() >= link.expires_at {
        return Err(guest_error(
            http::StatusCode::FORBIDDEN,
            "DEV.PORCH.LINK_EXPIRED",
            "This link has expired; ask for a new one.",
        ));
    }
    if link.max_uses.is_some_and(|max| link.uses >= max) {
        return Err(guest_error(
            http::StatusCode::FORBIDDEN,
            "DEV.PORCH.LINK_USED_UP",
            "This link has been used as often as it may; ask for a new one.",
        ));
    }
    if let Some(hash) = &link.password_hash {
        match password {
            None | Some("") => {
                return Err(guest_error(
                    http::StatusCode::FORBIDDEN,
                    "DEV.PORCH.PASSWORD_REQUIRED",
                    "This link needs a password.",
                ));
            }
            Some(given) if !crate::password::verify(given, hash) => {
                return Err(Error::forbidden("The password is wrong."));
            }
            _ => {}
        }
    }
    Ok(link)
}

/// Redeem a link for an account of this server or a new temporary one.
/// Every refusal happens before anything is written: no account,
/// membership or use is left behind by a refused try.
pub fn redeem(s: &Services, token: &str, password: Option<&str>, redeemer: Redeemer<'_>) -> Result<Redeemed> {
    let _guard = s.guests.lock.lock().expect("guest lock poisoned");
    let mut link = checked_link(s, token, password)?;
    let authoriser = authoriser(s, &link)?;
    let (user_id, login, kind) = match redeemer {
        Redeemer::Account(session) => {
            if s.rooms.is_joined(&link.room_id, &session.user_id)? {
                return Ok(Redeemed { room_id: link.room_id, user_id: session.user_id.clone(), login: None });
            }
            if session.user.kind == AccountKind::Temporary {
                return Err(Error::forbidden(
                    "Temporary guest accounts cannot join other rooms; open the link in a new browser session.",
                ));
            }
            if s.rooms.membership(&link.room_id, &session.user_id)? == Some(MembershipState::Ban) {
                return Err(Error::forbidden("You are banned from this room."));
            }
            membership::join_authorised(s, &link.room_id, &session.user_id, &authoriser)?;
            (session.user_id.clone(), None, session.user.kind.as_str())
        }
        Redeemer::NewGuest { display_name } => {
            let name = display_name.trim();
            if name.is_empty() || name.chars().count() > 64 {
                return Err(Error::invalid_param("Enter a name of 1 to 64 characters."));
            }
            let user_id = s.users.local_user_id(&format!("guest-{}", util::random_string(16).to_lowercase()))?;
            let display = policy::guest_display_name(s, name);
            s.users.create(&user_id, None, AccountKind::Temporary, false, Some(display))?;
            let joined = membership::join_authorised(s, &link.room_id, &user_id, &authoriser);
            if let Err(err) = joined {
                // Leave nothing behind: the account never existed.
                s.users.remove_unused(&user_id)?;
                return Err(err);
            }
            let (device_id, access_token) =
                s.users.create_device(&user_id, None, Some("guest link".to_owned()), None)?;
            let expires_at = util::now_ms() + s.settings.raw.guests.temporary_ttl.as_millis() as u64;
            (user_id, Some((access_token, device_id.to_string(), expires_at)), "temporary")
        }
    };
    link.uses += 1;
    link.joins.push(LinkJoin { user_id: user_id.clone(), at: util::now_ms(), kind: kind.to_owned() });
    save_link(s, &link)?;
    tracing::info!(room_id = %link.room_id, %user_id, link = %link.id, "joined a guest room through a link");
    Ok(Redeemed { room_id: link.room_id, user_id, login })
}

/// Redeem a link for a user of another server: the link's creator (or
/// another local member who may invite) invites them over federation, and
/// they accept on their own server. The use is reserved while the invite
/// is out and given back if it fails, so a refused or unreachable server
/// counts no use.
pub async fn redeem_remote(
    s: &Arc<Services>,
    token: &str,
    password: Option<&str>,
    user_id: OwnedUserId,
) -> Result<Redeemed> {
    let (token, password, target) = (token.to_owned(), password.map(str::to_owned), user_id.clone());
    let reserved = blocking(s, move |s| {
        let _guard = s.guests.lock.lock().expect("guest lock poisoned");
        let mut link = checked_link(s, &token, password.as_deref())?;
        match s.rooms.membership(&link.room_id, &target)? {
            Some(MembershipState::Join | MembershipState::Invite) => return Ok((link, None)),
            Some(MembershipState::Ban) => return Err(Error::forbidden(format!("{target} is banned from this room."))),
            _ => {}
        }
        let authoriser = authoriser(s, &link)?;
        link.uses += 1;
        save_link(s, &link)?;
        Ok((link, Some(authoriser)))
    })
    .await?;
    let (link, Some(authoriser)) = reserved else {
        // Already invited or in: nothing to send, nothing counted.
        return Ok(Redeemed { room_id: reserved.0.room_id, user_id, login: None });
    };
    let reason = Some("Invited through a guest link".to_owned());
    let sent = remote_invite::invite(s, &link.room_id, &authoriser, &user_id, reason, false).await;
    let (link_id, target) = (link.id.clone(), user_id.clone());
    let ok = sent.is_ok();
    blocking(s, move |s| {
        let _guard = s.guests.lock.lock().expect("guest lock poisoned");
        let Some(mut link) = self::link(s, &link_id)? else { return Ok(()) };
        if ok {
            link.joins.push(LinkJoin { user_id: target, at: util::now_ms(), kind: "remote".to_owned() });
        } else {
            link.uses = link.uses.saturating_sub(1);
        }
        save_link(s, &link)
    })
    .await?;
    sent?;
    tracing::info!(room_id = %link.room_id, %user_id, link = %link.id, "invited a user of another server through a link");
    Ok(Redeemed { room_id: link.room_id, user_id, login: None })
}

/// The local member who authorises joins through `link`: its creator if they
/// still may invite, else any joined local member who may.
fn authoriser(s: &Services, link: &Link) -> Result<OwnedUserId> {
    let room = s.rooms.room(&link.room_id)?.ok_or_else(|| Error::not_found("This room no longer exists."))?;
    let state = s.rooms.state_at(room.current_state)?;
    let power = s.rooms.power_levels(&room.version, &state)?;
    let may =
        |user: &UserId| -> Result<bool> { Ok(s.rooms.is_joined(&link.room_id, user)? && power.user_can_invite(user)) };
    if may(&link.created_by)? {
        return Ok(link.created_by.clone());
    }
    for member in s.rooms.joined_members(&link.room_id)? {
        if s.users.is_local(&member) && may(&member)? {
            return Ok(member);
        }
    }
    Err(Error::new(
        http::StatusCode::FORBIDDEN,
        "M_UNABLE_TO_GRANT_JOIN",
        "Nobody in the room may let you in any more.",
    ))
}

/// End a guest room: revoke its links, mark it ended, remove guests, make
/// every local member leave and forget it. Runs once.
pub fn end(s: &Services, room_id: &RoomId) -> Result<GuestRoom> {
    let _guard = s.guests.lock.lock().expect("guest lock poisoned");
    let mut record = room(s, room_id)?.ok_or_else(|| Error::not_found("No guest room with this id."))?;
    if record.ended {
        return Ok(record);
    }
    for mut link in links_of(s, room_id)? {
        if !link.revoked {
            link.revoked = true;
            save_link(s, &link)?;
        }
    }
    let moderator = end_actor(s, &record)?;
    if let Some(moderator) = &moderator {
        let mut content =
            s.rooms.current_state_pdu(room_id, GUEST_ROOM_EVENT, "")?.map(|p| p.content_value()).unwrap_or_default();
        content["ended"] = Value::Bool(true);
        if let Err(err) = s.rooms.append(room_id, moderator, NewEvent::state(GUEST_ROOM_EVENT, "", content)) {
            tracing::warn!(%room_id, "could not mark the guest room ended: {err}");
        }
    }
    let members = s.rooms.members(room_id)?;
    // Guests and remote members are removed by a moderator; local members leave.
    for (user_id, membership) in &members {
        if !matches!(membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
            continue;
        }
        let is_guest = s.users.get(user_id)?.is_some_and(|u| u.kind.is_guest());
        let remote = !s.users.is_local(user_id);
        if (is_guest || remote)
            && let Some(moderator) = &moderator
            && moderator != user_id
        {
            let kicked = membership::moderate_as(
                s,
                room_id,
                moderator,
                user_id,
                membership::Moderation::Kick,
                Some("The conversation has ended."),
            );
            if let Err(err) = kicked {
                tracing::warn!(%room_id, %user_id, "could not remove a guest: {err}");
            }
        }
    }
    for (user_id, _) in &members {
        if !s.users.is_local(user_id) {
            continue;
        }
        let still_in = s.rooms.membership(room_id, user_id)?;
        if still_in
            .is_some_and(|m| matches!(m, MembershipState::Join | MembershipState::Invite | MembershipState::Knock))
            && let Err(err) = membership::leave(s, room_id, user_id, Some("The conversation has ended."))
        {
            tracing::warn!(%room_id, %user_id, "could not leave an ended guest room: {err}");
        }
        s.rooms.forget(user_id, room_id)?;
    }
    let now = util::now_ms();
    record.ended = true;
    record.ended_at = Some(now);
    record.purge_at = Some(now + s.settings.raw.guests.history_retention.as_millis() as u64);
    save_room(s, &record)?;
    crate::service::directory::set_published(s, room_id, false)?;
    // Temporary guests whose last guest room this was are done.
    for (user_id, _) in &members {
        if let Some(user) = s.users.get(user_id)?
            && user.kind == AccountKind::Temporary
            && !user.deactivated
            && !in_active_guest_room(s, user_id)?
        {
            crate::service::accounts::deactivate(s, user_id)?;
        }
    }
    tracing::info!(%room_id, "ended a guest room");
    Ok(record)
}

/// A local member with the power to change the guest-room state and remove people.
fn end_actor(s: &Services, record: &GuestRoom) -> Result<Option<OwnedUserId>> {
    let Some(room) = s.rooms.room(&record.room_id)? else { return Ok(None) };
    let state = s.rooms.state_at(room.current_state)?;
    let power = s.rooms.power_levels(&room.version, &state)?;
    let able = |user: &UserId| -> Result<bool> {
        Ok(s.rooms.is_joined(&record.room_id, user)?
            && power.user_can_send_state(user, ruma::events::StateEventType::from(GUEST_ROOM_EVENT))
            && power.user_can_kick(user))
    };
    if able(&record.creator)? {
        return Ok(Some(record.creator.clone()));
    }
    for member in s.rooms.joined_members(&record.room_id)? {
        if s.users.is_local(&member) && able(&member)? {
            return Ok(Some(member));
        }
    }
    Ok(None)
}

fn in_active_guest_room(s: &Services, user_id: &UserId) -> Result<bool> {
    for (room_id, membership) in s.rooms.user_rooms(user_id)? {
        if membership.membership == MembershipState::Join && room(s, &room_id)?.is_some_and(|r| !r.ended) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `session` may end the room: its creator, a room admin of this
/// server, or a server admin.
pub fn may_end(s: &Services, session: &Session, record: &GuestRoom) -> Result<bool> {
    if session.user.is_admin || session.user_id == record.creator {
        return Ok(!session.is_guest() || session.user.is_admin);
    }
    policy::check(s, session, Action::EndRoom)?;
    let Some(room) = s.rooms.room(&record.room_id)? else { return Ok(false) };
    let state = s.rooms.state_at(room.current_state)?;
    let power = s.rooms.power_levels(&room.version, &state)?;
    Ok(s.rooms.is_joined(&record.room_id, &session.user_id)?
        && power.for_user(&session.user_id)
            >= ruma::events::room::power_levels::UserPowerLevel::Int(ruma::Int::from(100)))
}

/// Carry out what is due: ends whose time passed (also while porch was
/// down), history purges, and temporary accounts past their lifetime.
pub fn run_due(s: &Services) -> Result<()> {
    let now = util::now_ms();
    for record in all_rooms(s)? {
        if !record.ended && record.ends_at.is_some_and(|at| at <= now) {
            end(s, &record.room_id)?;
        } else if record.ended && !record.purged && record.purge_at.is_some_and(|at| at <= now) {
            s.rooms.purge_history(&record.room_id)?;
            save_room(s, &GuestRoom { purged: true, ..record })?;
        }
    }
    crate::service::invitations::withdraw_expired(s)?;
    // Reading every account is not for every tick: a quarter of the TTL is
    // precise enough (between 1 s and 1 min).
    let ttl = s.settings.raw.guests.temporary_ttl.as_millis() as u64;
    {
        let mut checked_at = s.guests.ttl_checked_at.lock().expect("ttl clock poisoned");
        if now < *checked_at + (ttl / 4).clamp(1_000, 60_000) {
            return Ok(());
        }
        *checked_at = now;
    }
    for (user_id, user) in s.users.all()? {
        if user.kind == AccountKind::Temporary && !user.deactivated && user.created_at + ttl <= now {
            crate::service::accounts::deactivate(s, &user_id)?;
        }
    }
    Ok(())
}

pub fn spawn_scheduler(services: Arc<Services>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let s = services.clone();
            match tokio::task::spawn_blocking(move || run_due(&s)).await {
                Ok(Err(err)) => tracing::warn!("guest-room housekeeping failed: {err}"),
                Err(err) => tracing::warn!("guest-room housekeeping panicked: {err}"),
                _ => {}
            }
        }
    });
}

/// `!guest …` commands typed in a guest room by any Matrix client. Returns
/// the text of the notice that answers it, or `None` if the message is no
/// command. Guests' commands are answered with a refusal.
pub fn command(s: &Services, session: &Session, room_id: &RoomId, body: &str) -> Result<Option<String>> {
    let mut words = body.split_whitespace();
    if words.next() != Some("!guest") {
        return Ok(None);
    }
    let Some(record) = room(s, room_id)? else { return Ok(None) };
    const USAGE: &str = "Commands: !guest link [max uses] · !guest links · !guest revoke LINK_ID · !guest end";
    if session.is_guest() {
        return Ok(Some("Guests cannot manage this room.".to_owned()));
    }
    let base = s.settings.guest_base_url();
    let answer = match (words.next(), words.next()) {
        (Some("link"), max_uses) => {
            let max_uses = match max_uses.map(str::parse::<u64>) {
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => return Ok(Some(USAGE.to_owned())),
                None => None,
            };
            match create_link(s, session, room_id, LinkOptions { max_uses, ..Default::default() }) {
                Ok(link) => format!(
                    "New guest link {} (expires {}): {base}/guest/{}",
                    link.id,
                    format_time(link.expires_at),
                    link.token
                ),
                Err(err) => err.message,
            }
        }
        (Some("links"), None) => match managed_room(s, session, room_id) {
            Ok(_) => {
                let now = util::now_ms();
                let live: Vec<String> = links_of(s, room_id)?
                    .iter()
                    .filter(|l| !l.revoked && l.expires_at > now)
                    .map(|l| {
                        let uses = l.max_uses.map_or(format!("{} uses", l.uses), |m| format!("{} of {m} uses", l.uses));
                        format!("{}: {uses}, expires {}, {base}/guest/{}", l.id, format_time(l.expires_at), l.token)
                    })
                    .collect();
                if live.is_empty() { "No active guest links.".to_owned() } else { live.join("\n") }
            }
            Err(err) => err.message,
        },
        (Some("revoke"), Some(link_id)) => match managed_room(s, session, room_id) {
            Ok(_) => match link(s, link_id)?.filter(|l| l.room_id == room_id) {
                Some(found) => {
                    revoke_link(s, &found.id)?;
                    format!("Link {} revoked.", found.id)
                }
                None => format!("This room has no link {link_id}."),
            },
            Err(err) => err.message,
        },
        (Some("end"), None) => {
            if may_end(s, session, &record)? {
                // The notice goes out before the room is ended and everyone leaves.
                let notice = json!({ "msgtype": "m.notice", "body": "This conversation has been ended." });
                s.rooms.append(room_id, &session.user_id, NewEvent::message("m.room.message", notice))?;
                end(s, room_id)?;
                return Ok(None);
            }
            "Only the room's creator, its admins or a server admin may end it.".to_owned()
        }
        _ => USAGE.to_owned(),
    };
    Ok(Some(answer))
}

/// A timestamp for people, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn format_time(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}
