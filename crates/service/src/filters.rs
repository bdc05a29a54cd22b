//! Sync filters (`/user/{userId}/filter`): stored per user, referenced by ID.

use estuary_core::{Error, Result};
use estuary_storage::{Db, Table, codec::Json};
use ruma::{UserId, api::client::filter::FilterDefinition};

use crate::storage_error::StorageResultExt;

pub struct Filters {
    db: Db,
    useridfilterid_filter: Table<(String, String), Json<FilterDefinition>>,
    global: Table<String, u64>,
}

impl Filters {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            useridfilterid_filter: db.table("useridfilterid_filter").db()?,
            global: db.table("global").db()?,
        })
    }

    /// Store a filter and return its ID. IDs are short decimal numbers, per user.
    pub fn create(&self, user_id: &UserId, filter: FilterDefinition) -> Result<String> {
        let counter_key = format!("filter_counter:{user_id}");
        let next = self.global.get(&counter_key).db()?.unwrap_or(0);
        let filter_id = next.to_string();
        let table = &self.useridfilterid_filter;
        let mut batch = self.db.batch();
        batch.put(&self.global, &counter_key, &(next + 1));
        batch.put(table, &(user_id.to_string(), filter_id.clone()), &Json(filter));
        batch.commit().db()?;
        Ok(filter_id)
    }

    pub fn get(&self, user_id: &UserId, filter_id: &str) -> Result<FilterDefinition> {
        self.useridfilterid_filter
            .get(&(user_id.to_string(), filter_id.to_owned()))
            .db()?
            .map(|Json(f)| f)
            .ok_or_else(|| Error::not_found("No filter with this ID"))
    }
}
