//! Pushers and the notifications list.

use ruma::api::client::push::{get_notifications, get_pushers, set_pusher};

use crate::{
    api::{AppState, Ruma, blocking},
    error::Result,
    service::push,
};

pub async fn get(state: AppState, req: Ruma<get_pushers::v3::Request>) -> Result<get_pushers::v3::Response> {
    blocking(&state, move |s| Ok(get_pushers::v3::Response::new(push::pushers(s, &req.session().user_id)?))).await
}

pub async fn set(state: AppState, req: Ruma<set_pusher::v3::Request>) -> Result<set_pusher::v3::Response> {
    blocking(&state, move |s| {
        push::set_pusher(s, req.session(), req.body.action.clone())?;
        Ok(set_pusher::v3::Response::new())
    })
    .await
}

/// Written as JSON: each notification has `profile_tag`, null when the
/// pushers set none, as clients read it (ruma would leave it out).
pub async fn notifications(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    let response = blocking(&state, move |s| {
        let body = &req.body;
        let limit = body.limit.map_or(20, |l| usize::try_from(u64::from(l)).unwrap_or(100));
        let only_highlight = body.only.as_deref() == Some("highlight");
        let (notifications, next_token) =
            push::notifications(s, &req.session().user_id, body.from.as_deref(), limit, only_highlight)?;
        let mut response = get_notifications::v3::Response::new(notifications);
        response.next_token = next_token;
        Ok(response)
    })
    .await?;
    let mut body = crate::api::response_json(response)?;
    for notification in body["notifications"].as_array_mut().into_iter().flatten() {
        if let Some(object) = notification.as_object_mut() {
            object.entry("profile_tag").or_insert(serde_json::Value::Null);
        }
    }
    Ok(axum::Json(body))
}
