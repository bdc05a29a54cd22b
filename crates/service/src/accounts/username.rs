//! Rules for the localparts of new user IDs.

use estuary_core::{Error, Result, error::ErrorKind};
use rand::Rng;
use ruma::{OwnedUserId, ServerName, UserId};

/// The spec's limit on a whole user ID.
const MAX_USER_ID_LENGTH: usize = 255;

fn invalid(message: &str) -> Error {
    Error::matrix(400, ErrorKind::InvalidUsername, message)
}

/// Validate a requested localpart (or full user ID of this server) and turn it
/// into a user ID. Accepts only the spec's current grammar: `a-z 0-9 . _ = - / +`.
pub fn user_id_for_registration(requested: &str, server_name: &ServerName) -> Result<OwnedUserId> {
    // Clients and Synapse treat usernames case-insensitively: store them lowercased.
    let requested = requested.to_lowercase();
    let localpart = match requested.strip_prefix('@') {
        Some(full) => {
            let (localpart, server) =
                full.split_once(':').ok_or_else(|| invalid("User ID must be @localpart:server"))?;
            if !server.eq_ignore_ascii_case(server_name.as_str()) {
                return Err(invalid("User ID is not on this server"));
            }
            localpart
        }
        None => requested.as_str(),
    };
    if localpart.is_empty() {
        return Err(invalid("Username must not be empty"));
    }
    if !localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(invalid("Username may only contain a-z, 0-9 and . _ = - / +"));
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("Numeric usernames are reserved for guest accounts"));
    }
    let user_id =
        UserId::parse_with_server_name(localpart, server_name).map_err(|_| invalid("Invalid username"))?;
    if user_id.as_str().len() > MAX_USER_ID_LENGTH {
        return Err(invalid("User ID would be longer than 255 characters"));
    }
    Ok(user_id)
}

/// A random localpart for registrations that did not ask for one.
pub fn random_localpart() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    // Start with a letter so the result is never all-numeric (guest space).
    let first = ALPHABET[rng.random_range(0..26)] as char;
    std::iter::once(first)
        .chain((0..11).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> &'static ServerName {
        "example.org".try_into().unwrap()
    }

    #[test]
    fn accepts_spec_grammar() {
        let id = user_id_for_registration("alice.b_c=d-e/f+g", server()).unwrap();
        assert_eq!(id.as_str(), "@alice.b_c=d-e/f+g:example.org");
        assert_eq!(user_id_for_registration("@bob:example.org", server()).unwrap().localpart(), "bob");
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(user_id_for_registration("Alice", server()).unwrap().localpart(), "alice");
        for bad in ["", "al ice", "al:ice", "12345", "@bob:other.org", "é"] {
            let err = user_id_for_registration(bad, server()).unwrap_err();
            assert_eq!(err.errcode(), "M_INVALID_USERNAME", "{bad}");
        }
        let long = "a".repeat(250);
        assert!(user_id_for_registration(&long, server()).is_err());
    }

    #[test]
    fn random_localparts_are_valid() {
        for _ in 0..50 {
            user_id_for_registration(&random_localpart(), server()).unwrap();
        }
    }
}
