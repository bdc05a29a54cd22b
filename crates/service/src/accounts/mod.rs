//! Accounts: users, passwords, devices, access and refresh tokens,
//! registration rules and User-Interactive Authentication.

mod admin;
mod password;
pub mod records;
pub mod registration_tokens;
pub mod restrictions;
pub mod shared_secret;
pub mod tokens;
pub mod uiaa;
pub mod username;

use std::sync::Arc;

use estuary_core::{Config, Error, Result, error::ErrorKind, time::now_millis};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedUserId, ServerName, UserId,
    api::client::uiaa::{AuthFlow, AuthType},
};

pub use records::{Account, Device, LoginToken, Session};
pub use restrictions::Restrictions;
pub use uiaa::{UiaaRequest, UiaaSessions};

use crate::storage_error::StorageResultExt;

/// `global` key of the one-time token that lets the first account register.
const FIRST_RUN_TOKEN_KEY: &str = "first_run_registration_token";
/// Set once an account other than an appservice's exists: the first such
/// account is the admin (appservice bots may be created before it).
const FIRST_ACCOUNT_KEY: &str = "first_account_registered";
/// Lifetime of `m.login.token` tokens from `/login/get_token`.
pub const LOGIN_TOKEN_LIFETIME_MS: u64 = 120_000;
/// How long an OpenID token proves who its user is.
pub const OPENID_TOKEN_LIFETIME_MS: u64 = 3_600_000;

/// Tokens handed to a client after registration or login.
#[derive(Debug)]
pub struct IssuedTokens {
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Lifetime of the access token in ms, when it expires.
    pub expires_in_ms: Option<u64>,
}

pub struct Accounts {
    config: Arc<Config>,
    db: Db,
    userid_account: Table<String, Json<Account>>,
    token_session: Table<String, Json<Session>>,
    refreshtoken_session: Table<String, Json<Session>>,
    logintoken_user: Table<String, Json<LoginToken>>,
    openidtoken_user: Table<String, Json<LoginToken>>,
    userdeviceid_device: Table<(String, String), Json<Device>>,
    global: Table<String, String>,
    registrationtoken_token: Table<String, Json<registration_tokens::StoredToken>>,
    /// Serialises account creation so two registrations of one name cannot race.
    registration_lock: tokio::sync::Mutex<()>,
    pub uiaa: UiaaSessions,
    pub restrictions: restrictions::AccountRestrictions,
    /// Nonces of shared-secret registration, with when they were issued.
    registration_nonces: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Accounts {
    pub fn new(config: Arc<Config>, db: &Db) -> Result<Self> {
        let accounts = Self {
            config,
            db: db.clone(),
            userid_account: db.table("userid_account").db()?,
            token_session: db.table("token_session").db()?,
            refreshtoken_session: db.table("refreshtoken_session").db()?,
            logintoken_user: db.table("logintoken_user").db()?,
            openidtoken_user: db.table("openidtoken_user").db()?,
            userdeviceid_device: db.table("userdeviceid_device").db()?,
            global: db.table("global").db()?,
            registrationtoken_token: db.table("registrationtoken_token").db()?,
            registration_lock: tokio::sync::Mutex::new(()),
            uiaa: UiaaSessions::default(),
            restrictions: restrictions::AccountRestrictions::new(db)?,
            registration_nonces: Default::default(),
        };
        accounts.mark_first_account_of_older_databases()?;
        Ok(accounts)
    }

    /// Databases from before the first-account marker: any account that is
    /// not an appservice's counts (one scan, only while the marker is unset).
    fn mark_first_account_of_older_databases(&self) -> Result<()> {
        if self.has_first_account()? {
            return Ok(());
        }
        let accounts = self.userid_account.scan_raw_prefix(&[], usize::MAX).db()?;
        if accounts.iter().any(|(_, Json(account))| !account.appservice) {
            self.global.put(&FIRST_ACCOUNT_KEY.to_owned(), &String::new()).db()?;
        }
        Ok(())
    }

    /// The server has its first account: the first-run token is used up.
    fn mark_first_account_into(&self, batch: &mut estuary_storage::Batch) {
        batch.put(&self.global, &FIRST_ACCOUNT_KEY.to_owned(), &String::new());
        batch.delete(&self.global, &FIRST_RUN_TOKEN_KEY.to_owned());
    }

    fn has_first_account(&self) -> Result<bool> {
        Ok(self.global.get(&FIRST_ACCOUNT_KEY.to_owned()).db()?.is_some())
    }

    pub fn server_name(&self) -> &ServerName {
        &self.config.server_name
    }

    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name()
    }

