//! The per-pod supervisor (as containerd's shim): holds the pod's containers as its children,
//! so they survive restarts of any daemon. It runs init containers in order, then the
//! containers, restarts them per `restartPolicy` with back-off, writes their output to CRI-format
//! log files, records their states in `state.json` for the kubelet, and on SIGTERM stops them
//! gracefully (SIGTERM, the grace period, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Mutex};

use crate::init::InitConfig;
use crate::plan::{ContainerPlan, PodPlan};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub name: String,
    /// `waiting`, `running` or `terminated`.
    pub state: String,
    pub reason: String,
    pub message: String,
    pub exit_code: i32,
    pub started_at: String,
    pub finished_at: String,
    pub restart_count: i32,
    pub pid: u32,
    pub last_terminated: Option<Box<ContainerState>>,
    /// Passing its readiness probe (or running, without one).
    #[serde(default)]
    pub ready: bool,
    /// Past its startup probe (or running, without one).
    #[serde(default)]
    pub started: bool,
    /// The latest probe failure (`Readiness probe failed: ...`), for Unhealthy events.
    #[serde(default)]
    pub probe_failure: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    pub init_containers: Vec<ContainerState>,
    pub containers: Vec<ContainerState>,
    /// Every init container has succeeded.
    pub initialized: bool,
    /// The shim has stopped everything (pod deleted or finished).
    pub stopped: bool,
}

impl PodState {
    /// The state of a container (init or app) by name.
    pub fn container_mut(&mut self, init: bool, name: &str) -> Option<&mut ContainerState> {
        let list = if init {
            &mut self.init_containers
        } else {
            &mut self.containers
        };
        list.iter_mut().find(|x| x.name == name)
    }
}

pub fn plan_path(dir: &Path) -> PathBuf {
    dir.join("plan.json")
}
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("shim.pid")
}

/// Where a shim waiting for its pod's network listens (see [`network_ready`]).
pub fn sock_path(dir: &Path) -> PathBuf {
    dir.join("shim.sock")
}

/// Records the shim's PID whole: the kubelet reads it at any time, and a half-written file
/// would look like no shim (and start another).
pub fn write_pid(dir: &Path, pid: u32) -> std::io::Result<()> {
    write_whole(&pid_path(dir), pid.to_string().as_bytes())
}

/// Replaces a file whole (a reader never sees it half written), through a temporary file of
/// this process's own (the kubelet and the shim may write the same file).
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn read_plan(dir: &Path) -> Option<PodPlan> {
    serde_json::from_slice(&std::fs::read(plan_path(dir)).ok()?).ok()
}

/// Writes the plan whole (a shim may read it at any time).
pub fn write_plan(dir: &Path, plan: &PodPlan) -> std::io::Result<()> {
    write_whole(&plan_path(dir), &serde_json::to_vec_pretty(plan)?)
}

/// Tells the pod's shim that its plan now has the network (best effort: a shim that is not
/// listening yet reads the plan when it starts to).
pub fn network_ready(dir: &Path) {
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(b"network", sock_path(dir));
    }
}

/// Early-started containers, by (init container?, name).
type Early = Vec<(bool, String, Spawned)>;

