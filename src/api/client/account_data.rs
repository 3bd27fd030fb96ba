//! Account data (global and per room), room tags and push rules.

use ruma::{
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        push::{
            delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
            get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
        },
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    api::{AppState, Ruma, blocking},
    error::{Error, Result},
    service::{Services, push},
};

fn own(session_user: &ruma::UserId, user_id: &ruma::UserId) -> Result<()> {
    if session_user != user_id {
        return Err(Error::forbidden("You can only use your own account data."));
    }
    Ok(())
}

fn object(json: &serde_json::value::RawValue) -> Result<Value> {
    let value: Value = serde_json::from_str(json.get()).map_err(|_| Error::not_json("The body is not valid JSON."))?;
    if !value.is_object() {
        return Err(Error::bad_json("Account data must be a JSON object."));
    }
    Ok(value)
}

/// Types the server manages through their own endpoints, and the shape of
/// those it reads itself.
fn writable(kind: &str, content: &Value) -> Result<()> {
    if matches!(kind, "m.fully_read" | "m.push_rules") {
        return Err(Error::bad_json(format!("{kind} is set through its own endpoint.")));
    }
    if kind == "m.tag" && !content.get("tags").is_some_and(Value::is_object) {
        return Err(Error::bad_json("m.tag content needs a `tags` object."));
    }
    Ok(())
}

pub async fn set_global(
    state: AppState,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    blocking(&state, move |s| {
        own(&req.session().user_id, &req.body.user_id)?;
        let kind = req.body.event_type.to_string();
        let content = object(req.body.data.json())?;
        writable(&kind, &content)?;
        if kind == "m.ignored_user_list" {
            push::settle(s, &req.body.user_id)?;
        }
        s.account_data.set(&req.body.user_id, None, &kind, &content)?;
        Ok(set_global_account_data::v3::Response::new())
    })
    .await
}

pub async fn get_global(
    state: AppState,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    blocking(&state, move |s| {
        own(&req.session().user_id, &req.body.user_id)?;
        let raw = s
            .account_data
            .get(&req.body.user_id, None, &req.body.event_type.to_string())?
            .ok_or_else(|| Error::not_found("No account data of this type."))?;
        Ok(get_global_account_data::v3::Response::new(Raw::from_json(raw)))
    })
    .await
}

pub async fn set_room(
    state: AppState,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    blocking(&state, move |s| {
        own(&req.session().user_id, &req.body.user_id)?;
        let kind = req.body.event_type.to_string();
        let content = object(req.body.data.json())?;
        writable(&kind, &content)?;
        s.account_data.set(&req.body.user_id, Some(&req.body.room_id), &kind, &content)?;
        Ok(set_room_account_data::v3::Response::new())
    })
    .await
}

pub async fn get_room(
    state: AppState,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    blocking(&state, move |s| {
        own(&req.session().user_id, &req.body.user_id)?;
        let raw = s
            .account_data
            .get(&req.body.user_id, Some(&req.body.room_id), &req.body.event_type.to_string())?
            .ok_or_else(|| Error::not_found("No account data of this type."))?;
        Ok(get_room_account_data::v3::Response::new(Raw::from_json(raw)))
    })
    .await
}

fn tags(s: &Services, user_id: &ruma::UserId, room_id: &ruma::RoomId) -> Result<Value> {
    let stored = s.account_data.get_value(user_id, Some(room_id), "m.tag")?;
    Ok(stored.filter(|v| v.get("tags").is_some_and(Value::is_object)).unwrap_or_else(|| json!({ "tags": {} })))
}

pub async fn get_tags(state: AppState, req: Ruma<get_tags::v3::Request>) -> Result<get_tags::v3::Response> {
    blocking(&state, move |s| {
        own(&req.session().user_id, &req.body.user_id)?;
        let value = tags(s, &req.body.user_id, &req.body.room_id)?;
        let tags = serde_json::from_value(value["tags"].clone()).unwrap_or_default();
        Ok(get_tags::v3::Response::new(tags))
    })
    .await
}

pub async fn put_tag(state: AppState, req: Ruma<create_tag::v3::Request>) -> Result<create_tag::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        own(&req.session().user_id, &body.user_id)?;
        if body.tag.len() > 255 {
            return Err(Error::invalid_param("Tags are limited to 255 bytes."));
        }
        let mut value = tags(s, &body.user_id, &body.room_id)?;
        value["tags"][body.tag.as_str()] = serde_json::to_value(&body.tag_info)?;
        s.account_data.set(&body.user_id, Some(&body.room_id), "m.tag", &value)?;
        Ok(create_tag::v3::Response::new())
    })
    .await
}

pub async fn delete_tag(state: AppState, req: Ruma<delete_tag::v3::Request>) -> Result<delete_tag::v3::Response> {
    blocking(&state, move |s| {
        let body = &req.body;
        own(&req.session().user_id, &body.user_id)?;
        let mut value = tags(s, &body.user_id, &body.room_id)?;
        if let Some(map) = value["tags"].as_object_mut() {
            map.remove(&body.tag);
        }
        s.account_data.set(&body.user_id, Some(&body.room_id), "m.tag", &value)?;
        Ok(delete_tag::v3::Response::new())
    })
    .await
}

