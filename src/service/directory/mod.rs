//! Room aliases, the public room directory and the user directory.

mod data;

use std::collections::BTreeSet;

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UInt, UserId,
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    room::JoinRuleKind,
};

use self::data::AliasRecord;
use crate::{
    error::{Error, Result},
    policy::{self, Action},
    service::{Services, users::Session},
};

pub fn resolve_alias(s: &Services, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
    Ok(data::alias(&s.db, alias)?.map(|r| r.room_id))
}

/// Validate an alias this server may hold.
pub fn check_local_alias(s: &Services, alias: &RoomAliasId) -> Result<()> {
    if alias.server_name() != s.server_name() {
        return Err(Error::invalid_param("Aliases on other servers cannot be created here."));
    }
    Ok(())
}

/// Signed-in non-guests may list; anonymous callers only if configured.
pub fn may_list(s: &Services, session: Option<&Session>) -> Result<()> {
    match session {
        Some(session) => policy::check(s, session, Action::ListPublicRooms),
        None if s.settings.raw.rooms.public_directory_without_auth => Ok(()),
        None => Err(Error::missing_token()),
    }
}

/// A signed-in user gives a room they are in an alias (guests never may).
pub fn add_alias(s: &Services, session: &Session, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
    policy::check(s, session, Action::ManageAliases)?;
    if !s.rooms.is_joined(room_id, &session.user_id)? {
        return Err(Error::forbidden("You must be in the room to give it an alias."));
    }
    create_alias(s, alias, room_id, &session.user_id)
}

/// A signed-in user removes an alias they made (admins: any).
pub fn remove_alias(s: &Services, session: &Session, alias: &RoomAliasId) -> Result<()> {
    policy::check(s, session, Action::ManageAliases)?;
    delete_alias(s, alias, &session.user_id, session.user.is_admin)
}

/// A signed-in user lists or unlists a room in the public directory: guests
/// never may; others need the power to set the room's canonical alias.
pub fn publish(s: &Services, session: &Session, room_id: &RoomId, published: bool) -> Result<()> {
    policy::check(s, session, Action::PublishRoom)?;
    let room = s.rooms.room(room_id)?.ok_or_else(|| Error::not_found("This room is not known to this server."))?;
    let state = s.rooms.state_at(room.current_state)?;
    let power = s.rooms.power_levels(&room.version, &state)?;
    if !session.user.is_admin
        && !power.user_can_send_state(&session.user_id, ruma::events::StateEventType::RoomCanonicalAlias)
    {
        return Err(Error::forbidden("You may not change whether this room is published."));
    }
    set_published(s, room_id, published)
}

/// Serialises "is this alias free? then take it".
static ALIAS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn create_alias(s: &Services, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
    check_local_alias(s, alias)?;
    if !s.rooms.exists(room_id)? {
        return Err(Error::not_found("This room is not known to this server."));
    }
    let _guard = ALIAS_LOCK.lock().expect("alias lock poisoned");
    if data::alias_exists(&s.db, alias)? {
        return Err(Error::new(http::StatusCode::CONFLICT, "M_UNKNOWN", "This alias is already in use."));
    }
    data::save_alias(&s.db, alias, &AliasRecord { room_id: room_id.to_owned(), creator: creator.to_owned() })?;
    Ok(())
}

/// Create a room and give it `alias` as one step: the alias is checked and
/// claimed under the alias lock, so a refused alias leaves no room behind.
pub fn create_with_alias(
    s: &Services,
    alias: &RoomAliasId,
    creator: &UserId,
    create: impl FnOnce() -> Result<OwnedRoomId>,
) -> Result<OwnedRoomId> {
    check_local_alias(s, alias)?;
    let _guard = ALIAS_LOCK.lock().expect("alias lock poisoned");
    if data::alias_exists(&s.db, alias)? {
        return Err(Error::room_in_use("That room alias is already taken."));
    }
    let room_id = create()?;
    data::save_alias(&s.db, alias, &AliasRecord { room_id: room_id.clone(), creator: creator.to_owned() })?;
    Ok(room_id)
}