/// Waits until the plan has the pod's address (the kubelet rewrites it when netd is done);
/// `None` if told to stop meanwhile. While it waits, the first containers are started as soon
/// as netd has made the network namespace (see [`start_early`]).
async fn wait_for_network(
    dir: &Path,
    term: &mut tokio::signal::unix::Signal,
    plan: &PodPlan,
    ns: &crate::sandbox::Namespaces,
) -> Result<(Option<PodPlan>, Early)> {
    let path = sock_path(dir);
    let _ = std::fs::remove_file(&path);
    let sock = tokio::net::UnixDatagram::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut buf = [0u8; 64];
    let mut early = Vec::new();
    // netd makes the namespace within milliseconds of the pod's creation; looked for briefly.
    let mut look_until = (!plan.share_process_namespace)
        .then(|| tokio::time::Instant::now() + Duration::from_millis(250));
    // The plan is read again when there may be news: at first, on the kubelet's word, and at
    // the fallback tick (not on each look for the namespace).
    let mut news = true;
    let plan = loop {
        if news {
            if let Some(p) = read_plan(dir).filter(|p| !p.pod_ip.is_empty()) {
                break Some(p);
            }
        }
        if look_until.is_some() && ns.net.as_deref().is_some_and(crate::sandbox::is_mounted) {
            look_until = None;
            early = start_early(plan, dir, ns).await;
            // The address may have come while the containers were being started.
            news = true;
            continue;
        }
        let looking = look_until.is_some_and(|t| tokio::time::Instant::now() < t);
        // A fallback: the kubelet's word may have been lost.
        let tick = Duration::from_millis(if looking { 1 } else { 1000 });
        tokio::select! {
            _ = sock.recv(&mut buf) => news = true,
            _ = term.recv() => break None,
            _ = tokio::time::sleep(tick) => news = !looking,
        }
    };
    let _ = std::fs::remove_file(&path);
    if plan.is_none() {
        for (_, _, s) in early.drain(..) {
            s.abandon().await;
        }
    }
    Ok((plan, early))
}

pub fn read_state(dir: &Path) -> Option<PodState> {
    serde_json::from_slice(&std::fs::read(state_path(dir)).ok()?).ok()
}

fn now() -> String {
    skiff_core::time::now_rfc3339()
}

fn waiting(name: &str, reason: &str) -> ContainerState {
    ContainerState {
        name: name.into(),
        state: "waiting".into(),
        reason: reason.into(),
        ..Default::default()
    }
}

/// Tells the kubelet (a datagram with the pod's UID) to look at the pod again, so status
/// follows the containers at once rather than at the next poll. Best effort: a kubelet that is
/// down reads everything from `state.json` when it comes back.
pub fn notify(socket: &str, uid: &str) {
    if socket.is_empty() {
        return;
    }
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(uid.as_bytes(), socket);
    }
}

struct Shared {
    dir: PathBuf,
    state: Mutex<PodState>,
    /// The pod's namespaces, which containers join (see [`crate::sandbox`]).
    ns: crate::sandbox::Namespaces,
    /// Where to tell the kubelet that the state changed (see [`notify`]).
    notify: String,
    uid: String,
    /// Containers started ahead of the network (see [`start_early`]), until they are run.
    early: Mutex<Vec<(bool, String, Spawned)>>,
}

/// The pod sandbox: its UTS and IPC namespaces (bind-mounted in the pod's directory) and, with
/// shareProcessNamespace, a pause process as PID 1 of the pod's PID namespace. Returns the
/// namespaces and the pause process, if any.
fn sandbox_namespaces(plan: &PodPlan, dir: &Path) -> Result<crate::sandbox::Namespaces> {
    use crate::sandbox;
    let own_uts = !plan.host_network;
    sandbox::create(dir, own_uts.then_some(plan.hostname.as_str()))?;
    Ok(sandbox::Namespaces {
        net: own_uts.then(|| PathBuf::from(&plan.netns)),
        uts: own_uts.then(|| sandbox::ns_path(dir, "uts")),
        ipc: sandbox::ns_path(dir, "ipc"),
        pid: None,
    })
}

