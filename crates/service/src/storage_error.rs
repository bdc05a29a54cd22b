//! Storage failures become internal errors with their context kept.

use estuary_core::Error;
use estuary_storage::StorageError;

pub(crate) trait StorageResultExt<T> {
    fn db(self) -> Result<T, Error>;
}

impl<T> StorageResultExt<T> for Result<T, StorageError> {
    fn db(self) -> Result<T, Error> {
        self.map_err(Error::internal)
    }
}
