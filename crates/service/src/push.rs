//! Push rules: each user's ruleset (the spec's defaults until they change
//! it), stored as the global account data `m.push_rules`.

use std::sync::Arc;

use estuary_core::{Error, Result};
use ruma::{UserId, push::Ruleset};
use serde_json::json;

use crate::account_data::AccountData;

pub struct PushRules {
    account_data: Arc<AccountData>,
}

impl PushRules {
    pub fn new(account_data: Arc<AccountData>) -> Self {
        Self { account_data }
    }

    /// The user's ruleset: stored, or the server default.
    pub fn ruleset(&self, user_id: &UserId) -> Result<Ruleset> {
        match self.account_data.get(user_id, None, "m.push_rules") {
            Ok(raw) => {
                let value: serde_json::Value = serde_json::from_str(raw.get())?;
                serde_json::from_value(value["global"].clone()).map_err(Error::internal)
            }
            Err(Error::Matrix { status: 404, .. }) => Ok(Ruleset::server_default(user_id)),
            Err(err) => Err(err),
        }
    }

    /// Store a changed ruleset (and so deliver it through sync).
    pub fn save(&self, user_id: &UserId, ruleset: &Ruleset) -> Result<()> {
        let content = serde_json::value::to_raw_value(&json!({"global": ruleset}))?;
        self.account_data.set_internal(user_id, None, "m.push_rules", content)
    }

    /// `m.push_rules` as account data content, for an initial sync.
    pub fn content(&self, user_id: &UserId) -> Result<serde_json::Value> {
        Ok(json!({"global": self.ruleset(user_id)?}))
    }
}