/// Remove an alias: its creator, a server admin, or a room member who may
/// change the canonical alias.
fn delete_alias(s: &Services, alias: &RoomAliasId, user: &UserId, is_admin: bool) -> Result<()> {
    let record = data::alias(&s.db, alias)?.ok_or_else(|| Error::not_found("No such alias."))?;
    let may = is_admin || record.creator == user || {
        let room = s.rooms.room(&record.room_id)?;
        match room {
            Some(room) => {
                let state = s.rooms.state_at(room.current_state)?;
                let power = s.rooms.power_levels(&room.version, &state)?;
                power.user_can_send_state(user, ruma::events::StateEventType::RoomCanonicalAlias)
            }
            None => false,
        }
    };
    if !may {
        return Err(Error::forbidden("You may not remove this alias."));
    }
    data::delete_alias(&s.db, alias)?;
    drop_from_canonical_alias(s, &record.room_id, alias, user);
    Ok(())
}

/// A removed alias leaves the room's canonical alias too (as on Synapse),
/// sent by the remover if they may, else left for a moderator to change.
fn drop_from_canonical_alias(s: &Services, room_id: &RoomId, alias: &RoomAliasId, user: &UserId) {
    let Ok(Some(current)) = s.rooms.current_state_pdu(room_id, "m.room.canonical_alias", "") else { return };
    let mut content = current.content_value();
    let mut changed = false;
    if content.get("alias").and_then(|a| a.as_str()) == Some(alias.as_str()) {
        content.as_object_mut().map(|c| c.remove("alias"));
        changed = true;
    }
    if let Some(alt) = content.get_mut("alt_aliases").and_then(|a| a.as_array_mut()) {
        let before = alt.len();
        alt.retain(|a| a.as_str() != Some(alias.as_str()));
        changed |= alt.len() != before;
    }
    if changed
        && s.users.is_local(user)
        && let Err(err) =
            s.rooms.append(room_id, user, crate::service::rooms::NewEvent::state("m.room.canonical_alias", "", content))
    {
        tracing::info!(%room_id, %alias, "the canonical alias still names a removed alias: {err}");
    }
}

pub fn room_aliases(s: &Services, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    data::room_aliases(&s.db, room_id)
}

pub(crate) fn set_published(s: &Services, room_id: &RoomId, published: bool) -> Result<()> {
    data::set_published(&s.db, room_id, published)
}

pub fn is_published(s: &Services, room_id: &RoomId) -> Result<bool> {
    data::is_published(&s.db, room_id)
}

pub fn published_rooms(s: &Services) -> Result<Vec<OwnedRoomId>> {
    data::published_rooms(&s.db)
}

pub struct Listing {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

/// A page of the public room directory, most members first.
pub fn public_rooms(s: &Services, search: Option<&str>, limit: Option<UInt>, since: Option<&str>) -> Result<Listing> {
    let search = search.map(str::to_lowercase);
    let mut chunk = Vec::new();
    for room_id in published_rooms(s)? {
        let state = s.rooms.current_state(&room_id)?;
        let text = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(s.rooms
                .state_content(&state, kind, "")?
                .and_then(|c| c.get(field).and_then(|v| v.as_str()).map(str::to_owned)))
        };
        let name = text("m.room.name", "name")?;
        let topic = text("m.room.topic", "topic")?;
        let alias = text("m.room.canonical_alias", "alias")?;
        if let Some(term) = &search {
            let hay = [&name, &topic, &alias]
                .iter()
                .filter_map(|v| v.as_deref())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" ");
            if !hay.contains(term.as_str()) {
                continue;
            }
        }
        let joined = s.rooms.joined_members(&room_id)?.len() as u64;
        let mut entry: PublicRoomsChunk = PublicRoomsChunkInit {
            num_joined_members: UInt::new_saturating(joined),
            room_id: room_id.clone(),
            world_readable: text("m.room.history_visibility", "history_visibility")?.as_deref()
                == Some("world_readable"),
            guest_can_join: text("m.room.guest_access", "guest_access")?.as_deref() == Some("can_join"),
        }
        .into();
        entry.name = name;
        entry.topic = topic;
        entry.canonical_alias = alias.and_then(|a| a.try_into().ok());
        entry.avatar_url = text("m.room.avatar", "url")?.map(Into::into);
        entry.join_rule =
            JoinRuleKind::from(text("m.room.join_rules", "join_rule")?.unwrap_or_else(|| "public".to_owned()).as_str());
        chunk.push(entry);
    }
    chunk.sort_by(|a, b| b.num_joined_members.cmp(&a.num_joined_members).then(a.room_id.cmp(&b.room_id)));
    let total = chunk.len();
    let offset: usize = match since {
        Some(token) => token
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("The `since` token is not valid."))?,
        None => 0,
    };
    let limit = limit.map(|l| u64::from(l) as usize).unwrap_or(100).clamp(1, 500);
    let page: Vec<_> = chunk.into_iter().skip(offset).take(limit).collect();
    let next_batch = (offset + page.len() < total).then(|| format!("p{}", offset + page.len()));
    let prev_batch = (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit)));
    Ok(Listing { chunk: page, next_batch, prev_batch, total })
}

