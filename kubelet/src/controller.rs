//! The kubelet's pod controller (kube-runtime): binds unscheduled pods to this node when their
//! requests fit (else PodScheduled=False, Unschedulable), starts a shim for each pod once its
//! network is ready, mirrors the shim's state into the pod's status, and on deletion stops the
//! pod (grace period honoured by the shim) before releasing the `skiff.io/kubelet` finalizer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use skiff_core::controller::Action;
use skiff_core::quantity::{parse_bytes, parse_millicores};
use thiserror::Error;

use crate::plan::{pod_plan, Facts, PodPlan};
use crate::shim;
use crate::status::{differs, pod_status};

pub const FINALIZER: &str = "skiff.io/kubelet";

#[derive(Debug, Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct Ctx {
    /// Probe failures already reported, per pod UID and container (to emit each once).
    pub reported: std::sync::Mutex<std::collections::HashMap<String, String>>,
    pub client: kube::Client,
    pub node: String,
    pub host_ip: String,
    pub pods_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub facts: Facts,
    pub masked: Vec<String>,
    pub alloc_cpu_m: i64,
    pub alloc_mem: i64,
    pub max_pods: i64,
    /// This cluster's cgroup parent under `skiff/`.
    pub cgroup_cluster: String,
    /// The controller's cache of pods (what scheduling counts against allocatable).
    pub pods: Store<Pod>,
    /// Pods this kubelet bound that the cache may not show bound yet, with their requests;
    /// held while one pod is scheduled, so two pods never both take the last room.
    pub bound: tokio::sync::Mutex<HashMap<String, (i64, i64, std::time::Instant)>>,
    /// Cgroup moves are cheap on this host (see `cgroup::favor_dynmods`): no warm-up needed.
    pub cgroup_dynmods: bool,
    /// Serialises status writes per pod UID (the controller and the notify path both write).
    pub status_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The datagram socket shims notify (see `shim::notify`).
    pub notify: String,
}

/// What a pod asks for: (millicores, bytes). Requests default to limits, and init containers
/// count by their maximum, as the scheduler computes it.
pub fn requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else { return (0, 0) };
    let one = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.clone().unwrap_or_default();
        let get = |k: &str| {
            r.requests
                .as_ref()
                .and_then(|m| m.get(k))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(k)))
                .map(|q| q.0.clone())
        };
        (
            get("cpu").and_then(|q| parse_millicores(&q)).unwrap_or(0),
            get("memory").and_then(|q| parse_bytes(&q)).unwrap_or(0),
        )
    };
    let (mut cpu, mut mem) = spec
        .containers
        .iter()
        .map(one)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for c in spec.init_containers.iter().flatten() {
        let (ic, im) = one(c);
        cpu = cpu.max(ic);
        mem = mem.max(im);
    }
    (cpu, mem)
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn pid_alive(pid: i32) -> bool {
    pid > 0
        && kill(Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_none_or(|(_, r)| !r.trim_start().starts_with('Z'))
        })
}

pub fn shim_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(shim::pid_path(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| pid_alive(*p))
}

/// Kills a shim and everything it started: they share its process group.
pub fn kill_pod_group(shim: i32) {
    let _ = kill(Pid::from_raw(-shim), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(shim), Signal::SIGKILL);
}

fn spawn_shim(dir: &Path) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    // skiff-pod, installed beside the kubelet, is the small program pods run under (it starts
    // faster and weighs less per pod); the kubelet's own program can do the same.
    let own = std::env::current_exe()?;
    let small = own.with_file_name("skiff-pod");
    let exe = if small.exists() { small } else { own };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))?;
    let mut child = std::process::Command::new(exe)
        .arg("shim")
        .arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: signals aimed at the kubelet do not reach the pod.
        .process_group(0)
        .spawn()?;
    // Recorded at once (the shim writes it too): the next look at the pod, which may come
    // before the shim is up, must find it running rather than start another.
    shim::write_pid(dir, child.id())?;
    // Reap it if it exits while this kubelet lives; it outlives a kubelet that dies.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

