//! User-Interactive Authentication (UIA): sessions that remember which stages
//! of which flows a client has completed.
//!
//! Sessions are short-lived and kept in memory: a restart only makes a
//! client start its UIA round again.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use estuary_core::{Error, Result, error::ErrorKind};
use ruma::{
    OwnedUserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::StandardErrorBody,
    },
};

/// Whether a UIA identifier names `user_id` (full ID or localpart).
fn identifies(identifier: &UserIdentifier, user_id: &OwnedUserId) -> bool {
    match identifier {
        UserIdentifier::Matrix(id) => id.user == user_id.as_str() || id.user == user_id.localpart(),
        _ => false,
    }
}

/// How long an unfinished UIA session is kept.
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What a UIA stage needs to know to check a client's answer.
pub trait StageVerifier {
    /// Check an `m.login.password` stage; `Ok(false)` for a wrong password.
    fn verify_password(&self, user: &str, password: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Whether `token` is a valid registration token right now.
    fn registration_token_valid(&self, token: &str) -> Result<bool>;
}

struct Session {
    /// The operation the session authorises, so a session started for one
    /// endpoint cannot complete another.
    purpose: String,
    completed: Vec<AuthType>,
    created: Instant,
    /// The request's parameters at the session's start, for an operation
    /// whose later stages may resend only `auth` (registration).
    params: Option<serde_json::Value>,
    /// What a completed operation produced (the registered user), so the
    /// same session sent again gets the same result.
    result: Option<String>,
    /// The registration token this session passed with: a use of it is
    /// pending until the session registers or expires.
    registration_token: Option<String>,
    /// The operation the session authorised is under way (see `claim`).
    claimed: bool,
}

#[derive(Default)]
pub struct UiaaSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

/// One UIA check: which flows satisfy it and what it authorises.
pub struct UiaaRequest<'a> {
    pub flows: Vec<AuthFlow>,
    /// A stable description of the operation (endpoint and user).
    pub purpose: String,
    /// The user the password stage must match (none for registration).
    pub user_id: Option<&'a OwnedUserId>,
    /// Parameters to remember across stages; a session with them is kept
    /// after it completes, for `result`.
    pub params: Option<serde_json::Value>,
}

impl UiaaSessions {
    /// Run one UIA step. The session's ID once a flow is complete; otherwise
    /// the 401 response telling the client what is left, with an `errcode`
    /// when the stage it just tried failed.
    pub async fn check(
        &self,
        request: UiaaRequest<'_>,
        auth: Option<&AuthData>,
        verifier: &impl StageVerifier,
    ) -> Result<String> {
        let Some(auth) = auth else {
            let session = self.start(&request);
            return Err(self.pending(&request.flows, Vec::new(), session, None));
        };
        let session_id = match auth.session() {
            Some(id) => {
                self.ensure_session(id, &request.purpose)?;
                id.to_owned()
            }
            // A first call that already carries a stage (clients and SyTest
            // send `m.login.dummy` straight away) starts a session implicitly.
            None => self.start(&request),
        };

        // Credentials of another user are no retry: the request is refused.
        if let (AuthData::Password(password), Some(expected)) = (auth, request.user_id)
            && !identifies(&password.identifier, expected)
        {
            return Err(Error::forbidden("The authentication is not for the requesting user"));
        }
        let completed = match self.run_stage(&request, &session_id, auth, verifier).await {
            Ok(stage) => {
                if let AuthData::RegistrationToken(token) = auth {
                    self.hold_registration_token(&session_id, &token.token);
                }
                self.complete_stage(&session_id, stage)
            }
            Err(failure) => {
                let completed = self.completed(&session_id);
                return Err(self.pending(&request.flows, completed, session_id, Some(failure)));
            }
        };
        let done = request.flows.iter().any(|flow| flow.stages.iter().all(|s| completed.contains(s)));
        if done {
            if request.params.is_none() {
                self.sessions.lock().expect("uiaa lock").remove(&session_id);
            }
            return Ok(session_id);
        }
        Err(self.pending(&request.flows, completed, session_id, None))
    }

    async fn run_stage(
        &self,
        request: &UiaaRequest<'_>,
        session_id: &str,
        auth: &AuthData,
        verifier: &impl StageVerifier,
    ) -> std::result::Result<AuthType, StandardErrorBody> {
        let stage = auth.auth_type().ok_or_else(|| {
            StandardErrorBody::new(ErrorKind::Unrecognized, "Unknown authentication type".into())
        })?;
        let offered = request.flows.iter().any(|f| f.stages.contains(&stage));
        if !offered {
            return Err(StandardErrorBody::new(
                ErrorKind::Forbidden,
                format!("Stage {stage} is not offered here"),
            ));
        }
        let forbidden = |msg: &str| StandardErrorBody::new(ErrorKind::Forbidden, msg.to_owned());
        let internal = |e: Error| StandardErrorBody::new(ErrorKind::Unknown, e.to_string());
        match auth {
            AuthData::Dummy(_) => {}
            AuthData::Password(password) => {
                let expected = request.user_id.ok_or_else(|| forbidden("No user to check"))?;
                let ok = identifies(&password.identifier, expected)
                    && verifier
                        .verify_password(expected.as_str(), &password.password)
                        .await
                        .map_err(internal)?;
                if !ok {
                    return Err(forbidden("Invalid password"));
                }
            }
            AuthData::RegistrationToken(token) => {
                // The same token sent again in a session holds its use already.
                let held = self.registration_token(session_id).as_deref() == Some(token.token.as_str());
                if !held && !verifier.registration_token_valid(&token.token).map_err(internal)? {
                    return Err(StandardErrorBody::new(
                        ErrorKind::Unauthorized,
                        "Invalid registration token".into(),
                    ));
                }
            }
            _ => return Err(forbidden("This authentication type is not supported")),
        }
        Ok(stage)
    }

