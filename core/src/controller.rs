//! A controller runner in the shape of kube-runtime's `Controller` (watch → reflector cache →
//! per-object reconcile, level-based, never two reconciles of one object at once, requeue
//! after a delay), that starts a reconcile as soon as its trigger arrives.
//!
//! kube-runtime's scheduler keeps even immediate requests in a `DelayQueue`, which rounds
//! deadlines up to the next millisecond tick of the timer: each hop through it costs 1-2 ms.
//! A pod's start crosses three such hops (the kubelet binding it, netd making its network,
//! the kubelet handing the address to the pod's shim), so they were most of the start
//! latency. Here only requeues wait on timers; watch events and explicit triggers are
//! dispatched at once. The watch, the cache and their back-off are kube-runtime's.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_util::time::delay_queue::{self, DelayQueue};

/// What a reconcile asks for next: another run after a delay, or nothing until a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `d` even without a change (a fallback, or a retry).
    pub const fn requeue(d: Duration) -> Self {
        Action {
            requeue_after: Some(d),
        }
    }

    /// Reconcile again only when the object (or an explicit trigger) says so.
    pub const fn await_change() -> Self {
        Action {
            requeue_after: None,
        }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// Per-object bookkeeping: which objects are being reconciled and which need another run when
/// that ends. Pure; the runner acts on its answers (and keeps the requeue timers).
#[derive(Debug)]
pub struct Queue<T> {
    /// Objects being reconciled, and whether they were triggered again meanwhile.
    running: HashMap<T, bool>,
}

impl<T: Hash + Eq + Clone> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            running: HashMap::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Queue<T> {
    /// A change, an explicit trigger or a requeue: true if a reconcile is to start now
    /// (otherwise one is running and another follows it).
    pub fn trigger(&mut self, key: &T) -> bool {
        match self.running.get_mut(key) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                self.running.insert(key.clone(), false);
                true
            }
        }
    }

    /// A reconcile ended: true if another is to start at once (it was triggered meanwhile).
    pub fn finished(&mut self, key: &T) -> bool {
        match self.running.get_mut(key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                self.running.remove(key);
                false
            }
        }
    }

    /// Reconciles in progress.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = T> + Send>>;
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A controller for one kind: its watch feeds a reflector cache ([`Controller::store`]) and
/// triggers reconciles; more triggers can be added ([`Controller::reconcile_on`]).
pub struct Controller<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone + Default,
{
    store: Store<K>,
    triggers: futures::stream::SelectAll<BoxStream<ObjectRef<K>>>,
    shutdown: BoxFuture,
}