/// A room was replaced (upgraded): its local aliases point to the new room
/// and, if it was in the public directory, the new room takes its place.
pub fn move_to_replacement(s: &Services, old: &RoomId, new: &RoomId) -> Result<()> {
    let mut batch = s.db.batch();
    for alias in room_aliases(s, old)? {
        if let Some(mut record) = data::alias(&s.db, &alias)? {
            record.room_id = new.to_owned();
            data::put_alias(&mut batch, &alias, &record);
        }
    }
    if is_published(s, old)? {
        data::delete_published(&mut batch, old);
        if s.rooms.exists(new)? {
            data::put_published(&mut batch, new);
        }
    }
    batch.commit()?;
    Ok(())
}

/// A user the directory shows: id, display name, avatar.
pub type DirectoryEntry = (OwnedUserId, Option<String>, Option<ruma::OwnedMxcUri>);

/// User directory search, as Synapse scopes it by default: people who share
/// a room with the searcher, and people in public rooms (public join rule,
/// or world-readable history); the guest policy narrows it further.
/// Returns the matches (at most `limit`) and whether there were more.
pub fn search_users(s: &Services, session: &Session, term: &str, limit: usize) -> Result<(Vec<DirectoryEntry>, bool)> {
    use ruma::events::room::member::MembershipState;
    let term = term.to_lowercase();
    let mut rooms: BTreeSet<OwnedRoomId> = s
        .rooms
        .user_rooms(&session.user_id)?
        .into_iter()
        .filter(|(_, r)| r.membership == MembershipState::Join)
        .map(|(room_id, _)| room_id)
        .collect();
    for room_id in s.rooms.all_room_ids()? {
        if !rooms.contains(&room_id) && is_public_for_directory(s, &room_id)? {
            rooms.insert(room_id);
        }
    }
    let mut seen: BTreeSet<OwnedUserId> = BTreeSet::new();
    let mut results = Vec::new();
    for room_id in rooms {
        let state = s.rooms.current_state(&room_id)?;
        for member in s.rooms.joined_members(&room_id)? {
            if !seen.insert(member.clone()) {
                continue;
            }
            let (name, avatar) = if s.users.is_local(&member) {
                match s.users.get(&member)? {
                    Some(user) if !user.deactivated => (user.displayname, user.avatar_url),
                    _ => continue,
                }
            } else {
                let content = s.rooms.state_content(&state, "m.room.member", member.as_str())?.unwrap_or_default();
                (content.get("displayname").and_then(|v| v.as_str()).map(str::to_owned), None)
            };
            let matches = member.as_str().to_lowercase().contains(&term)
                || name.as_deref().is_some_and(|n| n.to_lowercase().contains(&term));
            if !matches || !policy::may_see_in_directory(s, session, &member)? {
                continue;
            }
            if results.len() == limit {
                return Ok((results, true));
            }
            results.push((member, name, avatar));
        }
    }
    Ok((results, false))
}

/// Whether a room's members are listed in the user directory for everyone.
fn is_public_for_directory(s: &Services, room_id: &RoomId) -> Result<bool> {
    let state = s.rooms.current_state(room_id)?;
    let join_rule = s.rooms.state_content(&state, "m.room.join_rules", "")?.unwrap_or_default();
    let visibility = s.rooms.state_content(&state, "m.room.history_visibility", "")?.unwrap_or_default();
    Ok(join_rule["join_rule"] == "public" || visibility["history_visibility"] == "world_readable")
}
