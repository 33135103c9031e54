//! The NetworkPolicy controller: caches of Pods, Namespaces and NetworkPolicies (reflectors),
//! and one sync loop that recomputes the desired ruleset from the whole picture and applies
//! the difference to the last applied state as one `nft -j` transaction. Level-based: every
//! trigger means "look again"; bursts of triggers coalesce into one sync.
//!
//! The first sync after start replaces the whole table (base rules, policy skeleton and every
//! policy object) in one transaction, so stale state from an earlier run is gone and a restart
//! never leaves pods unprotected in between.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::nft::Nft;
use crate::policy::{compute, Cluster, Desired, Labels, NamedPort, PodInfo, Proto};
use crate::policy_nft::{batch, diff};

/// Coalescing sync requests: `request` returns a generation, `wait` resolves once a sync that
/// started after that request has been applied.
pub struct Trigger {
    requested: AtomicU64,
    notify: Notify,
    done: watch::Sender<u64>,
}

impl Default for Trigger {
    fn default() -> Self {
        Self {
            // Generation 1 is the initial sync, pending from the start.
            requested: AtomicU64::new(1),
            notify: Notify::new(),
            done: watch::channel(0).0,
        }
    }
}

impl Trigger {
    pub fn request(&self) -> u64 {
        let g = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.notify.notify_one();
        g
    }

    /// Whether the first sync (the one that installs the whole table) has been applied.
    pub fn first_done(&self) -> bool {
        *self.done.borrow() >= 1
    }

    /// Waits until generation `g` is applied, at most `timeout`; false on timeout.
    pub async fn wait(&self, g: u64, timeout: Duration) -> bool {
        let mut rx = self.done.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d >= g))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Pod UID → address (from IPAM).
pub type IpOf = Arc<dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync>;

/// The caches the sync reads.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub policies: Store<NetworkPolicy>,
}

impl Caches {
    pub fn has_policies(&self) -> bool {
        !self.policies.is_empty()
    }
}

/// What policy needs of a pod; `ip_of` maps a pod UID to its address (IPAM is the truth, so a
/// pod counts from the moment it has an address, before its status says so).
pub fn pod_info(p: &Pod, ip_of: &dyn Fn(&str) -> Option<Ipv4Addr>) -> Option<PodInfo> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let ip = ip_of(p.metadata.uid.as_deref()?)?;
    let mut ports = Vec::new();
    for c in &spec.containers {
        for cp in c.ports.iter().flatten() {
            let (Some(name), Some(proto), Ok(port)) = (
                cp.name.as_ref(),
                Proto::parse(cp.protocol.as_deref().unwrap_or("TCP")),
                u16::try_from(cp.container_port),
            ) else {
                continue;
            };
            ports.push(NamedPort {
                name: name.clone(),
                proto,
                port,
            });
        }
    }
    Some(PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip,
        ports,
    })
}

/// One snapshot of the caches compiled into a ruleset.
pub fn desired_from(caches: &Caches, ip_of: &dyn Fn(&str) -> Option<Ipv4Addr>) -> Desired {
    let pods: Vec<PodInfo> = caches
        .pods
        .state()
        .iter()
        .filter_map(|p| pod_info(p, ip_of))
        .collect();
    let namespaces: BTreeMap<String, Labels> = caches
        .namespaces
        .state()
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.clone()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect();
    let policies: Vec<NetworkPolicy> = caches
        .policies
        .state()
        .iter()
        .map(|p| NetworkPolicy::clone(p))
        .collect();
    compute(&policies, &Cluster::new(&pods, &namespaces))
}

/// Starts reflectors for Namespaces and NetworkPolicies; each change requests a sync.
pub fn watch_objects(
    client: kube::Client,
    trigger: Arc<Trigger>,
) -> (Store<Namespace>, Store<NetworkPolicy>) {
    let (ns_store, ns_writer) = reflector::store();
    let (np_store, np_writer) = reflector::store();
    let t = trigger.clone();
    let ns = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(ns_writer)
    .for_each(move |ev| {
        if let Err(e) = ev {
            tracing::warn!("watching namespaces: {e}");
        }
        t.request();
        async {}
    });
    let np = watcher(
        Api::<NetworkPolicy>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(np_writer)
    .for_each(move |ev| {
        if let Err(e) = ev {
            tracing::warn!("watching network policies: {e}");
        }
        trigger.request();
        async {}
    });
    tokio::spawn(ns);
    tokio::spawn(np);
    (ns_store, np_store)
}

enum StoreRef<'a> {
    Pods(&'a Store<Pod>),
    Namespaces(&'a Store<Namespace>),
    Policies(&'a Store<NetworkPolicy>),
}

impl StoreRef<'_> {
    /// Waits for the initial list. Polled afresh every 100 ms: a store's readiness wakes only
    /// its most recent waiter, and the controller waits on the pod store too.
    async fn ready(&self) -> bool {
        loop {
            let wait = async {
                match self {
                    StoreRef::Pods(s) => s.wait_until_ready().await,
                    StoreRef::Namespaces(s) => s.wait_until_ready().await,
                    StoreRef::Policies(s) => s.wait_until_ready().await,
                }
            };
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), wait).await {
                return r.is_ok();
            }
        }
    }
}

/// The sync loop. `full_replace` is the base table the first sync installs along with the
/// policy state (one transaction); later syncs send only the difference.
pub async fn run<N: Nft + Send + Sync + 'static>(
    caches: Caches,
    trigger: Arc<Trigger>,
    nft: Arc<N>,
    ip_of: IpOf,
    full_replace: Vec<Value>,
) {
    for (what, store) in [
        ("pods", StoreRef::Pods(&caches.pods)),
        ("namespaces", StoreRef::Namespaces(&caches.namespaces)),
        ("network policies", StoreRef::Policies(&caches.policies)),
    ] {
        if !store.ready().await {
            tracing::warn!("the {what} cache stopped before it was ready");
            return;
        }
    }
    tracing::info!("network policy caches ready");
    let applied: Arc<Mutex<Option<Desired>>> = Arc::new(Mutex::new(None));
    loop {
        let g = trigger.requested.load(Ordering::SeqCst);
        let (caches2, nft2, ip2, applied2, base) = (
            caches.clone(),
            nft.clone(),
            ip_of.clone(),
            applied.clone(),
            full_replace.clone(),
        );
        // Computing and applying block (CPU and a child process): off the async threads.
        let res = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let want = desired_from(&caches2, &*ip2);
            let computed = t0.elapsed();
            let mut applied = applied2.lock().unwrap_or_else(|e| e.into_inner());
            let cmds = match applied.as_ref() {
                Some(old) => diff(old, &want),
                None => {
                    let mut c = base;
                    c.extend(diff(&Desired::default(), &want));
                    c
                }
            };
            let n = cmds.len();
            if n > 0 {
                nft2.apply(&batch(cmds))?;
            }
            tracing::debug!(
                "policy sync: {n} commands, computed in {computed:?}, applied in {:?}",
                t0.elapsed() - computed
            );
            *applied = Some(want);
            Ok::<_, crate::nft::NftError>(())
        })
        .await;
        match res {
            Ok(Ok(())) => {
                trigger.done.send_replace(g);
            }
            Ok(Err(e)) => {
                tracing::warn!("policy sync failed (retrying): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                trigger.notify.notify_one();
            }
            Err(e) => {
                tracing::warn!("policy sync task failed (retrying): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                trigger.notify.notify_one();
            }
        }
        trigger.notify.notified().await;
    }
}
