//! A typed view of one column family.

use std::marker::PhantomData;

use crate::{Db, Key, StorageError, Value};

pub struct Table<K, V> {
    db: Db,
    name: &'static str,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Self { db: self.db.clone(), name: self.name, _types: PhantomData }
    }
}

impl<K: Key, V: Value> Table<K, V> {
    pub(crate) fn new(db: Db, name: &'static str) -> Self {
        Self { db, name, _types: PhantomData }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn rocks_err(&self, source: rocksdb::Error) -> StorageError {
        StorageError::Rocks { table: self.name, source }
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, StorageError> {
        let raw = self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(self.name), key.encode())
            .map_err(|e| self.rocks_err(e))?;
        self.decode_row(raw.as_deref())
    }

    /// A row's value as read (`None`: no row), decoded.
    fn decode_row(&self, bytes: Option<&[u8]>) -> Result<Option<V>, StorageError> {
        bytes
            .map(V::decode_value)
            .transpose()
            .map_err(|source| StorageError::Codec { table: self.name, source })
    }

    /// The rows of several keys, in the keys' order (`None` where a key has
    /// none): one call, which RocksDB serves in a batch, instead of a lookup each.
    pub fn multi_get<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<Vec<Option<V>>, StorageError>
    where
        K: 'k,
    {
        let encoded: Vec<Vec<u8>> = keys.into_iter().map(Key::encode).collect();
        let rows = self.db.rocks().batched_multi_get_cf(self.db.cf(self.name), &encoded, false);
        rows.into_iter().map(|row| self.decode_row(row.map_err(|e| self.rocks_err(e))?.as_deref())).collect()
    }

    pub fn contains(&self, key: &K) -> Result<bool, StorageError> {
        Ok(self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(self.name), key.encode())
            .map_err(|e| self.rocks_err(e))?
            .is_some())
    }

    /// Write one row on its own. Writes that touch several rows or tables
    /// belong in a [`crate::Batch`].
    pub fn put(&self, key: &K, value: &V) -> Result<(), StorageError> {
        self.db
            .rocks()
            .put_cf_opt(self.db.cf(self.name), key.encode(), value.encode_value(), self.db.write_options())
            .map_err(|e| self.rocks_err(e))
    }

    pub fn delete(&self, key: &K) -> Result<(), StorageError> {
        self.db
            .rocks()
            .delete_cf_opt(self.db.cf(self.name), key.encode(), self.db.write_options())
            .map_err(|e| self.rocks_err(e))
    }

    /// All rows whose key starts with the encoding of `prefix` (a leading
    /// part of the key tuple), in key order.
    pub fn scan_prefix<P: Key>(&self, prefix: &P) -> Result<Vec<(K, V)>, StorageError> {
        self.scan_raw_prefix(&prefix.encode(), usize::MAX)
    }

    /// Up to `limit` rows under a raw byte prefix, in key order.
    pub fn scan_raw_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<(K, V)>, StorageError> {
        self.scan_from(prefix, None, false, limit)
    }

