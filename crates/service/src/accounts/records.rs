//! What the accounts tables store.

use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};

/// `userid_account`: one per user ID ever registered (deactivated ones stay,
/// so their IDs are never reused).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    /// argon2id PHC string; none for accounts without a password.
    pub password_hash: Option<String>,
    pub admin: bool,
    pub guest: bool,
    pub deactivated: bool,
    pub created_ts: u64,
    /// An appservice's bot or ghost (registered by the appservice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub appservice: bool,
    /// Synapse's user types (`bot`, `support`), set by admins; none for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
}

/// `token_session` and `refreshtoken_session`: who a token authenticates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// Expiry of an access token (ms since epoch); none for tokens that
    /// never expire. Unused on refresh tokens.
    pub expires_at: Option<u64>,
}

/// `userdeviceid_device`: a device and the tokens currently issued to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub display_name: Option<String>,
    /// None for a device no one logs in to (a dehydrated device).
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<u64>,
}

/// `logintoken_user`: a one-time `m.login.token`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginToken {
    pub user_id: OwnedUserId,
    pub expires_at: u64,
}