    fn start(&self, request: &UiaaRequest<'_>) -> String {
        let id = super::tokens::random_token(24);
        let mut sessions = self.sessions.lock().expect("uiaa lock");
        sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
        let session = Session {
            purpose: request.purpose.clone(),
            completed: Vec::new(),
            created: Instant::now(),
            params: request.params.clone(),
            result: None,
            registration_token: None,
            claimed: false,
        };
        sessions.insert(id.clone(), session);
        id
    }

    /// The parameters a live session was started with.
    pub fn params(&self, id: &str) -> Option<serde_json::Value> {
        let sessions = self.sessions.lock().expect("uiaa lock");
        sessions.get(id).filter(|s| s.created.elapsed() < SESSION_LIFETIME).and_then(|s| s.params.clone())
    }

    /// What a completed session produced.
    pub fn result(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().expect("uiaa lock");
        sessions.get(id).filter(|s| s.created.elapsed() < SESSION_LIFETIME).and_then(|s| s.result.clone())
    }

    pub fn set_result(&self, id: &str, result: String) {
        if let Some(session) = self.sessions.lock().expect("uiaa lock").get_mut(id) {
            session.result = Some(result);
        }
    }

    fn ensure_session(&self, id: &str, purpose: &str) -> Result<()> {
        let sessions = self.sessions.lock().expect("uiaa lock");
        match sessions.get(id) {
            Some(s) if s.created.elapsed() < SESSION_LIFETIME && s.purpose == purpose => Ok(()),
            Some(s) if s.purpose != purpose => {
                Err(Error::forbidden("This UIA session was started for another request"))
            }
            _ => Err(Error::matrix(400, ErrorKind::Unknown, "Unknown or expired UIA session")),
        }
    }

    fn hold_registration_token(&self, id: &str, token: &str) {
        if let Some(session) = self.sessions.lock().expect("uiaa lock").get_mut(id) {
            session.registration_token = Some(token.to_owned());
        }
    }

    /// The registration token a live session passed with.
    pub fn registration_token(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().expect("uiaa lock");
        sessions.get(id).filter(|s| s.created.elapsed() < SESSION_LIFETIME)?.registration_token.clone()
    }

    /// Uses of `token` held by live sessions that have not registered yet
    /// (Synapse's `pending`). Sessions live in memory, so a restart frees them.
    pub fn pending_token_uses(&self, token: &str) -> u64 {
        let sessions = self.sessions.lock().expect("uiaa lock");
        let pending = sessions.values().filter(|s| {
            s.created.elapsed() < SESSION_LIFETIME
                && !s.claimed
                && s.registration_token.as_deref() == Some(token)
        });
        pending.count() as u64
    }

    /// Start the operation a completed session authorised, once: a second
    /// request on the same session is refused while (or after) the first
    /// runs. Returns the registration token the session passed with.
    pub fn claim(&self, id: &str) -> Result<Option<String>> {
        let mut sessions = self.sessions.lock().expect("uiaa lock");
        let Some(session) = sessions.get_mut(id) else { return Ok(None) };
        if session.claimed {
            return Err(Error::forbidden("This session's registration is already under way"));
        }
        session.claimed = true;
        Ok(session.registration_token.clone())
    }

    fn complete_stage(&self, id: &str, stage: AuthType) -> Vec<AuthType> {
        let mut sessions = self.sessions.lock().expect("uiaa lock");
        let Some(session) = sessions.get_mut(id) else { return vec![stage] };
        if !session.completed.contains(&stage) {
            session.completed.push(stage);
        }
        session.completed.clone()
    }

    fn completed(&self, id: &str) -> Vec<AuthType> {
        let sessions = self.sessions.lock().expect("uiaa lock");
        sessions.get(id).map(|s| s.completed.clone()).unwrap_or_default()
    }

    fn pending(
        &self,
        flows: &[AuthFlow],
        completed: Vec<AuthType>,
        session: String,
        failure: Option<StandardErrorBody>,
    ) -> Error {
        let mut info = UiaaInfo::new(flows.to_vec());
        info.completed = completed;
        info.session = Some(session);
        info.params = Some(serde_json::value::to_raw_value(&serde_json::json!({})).expect("{}"));
        info.auth_error = failure.map(Box::new);
        Error::Uiaa(Box::new(info))
    }
}
