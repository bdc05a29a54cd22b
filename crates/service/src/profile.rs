//! User profiles: `displayname`, `avatar_url` and the extended profile fields
//! of spec v1.16, stored one row per (user, field).

use std::sync::Arc;

use estuary_core::{Error, Result, error::ErrorKind};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{
    UserId,
    api::client::profile::{ProfileFieldName, ProfileFieldValue, UserProfile},
};
use serde_json::Value as JsonValue;

use crate::{Accounts, storage_error::StorageResultExt};

/// The spec's limit on a whole profile, serialised.
const MAX_PROFILE_BYTES: usize = 65_536;
/// The spec's limit on a field name.
const MAX_FIELD_NAME_BYTES: usize = 255;

pub struct Profiles {
    db: Db,
    useridfield_profile: Table<(String, String), Json<JsonValue>>,
    accounts: Arc<Accounts>,
}

impl Profiles {
    pub fn new(db: &Db, accounts: Arc<Accounts>) -> Result<Self> {
        Ok(Self { db: db.clone(), useridfield_profile: db.table("useridfield_profile").db()?, accounts })
    }

    /// The whole profile of a local user; 404 when the user does not exist.
    pub fn get_profile(&self, user_id: &UserId) -> Result<UserProfile> {
        self.require_known_user(user_id)?;
        let mut profile = UserProfile::new();
        for ((_, field), Json(value)) in self.useridfield_profile.scan_prefix(&(user_id.to_string(),)).db()? {
            profile.set(field, value);
        }
        Ok(profile)
    }

    pub fn get_field(&self, user_id: &UserId, field: &ProfileFieldName) -> Result<ProfileFieldValue> {
        self.require_known_user(user_id)?;
        let value = self
            .useridfield_profile
            .get(&(user_id.to_string(), field.as_str().to_owned()))
            .db()?
            .ok_or_else(|| Error::not_found("The user has no such profile field"))?;
        ProfileFieldValue::new(field.as_str(), value.0).map_err(Error::internal)
    }

    /// A profile field as a string, when set (display name, avatar URL).
    pub fn field_string(&self, user_id: &UserId, field: &ProfileFieldName) -> Result<Option<String>> {
        let value = self.useridfield_profile.get(&(user_id.to_string(), field.as_str().to_owned())).db()?;
        Ok(value.and_then(|Json(v)| v.as_str().map(str::to_owned)))
    }

    /// Set one field of `user_id`'s profile, which only that user may do.
    pub fn set_field(&self, sender: &UserId, user_id: &UserId, value: ProfileFieldValue) -> Result<()> {
        self.require_self(sender, user_id)?;
        let field = value.field_name();
        if field.as_str().len() > MAX_FIELD_NAME_BYTES {
            return Err(Error::matrix(400, ErrorKind::KeyTooLarge, "Profile field name is too long"));
        }
        let json = value.value().into_owned();
        let mut profile = self.get_profile(user_id)?;
        profile.set(field.as_str().to_owned(), json.clone());
        if serde_json::to_vec(&profile)?.len() > MAX_PROFILE_BYTES {
            return Err(Error::matrix(400, ErrorKind::ProfileTooLarge, "The profile would exceed 64 KiB"));
        }
        self.useridfield_profile.put(&(user_id.to_string(), field.as_str().to_owned()), &Json(json)).db()
    }

    pub fn delete_field(&self, sender: &UserId, user_id: &UserId, field: &ProfileFieldName) -> Result<()> {
        self.require_self(sender, user_id)?;
        self.useridfield_profile.delete(&(user_id.to_string(), field.as_str().to_owned())).db()
    }

    /// Every avatar URL a local profile uses (media an admin's bulk
    /// deletion keeps with `keep_profiles`).
    pub fn avatar_urls(&self) -> Result<std::collections::HashSet<String>> {
        let mut urls = std::collections::HashSet::new();
        self.useridfield_profile
            .for_each(&[], |(_, field), Json(value)| {
                if field == "avatar_url"
                    && let Some(url) = value.as_str()
                {
                    urls.insert(url.to_owned());
                }
            })
            .db()?;
        Ok(urls)
    }

    /// Remove every field (used when an account is deactivated with erasure).
    pub fn clear(&self, user_id: &UserId) -> Result<()> {
        let mut batch = self.db.batch();
        for (key, _) in self.useridfield_profile.scan_prefix(&(user_id.to_string(),)).db()? {
            batch.delete(&self.useridfield_profile, &key);
        }
        batch.commit().db()
    }

    fn require_self(&self, sender: &UserId, user_id: &UserId) -> Result<()> {
        if sender != user_id {
            return Err(Error::forbidden("You cannot change another user's profile"));
        }
        Ok(())
    }

    fn require_known_user(&self, user_id: &UserId) -> Result<()> {
        if user_id.server_name() != self.accounts.server_name() || !self.accounts.exists(user_id)? {
            return Err(Error::not_found("Profile not found"));
        }
        Ok(())
    }
}
