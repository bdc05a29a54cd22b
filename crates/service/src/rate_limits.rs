//! Rate limits: one token bucket (GCRA, from `governor`) per action and
//! key (a user, a client address, a room), with Synapse's knobs. Beyond a
//! bucket: 429 `M_LIMIT_EXCEEDED` with the wait.
//!
//! Buckets live in memory: a restart refills them, which is harmless. An
//! admin may override a user's message limit (or exempt them); overrides
//! are stored in one row of `global`.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use estuary_core::{Config, Error, Result, config::RateLimit, error::ErrorKind};
use estuary_storage::{Db, Table, codec::Json};
use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use ruma::{
    OwnedUserId, UserId,
    api::error::{LimitExceededErrorData, RetryAfter},
};
use serde::{Deserialize, Serialize};

use crate::storage_error::StorageResultExt;

/// What is limited; each has its own buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    Registration,
    RegistrationTokenValidity,
    LoginByAddress,
    LoginByAccount,
    FailedLogin,
    JoinLocal,
    JoinRemote,
    InviteToRoom,
    InviteOfUser,
    InviteByUser,
    MediaUpload,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::Message,
        Action::Registration,
        Action::RegistrationTokenValidity,
        Action::LoginByAddress,
        Action::LoginByAccount,
        Action::FailedLogin,
        Action::JoinLocal,
        Action::JoinRemote,
        Action::InviteToRoom,
        Action::InviteOfUser,
        Action::InviteByUser,
        Action::MediaUpload,
    ];

    /// The configuration key of the action's limit (also its metric label).
    pub fn name(self) -> &'static str {
        match self {
            Action::Message => "rc_message",
            Action::Registration => "rc_registration",
            Action::RegistrationTokenValidity => "rc_registration_token_validity",
            Action::LoginByAddress => "rc_login.address",
            Action::LoginByAccount => "rc_login.account",
            Action::FailedLogin => "rc_login.failed_attempts",
            Action::JoinLocal => "rc_joins.local",
            Action::JoinRemote => "rc_joins.remote",
            Action::InviteToRoom => "rc_invites.per_room",
            Action::InviteOfUser => "rc_invites.per_user",
            Action::InviteByUser => "rc_invites.per_issuer",
            Action::MediaUpload => "rc_media_create",
        }
    }

    fn limit(self, config: &Config) -> RateLimit {
        let (_, limit) = config
            .rate_limits()
            .into_iter()
            .find(|(name, _)| *name == self.name())
            .expect("every action is configured");
        limit
    }
}

/// An admin's override of a user's message limit (Synapse's
/// `override_ratelimit`); both zero exempts the user from every limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub messages_per_second: u32,
    pub burst_count: u32,
}

impl Override {
    fn exempts(&self) -> bool {
        self.messages_per_second == 0 || self.burst_count == 0
    }
}

const OVERRIDES_KEY: &str = "ratelimit_overrides";

/// Buckets are forgotten once full again, when a limiter holds more keys
/// than this; looked at once every `CLEANUP_EVERY` checks (the cleanup walks
/// every key).
const KEYS_BEFORE_CLEANUP: usize = 10_000;
const CLEANUP_EVERY: u64 = 1024;

struct Limiter {
    buckets: DefaultKeyedRateLimiter<String>,
    rejected: AtomicU64,
    calls: AtomicU64,
}

pub struct RateLimits {
    enabled: bool,
    limiters: HashMap<Action, Limiter>,
    /// Accounts whose failed logins used up their bucket, until when.
    failed_login_blocks: Mutex<HashMap<String, Instant>>,
    overrides: RwLock<HashMap<OwnedUserId, Override>>,
    override_buckets: Mutex<HashMap<OwnedUserId, DefaultDirectRateLimiter>>,
    global: Table<String, Json<HashMap<OwnedUserId, Override>>>,
    clock: DefaultClock,
}

fn quota(limit: RateLimit) -> Quota {
    let period = Duration::from_secs_f64(1.0 / limit.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(limit.burst_count).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).expect("a positive period").allow_burst(burst)
}