impl Ctx {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// Whether the pod's requests fit what is left on the node, counted from the cache plus
    /// the pods bound meanwhile (`bound`, locked by the caller); None, or why not.
    fn fits(
        &self,
        pod: &Pod,
        bound: &mut HashMap<String, (i64, i64, std::time::Instant)>,
    ) -> Option<String> {
        let (cpu, mem) = requests(pod);
        let this = pod.metadata.uid.clone().unwrap_or_default();
        let (mut used_cpu, mut used_mem, mut count) = (0, 0, 0);
        let mut counted = HashSet::new();
        let mut present = HashSet::new();
        for p in self.pods.state() {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            present.insert(uid.clone());
            let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node);
            if !on_node || uid == this {
                continue;
            }
            // The cache shows it bound: the ledger entry is no longer needed.
            bound.remove(&uid);
            if finished(&p) {
                continue;
            }
            let (c, m) = requests(&p);
            used_cpu += c;
            used_mem += m;
            count += 1;
            counted.insert(uid);
        }
        // Entries of pods gone from the cache (deleted) no longer count; entries the cache never
        // showed bound expire.
        bound.retain(|uid, (_, _, at)| {
            present.contains(uid) && at.elapsed() < Duration::from_secs(60)
        });
        for (uid, (c, m, _)) in bound.iter() {
            if !counted.contains(uid) && *uid != this {
                used_cpu += c;
                used_mem += m;
                count += 1;
            }
        }
        let mut short = Vec::new();
        if used_cpu + cpu > self.alloc_cpu_m {
            short.push("Insufficient cpu");
        }
        if used_mem + mem > self.alloc_mem {
            short.push("Insufficient memory");
        }
        if count + 1 > self.max_pods {
            short.push("Too many pods");
        }
        if short.is_empty() {
            None
        } else {
            Some(format!("0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.", short.iter().map(|s| format!("1 {s}")).collect::<Vec<_>>().join(", ")))
        }
    }

    /// Stops a pod's shim (it applies the grace period); true once nothing runs. A shim still
    /// there well after the grace period is killed with its whole pod.
    fn stop(&self, uid: &str, overdue: bool) -> bool {
        match shim_pid(&self.pod_dir(uid)) {
            Some(pid) if overdue => {
                kill_pod_group(pid);
                false
            }
            Some(pid) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                false
            }
            None => true,
        }
    }

    /// Orderly shutdown of the node: stops every pod's shim and waits for them.
    pub async fn stop_all(&self) {
        let dirs: Vec<PathBuf> = std::fs::read_dir(&self.pods_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        for d in &dirs {
            if let Some(pid) = shim_pid(d) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        // Node shutdown gives pods at most this long (as kubelet's shutdownGracePeriod).
        for _ in 0..150 {
            if dirs.iter().all(|d| shim_pid(d).is_none()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for d in &dirs {
            if let Some(pid) = shim_pid(d) {
                kill_pod_group(pid);
            }
        }
    }
}

/// Records a core/v1 Event about a pod (what `kubectl describe` and `get events` show).
pub async fn event(
    client: &kube::Client,
    pod: &Pod,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
    node: &str,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = skiff_core::time::now_rfc3339();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{nanos:x}"), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
        "reason": reason, "message": message, "type": ty,
        "source": {"component": component, "host": node},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": component, "reportingInstance": node,
    });
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    if let Ok(e) = serde_json::from_value(ev) {
        // Recorded in the background: the pod's own progress does not wait for its events.
        let reason = reason.to_string();
        tokio::spawn(async move {
            if let Err(err) = api.create(&Default::default(), &e).await {
                tracing::debug!("recording event {reason}: {err}");
            }
        });
    }
}

async fn patch_finalizers(api: &Api<Pod>, pod: &Pod, fins: Vec<String>) -> Result<bool, Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch =
        json!({"metadata": {"finalizers": fins, "resourceVersion": pod.metadata.resource_version}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = pod.spec.clone().unwrap_or_default();
    let node = spec.node_name.clone().unwrap_or_default();
    let fins: Vec<String> = pod.metadata.finalizers.clone().unwrap_or_default();
    let ours = fins.iter().any(|f| f == FINALIZER);

    if pod.metadata.deletion_timestamp.is_some() {
        if !ours {
            return Ok(Action::await_change());
        }
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0);
        let grace_file = ctx.pod_dir(&uid).join("grace");
        if !grace_file.exists() && shim_pid(&ctx.pod_dir(&uid)).is_some() {
            for c in &spec.containers {
                event(
                    &ctx.client,
                    &pod,
                    "Normal",
                    "Killing",
                    &format!("Stopping container {}", c.name),
                    "kubelet",
                    &ctx.node,
                )
                .await;
            }
        }
        let _ = std::fs::write(&grace_file, grace.to_string());
        let since = pod
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| jiff::Timestamp::now().as_second() - t.0.as_second())
            .unwrap_or(0);
        if !ctx.stop(&uid, since > grace + 10) {
            // The shim notifies when it is gone; the requeue is a fallback (and the overdue check).
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        // Removal may wait for the last processes to leave: not on the runtime's threads.
        let cg = format!("{}/{uid}", ctx.cgroup_cluster);
        let _ = tokio::task::spawn_blocking(move || crate::cgroup::remove_pod(&cg)).await;
        crate::sandbox::release(&ctx.pod_dir(&uid));
        let _ = std::fs::remove_dir_all(ctx.pod_dir(&uid));
        // The containers' logs go with the pod, as the kubelet removes its /var/log/pods entry.
        let _ = std::fs::remove_dir_all(ctx.logs_dir.join(format!("{ns}_{name}_{uid}")));
        ctx.status_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        ctx.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.contains(&uid));
        patch_finalizers(
            &api,
            &pod,
            fins.into_iter().filter(|f| f != FINALIZER).collect(),
        )
        .await?;
        return Ok(Action::await_change());
    }
    if node.is_empty() {
        // The one node schedules: bind if the requests fit what is left.
        let mut bound = ctx.bound.lock().await;
        if let Some(msg) = ctx.fits(&pod, &mut bound) {
            drop(bound);
            let cond = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": skiff_core::time::now_rfc3339()}]}});
            let current = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                .and_then(|c| c.message.clone());
            if current.as_deref() != Some(msg.as_str()) {
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(cond))
                    .await?;
                event(
                    &ctx.client,
                    &pod,
                    "Warning",
                    "FailedScheduling",
                    &msg,
                    "default-scheduler",
                    &ctx.node,
                )
                .await;
            }
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let patch = json!({"metadata": {"resourceVersion": pod.metadata.resource_version}, "spec": {"nodeName": ctx.node}});
        tracing::debug!(pod = %name, "binding");
        let res = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
        if res.is_ok() {
            let (c, m) = requests(&pod);
            bound.insert(uid.clone(), (c, m, std::time::Instant::now()));
        }
        drop(bound);
        return match res {
            Ok(bound_pod) => {
                // The event is written on the side, and the bound pod is started at once
                // rather than when its binding comes back through the watch (that reconcile
                // then finds it started).
                let (client, node, pod) = (ctx.client.clone(), ctx.node.clone(), pod.clone());
                tokio::spawn(async move {
                    let msg = format!("Successfully assigned {ns}/{name} to {node}");
                    let (ty, reason, from) = ("Normal", "Scheduled", "default-scheduler");
                    event(&client, &pod, ty, reason, &msg, from, &node).await
                });
                Box::pin(reconcile(Arc::new(bound_pod), ctx)).await
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                Ok(Action::await_change())
            }
            Err(e) => Err(e.into()),
        };
    }
    if node != ctx.node {
        return Ok(Action::await_change());
    }
    if !ours {
        let mut f = fins.clone();
        f.push(FINALIZER.into());
        patch_finalizers(&api, &pod, f).await?;
        return Ok(Action::await_change());
    }
    let dir = ctx.pod_dir(&uid);
    let running = shim_pid(&dir).is_some();
    let state = shim::read_state(&dir);
    if !running && (finished(&pod) || state.as_ref().is_some_and(|s| s.stopped)) {
        // Done: record the final state once more.
        if state.is_some() {
            sync_status(&api, &pod, &ctx).await?;
        }
        return Ok(Action::await_change());
    }
    let host_network = spec.host_network == Some(true);
    let pod_ip = if host_network {
        Some(ctx.host_ip.clone())
    } else {
        pod.status.as_ref().and_then(|s| s.pod_ip.clone())
    };
    let netns = ctx.netns_dir.join(&uid);
    // The network is ready once netd reported the address and its namespace exists (the
    // address may be from before a restart, the namespace not yet rebuilt).
    let network = match &pod_ip {
        Some(ip) if host_network || crate::sandbox::is_mounted(&netns) => Some(ip.clone()),
        _ => None,
    };
    let plan_for = |ip: &str| -> PodPlan {
        let facts = Facts {
            pod_ip: ip.to_string(),
            host_ip: ctx.host_ip.clone(),
            node_name: ctx.node.clone(),
            ..ctx.facts.clone()
        };
        let log_dir = ctx.logs_dir.join(format!("{ns}_{name}_{uid}"));
        let netns = if host_network {
            String::new()
        } else {
            netns.display().to_string()
        };
        let mut plan = pod_plan(&pod, &netns, &log_dir.display().to_string(), &facts);
        plan.masked = ctx.masked.clone();
        plan.cgroup_pod = format!("{}/{uid}", ctx.cgroup_cluster);
        plan.warm_cgroups = !ctx.cgroup_dynmods;
        plan.notify = ctx.notify.clone();
        plan
    };
    if !running {
        // The shim starts as soon as the pod is bound: it makes the sandbox while netd makes
        // the network, and waits for the address (an empty `pod_ip` in its plan) before any
        // container starts.
        std::fs::create_dir_all(&dir)?;
        let plan = plan_for(network.as_deref().unwrap_or(""));
        shim::write_plan(&dir, &plan)?;
        let _ = std::fs::remove_file(shim::state_path(&dir));
        tracing::debug!(pod = %name, "starting the shim");
        spawn_shim(&dir)?;
        // The shim notifies on every state change; the requeue is only a fallback.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let waiting = shim::read_plan(&dir).is_some_and(|p| p.pod_ip.is_empty() && !p.host_network);
    if waiting {
        let Some(ip) = network else {
            // netd's status write (the address) is a change this controller sees at once.
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        tracing::debug!(pod = %name, "network ready");
        shim::write_plan(&dir, &plan_for(&ip))?;
        shim::network_ready(&dir);
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    sync_status(&api, &pod, &ctx).await?;
    // The shim notifies on every state change; this is the fallback.
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// A shim's news about a pod it runs, written to the API straight away (without a trip
/// through the controller's queue); false when it is the controller's to handle (the pod is
/// being deleted, its shim ended or waits for the network, or the write failed: the controller
/// retries).
pub async fn sync_running(ctx: &Ctx, pod: &Pod) -> bool {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = ctx.pod_dir(&uid);
    if pod.metadata.deletion_timestamp.is_some() || shim_pid(&dir).is_none() {
        return false;
    }
    if shim::read_state(&dir).is_none_or(|st| st.stopped)
        || shim::read_plan(&dir).is_none_or(|p| p.pod_ip.is_empty())
    {
        return false;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    sync_status(&api, pod, ctx).await.is_ok()
}

/// Writes the pod's status from the shim's recorded state (nothing when there is none).
async fn sync_status(api: &Api<Pod>, pod: &Pod, ctx: &Ctx) -> Result<(), Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let lock = ctx
        .status_locks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(uid.clone())
        .or_default()
        .clone();
    let _serial = lock.lock().await;
    // Read under the lock: the newest state, whichever writer gets here first.
    let Some(st) = shim::read_state(&ctx.pod_dir(&uid)) else {
        return Ok(());
    };
    let st = &st;
    for cs in &st.containers {
        if cs.probe_failure.is_empty() {
            continue;
        }
        let key = format!("{uid}/{}", cs.name);
        let fresh = {
            let mut r = ctx.reported.lock().unwrap_or_else(|e| e.into_inner());
            r.insert(key, cs.probe_failure.clone()).as_deref() != Some(cs.probe_failure.as_str())
        };
        if fresh {
            event(
                &ctx.client,
                pod,
                "Warning",
                "Unhealthy",
                &cs.probe_failure,
                "kubelet",
                &ctx.node,
            )
            .await;
        }
    }
    let now = skiff_core::time::now_rfc3339();
    let new = pod_status(pod, st, &ctx.host_ip, &now);
    let old = serde_json::to_value(pod.status.clone().unwrap_or_default())?;
    if differs(&old, &new) {
        // Transitions users see as events.
        for (i, cs) in new["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let c = cs["name"].as_str().unwrap_or("");
            let before = &old["containerStatuses"][i];
            let started = cs["state"]["running"]["startedAt"].as_str();
            // Once per start: the cached status may not show a write made a moment ago.
            let fresh_start = started.is_some_and(|t| {
                ctx.reported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(format!("started:{uid}/{c}"), t.to_string())
                    .as_deref()
                    != Some(t)
            });
            if fresh_start && before["state"]["running"]["startedAt"].as_str() != started {
                event(
                    &ctx.client,
                    pod,
                    "Normal",
                    "Started",
                    &format!("Started container {c}"),
                    "kubelet",
                    &ctx.node,
                )
                .await;
            }
            if cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                && before["state"]["waiting"]["reason"] != "CrashLoopBackOff"
            {
                let msg = format!(
                    "Back-off restarting failed container {c} in pod {}_{}({uid})",
                    pod.metadata.name.clone().unwrap_or_default(),
                    pod.metadata.namespace.clone().unwrap_or_default()
                );
                event(
                    &ctx.client,
                    pod,
                    "Warning",
                    "BackOff",
                    &msg,
                    "kubelet",
                    &ctx.node,
                )
                .await;
            }
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        tracing::debug!(pod = %name, "status patch");
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": new})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn error_policy(_pod: Arc<Pod>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("reconcile failed: {err}");
    Action::requeue(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_default_to_limits_and_count_init_max() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3", "memory": "10Mi"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}, {"name": "b", "resources": {"requests": {"cpu": "250m"}}}]}})).unwrap();
        assert_eq!(requests(&pod), (3000, 64 * 1024 * 1024));
    }
}
