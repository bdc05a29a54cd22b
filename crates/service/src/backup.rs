//! Server-side key backup (`/room_keys`): versions and the encrypted room
//! keys clients store in them. Opaque to the server apart from the fields
//! that decide which copy of a key to keep.

use estuary_core::{Error, Result, error::ErrorKind};
use estuary_storage::{Db, Key, Table, codec::Json};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue, json};

use crate::storage_error::StorageResultExt;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Version {
    algorithm: JsonValue,
    etag: u64,
    deleted: bool,
}

pub struct Backup {
    db: Db,
    versions: Table<(String, u64), Json<Version>>,
    keys: Table<(String, u64, String, String), Json<JsonValue>>,
}

fn not_found() -> Error {
    Error::not_found("Unknown backup version")
}

fn parse_version(version: &str) -> Result<u64> {
    version.parse().map_err(|_| not_found())
}

/// Whether `new` should replace `old` (the spec's rules: verified wins, then
/// the lower first message index, then the lower forwarded count).
fn better(new: &JsonValue, old: &JsonValue) -> bool {
    let verified = |k: &JsonValue| k["is_verified"].as_bool().unwrap_or(false);
    let index = |k: &JsonValue| k["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let forwarded = |k: &JsonValue| k["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    if verified(new) != verified(old) {
        return verified(new);
    }
    (index(new), forwarded(new)) < (index(old), forwarded(old))
}

impl Backup {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            versions: db.table("useridversion_backup").db()?,
            keys: db.table("useridversionroomsession_backupkey").db()?,
        })
    }

    /// The newest version that is not deleted.
    fn current(&self, user: &UserId) -> Result<Option<(u64, Version)>> {
        let prefix = (user.to_string(),).encode();
        Ok(self
            .versions
            .scan_from(&prefix, None, true, usize::MAX)
            .db()?
            .into_iter()
            .find(|(_, Json(v))| !v.deleted)
            .map(|((_, n), Json(v))| (n, v)))
    }

    fn version(&self, user: &UserId, version: &str) -> Result<Version> {
        let key = (user.to_string(), parse_version(version)?);
        self.versions.get(&key).db()?.map(|Json(v)| v).filter(|v| !v.deleted).ok_or_else(not_found)
    }

    pub fn create(&self, user: &UserId, algorithm: JsonValue) -> Result<String> {
        let prefix = (user.to_string(),).encode();
        let last = self.versions.scan_from(&prefix, None, true, 1).db()?.first().map_or(0, |((_, n), _)| *n);
        let version = last + 1;
        self.versions
            .put(&(user.to_string(), version), &Json(Version { algorithm, etag: 0, deleted: false }))
            .db()?;
        Ok(version.to_string())
    }

    fn count(&self, user: &UserId, version: u64) -> Result<usize> {
        Ok(self.keys.scan_prefix(&(user.to_string(), version)).db()?.len())
    }

    /// `{algorithm, auth_data, count, etag, version}` of a version (the current one without).
    pub fn info(&self, user: &UserId, version: Option<&str>) -> Result<JsonValue> {
        let (number, record) = match version {
            Some(v) => (parse_version(v)?, self.version(user, v)?),
            None => self.current(user)?.ok_or_else(|| Error::not_found("No backup exists"))?,
        };
        let mut info = record.algorithm.clone();
        info["count"] = self.count(user, number)?.into();
        info["etag"] = record.etag.to_string().into();
        info["version"] = number.to_string().into();
        Ok(info)
    }

    pub fn update(&self, user: &UserId, version: &str, algorithm: JsonValue) -> Result<()> {
        let mut record = self.version(user, version)?;
        if record.algorithm["algorithm"] != algorithm["algorithm"] {
            return Err(Error::invalid_param("The algorithm of a backup version cannot change"));
        }
        record.algorithm = algorithm;
        self.versions.put(&(user.to_string(), parse_version(version)?), &Json(record)).db()
    }

    pub fn delete_version(&self, user: &UserId, version: &str) -> Result<()> {
        let mut record = self.version(user, version)?;
        record.deleted = true;
        let number = parse_version(version)?;
        let mut batch = self.db.batch();
        batch.put(&self.versions, &(user.to_string(), number), &Json(record));
        for (key, _) in self.keys.scan_prefix(&(user.to_string(), number)).db()? {
            batch.delete(&self.keys, &key);
        }
        batch.commit().db()
    }

    /// Store keys in the current version, keeping the better copy of each.
    pub fn put_keys(
        &self,
        user: &UserId,
        version: &str,
        keys: Vec<(String, String, JsonValue)>,
    ) -> Result<JsonValue> {
        let number = parse_version(version)?;
        let (current, record) = self.current(user)?.ok_or_else(not_found)?;
        if current != number {
            self.version(user, version)?;
            return Err(Error::matrix(
                403,
                ErrorKind::WrongRoomKeysVersion(ruma::api::error::WrongRoomKeysVersionErrorData::new(
                    current.to_string(),
                )),
                "Keys can only be added to the current backup version",
            ));
        }
        let mut batch = self.db.batch();
        for (room, session, data) in keys {
            let key = (user.to_string(), number, room, session);
            let keep_old = self.keys.get(&key).db()?.is_some_and(|Json(old)| !better(&data, &old));
            if !keep_old {
                batch.put(&self.keys, &key, &Json(data));
            }
        }
        self.commit_changed_keys(user, number, record, batch)
    }

    /// Commit key changes with a new etag; returns the version's `count` and `etag`.
    fn commit_changed_keys(
        &self,
        user: &UserId,
        number: u64,
        mut record: Version,
        mut batch: estuary_storage::Batch,
    ) -> Result<JsonValue> {
        record.etag += 1;
        batch.put(&self.versions, &(user.to_string(), number), &Json(record.clone()));
        batch.commit().db()?;
        Ok(json!({"count": self.count(user, number)?, "etag": record.etag.to_string()}))
    }

    /// Keys of a version: all rooms, one room, or one session.
    pub fn get_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<JsonValue> {
        let number = parse_version(version)?;
        self.version(user, version)?;
        if let (Some(room), Some(session)) = (room, session) {
            let key = (user.to_string(), number, room.to_owned(), session.to_owned());
            return self
                .keys
                .get(&key)
                .db()?
                .map(|Json(k)| k)
                .ok_or_else(|| Error::not_found("No such session"));
        }
        let mut rooms: Map<String, JsonValue> = Map::new();
        for ((_, _, r, s), Json(data)) in self.keys.scan_prefix(&(user.to_string(), number)).db()? {
            if room.is_some_and(|want| want != r) {
                continue;
            }
            rooms.entry(r).or_insert_with(|| json!({"sessions": {}}))["sessions"][&s] = data;
        }
        Ok(match room {
            Some(room) => rooms.remove(room).unwrap_or_else(|| json!({"sessions": {}})),
            None => json!({"rooms": rooms}),
        })
    }

    pub fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<JsonValue> {
        let number = parse_version(version)?;
        let record = self.version(user, version)?;
        let mut batch = self.db.batch();
        for (key, _) in self.keys.scan_prefix(&(user.to_string(), number)).db()? {
            if room.is_some_and(|r| r != key.2) || session.is_some_and(|s| s != key.3) {
                continue;
            }
            batch.delete(&self.keys, &key);
        }
        self.commit_changed_keys(user, number, record, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::better;
    use serde_json::json;

    #[test]
    fn replacement_rules() {
        let key = |verified: bool, index: u64, forwarded: u64| json!({"is_verified": verified, "first_message_index": index, "forwarded_count": forwarded});
        assert!(better(&key(true, 9, 9), &key(false, 0, 0)), "verified wins");
        assert!(!better(&key(false, 0, 0), &key(true, 9, 9)));
        assert!(better(&key(false, 1, 5), &key(false, 2, 0)), "then the lower first message index");
        assert!(better(&key(false, 1, 0), &key(false, 1, 3)), "then the lower forwarded count");
        assert!(!better(&key(false, 1, 3), &key(false, 1, 3)), "an equal key does not replace");
    }
}