/// 429 `M_LIMIT_EXCEEDED`, the wait rounded up to whole seconds (the
/// `Retry-After` header is in seconds, and the body says the same).
pub fn limit_exceeded(wait: Duration) -> Error {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut data = LimitExceededErrorData::new();
    data.retry_after = Some(RetryAfter::Delay(Duration::from_secs(seconds.max(1))));
    Error::matrix(429, ErrorKind::LimitExceeded(data), "Too many requests; retry later")
}

impl RateLimits {
    pub fn new(config: &Config, db: &Db) -> Result<Self> {
        let limiters = Action::ALL
            .into_iter()
            .map(|action| {
                let limiter = Limiter {
                    buckets: RateLimiter::keyed(quota(action.limit(config))),
                    rejected: AtomicU64::new(0),
                    calls: AtomicU64::new(0),
                };
                (action, limiter)
            })
            .collect();
        let global: Table<String, Json<HashMap<OwnedUserId, Override>>> = db.table("global").db()?;
        let overrides = global.get(&OVERRIDES_KEY.to_owned()).db()?.map(|Json(o)| o).unwrap_or_default();
        Ok(Self {
            enabled: config.rc_enabled,
            limiters,
            failed_login_blocks: Mutex::new(HashMap::new()),
            overrides: RwLock::new(overrides),
            override_buckets: Mutex::new(HashMap::new()),
            global,
            clock: DefaultClock::default(),
        })
    }

    /// Take one action of `key` (a user ID, a client address, a room ID).
    pub fn check(&self, action: Action, key: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let limiter = &self.limiters[&action];
        let checked = limiter.buckets.check_key(&key.to_owned());
        let calls = limiter.calls.fetch_add(1, Ordering::Relaxed);
        if calls.is_multiple_of(CLEANUP_EVERY) && limiter.buckets.len() > KEYS_BEFORE_CLEANUP {
            limiter.buckets.retain_recent();
            limiter.buckets.shrink_to_fit();
        }
        checked.map_err(|not_until| {
            limiter.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(action = action.name(), key, "rate limited");
            limit_exceeded(not_until.wait_time_from(self.clock.now()))
        })
    }

