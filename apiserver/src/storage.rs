//! Object storage with Kubernetes semantics on top of a [`Store`]: one global resourceVersion
//! counter, serialized read-modify-write (optimistic concurrency is checked inside), group
//! commit, and the watch hub (an in-memory window of recent events plus a broadcast of new
//! ones).
//!
//! Group commit: a writer stages its change (visible to later writers through an overlay, so
//! read-modify-write always sees the latest state) and waits; the committer applies everything
//! staged as one atomic store batch, flushes once, then acknowledges all of those writers and
//! publishes their events in resourceVersion order. One batch per group is what makes durable
//! writes cheap: the store's cost is per batch, not per key.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::Value;
use tokio::sync::{broadcast, watch, Notify};

use crate::status::{ApiError, ApiResult};
use crate::store::{Store, StoreError};

/// How many events the watch window keeps; a watch from an older resourceVersion gets 410.
pub const HISTORY: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub ty: EventType,
    pub key: String,
    pub object: Arc<Value>,
    /// The object before a modification (used to turn selector transitions into ADDED/DELETED).
    pub old: Option<Arc<Value>>,
}

/// What a mutation decided to do with the object at its key.
pub enum Outcome {
    Put(Value),
    /// Remove the object; the value is what the DELETED event carries.
    Delete(Value),
    Unchanged(Value),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes staged for the next commit.
#[derive(Default)]
struct Staged {
    events: Vec<Event>,
    changes: Vec<crate::store::Change>,
    /// The newest staged state of each key (None = deleted) and its version.
    overlay: HashMap<String, (u64, Option<Arc<Value>>)>,
}

struct HubInner {
    history: VecDeque<Arc<Event>>,
    /// A watch from any resourceVersion ≥ this can be served from the window.
    oldest: u64,
}

pub struct Storage {
    store: Arc<dyn Store>,
    write_lock: Mutex<()>,
    last_rv: AtomicU64,
    staged: Mutex<Staged>,
    flush_wanted: Notify,
    committed: watch::Sender<u64>,
    hub: RwLock<HubInner>,
    tx: broadcast::Sender<Arc<Event>>,
}

pub fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

pub fn rv_of(obj: &Value) -> &str {
    obj.get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Storage {
    /// Opens storage over `store` and starts the group-commit task (needs a tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let rv = store.last_rv()?;
        let (committed, _) = watch::channel(rv);
        let (tx, _) = broadcast::channel(16 * 1024);
        let s = Arc::new(Self {
            store,
            write_lock: Mutex::new(()),
            last_rv: AtomicU64::new(rv),
            staged: Mutex::new(Staged::default()),
            flush_wanted: Notify::new(),
            committed,
            hub: RwLock::new(HubInner {
                history: VecDeque::new(),
                oldest: rv,
            }),
            tx,
        });
        tokio::spawn(s.clone().flusher());
        Ok(s)
    }

    /// The latest resourceVersion whose write is durable and visible to watches.
    pub fn head(&self) -> u64 {
        *self.committed.borrow()
    }

    pub fn get(&self, key: &str) -> ApiResult<Option<Value>> {
        match self.store.get(key.as_bytes())? {
            None => Ok(None),
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                ApiError::internal(format!("stored object {key}: {e}"))
            })?)),
        }
    }

    /// Objects under `prefix` in key order, from `start` (inclusive), at most `limit`.
    pub fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: Option<usize>,
    ) -> ApiResult<Vec<(String, Value)>> {
        let rows = self
            .store
            .scan(prefix.as_bytes(), start.map(str::as_bytes), limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8_lossy(&k).into_owned();
                let obj = serde_json::from_slice(&v)
                    .map_err(|e| ApiError::internal(format!("stored object {key}: {e}")))?;
                Ok((key, obj))
            })
            .collect()
    }

    /// Reads the object at `key`, lets `decide` compute the outcome, stages it with the next
    /// resourceVersion, and returns once it is durable. `decide` runs under the write lock, so
    /// it sees the latest state (this is where resourceVersion preconditions are checked).
    pub async fn mutate<F>(&self, key: &str, decide: F) -> ApiResult<(Value, Option<EventType>)>
    where
        F: FnOnce(Option<Value>) -> ApiResult<Outcome>,
    {
        let (rv, obj, ty) = {
            let _g = lock(&self.write_lock);
            let staged_cur = lock(&self.staged).overlay.get(key).map(|(_, v)| v.clone());
            let cur = match staged_cur {
                Some(v) => v.map(Arc::unwrap_or_clone),
                None => self.get(key)?,
            };
            let outcome = decide(cur.clone())?;
            let rv = self.last_rv.load(Ordering::SeqCst) + 1;
            let (mut obj, ty, keep) = match outcome {
                Outcome::Unchanged(v) => return Ok((v, None)),
                Outcome::Put(v) => {
                    let ty = if cur.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    (v, ty, true)
                }
                Outcome::Delete(v) => (v, EventType::Deleted, false),
            };
            set_rv(&mut obj, rv);
            let bytes = if keep {
                Some(serde_json::to_vec(&obj).map_err(ApiError::internal)?)
            } else {
                None
            };
            self.last_rv.store(rv, Ordering::SeqCst);
            let obj = Arc::new(obj);
            let old = if ty == EventType::Modified {
                cur.map(Arc::new)
            } else {
                None
            };
            let mut st = lock(&self.staged);
            st.changes.push((key.as_bytes().to_vec(), bytes));
            st.overlay
                .insert(key.to_string(), (rv, keep.then(|| obj.clone())));
            st.events.push(Event {
                rv,
                ty,
                key: key.to_string(),
                object: obj.clone(),
                old,
            });
            (rv, obj, ty)
        };
        self.flush_wanted.notify_one();
        let mut rx = self.committed.subscribe();
        rx.wait_for(|c| *c >= rv)
            .await
            .map_err(|_| ApiError::internal("storage stopped"))?;
        Ok((Arc::unwrap_or_clone(obj), Some(ty)))
    }

    /// The committer: applies each group of staged writes as one batch, flushes, publishes.
    async fn flusher(self: Arc<Self>) {
        loop {
            self.flush_wanted.notified().await;
            loop {
                let (events, changes) = {
                    let mut st = lock(&self.staged);
                    (
                        std::mem::take(&mut st.events),
                        std::mem::take(&mut st.changes),
                    )
                };
                let Some(upto) = events.last().map(|e| e.rv) else {
                    break;
                };
                let changes = Arc::new(changes);
                loop {
                    let store = self.store.clone();
                    let changes = changes.clone();
                    match tokio::task::spawn_blocking(move || {
                        store.apply(&changes, upto).and_then(|_| store.flush())
                    })
                    .await
                    {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) => tracing::error!("commit failed, retrying: {e}"),
                        Err(e) => tracing::error!("commit task failed, retrying: {e}"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                {
                    // The store now has these versions; drop overlay entries no newer write replaced.
                    let mut st = lock(&self.staged);
                    for e in &events {
                        if st.overlay.get(&e.key).is_some_and(|(rv, _)| *rv <= upto) {
                            st.overlay.remove(&e.key);
                        }
                    }
                }
                {
                    let mut hub = self.hub.write().unwrap_or_else(|e| e.into_inner());
                    for e in events {
                        let e = Arc::new(e);
                        hub.history.push_back(e.clone());
                        if hub.history.len() > HISTORY {
                            if let Some(old) = hub.history.pop_front() {
                                hub.oldest = old.rv;
                            }
                        }
                        let _ = self.tx.send(e);
                    }
                }
                self.committed.send_replace(upto);
            }
        }
    }

    /// Events after `from` still in the window, plus a receiver for every later one.
    /// `Err(oldest)` when `from` is older than the window.
    #[allow(clippy::type_complexity)]
    pub fn subscribe(
        &self,
        from: u64,
    ) -> Result<(Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>), u64> {
        let hub = self.hub.read().unwrap_or_else(|e| e.into_inner());
        if from < hub.oldest {
            return Err(hub.oldest);
        }
        let start = hub.history.partition_point(|e| e.rv <= from);
        let backlog = hub.history.iter().skip(start).cloned().collect();
        Ok((backlog, self.tx.subscribe()))
    }

    /// A receiver of the committed resourceVersion (for bookmarks and waiting).
    pub fn committed_rx(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[tokio::test]
    async fn versions_watch_window_and_durability() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let s = Storage::start(store).unwrap();
        let (_, rx0) = s.subscribe(0).unwrap();
        drop(rx0);
        let (a, t) = s
            .mutate("/x/ns/a", |cur| {
                assert!(cur.is_none());
                Ok(Outcome::Put(obj("a")))
            })
            .await
            .unwrap();
        assert_eq!(t, Some(EventType::Added));
        assert_eq!(rv_of(&a), "1");
        let (b, t) = s
            .mutate("/x/ns/a", |cur| Ok(Outcome::Put(cur.unwrap())))
            .await
            .unwrap();
        assert_eq!((rv_of(&b), t), ("2", Some(EventType::Modified)));
        let (_, t) = s
            .mutate("/x/ns/a", |cur| Ok(Outcome::Unchanged(cur.unwrap())))
            .await
            .unwrap();
        assert_eq!(t, None);
        let (_, t) = s
            .mutate("/x/ns/a", |cur| Ok(Outcome::Delete(cur.unwrap())))
            .await
            .unwrap();
        assert_eq!(t, Some(EventType::Deleted));
        assert_eq!(s.head(), 3);
        // Watch from 1 sees the modification and the deletion, in order.
        let (backlog, _) = s.subscribe(1).unwrap();
        let seen: Vec<(u64, EventType)> = backlog.iter().map(|e| (e.rv, e.ty)).collect();
        assert_eq!(
            seen,
            vec![(2, EventType::Modified), (3, EventType::Deleted)]
        );
        assert!(backlog[0].old.is_some());
        // A failed precondition changes nothing.
        let err = s
            .mutate("/x/ns/b", |_| Err(ApiError::bad_request("no")))
            .await;
        assert!(err.is_err());
        assert_eq!(s.head(), 3);
    }

    #[test]
    fn restart_keeps_counter_and_reports_gone() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A runtime of its own, dropped with its tasks: like a process exiting.
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
                let s = Storage::start(store).unwrap();
                for i in 0..5 {
                    s.mutate(&format!("/x/ns/{i}"), |_| Ok(Outcome::Put(obj("o"))))
                        .await
                        .unwrap();
                }
                s.mutate("/x/ns/0", |c| Ok(Outcome::Delete(c.unwrap())))
                    .await
                    .unwrap();
            });
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
            let s = Storage::start(store).unwrap();
            assert_eq!(s.head(), 6);
            assert_eq!(s.list("/x/", None, None).unwrap().len(), 4);
            // History does not survive a restart: older versions are gone, the head is servable.
            assert_eq!(s.subscribe(3).err(), Some(6));
            assert!(s.subscribe(6).is_ok());
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_get_unique_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let s = Storage::start(store).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let (o, _) = s
                    .mutate(&format!("/x/ns/{i}"), |_| Ok(Outcome::Put(obj("o"))))
                    .await
                    .unwrap();
                rv_of(&o).parse::<u64>().unwrap()
            }));
        }
        let mut rvs = Vec::new();
        for t in tasks {
            rvs.push(t.await.unwrap());
        }
        rvs.sort_unstable();
        // Read-modify-write of one key from many writers at once: none is lost.
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.mutate("/x/ns/counter", |cur| {
                    let mut o =
                        cur.unwrap_or_else(|| json!({"metadata": {"name": "counter"}, "n": 0}));
                    o["n"] = json!(o["n"].as_i64().unwrap() + 1);
                    Ok(Outcome::Put(o))
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.get("/x/ns/counter").unwrap().unwrap()["n"], 64);
        assert_eq!(rvs, (1..=64).collect::<Vec<_>>());
        let (backlog, _) = s.subscribe(0).unwrap();
        assert_eq!(backlog.len(), 128);
        assert!(backlog.windows(2).all(|w| w[0].rv < w[1].rv));
    }
}