/// With shareProcessNamespace, the pause process: PID 1 of the pod's PID namespace, in its
/// network (so only once that exists). Sets `ns.pid`.
async fn start_pause(
    plan: &PodPlan,
    dir: &Path,
    ns: &mut crate::sandbox::Namespaces,
) -> Result<Option<tokio::process::Child>> {
    if !plan.share_process_namespace {
        return Ok(None);
    }
    let mut cmd = tokio::process::Command::new(kubelet_exe());
    let hostname = if plan.host_network {
        ""
    } else {
        plan.hostname.as_str()
    };
    cmd.args(["pause", "--hostname", hostname, "--pod-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = crate::sandbox::spawn_in(ns, cmd).context("starting the pod sandbox")?;
    let pause = child.id().context("the pod sandbox has no process")?;
    let out = child.stdout.take().context("pod sandbox output")?;
    let mut lines = BufReader::new(out).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    if !matches!(ready, Ok(Ok(Some(ref l))) if l == "ready") {
        anyhow::bail!("the pod sandbox did not start");
    }
    // Keep the pipe open: the pause process never writes again.
    std::mem::forget(lines);
    ns.pid = Some(PathBuf::from(format!("/proc/{pause}/ns/pid")));
    Ok(Some(child))
}

/// Writes the pod's state (what the kubelet reads).
fn write_state(dir: &Path, st: &PodState) {
    if let Ok(b) = serde_json::to_vec(st) {
        let _ = write_whole(&state_path(dir), &b);
    }
}

impl Shared {
    /// The early-started process of a container, if there is one.
    async fn take_early(&self, init: bool, name: &str) -> Option<Spawned> {
        let mut early = self.early.lock().await;
        let i = early.iter().position(|(i, n, _)| *i == init && n == name)?;
        Some(early.remove(i).2)
    }

    /// Changes the recorded state and tells the kubelet.
    async fn update(&self, f: impl FnOnce(&mut PodState)) {
        self.record(f).await;
        notify(&self.notify, &self.uid);
    }

    /// Changes the recorded state without telling the kubelet (it reads it at its next look).
    async fn record(&self, f: impl FnOnce(&mut PodState)) {
        let mut st = self.state.lock().await;
        f(&mut st);
        write_state(&self.dir, &st);
    }
}

/// Copies a stream into a CRI log file: `<RFC3339Nano> <stream> F <line>`.
async fn pump(
    r: impl AsyncRead + Unpin,
    stream: &'static str,
    log: Arc<Mutex<tokio::fs::File>>,
    mut started: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // The init's "about to exec" line comes first; it is not the container's output.
        if let Some(tx) = started.take() {
            if line == crate::init::STARTED_MARKER {
                let _ = tx.send(());
                continue;
            }
        }
        let ts = jiff::Timestamp::now();
        let rec = format!(
            "{} {stream} F {line}\n",
            ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        );
        let mut f = log.lock().await;
        let _ = f.write_all(rec.as_bytes()).await;
    }
}

/// What a lifecycle hook of a running container acts on.
fn hook_target(plan: &PodPlan, c: &ContainerPlan, pid: u32) -> crate::probe::Target {
    crate::probe::Target {
        pod_ip: plan.pod_ip.clone(),
        ports: c.ports.clone(),
        pid: Some(pid),
        env: c.env.clone(),
    }
}

fn kubelet_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff-kubelet"))
}