    /// Rows under `prefix` starting at `from` (inclusive; the start or end of
    /// the prefix when `None`), forwards or backwards, up to `limit`.
    pub fn scan_from(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(K, V)>, StorageError> {
        let codec = |source| StorageError::Codec { table: self.name, source };
        let mut rows = Vec::new();
        self.visit_from(prefix, from, backwards, limit, |key, value| {
            rows.push((K::decode(key).map_err(codec)?, V::decode_value(value).map_err(codec)?));
            Ok(())
        })?;
        Ok(rows)
    }

    /// Like [`Self::scan_from`], but hands each row's encoded key and value
    /// to `visit` without decoding: for hot loops that need only part of a
    /// key (a trailing stream position, say).
    pub fn visit_from(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        backwards: bool,
        limit: usize,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let end_of_prefix = prefix_successor(prefix);
        let start: Vec<u8> = match (from, backwards) {
            (Some(from), _) => from.to_vec(),
            (None, false) => prefix.to_vec(),
            (None, true) => end_of_prefix.clone().unwrap_or_default(),
        };
        // A raw iterator: keys and values are borrowed, not boxed per row.
        // Bounded to the prefix, so RocksDB skips files and blocks outside it
        // and stops at its end instead of reading the next key beyond.
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(prefix.to_vec());
        if let Some(end) = &end_of_prefix {
            options.set_iterate_upper_bound(end.clone());
        }
        let mut iter = self.db.rocks().raw_iterator_cf_opt(self.db.cf(self.name), options);
        match (backwards, from, &end_of_prefix) {
            (true, None, None) => iter.seek_to_last(),
            (true, _, _) => iter.seek_for_prev(&start),
            (false, _, _) => iter.seek(&start),
        }
        let mut visited = 0;
        while visited < limit {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
            if !key.starts_with(prefix) {
                // Seeking backwards from the prefix's successor lands on it first.
                if backwards && from.is_none() && end_of_prefix.as_deref() == Some(key) {
                    iter.prev();
                    continue;
                }
                break;
            }
            visit(key, value)?;
            visited += 1;
            if backwards {
                iter.prev();
            } else {
                iter.next();
            }
        }
        iter.status().map_err(|e| self.rocks_err(e))
    }

    /// The rows under each of several raw prefixes (at most `limit` each),
    /// in the prefixes' order: one iterator seeking from prefix to prefix,
    /// where a scan each would build an iterator each.
    pub fn scan_prefixes(
        &self,
        prefixes: &[Vec<u8>],
        limit: usize,
    ) -> Result<Vec<Vec<(K, V)>>, StorageError> {
        let codec = |source| StorageError::Codec { table: self.name, source };
        let mut found: Vec<Vec<(K, V)>> = prefixes.iter().map(|_| Vec::new()).collect();
        let mut order: Vec<usize> = (0..prefixes.len()).collect();
        order.sort_by(|&a, &b| prefixes[a].cmp(&prefixes[b]));
        let (Some(&first), Some(&last)) = (order.first(), order.last()) else { return Ok(found) };
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(prefixes[first].clone());
        if let Some(end) = prefix_successor(&prefixes[last]) {
            options.set_iterate_upper_bound(end);
        }
        let mut iter = self.db.rocks().raw_iterator_cf_opt(self.db.cf(self.name), options);
        for i in order {
            let (prefix, rows) = (&prefixes[i], &mut found[i]);
            iter.seek(prefix);
            while rows.len() < limit {
                let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
                if !key.starts_with(prefix) {
                    break;
                }
                rows.push((K::decode(key).map_err(codec)?, V::decode_value(value).map_err(codec)?));
                iter.next();
            }
        }
        iter.status().map_err(|e| self.rocks_err(e))?;
        Ok(found)
    }

    /// Every row under a raw `prefix`, decoded and handed to `visit` one at a
    /// time in key order, without collecting: for walks over whole tables.
    pub fn for_each(&self, prefix: &[u8], mut visit: impl FnMut(K, V)) -> Result<(), StorageError> {
        let codec = |source| StorageError::Codec { table: self.name, source };
        self.visit_from(prefix, None, false, usize::MAX, |key, value| {
            visit(K::decode(key).map_err(codec)?, V::decode_value(value).map_err(codec)?);
            Ok(())
        })
    }

    /// The row with the greatest key.
    pub fn last(&self) -> Result<Option<(K, V)>, StorageError> {
        Ok(self.scan_from(&[], None, true, 1)?.pop())
    }

    /// Whether the table has any row at all.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.scan_raw_prefix(&[], 1)?.is_empty())
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xFF {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::{Db, Key, OpenOptions, codec::Json};

    fn open(dir: &tempfile::TempDir) -> Db {
        Db::open(dir.path(), &OpenOptions::default()).unwrap()
    }

    #[test]
    fn put_get_delete_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let t = db.table::<(String, String), Json<u32>>("userdeviceid_device").unwrap();
        t.put(&("@a:x".into(), "D1".into()), &Json(1)).unwrap();
        t.put(&("@a:x".into(), "D2".into()), &Json(2)).unwrap();
        t.put(&("@ab:x".into(), "D3".into()), &Json(3)).unwrap();
        assert_eq!(t.get(&("@a:x".into(), "D2".into())).unwrap(), Some(Json(2)));
        let rows = t.scan_prefix(&("@a:x".to_owned(),)).unwrap();
        assert_eq!(rows.len(), 2);
        let keys =
            [("@ab:x".into(), "D3".into()), ("@a:x".into(), "D9".into()), ("@a:x".into(), "D1".into())];
        assert_eq!(t.multi_get(&keys).unwrap(), [Some(Json(3)), None, Some(Json(1))], "in the keys' order");
        t.delete(&("@a:x".into(), "D1".into())).unwrap();
        assert_eq!(t.scan_prefix(&("@a:x".to_owned(),)).unwrap().len(), 1);
    }

    #[test]
    fn ranges_forwards_and_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let t = db.table::<(String, u64), String>("roomidstream_eventid").unwrap();
        for (room, n) in [("!a", 1u64), ("!a", 2), ("!a", 3), ("!b", 1)] {
            t.put(&(room.into(), n), &format!("{room}{n}")).unwrap();
        }
        let prefix = ("!a".to_owned(),).encode();
        let values =
            |rows: Vec<((String, u64), String)>| rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
        assert_eq!(values(t.scan_from(&prefix, None, false, 10).unwrap()), ["!a1", "!a2", "!a3"]);
        assert_eq!(values(t.scan_from(&prefix, None, true, 2).unwrap()), ["!a3", "!a2"]);
        let from = ("!a".to_owned(), 2u64).encode();
        assert_eq!(values(t.scan_from(&prefix, Some(&from), true, 10).unwrap()), ["!a2", "!a1"]);
        assert_eq!(values(t.scan_from(&prefix, Some(&from), false, 10).unwrap()), ["!a2", "!a3"]);
        assert_eq!(t.last().unwrap().unwrap().1, "!b1");
        let prefixes = [("!b".to_owned(),).encode(), ("!c".to_owned(),).encode(), prefix];
        let found = t.scan_prefixes(&prefixes, 2).unwrap();
        let found: Vec<Vec<String>> = found.into_iter().map(values).collect();
        assert_eq!(
            found,
            [vec!["!b1"], vec![], vec!["!a1", "!a2"]],
            "in the prefixes' order, at most 2 each"
        );
    }

    #[test]
    fn batches_span_tables_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            let a = db.table::<String, String>("global").unwrap();
            let b = db.table::<String, u64>("userid_account").unwrap();
            let mut batch = db.batch();
            batch.put(&a, &"k".into(), &"v".into());
            batch.put(&b, &"u".into(), &7);
            let committed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = committed.clone();
            batch.after_commit(move || seen.store(true, std::sync::atomic::Ordering::SeqCst));
            assert!(a.get(&"k".into()).unwrap().is_none(), "nothing visible before commit");
            batch.commit().unwrap();
            assert!(committed.load(std::sync::atomic::Ordering::SeqCst), "hooks run after the commit");
        }
        let db = open(&dir);
        assert_eq!(db.table::<String, u64>("userid_account").unwrap().get(&"u".into()).unwrap(), Some(7));
    }

    #[test]
    fn second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _db = open(&dir);
        let err = Db::open(dir.path(), &OpenOptions::default()).err().expect("locked");
        assert!(err.to_string().contains("in use by another process"), "{err}");
    }

    #[test]
    fn unknown_tables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(&dir).table::<String, String>("nope").is_err());
    }
}
