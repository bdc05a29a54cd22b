//! Registration tokens admins create (`m.login.registration_token`), with
//! how often each may be used and until when.

use estuary_core::{Error, Result, error::ErrorKind, time::now_millis};
use estuary_storage::codec::Json;
use serde::{Deserialize, Serialize};

use super::{Accounts, tokens};
use crate::storage_error::StorageResultExt;

/// `registrationtoken_token`: one token's limits and completed uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredToken {
    /// None: any number of registrations.
    pub uses_allowed: Option<u64>,
    /// Registrations that used the token.
    pub completed: u64,
    /// ms since the epoch; none for a token that never expires.
    pub expiry_time: Option<u64>,
}

/// A token as the admin API shows it: `pending` counts registrations under
/// way that passed the token stage.
#[derive(Clone, Debug, Serialize)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<u64>,
    pub pending: u64,
    pub completed: u64,
    pub expiry_time: Option<u64>,
}

impl RegistrationToken {
    /// Whether a registration may use the token now: not expired, and
    /// fewer uses completed or pending than allowed (0 allows none).
    pub fn is_valid(&self) -> bool {
        self.expiry_time.is_none_or(|at| at > now_millis())
            && self.uses_allowed.is_none_or(|allowed| self.pending + self.completed < allowed)
    }
}

/// A new token: what the admin asked for.
#[derive(Debug, Default)]
pub struct NewRegistrationToken {
    pub token: Option<String>,
    /// Length of a generated token (1 to 64, default 16).
    pub length: Option<usize>,
    pub uses_allowed: Option<u64>,
    pub expiry_time: Option<u64>,
}

const MAX_TOKEN_LEN: usize = 64;
const DEFAULT_TOKEN_LEN: usize = 16;

fn check_token_text(token: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.chars().all(allowed) {
        return Err(Error::invalid_param(
            "A token is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'",
        ));
    }
    Ok(())
}

fn check_expiry(expiry_time: Option<u64>) -> Result<()> {
    if expiry_time.is_some_and(|at| at < now_millis()) {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok(())
}

impl Accounts {
    fn token_view(&self, token: String, stored: StoredToken) -> RegistrationToken {
        let pending = self.uiaa.pending_token_uses(&token);
        RegistrationToken {
            token,
            uses_allowed: stored.uses_allowed,
            pending,
            completed: stored.completed,
            expiry_time: stored.expiry_time,
        }
    }

    /// Every token, in token order.
    pub fn registration_tokens(&self) -> Result<Vec<RegistrationToken>> {
        let stored = self.registrationtoken_token.scan_raw_prefix(&[], usize::MAX).db()?;
        Ok(stored.into_iter().map(|(token, Json(t))| self.token_view(token, t)).collect())
    }

    pub fn registration_token(&self, token: &str) -> Result<Option<RegistrationToken>> {
        let stored = self.registrationtoken_token.get(&token.to_owned()).db()?;
        Ok(stored.map(|Json(t)| self.token_view(token.to_owned(), t)))
    }

    pub async fn create_registration_token(&self, new: NewRegistrationToken) -> Result<RegistrationToken> {
        check_expiry(new.expiry_time)?;
        let token = match new.token {
            Some(token) => token,
            None => {
                let length = new.length.unwrap_or(DEFAULT_TOKEN_LEN);
                if !(1..=MAX_TOKEN_LEN).contains(&length) {
                    return Err(Error::invalid_param("length must be between 1 and 64"));
                }
                tokens::random_token(length)
            }
        };
        check_token_text(&token)?;
        let _guard = self.registration_lock.lock().await;
        if self.registrationtoken_token.contains(&token).db()? {
            return Err(Error::invalid_param(format!("Token already exists: {token}")));
        }
        let stored =
            StoredToken { uses_allowed: new.uses_allowed, completed: 0, expiry_time: new.expiry_time };
        self.registrationtoken_token.put(&token, &Json(stored.clone())).db()?;
        Ok(self.token_view(token, stored))
    }

    /// Change a token's limits: each given field is set (none clears it).
    pub async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<Option<u64>>,
        expiry_time: Option<Option<u64>>,
    ) -> Result<RegistrationToken> {
        if let Some(expiry) = expiry_time {
            check_expiry(expiry)?;
        }
        let _guard = self.registration_lock.lock().await;
        let key = token.to_owned();
        let Json(mut stored) = self
            .registrationtoken_token
            .get(&key)
            .db()?
            .ok_or_else(|| Error::not_found(format!("No such registration token: {token}")))?;
        if let Some(uses_allowed) = uses_allowed {
            stored.uses_allowed = uses_allowed;
        }
        if let Some(expiry_time) = expiry_time {
            stored.expiry_time = expiry_time;
        }
        self.registrationtoken_token.put(&key, &Json(stored.clone())).db()?;
        Ok(self.token_view(key, stored))
    }

    /// Delete a token; false when there was none.
    pub fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let key = token.to_owned();
        if !self.registrationtoken_token.contains(&key).db()? {
            return Ok(false);
        }
        self.registrationtoken_token.delete(&key).db()?;
        Ok(true)
    }

    /// Whether an admin-created token lets a registration through now.
    pub(super) fn stored_token_valid(&self, token: &str) -> Result<bool> {
        Ok(self.registration_token(token)?.is_some_and(|t| t.is_valid()))
    }

    /// A registration that passed with `token` goes ahead: one use more,
    /// checked again against the limits now (registrations racing for the
    /// last use get one each). Tokens from the configuration (or the
    /// first-run token) have no count.
    pub async fn use_registration_token(&self, token: &str) -> Result<()> {
        let _guard = self.registration_lock.lock().await;
        let key = token.to_owned();
        if let Some(Json(mut stored)) = self.registrationtoken_token.get(&key).db()? {
            let expired = stored.expiry_time.is_some_and(|at| at <= now_millis());
            if expired || stored.uses_allowed.is_some_and(|allowed| stored.completed >= allowed) {
                return Err(Error::matrix(401, ErrorKind::Unauthorized, "Invalid registration token"));
            }
            stored.completed += 1;
            self.registrationtoken_token.put(&key, &Json(stored)).db()?;
        }
        Ok(())
    }
}
