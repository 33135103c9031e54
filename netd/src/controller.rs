//! The pod network controller (kube-runtime): for every Pod, a network namespace, a veth pair
//! into the bridge and an address from IPAM, reported in `status.podIP(s)`; on deletion the
//! reverse, then the `skiff.io/netd` finalizer is released. Level-based and restart-safe:
//! `attach` is idempotent, and `gc` removes whatever no Pod explains.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use skiff_core::controller::Action;
use thiserror::Error;

use crate::ipam::{Ipam, IpamError};
use crate::link::{LinkError, PodLinks};
use crate::netns;
use crate::policyctl::Trigger;

pub const FINALIZER: &str = "skiff.io/netd";
/// The kubelet's finalizer: while present, the pod's processes may still be running.
pub const KUBELET_FINALIZER: &str = "skiff.io/kubelet";
/// Host-side veth names: this prefix plus 11 hex digits of the pod UID (the peer adds `p`,
/// and names must fit in 15 bytes).
pub const VETH_PREFIX: &str = "skv";

#[derive(Debug, Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("ipam: {0}")]
    Ipam(#[from] IpamError),
    #[error("link: {0}")]
    Link(#[from] LinkError),
    #[error("netns: {0}")]
    Io(#[from] std::io::Error),
    #[error("pod has no uid")]
    NoUid,
}

pub struct Ctx<L: PodLinks> {
    pub client: kube::Client,
    /// The controller's pod cache (the newest version of a pod being reconciled).
    pub pods: Store<Pod>,
    pub links: L,
    pub ipam: Mutex<Ipam>,
    pub bridge: String,
    pub netns_dir: PathBuf,
    /// Requests NetworkPolicy syncs (a pod's address, labels or ports changed).
    pub policy: Arc<Trigger>,
    pub policies: Store<NetworkPolicy>,
    /// Per pod UID, what policy last saw of it (labels, ports, address).
    pub seen: Mutex<HashMap<String, String>>,
    /// Per pod UID, the address and when its kernel state was last checked: every status
    /// change of a pod reconciles it again, and the netlink round trips of a full check are not
    /// needed for each (a check older than [`RECHECK`] is redone; a restart starts empty).
    pub verified: Mutex<HashMap<String, (Ipv4Addr, Instant)>>,
    /// Per pod UID, the address last written to its status and when: a reconcile that runs
    /// before that write comes back through the watch does not write it again.
    pub published: Mutex<HashMap<String, (Ipv4Addr, Instant)>>,
}

/// How long a pod's verified network is trusted before the next reconcile checks it again.
pub const RECHECK: Duration = Duration::from_secs(60);

pub fn host_if(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(11)
        .collect();
    format!("{VETH_PREFIX}{hex}")
}

/// Whether a link name has exactly the shape of a host-side pod veth (so GC never touches
/// anything else, such as the bridge or other software's links).
pub fn is_pod_veth(name: &str) -> bool {
    name.strip_prefix(VETH_PREFIX)
        .is_some_and(|h| h.len() == 11 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl<L: PodLinks> Ctx<L> {
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        self.netns_dir.join(uid)
    }

    fn ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests a policy sync if what policy sees of the pod changed; returns the generation.
    fn policy_changed(&self, uid: &str, fingerprint: Option<String>) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match fingerprint {
            Some(f) => seen.insert(uid.to_string(), f.clone()).as_ref() != Some(&f),
            None => seen.remove(uid).is_some(),
        };
        changed.then(|| self.policy.request())
    }

    /// Sets up (idempotently) the network of the pod with this UID; returns its address.
    pub async fn ensure(&self, uid: &str) -> Result<Ipv4Addr, Error> {
        if let Some((ip, at)) = self.verified().get(uid) {
            if at.elapsed() < RECHECK {
                return Ok(*ip);
            }
        }
        let ip = self.ipam().allocate(uid)?;
        let (gw, prefix) = {
            let i = self.ipam();
            (i.gateway(), i.prefix())
        };
        let path = self.netns_path(uid);
        let fresh = netns::create(&path)?;
        self.links
            .attach(&self.bridge, &host_if(uid), &path, ip, prefix, gw, fresh)
            .await?;
        self.verified()
            .insert(uid.to_string(), (ip, Instant::now()));
        Ok(ip)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Ipv4Addr, Instant)>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes everything the pod with this UID had: veth, namespace, address.
    pub async fn teardown(&self, uid: &str) -> Result<(), Error> {
        self.verified().remove(uid);
        self.links.detach(&host_if(uid)).await?;
        netns::delete(&self.netns_path(uid))?;
        self.ipam().release(uid)?;
        Ok(())
    }

    /// Removes veths, namespaces and addresses that no live pod explains.
    pub async fn gc(&self, live: &HashSet<String>) -> Result<usize, Error> {
        let mut removed = 0;
        let live_ifs: HashSet<String> = live.iter().map(|u| host_if(u)).collect();
        for l in self.links.links_with_prefix(VETH_PREFIX).await? {
            if is_pod_veth(&l) && !live_ifs.contains(&l) {
                self.links.delete_link(&l).await?;
                removed += 1;
            }
        }
        for p in netns::list(&self.netns_dir) {
            let uid = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !live.contains(&uid) {
                netns::delete(&p)?;
                removed += 1;
            }
        }
        let owners = self.ipam().owners();
        for o in owners {
            if !live.contains(&o) {
                self.ipam().release(&o)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every pod's network (orderly shutdown): the objects stay, the kernel state goes.
    pub async fn teardown_all(&self) -> Result<(), Error> {
        for l in self.links.links_with_prefix(VETH_PREFIX).await? {
            if is_pod_veth(&l) {
                self.links.delete_link(&l).await?;
            }
        }
        for p in netns::list(&self.netns_dir) {
            netns::delete(&p)?;
        }
        Ok(())
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

pub async fn reconcile<L: PodLinks>(pod: Arc<Pod>, ctx: Arc<Ctx<L>>) -> Result<Action, Error> {
    let uid = pod.metadata.uid.clone().ok_or(Error::NoUid)?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Ok(Action::await_change());
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // The kubelet stops the containers first; the network goes after them.
        if pod
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == KUBELET_FINALIZER)
        {
            return Ok(Action::await_change());
        }
        if has_finalizer(&pod) {
            ctx.teardown(&uid).await?;
            ctx.policy_changed(&uid, None);
            let rest: Vec<&String> = pod
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != FINALIZER)
                .collect();
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": pod.metadata.resource_version}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer(&pod) {
        let mut fins: Vec<String> = pod.metadata.finalizers.clone().unwrap_or_default();
        fins.push(FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": pod.metadata.resource_version}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            // A newer version will come through the watch.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                return Ok(Action::await_change())
            }
            Err(e) => return Err(e.into()),
        }
    }
    let ip = ctx.ensure(&uid).await?;
    let current = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    let fingerprint = format!(
        "{ip} {:?} {:?}",
        pod.metadata.labels,
        pod.spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| &c.ports).collect::<Vec<_>>())
    );
    let generation = ctx.policy_changed(&uid, Some(fingerprint));
    let is_bound = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    // The binding usually lands while the network is being made: the cache has it by now.
    let bound = is_bound(&pod)
        || ctx
            .pods
            .get(&kube::runtime::reflector::ObjectRef::from_obj(&*pod))
            .is_some_and(|p| is_bound(&p));
    if !bound {
        // The network is made while the pod is being scheduled (so it is ready sooner), but a
        // pod has an address only once it is bound to the node, as in Kubernetes: the binding
        // is a change this controller sees.
        return Ok(Action::await_change());
    }
    let just_published = {
        let mut published = ctx.published.lock().unwrap_or_else(|e| e.into_inner());
        published.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(5));
        published.get(&uid).is_some_and(|(p, _)| *p == ip)
    };
    if current.as_deref() != Some(&ip.to_string()) && !just_published {
        // The pod's processes start once its address is reported: policies that concern it
        // must be in force by then.
        if let Some(g) = generation {
            if (!ctx.policies.is_empty() || !ctx.policy.first_done())
                && !ctx.policy.wait(g, Duration::from_secs(5)).await
            {
                tracing::warn!("{ns}/{name}: network policy sync is late; starting anyway");
            }
        }
        let patch =
            json!({"status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                ctx.published
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(uid.clone(), (ip, Instant::now()));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub fn error_policy<L: PodLinks>(_pod: Arc<Pod>, err: &Error, _ctx: Arc<Ctx<L>>) -> Action {
    tracing::warn!("reconcile failed: {err}");
    Action::requeue(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let n = host_if("0b5c4b42-9a57-4e0f-8f5e-6d0e6a1b2c3d");
        assert_eq!(n, "skv0b5c4b429a5");
        // IFNAMSIZ is 16 including the NUL; the peer adds one character.
        assert!(n.len() < 15);
        assert!(is_pod_veth(&n));
        assert!(!is_pod_veth("skiff0"));
        assert!(!is_pod_veth(&format!("{n}p")));
        assert!(!is_pod_veth("skvnothexatall"));
    }
}
