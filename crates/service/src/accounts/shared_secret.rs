//! Shared-secret registration (`/_synapse/admin/v1/register`): whoever
//! holds `registration_shared_secret` creates accounts, proving it with an
//! HMAC-SHA1 over a one-time nonce and the account's details, as Synapse's
//! `register_new_matrix_user` computes it.

use std::time::{Duration, Instant};

use estuary_core::{Error, Result};

use super::{Accounts, tokens};

/// How long a nonce may be used (Synapse: a minute).
const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// Nonces handed out and not yet used, at most.
const MAX_NONCES: usize = 1000;

/// What a shared-secret registration asks for.
pub struct SharedSecretRegistration<'a> {
    pub nonce: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub admin: bool,
    pub user_type: Option<&'a str>,
    /// Hex HMAC-SHA1 of `nonce\0username\0password\0admin|notadmin[\0user_type]`.
    pub mac: &'a str,
}

impl Accounts {
    fn shared_secret(&self) -> Result<&str> {
        self.config
            .registration_shared_secret
            .as_deref()
            .ok_or_else(|| Error::invalid_param("Shared secret registration is not enabled"))
    }

    /// A nonce for one registration.
    pub fn new_registration_nonce(&self) -> Result<String> {
        self.shared_secret()?;
        let nonce = tokens::random_token(32);
        let mut nonces =
            self.registration_nonces.lock().map_err(|_| Error::internal("nonce lock poisoned"))?;
        nonces.retain(|_, issued| issued.elapsed() < NONCE_LIFETIME);
        if nonces.len() >= MAX_NONCES {
            return Err(Error::matrix(
                429,
                estuary_core::error::ErrorKind::LimitExceeded(Default::default()),
                "Too many nonces",
            ));
        }
        nonces.insert(nonce.clone(), Instant::now());
        Ok(nonce)
    }

    /// Check a registration's nonce (used up either way) and MAC.
    pub fn check_shared_secret_registration(
        &self,
        registration: &SharedSecretRegistration<'_>,
    ) -> Result<()> {
        let secret = self.shared_secret()?;
        let issued = self
            .registration_nonces
            .lock()
            .map_err(|_| Error::internal("nonce lock poisoned"))?
            .remove(registration.nonce);
        if issued.is_none_or(|at| at.elapsed() >= NONCE_LIFETIME) {
            return Err(Error::invalid_param("unrecognised nonce"));
        }
        let mut message = [
            registration.nonce,
            registration.username,
            registration.password,
            if registration.admin { "admin" } else { "notadmin" },
        ]
        .join("\0");
        if let Some(user_type) = registration.user_type {
            message.push('\0');
            message.push_str(user_type);
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
        let mac = hex_decode(registration.mac).ok_or_else(|| Error::forbidden("HMAC incorrect"))?;
        ring::hmac::verify(&key, message.as_bytes(), &mac).map_err(|_| Error::forbidden("HMAC incorrect"))
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}