/// Runs the container's probes while it runs: startup first, then liveness and readiness.
/// Readiness sets `ready`; a failing liveness or startup probe asks for the container to be
/// killed (it is then restarted per the restart policy).
async fn probe_loop(
    pod_ip: String,
    c: ContainerPlan,
    shared: Arc<Shared>,
    pid: u32,
    kill_tx: tokio::sync::mpsc::Sender<String>,
) {
    use crate::probe::{run, Target, Tracker, Verdict};
    let start = tokio::time::Instant::now();
    let name = c.name.clone();
    let set = |ready: Option<bool>, started: Option<bool>| {
        let (shared, name) = (shared.clone(), name.clone());
        async move {
            shared
                .update(|st| {
                    if let Some(cs) = st
                        .containers
                        .iter_mut()
                        .find(|x| x.name == name && x.state == "running")
                    {
                        if let Some(r) = ready {
                            cs.ready = r;
                        }
                        if let Some(s) = started {
                            cs.started = s;
                        }
                    }
                })
                .await
        }
    };
    let mut startup = c
        .startup
        .as_ref()
        .map(|p| (p.clone(), Tracker::new(p), start));
    let mut liveness = c
        .liveness
        .as_ref()
        .map(|p| (p.clone(), Tracker::new(p), start));
    let mut readiness = c
        .readiness
        .as_ref()
        .map(|p| (p.clone(), Tracker::new(p), start));
    // Ready and started as they begin (without probes: at once) are part of the running state
    // the container was recorded with.
    let note = |r: Result<(), String>, what: &'static str| {
        let (shared, name) = (shared.clone(), name.clone());
        async move {
            if let Err(e) = &r {
                let msg = format!("{what} probe failed: {e}");
                shared
                    .update(|st| {
                        if let Some(cs) = st.containers.iter_mut().find(|x| x.name == name) {
                            cs.probe_failure = msg;
                        }
                    })
                    .await;
            }
            r.is_ok()
        }
    };
    let target = Target {
        pod_ip,
        ports: c.ports.clone(),
        pid: Some(pid),
        env: c.env.clone(),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tokio::time::Instant::now();
        let due = |slot: &mut Option<(
            k8s_openapi::api::core::v1::Probe,
            Tracker,
            tokio::time::Instant,
        )>|
         -> Option<k8s_openapi::api::core::v1::Probe> {
            let (p, tr, next) = slot.as_mut()?;
            let first = *next == start;
            let at = if first {
                start + tr.initial_delay
            } else {
                *next
            };
            if now < at {
                return None;
            }
            *next = now + tr.period;
            Some(p.clone())
        };
        if startup.is_some() {
            if let Some(p) = due(&mut startup) {
                let ok = note(run(&p, &target).await, "Startup").await;
                let v = startup.as_mut().map(|(_, tr, _)| tr.record(ok));
                match v {
                    Some(Verdict::Passing) => {
                        startup = None;
                        set(Some(readiness.is_none()), Some(true)).await;
                    }
                    Some(Verdict::Failing) => {
                        let _ = kill_tx.send("Startup probe failed".into()).await;
                        return;
                    }
                    _ => {}
                }
            }
            continue;
        }
        if let Some(p) = due(&mut liveness) {
            let ok = note(run(&p, &target).await, "Liveness").await;
            if liveness.as_mut().map(|(_, tr, _)| tr.record(ok)) == Some(Verdict::Failing) {
                let _ = kill_tx.send("Liveness probe failed".into()).await;
                return;
            }
        }
        if let Some(p) = due(&mut readiness) {
            let ok = note(run(&p, &target).await, "Readiness").await;
            match readiness.as_mut().map(|(_, tr, _)| tr.record(ok)) {
                Some(Verdict::Passing) => set(Some(true), None).await,
                Some(Verdict::Failing) => set(Some(false), None).await,
                _ => {}
            }
        }
    }
}

/// Runs one container once; returns its exit code (128+signal when killed).
/// A container's process from its spawn until it runs its command: the init, its output
/// pumps and its cgroup.
struct Spawned {
    child: tokio::process::Child,
    pid: u32,
    cgroup: Option<crate::cgroup::Cgroup>,
    log: Arc<Mutex<tokio::fs::File>>,
    outs: [Option<tokio::task::JoinHandle<()>>; 2],
    started_rx: tokio::sync::oneshot::Receiver<()>,
    /// Started early (ahead of the pod's network): where its final config goes.
    go: Option<tokio::process::ChildStdin>,
}

