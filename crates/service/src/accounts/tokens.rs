//! Unguessable random strings for access, refresh, login and UIA tokens.

use rand::{Rng, distr::Alphanumeric};

/// `len` alphanumeric characters from the OS-seeded CSPRNG (~5.95 bits each).
pub fn random_token(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Access tokens carry 64 characters (~380 bits) of randomness.
pub fn access_token() -> String {
    format!("est_{}", random_token(64))
}

pub fn refresh_token() -> String {
    format!("estr_{}", random_token(64))
}

/// Device IDs are short and readable; uniqueness is per user.
pub fn device_id() -> String {
    random_token(10).to_ascii_uppercase()
}
