//! Reporting events, rooms and users to the server's admins.

use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use crate::{
    api::{AppState, Ruma, blocking},
    error::Result,
    service::reports,
};

pub async fn event(state: AppState, req: Ruma<report_content::v3::Request>) -> Result<report_content::v3::Response> {
    blocking(&state, move |s| {
        let b = &req.body;
        reports::event(s, &req.session().user_id, &b.room_id, &b.event_id, b.reason.clone())?;
        Ok(report_content::v3::Response::new())
    })
    .await
}

pub async fn room(state: AppState, req: Ruma<report_room::v3::Request>) -> Result<report_room::v3::Response> {
    blocking(&state, move |s| {
        reports::room(s, &req.session().user_id, &req.body.room_id, req.body.reason.clone())?;
        Ok(report_room::v3::Response::new())
    })
    .await
}

pub async fn user(state: AppState, req: Ruma<report_user::v3::Request>) -> Result<report_user::v3::Response> {
    blocking(&state, move |s| {
        reports::user(s, &req.session().user_id, &req.body.user_id, req.body.reason.clone())?;
        Ok(report_user::v3::Response::new())
    })
    .await
}
