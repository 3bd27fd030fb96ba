//! The public room directory and the user directory.

use ruma::{
    UInt,
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
        user_directory::search_users,
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::room::member::MembershipState,
    room::JoinRuleKind,
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    policy::{self, Action},
    service::{Services, directory},
};

struct Listing {
    chunk: Vec<PublicRoomsChunk>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    total: usize,
}

fn public_rooms(s: &Services, search: Option<&str>, limit: Option<UInt>, since: Option<&str>) -> Result<Listing> {
    let search = search.map(str::to_lowercase);
    let mut chunk = Vec::new();
    for room_id in directory::published_rooms(s)? {
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

/// Signed-in non-guests may list; anonymous callers only if configured.
fn may_list(s: &Services, session: Option<&crate::service::users::Session>) -> Result<()> {
    match session {
        Some(session) => policy::check(s, session, Action::ListPublicRooms),
        None if s.settings.raw.rooms.public_directory_without_auth => Ok(()),
        None => Err(Error::missing_token()),
    }
}

pub async fn get_public(
    state: AppState,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    blocking(&state, move |s| {
        may_list(s, req.session.as_ref())?;
        let listing = public_rooms(s, None, req.body.limit, req.body.since.as_deref())?;
        let mut response = get_public_rooms::v3::Response::new(listing.chunk);
        response.next_batch = listing.next_batch;
        response.prev_batch = listing.prev_batch;
        response.total_room_count_estimate = Some(UInt::new_saturating(listing.total as u64));
        Ok(response)
    })
    .await
}

pub async fn post_public(
    state: AppState,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    blocking(&state, move |s| {
        may_list(s, req.session.as_ref())?;
        let body = &req.body;
        let listing = public_rooms(s, body.filter.generic_search_term.as_deref(), body.limit, body.since.as_deref())?;
        let mut response = get_public_rooms_filtered::v3::Response::new();
        response.chunk = listing.chunk;
        response.next_batch = listing.next_batch;
        response.prev_batch = listing.prev_batch;
        response.total_room_count_estimate = Some(UInt::new_saturating(listing.total as u64));
        Ok(response)
    })
    .await
}

pub async fn get_visibility(
    state: AppState,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    blocking(&state, move |s| {
        if !s.rooms.exists(&req.body.room_id)? {
            return Err(Error::not_found("This room is not known to this server."));
        }
        let visibility =
            if directory::is_published(s, &req.body.room_id)? { Visibility::Public } else { Visibility::Private };
        Ok(get_room_visibility::v3::Response::new(visibility))
    })
    .await
}

pub async fn set_visibility(
    state: AppState,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        policy::check(s, session, Action::PublishRoom)?;
        let room = s
            .rooms
            .room(&req.body.room_id)?
            .ok_or_else(|| Error::not_found("This room is not known to this server."))?;
        let state = s.rooms.state_at(room.current_state)?;
        let power = s.rooms.power_levels(&room.version, &state)?;
        if !session.user.is_admin
            && !power.user_can_send_state(&session.user_id, ruma::events::StateEventType::RoomCanonicalAlias)
        {
            return Err(Error::forbidden("You may not change whether this room is published."));
        }
        directory::set_published(s, &req.body.room_id, req.body.visibility == Visibility::Public)?;
        Ok(set_room_visibility::v3::Response::new())
    })
    .await
}

/// Local users matching the term. Members see every local account and the
/// people they share rooms with; guests only the latter (policy).
pub async fn search_users(state: AppState, req: Ruma<search_users::v3::Request>) -> Result<search_users::v3::Response> {
    blocking(&state, move |s| {
        let session = req.session();
        let term = req.body.search_term.to_lowercase();
        let limit = (u64::from(req.body.limit) as usize).clamp(1, 100);
        let mut results = Vec::new();
        let mut limited = false;
        let mut candidates: Vec<(ruma::OwnedUserId, Option<String>, Option<ruma::OwnedMxcUri>)> = Vec::new();
        for (user_id, user) in s.users.all()? {
            if !user.deactivated {
                candidates.push((user_id, user.displayname, user.avatar_url));
            }
        }
        // Remote co-members, from the member events of shared rooms.
        for (room_id, record) in s.rooms.user_rooms(&session.user_id)? {
            if record.membership != MembershipState::Join {
                continue;
            }
            for member in s.rooms.joined_members(&room_id)? {
                if !s.users.is_local(&member) && !candidates.iter().any(|(u, _, _)| *u == member) {
                    let content = s
                        .rooms
                        .current_state_pdu(&room_id, "m.room.member", member.as_str())?
                        .map(|p| p.content_value())
                        .unwrap_or_default();
                    let name = content.get("displayname").and_then(|v| v.as_str()).map(str::to_owned);
                    candidates.push((member, name, None));
                }
            }
        }
        for (user_id, display_name, avatar_url) in candidates {
            let matches = user_id.as_str().to_lowercase().contains(&term)
                || display_name.as_deref().is_some_and(|n| n.to_lowercase().contains(&term));
            if !matches || !policy::may_see_in_directory(s, session, &user_id)? {
                continue;
            }
            if results.len() == limit {
                limited = true;
                break;
            }
            let mut user = search_users::v3::User::new(user_id);
            user.display_name = display_name;
            user.avatar_url = avatar_url;
            results.push(user);
        }
        Ok(search_users::v3::Response::new(results, limited))
    })
    .await
}