    /// Take one action of a user: as `check`, unless an admin exempted the
    /// user or gave them their own message limit.
    pub fn check_user(&self, action: Action, user: &UserId) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let Some(custom) = self.override_of(user) else { return self.check(action, user.as_str()) };
        if custom.exempts() {
            return Ok(());
        }
        if action != Action::Message {
            return self.check(action, user.as_str());
        }
        let mut buckets =
            self.override_buckets.lock().map_err(|_| Error::internal("rate limit lock poisoned"))?;
        let limit = RateLimit::new(f64::from(custom.messages_per_second), custom.burst_count);
        let bucket = buckets.entry(user.to_owned()).or_insert_with(|| RateLimiter::direct(quota(limit)));
        bucket.check().map_err(|not_until| limit_exceeded(not_until.wait_time_from(self.clock.now())))
    }

    /// Before checking a password: 429 while the account's failed logins are used up.
    pub fn check_login_not_blocked(&self, account: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let blocks =
            self.failed_login_blocks.lock().map_err(|_| Error::internal("rate limit lock poisoned"))?;
        match blocks.get(account) {
            Some(until) if *until > Instant::now() => Err(limit_exceeded(*until - Instant::now())),
            _ => Ok(()),
        }
    }

    /// A login failed: one failed attempt more; beyond the bucket, the
    /// account is blocked until it refills, and this attempt gets 429.
    pub fn record_failed_login(&self, account: &str) -> Result<()> {
        let Err(err) = self.check(Action::FailedLogin, account) else { return Ok(()) };
        let wait = match &err {
            Error::Matrix { kind: ErrorKind::LimitExceeded(data), .. } => match data.retry_after {
                Some(RetryAfter::Delay(wait)) => wait,
                _ => Duration::from_secs(1),
            },
            _ => Duration::from_secs(1),
        };
        let mut blocks =
            self.failed_login_blocks.lock().map_err(|_| Error::internal("rate limit lock poisoned"))?;
        let now = Instant::now();
        blocks.retain(|_, until| *until > now);
        blocks.insert(account.to_owned(), now + wait);
        Err(err)
    }

    /// Requests refused so far, per action (for metrics).
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        Action::ALL.iter().map(|a| (a.name(), self.limiters[a].rejected.load(Ordering::Relaxed))).collect()
    }

    pub fn override_of(&self, user: &UserId) -> Option<Override> {
        self.overrides.read().expect("overrides").get(user).copied()
    }

    /// Set (or with `None` remove) a user's override, stored before it applies.
    pub fn set_override(&self, user: &UserId, custom: Option<Override>) -> Result<()> {
        let mut overrides = self.overrides.write().expect("overrides");
        let mut updated = overrides.clone();
        match custom {
            Some(custom) => updated.insert(user.to_owned(), custom),
            None => updated.remove(user),
        };
        self.global.put(&OVERRIDES_KEY.to_owned(), &Json(updated.clone())).db()?;
        *overrides = updated;
        if let Ok(mut buckets) = self.override_buckets.lock() {
            buckets.remove(user);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(config: Config) -> (RateLimits, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        (RateLimits::new(&config, &db).unwrap(), dir)
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_refused_with_the_wait() {
        let config = Config { rc_message: RateLimit::new(0.5, 3), ..Config::default() };
        let (limits, _dir) = limits(config);
        for _ in 0..3 {
            limits.check(Action::Message, "@a:x").unwrap();
        }
        let refused = limits.check(Action::Message, "@a:x").unwrap_err();
        assert_eq!(refused.errcode(), "M_LIMIT_EXCEEDED");
        let Error::Matrix { status: 429, kind: ErrorKind::LimitExceeded(data), .. } = refused else {
            panic!()
        };
        assert_eq!(
            data.retry_after,
            Some(RetryAfter::Delay(Duration::from_secs(2))),
            "2 s per action at 0.5/s"
        );
        limits.check(Action::Message, "@b:x").expect("another key has its own bucket");
        assert_eq!(limits.rejections()[0], ("rc_message", 1));
    }

    #[test]
    fn disabled_limits_refuse_nothing() {
        let config = Config { rc_enabled: false, rc_message: RateLimit::new(0.01, 1), ..Config::default() };
        let (limits, _dir) = limits(config);
        for _ in 0..10 {
            limits.check(Action::Message, "@a:x").unwrap();
        }
    }

    #[test]
    fn overrides_exempt_or_change_a_users_message_limit() {
        let config = Config { rc_message: RateLimit::new(0.01, 1), ..Config::default() };
        let (limits, _dir) = limits(config);
        let (exempt, faster) = (UserId::parse("@exempt:x").unwrap(), UserId::parse("@faster:x").unwrap());
        limits.set_override(&exempt, Some(Override::default())).unwrap();
        limits.set_override(&faster, Some(Override { messages_per_second: 1, burst_count: 3 })).unwrap();
        for _ in 0..5 {
            limits.check_user(Action::Message, &exempt).unwrap();
        }
        for _ in 0..3 {
            limits.check_user(Action::Message, &faster).unwrap();
        }
        assert!(limits.check_user(Action::Message, &faster).is_err());
        limits.set_override(&exempt, None).unwrap();
        limits.check_user(Action::Message, &exempt).unwrap();
        assert!(limits.check_user(Action::Message, &exempt).is_err(), "the default limit again");
    }

    #[test]
    fn failed_logins_block_the_account_until_the_bucket_refills() {
        let config = Config {
            rc_login: estuary_core::config::LoginRateLimits {
                failed_attempts: RateLimit::new(0.01, 2),
                ..Default::default()
            },
            ..Config::default()
        };
        let (limits, _dir) = limits(config);
        limits.check_login_not_blocked("@a:x").unwrap();
        limits.record_failed_login("@a:x").unwrap();
        limits.record_failed_login("@a:x").unwrap();
        assert!(limits.record_failed_login("@a:x").is_err(), "the third failure is one too many");
        assert!(limits.check_login_not_blocked("@a:x").is_err());
        limits.check_login_not_blocked("@b:x").unwrap();
    }
}