/// The container init's config for a run of `c`.
fn init_config(plan: &PodPlan, c: &ContainerPlan, dir: &Path) -> InitConfig {
    InitConfig {
        hostname: plan.hostname.clone(),
        lower: if c.image.is_empty() || c.image == "host" {
            "/".into()
        } else {
            c.image.clone()
        },
        scratch: dir
            .join("containers")
            .join(&c.name)
            .join("rootfs")
            .display()
            .to_string(),
        hosts: plan.hosts.clone(),
        resolv_conf: plan.resolv_conf.clone(),
        masked: plan.masked.clone(),
        argv: c.argv.clone(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone(),
        uid: c.uid.and_then(|u| u32::try_from(u).ok()),
        gid: c.gid.and_then(|g| u32::try_from(g).ok()),
        cgroup_procs: Vec::new(),
        privileged: c.privileged,
        host_uts: plan.host_network,
        wait_for_go: false,
    }
}

/// Spawns run `restart` of container `c` in the pod's namespaces. With `early`, the init builds
/// the container's root and then waits for its final config ([`Spawned::go`]): the pod's
/// network is not done yet.
async fn spawn_container(
    plan: &PodPlan,
    c: &ContainerPlan,
    dir: &Path,
    ns: &crate::sandbox::Namespaces,
    restart: i32,
    early: bool,
) -> Result<Spawned> {
    let cdir = dir.join("containers").join(&c.name);
    std::fs::create_dir_all(&cdir)?;
    let mut cfg = init_config(plan, c, dir);
    cfg.wait_for_go = early;
    // Limits: a cgroup per container run, joined by the init before it execs. A container
    // without limits has nothing to enforce and stays out of one: no cgroup to make, join and
    // remove (and none left dying in the kernel) on its start path.
    let cgroup = if c.memory_limit.is_some() || c.cpu_limit_millis.is_some() {
        let cg = crate::cgroup::Cgroup::create(
            &plan.cgroup_pod,
            &format!("{}-{restart}", c.name),
            c.memory_limit,
            c.cpu_limit_millis,
        )
        .map_err(|e| anyhow::anyhow!("setting resource limits: {e}"))?;
        Some(cg)
    } else {
        None
    };
    cfg.cgroup_procs = cgroup
        .as_ref()
        .map(|cg| cg.procs_files())
        .unwrap_or_default();
    let cfg_path = cdir.join("init.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
    let log_dir = Path::new(&plan.log_dir).join(&c.name);
    std::fs::create_dir_all(&log_dir)?;
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("{restart}.log")))
        .await?;
    let log = Arc::new(Mutex::new(log));
    // The container joins the pod's network, UTS and IPC namespaces (and its PID namespace
    // with shareProcessNamespace); its init is PID 1 of a PID namespace of its own otherwise,
    // and makes its own mount namespace.
    let mut cmd = tokio::process::Command::new(kubelet_exe());
    cmd.args(["init", "--config"])
        .arg(&cfg_path)
        .stdin(if early { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = crate::sandbox::spawn_in(ns, cmd).context("starting the container")?;
    let pid = child.id().unwrap_or(0);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let outs = [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(pump(o, "stdout", log.clone(), Some(started_tx)))),
        child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump(e, "stderr", log.clone(), None))),
    ];
    let go = child.stdin.take();
    Ok(Spawned {
        child,
        pid,
        cgroup,
        log,
        outs,
        started_rx,
        go,
    })
}

impl Spawned {
    /// Sends an early-started init its final config (the command may now run).
    async fn go(&mut self, cfg: &InitConfig) -> Result<()> {
        if let Some(mut w) = self.go.take() {
            let mut line = serde_json::to_vec(cfg)?;
            line.push(b'\n');
            // An init that died meanwhile is seen exiting by the caller.
            let _ = w.write_all(&line).await;
        }
        Ok(())
    }

    /// Calls off an early start: the init ends without running anything.
    async fn abandon(mut self) {
        drop(self.go.take());
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        for h in self.outs.into_iter().flatten() {
            let _ = h.await;
        }
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
    }
}