    /// Whether `user_id` is a guest account of this server.
    pub fn is_guest(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.account(user_id)?.is_some_and(|a| a.guest))
    }

    pub fn account(&self, user_id: &UserId) -> Result<Option<Account>> {
        Ok(self.userid_account.get(&user_id.to_string()).db()?.map(|Json(a)| a))
    }

    /// Active local accounts, at most `limit` (the user directory's
    /// search-all-users mode).
    pub fn active_user_ids(&self, limit: usize) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .userid_account
            .scan_raw_prefix(&[], limit)
            .db()?
            .into_iter()
            .filter(|(_, Json(account))| !account.deactivated)
            .filter_map(|(user_id, _)| UserId::parse(user_id).ok())
            .collect())
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        self.userid_account.contains(&user_id.to_string()).db()
    }

    // ----- Registration -----

    /// The first-run token, if the server still has no account.
    fn first_run_token(&self) -> Result<Option<String>> {
        self.global.get(&FIRST_RUN_TOKEN_KEY.to_owned()).db()
    }

    /// With registration closed (or open only with tokens, none of which an
    /// admin can have created yet) and no account yet, create (once) and log
    /// a token that lets the first user register from any client.
    pub fn announce_first_run_token(&self) -> Result<()> {
        let open_without_token = self.config.allow_registration && !self.registration_requires_token();
        if open_without_token || self.has_first_account()? {
            return Ok(());
        }
        let token = match self.first_run_token()? {
            Some(token) => token,
            None => {
                let token = tokens::random_token(24);
                self.global.put(&FIRST_RUN_TOKEN_KEY.to_owned(), &token).db()?;
                token
            }
        };
        tracing::warn!(
            "This server has no account yet and registration is closed or needs a token. Register \
             the first account (it becomes a server admin) from any Matrix client with the registration \
             token: {token}"
        );
        Ok(())
    }

    /// The UIA flows `/register` offers, or 403 when registration is closed.
    pub fn registration_flows(&self) -> Result<Vec<AuthFlow>> {
        if self.config.allow_registration {
            let stage = match self.registration_requires_token() {
                true => AuthType::RegistrationToken,
                false => AuthType::Dummy,
            };
            return Ok(vec![AuthFlow::new(vec![stage])]);
        }
        if self.first_run_token()?.is_some() {
            return Ok(vec![AuthFlow::new(vec![AuthType::RegistrationToken])]);
        }
        Err(Error::forbidden("Registration is disabled on this server"))
    }

    /// Whether registration tokens are in use at all (for the validity endpoint).
    pub fn registration_tokens_in_use(&self) -> Result<bool> {
        Ok((self.config.allow_registration && self.registration_requires_token())
            || self.first_run_token()?.is_some())
    }

    /// Open registration asks for a token: the configured one, or one an
    /// admin created.
    fn registration_requires_token(&self) -> bool {
        self.config.registration_token.is_some() || self.config.registration_requires_token
    }

    pub fn registration_token_valid(&self, token: &str) -> Result<bool> {
        if self.config.allow_registration && self.registration_requires_token() {
            if self.config.registration_token.as_deref().is_some_and(|t| constant_time_eq(t, token)) {
                return Ok(true);
            }
            if self.stored_token_valid(token)? {
                return Ok(true);
            }
        }
        Ok(self.first_run_token()?.is_some_and(|t| constant_time_eq(&t, token)))
    }

    /// Check that a user ID may be registered: valid and not taken.
    pub fn check_available(&self, user_id: &UserId) -> Result<()> {
        if self.is_local(user_id) && user_id.localpart() == self.config.server_notices_localpart {
            return Err(Error::matrix(400, ErrorKind::Exclusive, "This user ID is reserved"));
        }
        if self.exists(user_id)? {
            return Err(Error::matrix(400, ErrorKind::UserInUse, "This user ID is already taken"));
        }
        Ok(())
    }

    /// Create an account. The very first account becomes a server admin and
    /// uses up the first-run registration token.
    pub async fn create_account(
        &self,
        user_id: &UserId,
        password: Option<String>,
        guest: bool,
    ) -> Result<Account> {
        let password_hash = match password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        self.insert_account(user_id, password_hash, guest, false).await
    }

    /// The account of an appservice's user (its bot or a ghost): no
    /// password, never the first-run admin.
    pub async fn create_appservice_account(&self, user_id: &UserId) -> Result<Account> {
        self.insert_account(user_id, None, false, true).await
    }

    async fn insert_account(
        &self,
        user_id: &UserId,
        password_hash: Option<String>,
        guest: bool,
        appservice: bool,
    ) -> Result<Account> {
        let _guard = self.registration_lock.lock().await;
        self.check_available(user_id)?;
        let first = !guest && !appservice && !self.has_first_account()?;
        let account = Account {
            password_hash,
            admin: first,
            appservice,
            guest,
            created_ts: now_millis(),
            ..Account::default()
        };
        let mut batch = self.db.batch();
        batch.put(&self.userid_account, &user_id.to_string(), &Json(account.clone()));
        if first {
            self.mark_first_account_into(&mut batch);
        }
        batch.commit().db()?;
        tracing::info!(%user_id, admin = account.admin, guest, "registered account");
        Ok(account)
    }

    /// A fresh numeric user ID for a guest: the counter is read and moved
    /// on under the registration lock, so two guests registering at once
    /// get two IDs; a number someone registered as a name is skipped.
    pub async fn next_guest_user_id(&self) -> Result<OwnedUserId> {
        let _guard = self.registration_lock.lock().await;
        let key = "guest_counter".to_owned();
        let mut next: u64 = self.global.get(&key).db()?.and_then(|v| v.parse().ok()).unwrap_or(1);
        loop {
            let user_id = UserId::parse_with_server_name(next.to_string(), self.server_name())
                .map_err(Error::internal)?;
            next += 1;
            if self.account(&user_id)?.is_none() {
                self.global.put(&key, &next.to_string()).db()?;
                return Ok(user_id);
            }
        }
    }

    // ----- Passwords -----

    /// Whether `password` is the password of `user_id` (false for unknown,
    /// deactivated or password-less accounts).
    pub async fn verify_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let Some(account) = self.account(user_id)? else { return Ok(false) };
        let (false, Some(hash)) = (account.deactivated, account.password_hash) else {
            return Ok(false);
        };
        password::verify(password.to_owned(), hash).await
    }

    /// Change a password, optionally logging out every device but `keep`.
    pub async fn set_password(
        &self,
        user_id: &UserId,
        new_password: String,
        logout_devices: bool,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        account.password_hash = Some(password::hash(new_password).await?);
        let mut batch = self.db.batch();
        batch.put(&self.userid_account, &user_id.to_string(), &Json(account));
        if logout_devices {
            for (device_id, device) in self.devices(user_id)? {
                if Some(&*device_id) != keep {
                    self.remove_device_into(&mut batch, user_id, &device_id, &device);
                }
            }
        }
        batch.commit().db()
    }

    /// A guest account becomes a full account with a password (the spec's
    /// guest upgrade: `guest_access_token` on `/register`).
    pub async fn upgrade_guest(&self, user_id: &UserId, password: Option<String>) -> Result<()> {
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        if !account.guest {
            return Err(Error::forbidden("Only guest accounts can be upgraded"));
        }
        account.guest = false;
        account.password_hash = match password {
            Some(password) => Some(password::hash(password).await?),
            None => None,
        };
        self.userid_account.put(&user_id.to_string(), &Json(account)).db()?;
        tracing::info!(%user_id, "guest account upgraded to a full account");
        Ok(())
    }

    /// Deactivate: the account can never log in again, every device is gone,
    /// and the user ID stays reserved.
    pub fn deactivate(&self, user_id: &UserId) -> Result<()> {
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        account.deactivated = true;
        account.password_hash = None;
        let mut batch = self.db.batch();
        batch.put(&self.userid_account, &user_id.to_string(), &Json(account));
        for (device_id, device) in self.devices(user_id)? {
            self.remove_device_into(&mut batch, user_id, &device_id, &device);
        }
        batch.commit().db()?;
        tracing::info!(%user_id, "deactivated account");
        Ok(())
    }

    // ----- Devices and tokens -----

    /// Log a device in: create it (or reuse `device_id`, revoking its old
    /// tokens) and issue an access token, plus a refresh token on request.
    pub fn issue_tokens(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        want_refresh: bool,
    ) -> Result<IssuedTokens> {
        let device_id = device_id.unwrap_or_else(|| tokens::device_id().into());
        let existing = self.device(user_id, &device_id)?;
        let mut batch = self.db.batch();
        if let Some(old) = &existing {
            self.revoke_tokens_into(&mut batch, old);
        }
        let access_token = tokens::access_token();
        let refresh_token = want_refresh.then(tokens::refresh_token);
        let lifetime_ms = self.config.refreshable_access_token_lifetime * 1000;
        let expires_in_ms = want_refresh.then_some(lifetime_ms);
        let session = Session {
            user_id: user_id.to_owned(),
            device_id: device_id.clone(),
            expires_at: expires_in_ms.map(|ms| now_millis() + ms),
        };
        let device = Device {
            display_name: display_name.or_else(|| existing.and_then(|d| d.display_name)),
            access_token: Some(access_token.clone()),
            refresh_token: refresh_token.clone(),
            last_seen_ip: None,
            last_seen_ts: Some(now_millis()),
        };
        batch.put(&self.token_session, &access_token, &Json(session.clone()));
        if let Some(refresh) = &refresh_token {
            batch.put(&self.refreshtoken_session, refresh, &Json(session));
        }
        batch.put(&self.userdeviceid_device, &device_key(user_id, &device_id), &Json(device));
        batch.commit().db()?;
        Ok(IssuedTokens { device_id, access_token, refresh_token, expires_in_ms })
    }

    /// Create (or replace) a device that has no session, such as a
    /// dehydrated device, which clients use through its keys only.
    pub fn create_device_without_session(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let mut batch = self.db.batch();
        if let Some(old) = self.device(user_id, device_id)? {
            self.revoke_tokens_into(&mut batch, &old);
        }
        let device = Device {
            display_name,
            access_token: None,
            refresh_token: None,
            last_seen_ip: None,
            last_seen_ts: Some(now_millis()),
        };
        batch.put(&self.userdeviceid_device, &device_key(user_id, device_id), &Json(device));
        batch.commit().db()
    }

    /// Resolve an access token: one point lookup.
    pub fn authenticate(&self, access_token: &str) -> Result<Session> {
        let Json(session) = self
            .token_session
            .get(&access_token.to_owned())
            .db()?
            .ok_or_else(|| Error::unknown_token(false))?;
        if session.expires_at.is_some_and(|at| at <= now_millis()) {
            // Expired but refreshable: the client should refresh, not log out.
            return Err(Error::unknown_token(true));
        }
        Ok(session)
    }

    /// Swap a refresh token for a new access and refresh token pair.
    pub fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        let Json(session) = self
            .refreshtoken_session
            .get(&refresh_token.to_owned())
            .db()?
            .ok_or_else(|| Error::unknown_token(false))?;
        if self.device(&session.user_id, &session.device_id)?.is_none() {
            return Err(Error::unknown_token(false));
        }
        self.issue_tokens(&session.user_id, Some(session.device_id), None, true)
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, Device)>> {
        Ok(self
            .userdeviceid_device
            .scan_prefix(&(user_id.to_string(),))
            .db()?
            .into_iter()
            .map(|((_, device_id), Json(device))| (device_id.into(), device))
            .collect())
    }

    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        Ok(self.userdeviceid_device.get(&device_key(user_id, device_id)).db()?.map(|Json(d)| d))
    }

    pub fn set_device_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let mut device =
            self.device(user_id, device_id)?.ok_or_else(|| Error::not_found("No such device"))?;
        device.display_name = display_name;
        self.userdeviceid_device.put(&device_key(user_id, device_id), &Json(device)).db()
    }

    /// Delete devices (and so end their sessions). Unknown IDs are skipped.
    pub fn delete_devices(&self, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        let mut batch = self.db.batch();
        for device_id in device_ids {
            if let Some(device) = self.device(user_id, device_id)? {
                self.remove_device_into(&mut batch, user_id, device_id, &device);
            }
        }
        batch.commit().db()
    }

    fn remove_device_into(
        &self,
        batch: &mut estuary_storage::Batch,
        user_id: &UserId,
        device_id: &DeviceId,
        device: &Device,
    ) {
        self.revoke_tokens_into(batch, device);
        batch.delete(&self.userdeviceid_device, &device_key(user_id, device_id));
    }

    fn revoke_tokens_into(&self, batch: &mut estuary_storage::Batch, device: &Device) {
        if let Some(access) = &device.access_token {
            batch.delete(&self.token_session, access);
        }
        if let Some(refresh) = &device.refresh_token {
            batch.delete(&self.refreshtoken_session, refresh);
        }
    }

    // ----- Login tokens (m.login.token) -----

    pub fn create_login_token(&self, user_id: &UserId) -> Result<String> {
        let token = tokens::random_token(32);
        let record =
            LoginToken { user_id: user_id.to_owned(), expires_at: now_millis() + LOGIN_TOKEN_LIFETIME_MS };
        self.logintoken_user.put(&token, &Json(record)).db()?;
        Ok(token)
    }

    /// An OpenID token: other services (identity, integration servers) ask
    /// this server's `/openid/userinfo` who it belongs to, for an hour.
    pub fn create_openid_token(&self, user_id: &UserId) -> Result<String> {
        let token = tokens::random_token(32);
        let record =
            LoginToken { user_id: user_id.to_owned(), expires_at: now_millis() + OPENID_TOKEN_LIFETIME_MS };
        self.openidtoken_user.put(&token, &Json(record)).db()?;
        Ok(token)
    }

    /// The user of a valid OpenID token (401 `M_UNKNOWN_TOKEN` otherwise).
    pub fn openid_user(&self, token: &str) -> Result<OwnedUserId> {
        match self.openidtoken_user.get(&token.to_owned()).db()? {
            Some(Json(record)) if record.expires_at > now_millis() => Ok(record.user_id),
            _ => Err(Error::unknown_token(false)),
        }
    }

    /// Use up a login token; it works once, before it expires.
    pub fn consume_login_token(&self, token: &str) -> Result<OwnedUserId> {
        let invalid = || Error::forbidden("Invalid or expired login token");
        let Json(record) = self.logintoken_user.get(&token.to_owned()).db()?.ok_or_else(invalid)?;
        self.logintoken_user.delete(&token.to_owned()).db()?;
        if record.expires_at <= now_millis() {
            return Err(invalid());
        }
        Ok(record.user_id)
    }
}

impl uiaa::StageVerifier for Accounts {
    async fn verify_password(&self, user: &str, password: &str) -> Result<bool> {
        let user_id = UserId::parse(user).map_err(Error::internal)?;
        Accounts::verify_password(self, &user_id, password).await
    }
    fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Accounts::registration_token_valid(self, token)
    }
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> (String, String) {
    (user_id.to_string(), device_id.to_string())
}

/// Compare secrets without leaking their common prefix through timing.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
