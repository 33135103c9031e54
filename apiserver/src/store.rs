//! The narrow storage interface the API server keeps objects behind, and its sled
//! implementation. Keys are `group/plural/namespace/name`; values are canonical JSON.
//! Every write batch carries the global resourceVersion counter, so a crash never loses or
//! reuses a version, and sled applies each batch atomically.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

/// One change in a batch: put (Some) or remove (None).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Key/value pairs returned by a scan.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// All entries whose key starts with `prefix`, in key order, starting at `start` (inclusive)
    /// when given.
    fn scan(
        &self,
        prefix: &[u8],
        start: Option<&[u8]>,
        limit: Option<usize>,
    ) -> Result<Rows, StoreError>;
    /// Applies the changes and records `rv` as the latest resourceVersion, atomically.
    fn apply(&self, changes: &[Change], rv: u64) -> Result<(), StoreError>;
    /// Makes every applied batch durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// The latest resourceVersion recorded.
    fn last_rv(&self) -> Result<u64, StoreError>;
}

const RV_KEY: &[u8] = b"\x00rv";

pub struct SledStore {
    db: sled::Db,
    objects: sled::Tree,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let objects = db.open_tree("objects")?;
        Ok(Self { db, objects })
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.objects.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        start: Option<&[u8]>,
        limit: Option<usize>,
    ) -> Result<Rows, StoreError> {
        let mut out = Vec::new();
        let iter = match start {
            Some(s) => self.objects.range(s.to_vec()..),
            None => self.objects.range(prefix.to_vec()..),
        };
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }

    fn apply(&self, changes: &[Change], rv: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in changes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        batch.insert(RV_KEY, &rv.to_be_bytes());
        self.objects.apply_batch(batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn last_rv(&self) -> Result<u64, StoreError> {
        match self.objects.get(RV_KEY)? {
            None => Ok(0),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("resourceVersion counter".into()))?;
                Ok(u64::from_be_bytes(b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_counter_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.last_rv().unwrap(), 0);
            s.apply(
                &[
                    (b"/pods/a/x".to_vec(), Some(b"1".to_vec())),
                    (b"/pods/a/y".to_vec(), Some(b"2".to_vec())),
                ],
                5,
            )
            .unwrap();
            s.apply(&[(b"/pods/a/x".to_vec(), None)], 6).unwrap();
            s.apply(&[(b"/pods/b/z".to_vec(), Some(b"3".to_vec()))], 7)
                .unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.last_rv().unwrap(), 7);
        assert_eq!(s.get(b"/pods/a/x").unwrap(), None);
        assert_eq!(s.scan(b"/pods/", None, None).unwrap().len(), 2);
        assert_eq!(s.scan(b"/pods/a/", None, None).unwrap().len(), 1);
        let page = s.scan(b"/pods/", None, Some(1)).unwrap();
        assert_eq!(page[0].0, b"/pods/a/y");
        let rest = s.scan(b"/pods/", Some(b"/pods/a/y\x00"), None).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, b"/pods/b/z");
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn store_costs() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let v = vec![b'x'; 300];
        let t = std::time::Instant::now();
        for i in 0..20000u64 {
            s.apply(
                &[(
                    format!("/configmaps/default/o{i}").into_bytes(),
                    Some(v.clone()),
                )],
                i,
            )
            .unwrap();
        }
        eprintln!("apply: {:?}/op", t.elapsed() / 20000);
        let t = std::time::Instant::now();
        for i in 0..20000u64 {
            let _ = s
                .get(format!("/configmaps/default/o{i}").as_bytes())
                .unwrap();
        }
        eprintln!("get: {:?}/op", t.elapsed() / 20000);
        s.flush().unwrap();
        for batch in [1u64, 8, 64] {
            let t = std::time::Instant::now();
            let mut ft = std::time::Duration::ZERO;
            for r in 0..200u64 {
                for i in 0..batch {
                    s.apply(
                        &[(format!("/f{batch}/o{r}-{i}").into_bytes(), Some(v.clone()))],
                        i,
                    )
                    .unwrap();
                }
                let f = std::time::Instant::now();
                s.flush().unwrap();
                ft += f.elapsed();
            }
            eprintln!(
                "batch {batch}: {:?}/flush, {:?}/op",
                ft / 200,
                t.elapsed() / (200 * batch as u32)
            );
        }
        // One sled batch per group, then one flush.
        let t = std::time::Instant::now();
        let cpu0 = std::fs::read_to_string("/proc/self/stat").unwrap();
        for r in 0..200u64 {
            let changes: Vec<Change> = (0..64u64)
                .map(|i| (format!("/g/o{r}-{i}").into_bytes(), Some(v.clone())))
                .collect();
            s.apply(&changes, r).unwrap();
            s.flush().unwrap();
        }
        let cpu1 = std::fs::read_to_string("/proc/self/stat").unwrap();
        let ticks = |st: &str| -> u64 {
            let f: Vec<&str> = st.rsplit_once(')').unwrap().1.split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        eprintln!(
            "grouped 64: {:?}/op, cpu {} ms of {:?} wall",
            t.elapsed() / (200 * 64),
            (ticks(&cpu1) - ticks(&cpu0)) * 10,
            t.elapsed()
        );
    }
}