/// Whether an early-started init is in the pod's network namespace as it is now (netd may
/// have made it again meanwhile).
fn in_netns(pid: u32, netns: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/{pid}/ns/net")),
        std::fs::metadata(netns),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Containers started ahead of the pod's network: the first ones to run (the first init
/// container, or else every container), once netd has made the network namespace. Their
/// roots are built while netd finishes the network; [`run_once`] sends them their final
/// configs. Not with a shared PID namespace (its pause process comes with the network).
async fn start_early(
    plan: &PodPlan,
    dir: &Path,
    ns: &crate::sandbox::Namespaces,
) -> Vec<(bool, String, Spawned)> {
    let first: Vec<(bool, &ContainerPlan)> = match plan.init_containers.first() {
        Some(c) => vec![(true, c)],
        None => plan.containers.iter().map(|c| (false, c)).collect(),
    };
    let mut out = Vec::new();
    for (init, c) in first {
        // Failures show again, and are reported, when the container is started normally.
        if let Ok(s) = spawn_container(plan, c, dir, ns, 0, true).await {
            out.push((init, c.name.clone(), s));
        }
    }
    out
}

async fn run_once(
    plan: &PodPlan,
    c: &ContainerPlan,
    shared: &Arc<Shared>,
    restart: i32,
    stop: &mut watch::Receiver<bool>,
    init: bool,
) -> Result<i32> {
    let early = if restart == 0 {
        shared.take_early(init, &c.name).await
    } else {
        None
    };
    let early = match early {
        Some(s) if shared.ns.net.as_ref().is_some_and(|n| in_netns(s.pid, n)) => Some(s),
        Some(s) => {
            s.abandon().await;
            None
        }
        None => None,
    };
    let sp = match early {
        Some(mut s) => {
            s.go(&init_config(plan, c, &shared.dir)).await?;
            s
        }
        None => spawn_container(plan, c, &shared.dir, &shared.ns, restart, false).await?,
    };
    let Spawned {
        mut child,
        pid,
        cgroup,
        log,
        outs,
        started_rx,
        ..
    } = sp;
    // Running once the init has set the container up and is about to exec its command.
    let mut exited = tokio::select! {
        r = started_rx => match r {
            Ok(()) => None,
            Err(_) => Some(child.wait().await),
        },
        s = child.wait() => Some(s),
    };
    // postStart: the container counts as running once its hook has succeeded; a hook that
    // fails kills it (then the restart policy applies), as the kubelet does.
    if let (None, Some(h)) = (&exited, &c.post_start) {
        let target = hook_target(plan, c, pid);
        let hook = crate::probe::run_hook(h, &target, Duration::from_secs(30));
        let failed = tokio::select! {
            r = hook => r.err(),
            s = child.wait() => { exited = Some(s); None }
        };
        if let Some(why) = failed {
            let _ = log
                .lock()
                .await
                .write_all(
                    format!(
                        "{} stderr F postStart hook failed: {why}\n",
                        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    )
                    .as_bytes(),
                )
                .await;
            let _ = child.start_kill();
            exited = Some(child.wait().await);
        }
    }
    let name = c.name.clone();
    let started = now();
    // An init that failed is recorded as started and at once as terminated, which keeps the
    // restart bookkeeping in one place.
    shared
        .update(|st| {
            if let Some(cs) = st.container_mut(init, &name) {
                let last = if cs.state == "terminated" {
                    Some(Box::new(cs.clone()))
                } else {
                    cs.last_terminated.take()
                };
                *cs = ContainerState {
                    name: name.clone(),
                    state: "running".into(),
                    started_at: started.clone(),
                    restart_count: restart,
                    pid,
                    last_terminated: last,
                    // Without probes a container is started and ready at once (init
                    // containers are reported as before: neither, while they run).
                    ready: !init && c.readiness.is_none() && c.startup.is_none(),
                    started: !init && c.startup.is_none(),
                    ..Default::default()
                };
            }
        })
        .await;
    let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<String>(1);
    let probes = if init || exited.is_some() {
        None
    } else {
        Some(tokio::spawn(probe_loop(
            plan.pod_ip.clone(),
            c.clone(),
            shared.clone(),
            pid,
            kill_tx,
        )))
    };
    let killed = match exited {
        Some(s) => Err(s),
        None => tokio::select! {
            s = child.wait() => Err(s),
            _ = stop.changed() => Ok(None),
            why = kill_rx.recv() => Ok(why),
        },
    };
    if let Some(p) = probes {
        p.abort();
    }
    let status = match killed {
        Err(s) => s?,
        Ok(_) => {
            // Graceful stop (deletion, or a failed liveness/startup probe): the preStop hook,
            // then SIGTERM to the container's PID 1, then SIGKILL when the grace period is over.
            // The kubelet may have written a shorter grace period (delete --grace-period).
            let grace_s = std::fs::read_to_string(shared.dir.join("grace"))
                .ok()
                .and_then(|g| g.trim().parse::<i64>().ok())
                .unwrap_or(plan.termination_grace_seconds);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(grace_s.max(0) as u64);
            if let (Some(h), true) = (&c.pre_stop, pid != 0) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let _ = tokio::time::timeout_at(
                    deadline,
                    crate::probe::run_hook(h, &hook_target(plan, c, pid), left),
                )
                .await;
            }
            if pid != 0 {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(s) => s?,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await?
                }
            }
        }
    };
    for h in outs.into_iter().flatten() {
        let _ = h.await;
    }
    let code = crate::exec::exit_code(status);
    let oom = cgroup.as_ref().is_some_and(|cg| cg.oom_killed());
    if let Some(cg) = &cgroup {
        cg.remove();
    }
    let finished = now();
    let name = c.name.clone();
    shared
        .update(|st| {
            if let Some(cs) = st.container_mut(init, &name) {
                cs.state = "terminated".into();
                cs.exit_code = code;
                cs.reason = if oom {
                    "OOMKilled".into()
                } else if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
                cs.finished_at = finished;
                cs.pid = 0;
            }
        })
        .await;
    Ok(code)
}

fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => code != 0,
        _ => false,
    }
}

/// Kubernetes' crash back-off: the first restart is immediate, then 10s doubling to 5 minutes.
pub fn backoff(restarts: i32) -> Duration {
    if restarts <= 0 {
        return Duration::ZERO;
    }
    let secs = 10u64.saturating_mul(1u64 << (restarts - 1).clamp(0, 5) as u32);
    Duration::from_secs(secs.min(300))
}

async fn supervise(
    plan: Arc<PodPlan>,
    c: ContainerPlan,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    init: bool,
) -> i32 {
    let mut restarts = 0;
    loop {
        if *stop.borrow() {
            return 0;
        }
        let code = match run_once(&plan, &c, &shared, restarts, &mut stop, init).await {
            Ok(code) => code,
            Err(e) => {
                let (name, msg) = (c.name.clone(), format!("{e:#}"));
                shared
                    .update(|st| {
                        if let Some(cs) = st.container_mut(init, &name) {
                            *cs = ContainerState {
                                reason: "RunContainerError".into(),
                                message: msg,
                                ..waiting(&name, "")
                            };
                        }
                    })
                    .await;
                128
            }
        };
        if *stop.borrow() {
            return code;
        }
        let restart = if init {
            code != 0 && plan.restart_policy != "Never"
        } else {
            should_restart(&plan.restart_policy, code)
        };
        if !restart {
            return code;
        }
        let wait = backoff(restarts);
        let shown = restarts;
        restarts += 1;
        if wait.is_zero() {
            continue;
        }
        let name = c.name.clone();
        shared
            .update(|st| {
                if let Some(cs) = st.container_mut(init, &name) {
                    let last = Some(Box::new(cs.clone()));
                    *cs = ContainerState {
                        message: format!(
                            "back-off {}s restarting failed container={name}",
                            wait.as_secs()
                        ),
                        restart_count: shown,
                        last_terminated: last,
                        ..waiting(&name, "CrashLoopBackOff")
                    };
                }
            })
            .await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return code,
        }
    }
}

