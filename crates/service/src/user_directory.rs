//! `/user_directory/search`: users who share a room with the searcher or
//! sit in a room published in the directory (or, when configured, every
//! local user), matched on user ID and display name.

use std::{collections::BTreeSet, sync::Arc};

use estuary_core::{Config, Result};
use ruma::{OwnedUserId, UserId, api::client::profile::ProfileFieldName};
use serde_json::{Value as JsonValue, json};

use crate::{accounts::Accounts, profile::Profiles, rooms::Rooms, search::tokenize::Tokenizer};

/// Accounts considered in search-all-users mode.
const ALL_USERS_CAP: usize = 100_000;

pub struct UserDirectory {
    config: Arc<Config>,
    accounts: Arc<Accounts>,
    profiles: Arc<Profiles>,
    rooms: Arc<Rooms>,
}

impl UserDirectory {
    pub fn new(
        config: Arc<Config>,
        accounts: Arc<Accounts>,
        profiles: Arc<Profiles>,
        rooms: Arc<Rooms>,
    ) -> Self {
        Self { config, accounts, profiles, rooms }
    }

    fn candidates(&self, searcher: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        if self.config.user_directory_search_all_users {
            return Ok(self.accounts.active_user_ids(ALL_USERS_CAP)?.into_iter().collect());
        }
        // The spec's set: those sharing a room with the searcher, and members
        // of rooms anyone may join or read.
        let mut users: BTreeSet<OwnedUserId> = self.rooms.room_mates(searcher)?.into_iter().collect();
        users.remove(searcher);
        for room_id in self.rooms.open_rooms()? {
            let members = self.rooms.members_with_membership(&room_id, "join")?;
            // A room this server left: who is in it is no longer known here.
            if members.iter().any(|m| self.accounts.is_local(m)) {
                users.extend(members);
            }
        }
        Ok(users)
    }

    /// Every word of the term must start a word of the user ID's localpart
    /// or of the display name. Exact localpart matches come first.
    pub fn search(&self, searcher: &UserId, term: &str, limit: usize) -> Result<JsonValue> {
        let wanted = Tokenizer::words(term);
        let mut found = Vec::new();
        for user_id in self.candidates(searcher)? {
            let displayname = self.display_name(&user_id)?;
            // The words of `@local:server` include the localpart's.
            let mut haystack = Tokenizer::words(user_id.as_str());
            if let Some(name) = &displayname {
                haystack.extend(Tokenizer::words(name));
            }
            let matches = !wanted.is_empty()
                && wanted.iter().all(|w| haystack.iter().any(|h| h.starts_with(w.as_str())));
            if matches {
                let exact = wanted.len() == 1 && user_id.localpart().eq_ignore_ascii_case(&wanted[0]);
                found.push((!exact, user_id, displayname));
            }
        }
        found.sort();
        let limited = found.len() > limit;
        let mut results = Vec::new();
        for (_, user_id, displayname) in found.into_iter().take(limit) {
            let mut entry = json!({"user_id": user_id});
            if let Some(name) = displayname {
                entry["display_name"] = name.into();
            }
            if let Some(avatar) = self.field(&user_id, ProfileFieldName::AvatarUrl)? {
                entry["avatar_url"] = avatar.into();
            }
            results.push(entry);
        }
        Ok(json!({"results": results, "limited": limited}))
    }

    fn display_name(&self, user_id: &UserId) -> Result<Option<String>> {
        self.field(user_id, ProfileFieldName::DisplayName)
    }

    /// A profile field: our users' own; another server's user's from their
    /// member event in a room they are in here.
    fn field(&self, user_id: &UserId, field: ProfileFieldName) -> Result<Option<String>> {
        if !self.accounts.is_local(user_id) {
            let key = match field {
                ProfileFieldName::DisplayName => "displayname",
                ProfileFieldName::AvatarUrl => "avatar_url",
                _ => return Ok(None),
            };
            let content = self.rooms.joined_member_content(user_id)?;
            return Ok(content.and_then(|c| c[key].as_str().map(str::to_owned)));
        }
        self.profiles.field_string(user_id, &field)
    }
}