impl<K> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone + Default + Send + Sync,
{
    pub fn new(api: Api<K>, wc: watcher::Config) -> Self {
        let writer = reflector::store::Writer::<K>::default();
        let store = writer.as_reader();
        // An object is reconciled once the cache has it: on a change, and after a (re)list
        // for every object, once the list is whole (the cache takes a list in one piece).
        let cache = store.clone();
        let objects = reflector::reflector(writer, watcher(api, wc))
            .default_backoff()
            .flat_map(move |r| {
                let keys: Vec<ObjectRef<K>> = match r {
                    Ok(watcher::Event::Apply(o)) => vec![ObjectRef::from_obj(&o)],
                    Ok(watcher::Event::InitDone) => cache
                        .state()
                        .iter()
                        .map(|o| ObjectRef::from_obj(&**o))
                        .collect(),
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        tracing::warn!("watch failed (retrying): {e}");
                        Vec::new()
                    }
                };
                futures::stream::iter(keys)
            });
        let mut triggers = futures::stream::SelectAll::new();
        triggers.push(objects.boxed());
        Controller {
            store,
            triggers,
            shutdown: Box::pin(futures::future::pending()),
        }
    }

    /// The cache of the watched objects (the one reconciles read).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Reconciles the objects this stream names, as it names them.
    pub fn reconcile_on(mut self, s: impl Stream<Item = ObjectRef<K>> + Send + 'static) -> Self {
        self.triggers.push(s.boxed());
        self
    }

    /// Stops taking triggers once `f` completes; [`Controller::run`] returns when the
    /// reconciles in progress have ended.
    pub fn graceful_shutdown_on(mut self, f: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Box::pin(f);
        self
    }

    /// Runs until shutdown: each trigger starts a reconcile of the object as the cache has it
    /// (or, while one runs, one more after it); errors go through `error_policy`.
    pub async fn run<C, E, F, Fut, P>(self, reconcile: F, error_policy: P, ctx: Arc<C>)
    where
        C: Send + Sync + 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(Arc<K>, &E, Arc<C>) -> Action + Send + Sync + 'static,
    {
        let Controller {
            store,
            mut triggers,
            mut shutdown,
        } = self;
        let (reconcile, error_policy) = (Arc::new(reconcile), Arc::new(error_policy));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut queue: Queue<ObjectRef<K>> = Queue::default();
        // Requeues: one timer per object at most (a later run's answer replaces it; a trigger
        // drops it, as the run it causes answers anew).
        let mut timers: DelayQueue<ObjectRef<K>> = DelayQueue::new();
        let mut timer_keys: HashMap<ObjectRef<K>, delay_queue::Key> = HashMap::new();
        let start = |key: ObjectRef<K>, queue: &mut Queue<ObjectRef<K>>| {
            let Some(obj) = store.get(&key) else {
                // Deleted meanwhile: nothing to reconcile (finalizers keep what needs work).
                queue.finished(&key);
                return;
            };
            let (reconcile, error_policy, ctx, done) = (
                reconcile.clone(),
                error_policy.clone(),
                ctx.clone(),
                done_tx.clone(),
            );
            tokio::spawn(async move {
                let action = match reconcile(obj.clone(), ctx.clone()).await {
                    Ok(a) => a,
                    Err(e) => error_policy(obj, &e, ctx),
                };
                let _ = done.send((key, action));
            });
        };
        let mut stopping = false;
        loop {
            if stopping && queue.running() == 0 {
                return;
            }
            let key = tokio::select! {
                _ = &mut shutdown, if !stopping => {
                    stopping = true;
                    continue;
                }
                Some(key) = triggers.next(), if !stopping => key,
                Some(expired) = timers.next(), if !stopping && !timers.is_empty() => {
                    let key = expired.into_inner();
                    timer_keys.remove(&key);
                    key
                }
                Some((key, action)) = done_rx.recv() => {
                    if queue.finished(&key) {
                        // Triggered while it ran: once more (unless stopping: then done).
                        if stopping {
                            queue.finished(&key);
                        } else {
                            start(key, &mut queue);
                        }
                    } else if let (Some(d), false) = (action.requeue_after(), stopping) {
                        match timer_keys.get(&key) {
                            Some(t) => timers.reset(t, d),
                            None => {
                                let t = timers.insert(key.clone(), d);
                                timer_keys.insert(key, t);
                            }
                        }
                    }
                    continue;
                }
            };
            if let Some(t) = timer_keys.remove(&key) {
                timers.remove(&t);
            }
            if queue.trigger(&key) {
                start(key, &mut queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_at_a_time_and_one_more_after_changes() {
        let mut q: Queue<&str> = Queue::default();
        assert!(q.trigger(&"a"));
        // Changes while it runs fold into one more run.
        assert!(!q.trigger(&"a"));
        assert!(!q.trigger(&"a"));
        assert_eq!(q.running(), 1);
        assert!(q.finished(&"a"));
        assert_eq!(q.running(), 1);
        assert!(!q.finished(&"a"));
        assert_eq!(q.running(), 0);
        // Other objects are independent.
        assert!(q.trigger(&"a"));
        assert!(q.trigger(&"b"));
        assert_eq!(q.running(), 2);
        assert!(!q.finished(&"b"));
        assert!(!q.trigger(&"a"));
        assert!(q.trigger(&"b"));
    }

    #[test]
    fn an_object_gone_before_its_run_leaves_nothing_behind() {
        let mut q: Queue<&str> = Queue::default();
        assert!(q.trigger(&"a"));
        // The runner finds no object to reconcile and ends the run at once.
        assert!(!q.finished(&"a"));
        assert_eq!(q.running(), 0);
        assert!(q.trigger(&"a"));
    }
}
