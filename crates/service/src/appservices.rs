//! Application services (bridges): their registrations, loaded from the files
//! named in `appservice_registrations`, and the namespaces they claim.

use std::{path::Path, sync::Arc};

use estuary_core::{Error, Result, error::ErrorKind};
use regex::Regex;
use ruma::{UserId, api::appservice::Registration};

/// One registration with its namespaces compiled.
pub struct Appservice {
    pub registration: Registration,
    users: Vec<(Regex, bool)>,
}

impl Appservice {
    fn new(registration: Registration) -> Result<Self> {
        let users = registration
            .namespaces
            .users
            .iter()
            .map(|ns| {
                // Namespaces are whole-string matches.
                Regex::new(&format!("^(?:{})$", ns.regex)).map(|re| (re, ns.exclusive)).map_err(|e| {
                    Error::internal(format!("appservice {}: invalid user regex: {e}", registration.id))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { registration, users })
    }

    /// Whether `user_id` is in this appservice's user namespaces (or is its sender).
    pub fn is_user_in_namespace(&self, user_id: &UserId) -> bool {
        user_id.localpart() == self.registration.sender_localpart
            || self.users.iter().any(|(re, _)| re.is_match(user_id.as_str()))
    }

    fn claims_exclusively(&self, user_id: &UserId) -> bool {
        self.users.iter().any(|(re, exclusive)| *exclusive && re.is_match(user_id.as_str()))
    }
}

#[derive(Default)]
pub struct Appservices {
    all: Vec<Arc<Appservice>>,
}

impl Appservices {
    /// Load every registration file; a broken file stops startup.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self> {
        let mut all = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::internal(format!("cannot read appservice registration {}: {e}", path.display()))
            })?;
            let registration: Registration = serde_yaml_ng::from_str(&text).map_err(|e| {
                Error::internal(format!("invalid appservice registration {}: {e}", path.display()))
            })?;
            tracing::info!(id = %registration.id, "loaded appservice registration");
            all.push(Arc::new(Appservice::new(registration)?));
        }
        Ok(Self { all })
    }

    /// The appservice whose `as_token` this is.
    pub fn by_token(&self, token: &str) -> Option<Arc<Appservice>> {
        self.all.iter().find(|a| a.registration.as_token == token).cloned()
    }

    /// Refuse a user ID that an appservice claims exclusively (unless that
    /// appservice is the one asking).
    pub fn check_not_exclusive(&self, user_id: &UserId, asking: Option<&Appservice>) -> Result<()> {
        let claimed = self.all.iter().any(|a| {
            a.claims_exclusively(user_id) && asking.is_none_or(|me| me.registration.id != a.registration.id)
        });
        if claimed {
            return Err(Error::matrix(
                400,
                ErrorKind::Exclusive,
                "This user ID is reserved by an application service",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
id: bridge
url: http://127.0.0.1:9999
as_token: as_secret
hs_token: hs_secret
sender_localpart: bridgebot
namespaces:
  users:
    - exclusive: true
      regex: "@bridge_.*:example.org"
  aliases: []
  rooms: []
"#;

    #[test]
    fn namespaces_are_whole_string_and_exclusive() {
        let registration: Registration = serde_yaml_ng::from_str(YAML).unwrap();
        let services = Appservices { all: vec![Arc::new(Appservice::new(registration).unwrap())] };
        let claimed = UserId::parse("@bridge_alice:example.org").unwrap();
        let free = UserId::parse("@alice:example.org").unwrap();
        let suffix = UserId::parse("@xbridge_a:example.org").unwrap();
        assert_eq!(services.check_not_exclusive(&claimed, None).unwrap_err().errcode(), "M_EXCLUSIVE");
        services.check_not_exclusive(&free, None).unwrap();
        services.check_not_exclusive(&suffix, None).unwrap();
        let bridge = services.by_token("as_secret").unwrap();
        services.check_not_exclusive(&claimed, Some(&bridge)).unwrap();
        assert!(bridge.is_user_in_namespace(&claimed));
        assert!(bridge.is_user_in_namespace(&UserId::parse("@bridgebot:example.org").unwrap()));
        assert!(!bridge.is_user_in_namespace(&free));
        assert!(services.by_token("wrong").is_none());
    }
}