pub async fn push_rules(
    state: AppState,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    blocking(&state, move |s| {
        Ok(get_pushrules_all::v3::Response::new((*push::ruleset(s, &req.session().user_id)?).clone()))
    })
    .await
}

pub async fn push_rules_global(
    state: AppState,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    blocking(&state, move |s| {
        Ok(get_pushrules_global_scope::v3::Response::new((*push::ruleset(s, &req.session().user_id)?).clone()))
    })
    .await
}

/// A rule written without a scope or without a rule id (`PUT /pushrules/`,
/// `PUT /pushrules/global/{kind}/`): a client's mistake, answered 400.
pub async fn push_rule_without_id(crate::api::Authenticated(_): crate::api::Authenticated) -> Result<()> {
    Err(Error::invalid_param("A push rule needs a scope (`global`), a kind and a rule id in its path."))
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind, as a list
/// (an older form clients and Matrix's test suite still use).
pub async fn push_rules_of_kind(
    axum::extract::State(state): axum::extract::State<AppState>,
    crate::api::Authenticated(session): crate::api::Authenticated,
    axum::extract::Path(args): axum::extract::Path<Vec<String>>,
) -> Result<axum::Json<Value>> {
    let kind = args.last().cloned().unwrap_or_default();
    if !matches!(kind.as_str(), "override" | "underride" | "sender" | "room" | "content") {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            "Push rule kinds are override, underride, sender, room and content.",
        ));
    }
    blocking(&state, move |s| {
        let ruleset = serde_json::to_value(&*push::ruleset(s, &session.user_id)?)?;
        Ok(axum::Json(ruleset.get(&kind).cloned().unwrap_or_else(|| json!([]))))
    })
    .await
}

pub async fn push_rule(state: AppState, req: Ruma<get_pushrule::v3::Request>) -> Result<get_pushrule::v3::Response> {
    blocking(&state, move |s| {
        let ruleset = push::ruleset(s, &req.session().user_id)?;
        let rule = ruleset
            .get(req.body.kind.clone(), &req.body.rule_id)
            .ok_or_else(|| Error::not_found("No such push rule."))?;
        Ok(get_pushrule::v3::Response::new(rule.into()))
    })
    .await
}

pub async fn push_rule_actions(
    state: AppState,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    blocking(&state, move |s| {
        let ruleset = push::ruleset(s, &req.session().user_id)?;
        let rule = ruleset
            .get(req.body.kind.clone(), &req.body.rule_id)
            .ok_or_else(|| Error::not_found("No such push rule."))?;
        Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
    })
    .await
}

pub async fn push_rule_enabled(
    state: AppState,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    blocking(&state, move |s| {
        let ruleset = push::ruleset(s, &req.session().user_id)?;
        let rule = ruleset
            .get(req.body.kind.clone(), &req.body.rule_id)
            .ok_or_else(|| Error::not_found("No such push rule."))?;
        Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
    })
    .await
}

pub async fn set_push_rule(
    state: AppState,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    blocking(&state, move |s| {
        let user_id = &req.session().user_id;
        let mut ruleset = (*push::ruleset(s, user_id)?).clone();
        ruleset.insert(req.body.rule.clone(), req.body.after.as_deref(), req.body.before.as_deref()).map_err(|e| {
            match e {
                ruma::push::InsertPushRuleError::UnknownRuleId => Error::not_found(format!("{e}")),
                other => Error::invalid_param(format!("{other}")),
            }
        })?;
        push::save_ruleset(s, user_id, &ruleset)?;
        Ok(set_pushrule::v3::Response::new())
    })
    .await
}

pub async fn delete_push_rule(
    state: AppState,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    blocking(&state, move |s| {
        let user_id = &req.session().user_id;
        let mut ruleset = (*push::ruleset(s, user_id)?).clone();
        ruleset.remove(req.body.kind.clone(), &req.body.rule_id).map_err(|e| match e {
            ruma::push::RemovePushRuleError::NotFound => Error::not_found("No such push rule."),
            other => Error::forbidden(format!("{other}")),
        })?;
        push::save_ruleset(s, user_id, &ruleset)?;
        Ok(delete_pushrule::v3::Response::new())
    })
    .await
}

pub async fn set_push_rule_enabled(
    state: AppState,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    blocking(&state, move |s| {
        let user_id = &req.session().user_id;
        let mut ruleset = (*push::ruleset(s, user_id)?).clone();
        ruleset
            .set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled)
            .map_err(|_| Error::not_found("No such push rule."))?;
        push::save_ruleset(s, user_id, &ruleset)?;
        Ok(set_pushrule_enabled::v3::Response::new())
    })
    .await
}

pub async fn set_push_rule_actions(
    state: AppState,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    blocking(&state, move |s| {
        let user_id = &req.session().user_id;
        let mut ruleset = (*push::ruleset(s, user_id)?).clone();
        ruleset
            .set_actions(req.body.kind.clone(), &req.body.rule_id, req.body.actions.clone())
            .map_err(|_| Error::not_found("No such push rule."))?;
        push::save_ruleset(s, user_id, &ruleset)?;
        Ok(set_pushrule_actions::v3::Response::new())
    })
    .await
}