/// The `shim` command: a single-threaded runtime running [`run`].
pub fn main(dir: &Path) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(dir)))
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff shim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The shim's main: runs the pod in `dir` until it finishes or is told to stop.
pub async fn run(dir: &Path) -> Result<()> {
    let plan: PodPlan = serde_json::from_slice(&std::fs::read(plan_path(dir))?)?;
    let plan = Arc::new(plan);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // One shim per pod: a second one (started by a look at the pod that raced with the first
    // one's start) hands the pod back to the first and ends.
    use std::io::{Read, Seek, Write};
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("shim.lock"))?;
    let mut lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut f, _)) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                if let Ok(pid) = holder.trim().parse::<u32>() {
                    write_pid(dir, pid)?;
                }
                return Ok(());
            }
        };
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{}", std::process::id())?;
    write_pid(dir, std::process::id())?;
    let initial = PodState {
        init_containers: plan
            .init_containers
            .iter()
            .map(|c| waiting(&c.name, "PodInitializing"))
            .collect(),
        containers: plan
            .containers
            .iter()
            .map(|c| waiting(&c.name, "ContainerCreating"))
            .collect(),
        initialized: plan.init_containers.is_empty(),
        stopped: false,
    };
    // The first runs' cgroups are made now, off the start path. Where cgroup moves are slow
    // (see cgroup::favor_dynmods), joining a cgroup (the container init does, before it execs)
    // waits for an RCU grace period unless another move happened just before; a no-op move
    // started now, while the sandbox and the init are being set up, hides most of that wait.
    // The cgroups are made first: making a cgroup waits while a move is pending.
    let leaves: Vec<_> = plan
        .init_containers
        .iter()
        .chain(&plan.containers)
        .filter(|c| c.memory_limit.is_some() || c.cpu_limit_millis.is_some())
        .map(|c| c.cgroup_leaf(0))
        .collect();
    let (cg_pod, warm) = (plan.cgroup_pod.clone(), plan.warm_cgroups);
    if !leaves.is_empty() {
        std::thread::spawn(move || crate::cgroup::prepare(&cg_pod, &leaves, warm));
    }
    let mut ns = sandbox_namespaces(&plan, dir)?;
    // Not announced: containers usually start within milliseconds, and their start is (a
    // waiting state reaches the API at the kubelet's next look otherwise).
    write_state(dir, &initial);
    // Started before netd was done: the containers wait for the pod's address.
    let (plan, early) = if plan.pod_ip.is_empty() && !plan.host_network {
        match wait_for_network(dir, &mut term, &plan, &ns).await? {
            (Some(p), early) => (Arc::new(p), early),
            (None, _) => {
                crate::sandbox::release(dir);
                let mut st = initial;
                st.stopped = true;
                write_state(dir, &st);
                crate::cgroup::remove_pod(&plan.cgroup_pod);
                let _ = std::fs::remove_file(pid_path(dir));
                notify(&plan.notify, &plan.uid);
                return Ok(());
            }
        }
    } else {
        (plan, Vec::new())
    };
    let mut pause = start_pause(&plan, dir, &mut ns).await?;
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        state: Mutex::new(initial),
        ns,
        notify: plan.notify.clone(),
        uid: plan.uid.clone(),
        early: Mutex::new(early),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let work = {
        let (plan, shared, stop_rx) = (plan.clone(), shared.clone(), stop_rx.clone());
        async move {
            for c in plan.init_containers.clone() {
                let code = supervise(plan.clone(), c, shared.clone(), stop_rx.clone(), true).await;
                if code != 0 || *stop_rx.borrow() {
                    return;
                }
            }
            if !plan.init_containers.is_empty() {
                shared.update(|st| st.initialized = true).await;
            }
            let tasks: Vec<_> = plan
                .containers
                .clone()
                .into_iter()
                .map(|c| {
                    tokio::spawn(supervise(
                        plan.clone(),
                        c,
                        shared.clone(),
                        stop_rx.clone(),
                        false,
                    ))
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    let mut work = Box::pin(work);
    tokio::select! {
        _ = &mut work => {}
        _ = term.recv() => {
            let _ = stop_tx.send(true);
            work.await;
        }
    }
    // Early starts never run (stopped before their turn).
    for (_, _, sp) in shared.early.lock().await.drain(..) {
        sp.abandon().await;
    }
    // The sandbox goes last (with a PID namespace, its end takes any stray process along).
    if let Some(p) = pause.as_mut() {
        let _ = p.kill().await;
    }
    crate::sandbox::release(dir);
    shared.update(|st| st.stopped = true).await;
    crate::cgroup::remove_pod(&plan.cgroup_pod);
    let _ = std::fs::remove_file(pid_path(dir));
    // Once more now that no shim holds the pod: deletion can go on.
    notify(&plan.notify, &plan.uid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rules_and_backoff() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(9), Duration::from_secs(300));
    }
}
