//! What server admins change on accounts (the admin API): listing, flags,
//! passwords set for a user, and accounts created or brought back by an admin.

use estuary_core::{Error, Result, time::now_millis};
use estuary_storage::codec::Json;
use ruma::{OwnedUserId, UserId};

use super::{Account, Accounts, password};
use crate::storage_error::StorageResultExt;

/// At most this many accounts are read by one admin listing.
const ACCOUNTS_LISTED: usize = 1_000_000;

impl Accounts {
    /// Every account of this server, in user ID order (admin listings).
    pub fn all_accounts(&self) -> Result<Vec<(OwnedUserId, Account)>> {
        Ok(self
            .userid_account
            .scan_raw_prefix(&[], ACCOUNTS_LISTED)
            .db()?
            .into_iter()
            .filter_map(|(user_id, Json(account))| Some((UserId::parse(user_id).ok()?, account)))
            .collect())
    }

    /// Change an account's flags; 404 when there is no such account.
    pub fn update_account(&self, user_id: &UserId, change: impl FnOnce(&mut Account)) -> Result<Account> {
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("User not found"))?;
        change(&mut account);
        self.userid_account.put(&user_id.to_string(), &Json(account.clone())).db()?;
        Ok(account)
    }

    /// An account an admin creates (`PUT /_synapse/admin/v2/users/{userId}`,
    /// shared-secret registration): never a guest. It counts as the first
    /// account, so no later registration becomes an admin by being first.
    pub async fn create_account_as_admin(
        &self,
        user_id: &UserId,
        password: Option<String>,
        admin: bool,
        user_type: Option<String>,
    ) -> Result<Account> {
        let password_hash = match password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let _guard = self.registration_lock.lock().await;
        self.check_available(user_id)?;
        let account =
            Account { password_hash, admin, user_type, created_ts: now_millis(), ..Account::default() };
        let mut batch = self.db.batch();
        batch.put(&self.userid_account, &user_id.to_string(), &Json(account.clone()));
        self.mark_first_account_into(&mut batch);
        batch.commit().db()?;
        Ok(account)
    }

    /// The server notices' system user: no password, Synapse's `support` type.
    pub async fn insert_system_account(&self, user_id: &UserId) -> Result<()> {
        let _guard = self.registration_lock.lock().await;
        if self.exists(user_id)? {
            return Ok(());
        }
        let account =
            Account { user_type: Some("support".to_owned()), created_ts: now_millis(), ..Account::default() };
        self.userid_account.put(&user_id.to_string(), &Json(account)).db()
    }

    /// Bring a deactivated account back; it needs a password to log in with
    /// (the old one was dropped on deactivation).
    pub async fn reactivate(&self, user_id: &UserId, password: Option<String>) -> Result<()> {
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("User not found"))?;
        account.password_hash = match (password, account.password_hash.take()) {
            (Some(p), _) => Some(password::hash(p).await?),
            (None, Some(hash)) => Some(hash),
            (None, None) => return Err(Error::missing_param("A password is needed to reactivate a user")),
        };
        account.deactivated = false;
        self.userid_account.put(&user_id.to_string(), &Json(account)).db()
    }
}
