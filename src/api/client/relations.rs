//! `/relations` (its three forms) and `/threads`, over `service::relations`.

use ruma::{
    EventId, RoomId, UInt,
    api::{
        Direction,
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads::{self, v1::IncludeThreads},
        },
    },
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::Result,
    service::{
        Services,
        relations::{self, Page, Query},
        sync::raw,
        users::Session,
    },
};

#[allow(clippy::too_many_arguments)]
fn page(
    s: &Services,
    session: &Session,
    room_id: &RoomId,
    event_id: &EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<UInt>,
    dir: &Direction,
    recurse: bool,
) -> Result<Page> {
    let query = Query {
        rel_type,
        event_type,
        from,
        to,
        limit: limit.map_or(50, |l| u64::from(l) as usize),
        forward: *dir == Direction::Forward,
        recurse,
    };
    relations::relations(s, &session.user_id, room_id, event_id, query)
}

macro_rules! answer {
    ($module:ident, $page:expr) => {{
        let page = $page;
        let mut response = $module::v1::Response::new(page.chunk.iter().map(raw).collect());
        response.next_batch = page.next_batch;
        response.recursion_depth = page.recursion_depth.map(UInt::from);
        Ok(response)
    }};
}

pub async fn all(
    state: AppState,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    blocking(&state, move |s| {
        let b = &req.body;
        let page = page(
            s,
            req.session(),
            &b.room_id,
            &b.event_id,
            None,
            None,
            b.from.clone(),
            b.to.clone(),
            b.limit,
            &b.dir,
            b.recurse,
        )?;
        answer!(get_relating_events, page)
    })
    .await
}

pub async fn by_rel_type(
    state: AppState,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    blocking(&state, move |s| {
        let b = &req.body;
        let page = page(
            s,
            req.session(),
            &b.room_id,
            &b.event_id,
            Some(b.rel_type.to_string()),
            None,
            b.from.clone(),
            b.to.clone(),
            b.limit,
            &b.dir,
            b.recurse,
        )?;
        answer!(get_relating_events_with_rel_type, page)
    })
    .await
}

pub async fn by_rel_and_event_type(
    state: AppState,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    blocking(&state, move |s| {
        let b = &req.body;
        let page = page(
            s,
            req.session(),
            &b.room_id,
            &b.event_id,
            Some(b.rel_type.to_string()),
            Some(b.event_type.to_string()),
            b.from.clone(),
            b.to.clone(),
            b.limit,
            &b.dir,
            b.recurse,
        )?;
        answer!(get_relating_events_with_rel_type_and_event_type, page)
    })
    .await
}

pub async fn threads(state: AppState, req: Ruma<get_threads::v1::Request>) -> Result<get_threads::v1::Response> {
    blocking(&state, move |s| {
        let b = &req.body;
        let participated = b.include == IncludeThreads::Participated;
        let limit = b.limit.map_or(20, |l| u64::from(l) as usize);
        let (chunk, next) =
            relations::threads(s, &req.session().user_id, &b.room_id, participated, b.from.as_deref(), limit)?;
        let mut response = get_threads::v1::Response::new(chunk.iter().map(raw).collect());
        response.next_batch = next;
        Ok(response)
    })
    .await
}
