//! The public room directory and the user directory.

use ruma::{
    UInt,
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
        user_directory::search_users,
    },
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::directory,
};

/// The directory of another server, asked over federation.
async fn remote_public_rooms(
    state: &AppState,
    server: &ruma::ServerName,
    limit: Option<UInt>,
    since: Option<String>,
    search: Option<String>,
) -> Result<directory::Listing> {
    use ruma::api::federation::directory::get_public_rooms_filtered as remote;
    let mut request = remote::v1::Request::new();
    request.limit = limit;
    request.since = since;
    request.filter.generic_search_term = search;
    let answer = state.federation.send(server, request).await?;
    let total = answer.total_room_count_estimate.map(|n| u64::from(n) as usize).unwrap_or(answer.chunk.len());
    Ok(directory::Listing { chunk: answer.chunk, next_batch: answer.next_batch, prev_batch: answer.prev_batch, total })
}

fn is_remote(state: &AppState, server: Option<&ruma::OwnedServerName>) -> Option<ruma::OwnedServerName> {
    server.filter(|server| **server != state.settings.server_name).cloned()
}

/// Check the caller may list, then list this server's directory or, with
/// `server`, another's over federation.
async fn listing(
    state: &AppState,
    session: Option<crate::service::users::Session>,
    server: Option<&ruma::OwnedServerName>,
    limit: Option<UInt>,
    since: Option<String>,
    search: Option<String>,
) -> Result<directory::Listing> {
    blocking(state, move |s| directory::may_list(s, session.as_ref())).await?;
    if let Some(server) = is_remote(state, server) {
        return remote_public_rooms(state, &server, limit, since, search).await;
    }
    blocking(state, move |s| directory::public_rooms(s, search.as_deref(), limit, since.as_deref())).await
}

pub async fn get_public(
    state: AppState,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let body = req.body;
    let listing = listing(&state, req.session, body.server.as_ref(), body.limit, body.since, None).await?;
    let mut response = get_public_rooms::v3::Response::new(listing.chunk);
    response.next_batch = listing.next_batch;
    response.prev_batch = listing.prev_batch;
    response.total_room_count_estimate = Some(UInt::new_saturating(listing.total as u64));
    Ok(response)
}

pub async fn post_public(
    state: AppState,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let body = req.body;
    let search = body.filter.generic_search_term.clone();
    let listing = listing(&state, req.session, body.server.as_ref(), body.limit, body.since, search).await?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = listing.chunk;
    response.next_batch = listing.next_batch;
    response.prev_batch = listing.prev_batch;
    response.total_room_count_estimate = Some(UInt::new_saturating(listing.total as u64));
    Ok(response)
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
        directory::publish(s, req.session(), &req.body.room_id, req.body.visibility == Visibility::Public)?;
        Ok(set_room_visibility::v3::Response::new())
    })
    .await
}

/// Local users matching the term. Members see every local account and the
/// people they share rooms with; guests only the latter (policy).
pub async fn search_users(state: AppState, req: Ruma<search_users::v3::Request>) -> Result<search_users::v3::Response> {
    blocking(&state, move |s| {
        let limit = (u64::from(req.body.limit) as usize).clamp(1, 100);
        let (found, limited) = directory::search_users(s, req.session(), &req.body.search_term, limit)?;
        let results = found
            .into_iter()
            .map(|(user_id, display_name, avatar_url)| {
                let mut user = search_users::v3::User::new(user_id);
                user.display_name = display_name;
                user.avatar_url = avatar_url;
                user
            })
            .collect();
        Ok(search_users::v3::Response::new(results, limited))
    })
    .await
}
