//! User-interactive authentication: sessions of completed stages, stored.

mod data;

use std::sync::Arc;

use ruma::{
    OwnedUserId, UserId,
    api::client::uiaa::{AuthData, UserIdentifier},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    error::{Error, Result},
    storage::Db,
    util,
};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// Sessions older than this are forgotten.
const SESSION_LIFETIME_MS: u64 = 30 * 60 * 1000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UiaaSession {
    pub completed: Vec<String>,
    pub created_at: u64,
    /// What the session was opened for, so a session cannot be replayed elsewhere.
    pub purpose: String,
    /// The registration token used, consumed once registration succeeds.
    pub registration_token: Option<String>,
    /// What the endpoint keeps between steps (registration: its parameters,
    /// the password only as a hash, and the account once made).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    #[serde(skip)]
    pub id: String,
}

impl UiaaSession {
    fn is_live(&self) -> bool {
        util::now_ms().saturating_sub(self.created_at) < SESSION_LIFETIME_MS
    }
}

pub struct Uiaa {
    db: Arc<Db>,
}

/// Checks the stages need from the rest of porch.
pub trait StageChecks {
    fn password_ok(&self, user_id: &UserId, password: &str) -> Result<bool>;
    fn registration_token_ok(&self, token: &str) -> Result<bool>;
}

impl Uiaa {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Forget sessions past their lifetime as of `now` (ms); returns how many.
    pub fn prune_expired(&self, now: u64) -> Result<usize> {
        let mut batch = self.db.batch();
        let pruned = data::delete_sessions_where(&self.db, &mut batch, |s| {
            now.saturating_sub(s.created_at) >= SESSION_LIFETIME_MS
        })?;
        batch.commit()?;
        Ok(pruned)
    }

    /// Run one UIA step. `Ok(session)` once a flow is complete; otherwise the
    /// 401 answer describing what is still needed.
    pub fn authorize(
        &self,
        checks: &dyn StageChecks,
        auth: Option<&AuthData>,
        flows: &[&[&str]],
        purpose: &str,
        user: Option<&UserId>,
    ) -> Result<UiaaSession> {
        let (session_id, mut session) = match auth.and_then(|a| a.session()) {
            Some(id) => match data::session(&self.db, id)? {
                Some(s) if s.is_live() && s.purpose == purpose => (id.to_owned(), s),
                // Started for another request (other devices, another
                // operation): it cannot authorise this one.
                Some(s) if s.is_live() => {
                    return Err(Error::forbidden(
                        "This authentication session was started for another request; start a new one.",
                    ));
                }
                _ => {
                    return Err(self.challenge_new(
                        flows,
                        purpose,
                        Some("The authentication session is unknown or expired; start again."),
                    )?);
                }
            },
            None => (
                util::random_string(24),
                UiaaSession { created_at: util::now_ms(), purpose: purpose.to_owned(), ..Default::default() },
            ),
        };
        let Some(auth) = auth else {
            data::save_session(&self.db, &session_id, &session)?;
            return Err(challenge(flows, &session_id, &session, None));
        };
        let stage_result = match auth {
            AuthData::Dummy(_) => Ok(DUMMY),
            AuthData::RegistrationToken(t) => {
                if checks.registration_token_ok(&t.token)? {
                    session.registration_token = Some(t.token.clone());
                    Ok(REGISTRATION_TOKEN)
                } else {
                    Err(("M_FORBIDDEN", "The registration token is not valid."))
                }
            }
            AuthData::Password(p) => {
                let claimed = match &p.identifier {
                    UserIdentifier::Matrix(m) => Some(m.user.clone()),
                    _ => None,
                };
                let matches = match (&claimed, user) {
                    (Some(claimed), Some(user)) => claimed == user.as_str() || claimed == user.localpart(),
                    _ => false,
                };
                if claimed.is_some() && user.is_some() && !matches {
                    // Someone else's credentials: no retry will help (as Synapse, 403).
                    return Err(Error::forbidden("You can only confirm this as yourself."));
                }
                if matches && checks.password_ok(user.expect("checked above"), &p.password)? {
                    Ok(PASSWORD)
                } else {
                    Err(("M_FORBIDDEN", "Invalid username or password."))
                }
            }
            _ => Err(("M_UNRECOGNIZED", "That authentication type is not supported here.")),
        };
        match stage_result {
            Ok(stage) if flows.iter().any(|f| f.contains(&stage)) => {
                if !session.completed.iter().any(|c| c == stage) {
                    session.completed.push(stage.to_owned());
                }
            }
            Ok(_) => {
                data::save_session(&self.db, &session_id, &session)?;
                return Err(challenge(
                    flows,
                    &session_id,
                    &session,
                    Some(("M_UNRECOGNIZED", "That stage is not part of any flow here.")),
                ));
            }
            Err(err) => {
                data::save_session(&self.db, &session_id, &session)?;
                return Err(challenge(flows, &session_id, &session, Some(err)));
            }
        }
        if flows.iter().any(|flow| flow.iter().all(|stage| session.completed.iter().any(|c| c == stage))) {
            data::delete_session(&self.db, &session_id)?;
            session.id = session_id;
            return Ok(session);
        }
        data::save_session(&self.db, &session_id, &session)?;
        Err(challenge(flows, &session_id, &session, None))
    }

    /// Change the data of the session a 401 `challenge` names (no-op for
    /// any other error).
    pub fn update_data(
        &self,
        challenge: &Error,
        update: impl FnOnce(&mut Option<serde_json::Value>) -> Result<()>,
    ) -> Result<()> {
        let Some(id) = challenge.extra.get("session").and_then(|v| v.as_str()) else { return Ok(()) };
        let Some(mut session) = data::session(&self.db, id)? else {
            return Ok(());
        };
        update(&mut session.data)?;
        data::save_session(&self.db, id, &session)
    }

    /// Keep a completed session until it expires, so that the same request
    /// retried with it (a lost answer) finds what the first one did.
    pub fn keep(&self, session: &UiaaSession) -> Result<()> {
        data::save_session(&self.db, &session.id, session)
    }

    fn challenge_new(&self, flows: &[&[&str]], purpose: &str, message: Option<&str>) -> Result<Error> {
        let session_id = util::random_string(24);
        let session = UiaaSession { created_at: util::now_ms(), purpose: purpose.to_owned(), ..Default::default() };
        data::save_session(&self.db, &session_id, &session)?;
        Ok(challenge(flows, &session_id, &session, message.map(|m| ("M_FORBIDDEN", m))))
    }
}

fn challenge(flows: &[&[&str]], session_id: &str, session: &UiaaSession, error: Option<(&str, &str)>) -> Error {
    let mut body = json!({
        "flows": flows.iter().map(|f| json!({ "stages": f })).collect::<Vec<_>>(),
        "params": {},
        "session": session_id,
        "completed": session.completed,
    });
    if let Some((errcode, message)) = error {
        body["errcode"] = json!(errcode);
        body["error"] = json!(message);
    }
    Error::uiaa(body)
}

/// The user named by a login or UIA identifier (a full id or a localpart).
pub fn identifier_user(services_server: &ruma::ServerName, user: &str) -> Option<OwnedUserId> {
    if user.starts_with('@') {
        OwnedUserId::try_from(user.to_lowercase()).ok()
    } else {
        UserId::parse_with_server_name(user.to_lowercase(), services_server).ok()
    }
}
