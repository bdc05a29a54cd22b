//! TURN credentials for calls (`/voip/turnServer`).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use estuary_core::Config;
use ring::hmac;
use ruma::UserId;

/// What a client gets to authenticate with the TURN server.
#[derive(Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

/// Credentials for `user_id`, or none when no TURN server is configured.
/// With a shared secret they follow the TURN REST API convention that coturn
/// checks: username `<expiry>:<user_id>`, password base64(HMAC-SHA1(username)).
pub fn turn_credentials(config: &Config, user_id: &UserId, now_secs: u64) -> Option<TurnCredentials> {
    if config.turn_uris.is_empty() {
        return None;
    }
    let uris = config.turn_uris.clone();
    if let Some(secret) = &config.turn_shared_secret {
        let expiry = now_secs + config.turn_user_lifetime;
        let username = format!("{expiry}:{user_id}");
        let password = shared_secret_password(secret, &username);
        return Some(TurnCredentials { username, password, uris, ttl: config.turn_user_lifetime });
    }
    match (&config.turn_username, &config.turn_password) {
        (Some(username), Some(password)) => Some(TurnCredentials {
            username: username.clone(),
            password: password.clone(),
            uris,
            ttl: config.turn_user_lifetime,
        }),
        _ => None,
    }
}

fn shared_secret_password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

pub fn unix_now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_credentials_match_rfc2104_hmac_sha1() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            shared_secret_password("Jefe", "what do ya want for nothing?"),
            STANDARD.encode([
                0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84, 0xdf,
                0x9c, 0x25, 0x9a, 0x7c, 0x79
            ])
        );
        let config = Config {
            turn_uris: vec!["turn:turn.example.org".into()],
            turn_shared_secret: Some("s3cret".into()),
            turn_user_lifetime: 60,
            ..Config::default()
        };
        let user = UserId::parse("@alice:example.org").unwrap();
        let creds = turn_credentials(&config, &user, 1000).unwrap();
        assert_eq!(creds.username, "1060:@alice:example.org");
        assert_eq!(creds.password, shared_secret_password("s3cret", "1060:@alice:example.org"));
        assert_eq!(creds.ttl, 60);
        assert!(turn_credentials(&Config::default(), &user, 1000).is_none());
    }
}
