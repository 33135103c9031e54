//! `skiff up`, `down` and `status`: run the cluster's daemons in the foreground, restart a
//! crashed daemon with backoff, report health, and stop everything on SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use skiff_core::client::ApiClient;
use skiff_core::config::{self, Cidr, Paths};
use tokio::sync::{watch, Mutex};

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[arg(long, default_value = config::DEFAULT_POD_CIDR)]
    pub pod_cidr: String,
    #[arg(long, default_value = config::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: String,
    #[arg(long, default_value = config::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    #[arg(long, default_value_t = config::DEFAULT_API_PORT)]
    pub api_port: u16,
    #[arg(long, default_value = config::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Most pods the node runs (the kubelet's maxPods; Kubernetes defaults to 110).
    #[arg(long, default_value_t = 110)]
    pub max_pods: u64,
}

struct Daemon {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// How long an orderly stop may take before SIGKILL (the kubelet stops pods within their
    /// grace periods first).
    stop_timeout: Duration,
}

#[derive(Clone, Default)]
struct DaemonState {
    pid: Option<u32>,
    restarts: u32,
    running: bool,
}

fn bin_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("SKIFF_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Whether a process is running (a zombie, exited but not yet reaped, is not).
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn api_ready(socket: &Path) -> bool {
    let c = ApiClient::unix(socket);
    matches!(c.get_json("/readyz").await, Ok(r) if r.status == 200)
}

/// Runs one daemon until shutdown, restarting it with exponential backoff when it exits.
async fn supervise(
    d: Daemon,
    paths: Paths,
    state: Arc<Mutex<BTreeMap<&'static str, DaemonState>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.logs().join(format!("{}.log", d.name)));
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let started = Instant::now();
        let _ = fs::remove_file(paths.run().join(format!("{}.ready", d.name)));
        let child = tokio::process::Command::new(&d.program)
            .args(&d.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "skiff: cannot start {} ({}): {e}",
                    d.name,
                    d.program.display()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let pid = child.id();
        if let Some(p) = pid {
            let _ = fs::write(paths.run().join(format!("{}.pid", d.name)), p.to_string());
        }
        {
            let mut s = state.lock().await;
            let e = s.entry(d.name).or_default();
            e.pid = pid;
            e.running = true;
        }
        let status = tokio::select! {
            s = child.wait() => Some(s),
            _ = stop.changed() => None,
        };
        match status {
            None => {
                // Shutdown: SIGTERM, then SIGKILL after a grace period.
                if let Some(p) = pid {
                    let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
                }
                if tokio::time::timeout(d.stop_timeout, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                let _ = fs::remove_file(paths.run().join(format!("{}.pid", d.name)));
                return;
            }
            Some(s) => {
                let mut st = state.lock().await;
                let e = st.entry(d.name).or_default();
                e.running = false;
                e.restarts += 1;
                eprintln!(
                    "skiff: {} exited ({}); restarting in {:?}",
                    d.name,
                    s.map(|s| s.to_string()).unwrap_or_default(),
                    backoff
                );
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

pub async fn up(data_dir: &Path, a: &UpArgs) -> Result<u8> {
    if !nix::unistd::geteuid().is_root() {
        bail!("skiff up must run as root (it creates network namespaces, bridges and mounts)");
    }
    let pod = Cidr::parse(&a.pod_cidr).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
    let svc = Cidr::parse(&a.service_cidr).map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
    let paths = Paths::new(data_dir);
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;
    fs::create_dir_all(paths.logs())?;
    fs::create_dir_all(paths.run())?;
    if let Some(pid) = read_pid(&paths.up_pid()) {
        if pid_alive(pid) && pid != std::process::id() as i32 {
            bail!(
                "a cluster is already running from {} (pid {pid}); stop it with `skiff down`",
                data_dir.display()
            );
        }
    }
    fs::write(paths.up_pid(), std::process::id().to_string())?;
    let cfg = json!({"podCIDR": pod.to_string(), "serviceCIDR": svc.to_string(), "clusterDomain": a.cluster_domain, "apiPort": a.api_port, "bridge": a.bridge});
    fs::write(
        data_dir.join("config.json"),
        serde_json::to_vec_pretty(&cfg)?,
    )?;

    let bins = bin_dir()?;
    let daemons = vec![
        Daemon {
            name: "apiserver",
            stop_timeout: Duration::from_secs(10),
            program: bins.join("skiff-apiserver"),
            args: vec![
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--api-port".into(),
                a.api_port.to_string(),
                "--service-cidr".into(),
                svc.to_string(),
            ],
        },
        Daemon {
            name: "netd",
            stop_timeout: Duration::from_secs(20),
            program: bins.join("skiff-netd"),
            args: vec![
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--pod-cidr".into(),
                pod.to_string(),
                "--service-cidr".into(),
                svc.to_string(),
                "--bridge".into(),
                a.bridge.clone(),
            ],
        },
        Daemon {
            name: "kubelet",
            stop_timeout: Duration::from_secs(30),
            program: bins.join("skiff-kubelet"),
            args: vec![
                "run".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--cluster-domain".into(),
                a.cluster_domain.clone(),
                "--service-cidr".into(),
                svc.to_string(),
                "--pod-cidr".into(),
                pod.to_string(),
                "--max-pods".into(),
                a.max_pods.to_string(),
            ],
        },
    ];
    let names: Vec<&'static str> = daemons.iter().map(|d| d.name).collect();
    let state = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for d in daemons {
        let (stop_tx, stop_rx) = watch::channel(false);
        tasks.push((
            tokio::spawn(supervise(d, paths.clone(), state.clone(), stop_rx)),
            stop_tx,
        ));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = Instant::now();
    let mut ready = false;
    let mut last_health = Instant::now() - Duration::from_secs(10);
    loop {
        let api_ok = api_ready(&paths.socket()).await;
        let daemons_ok = names
            .iter()
            .filter(|n| **n != "apiserver")
            .all(|n| paths.run().join(format!("{n}.ready")).exists());
        if api_ok && daemons_ok && !ready {
            ready = true;
            println!("skiff is ready in {:.1}s", started.elapsed().as_secs_f64());
            println!("  kubeconfig: {}", paths.kubeconfig().display());
            println!("  socket:     {}", paths.socket().display());
            println!(
                "  try: kubectl --kubeconfig {} get nodes,ns",
                paths.kubeconfig().display()
            );
            last_health = Instant::now() - Duration::from_secs(10);
        }
        if !ready && started.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "skiff: the API server did not become ready within 60s; see {}",
                paths.logs().join("apiserver.log").display()
            );
        }
        if last_health.elapsed() >= Duration::from_secs(2) {
            last_health = Instant::now();
            let st = state.lock().await;
            let mut text = String::new();
            for n in &names {
                let s = st.get(n).cloned().unwrap_or_default();
                let healthy = s.running
                    && if *n == "apiserver" {
                        api_ok
                    } else {
                        paths.run().join(format!("{n}.ready")).exists()
                    };
                text.push_str(&format!(
                    "{n} {} {} {}\n",
                    s.pid.unwrap_or(0),
                    if healthy {
                        "healthy"
                    } else if s.running {
                        "starting"
                    } else {
                        "restarting"
                    },
                    s.restarts
                ));
            }
            let _ = fs::write(paths.health(), text);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(if ready { 1000 } else { 50 })) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("skiff: stopping");
    // Reverse start order: the kubelet stops the pods, then networking goes, then the API.
    for (t, stop_tx) in tasks.into_iter().rev() {
        let _ = stop_tx.send(true);
        let _ = t.await;
    }
    let _ = fs::remove_file(paths.health());
    let _ = fs::remove_file(paths.up_pid());
    eprintln!("skiff: stopped");
    Ok(0)
}

pub async fn down(data_dir: &Path, purge: bool) -> Result<u8> {
    let paths = Paths::new(data_dir);
    match read_pid(&paths.up_pid()) {
        Some(pid) if pid_alive(pid) => {
            kill(Pid::from_raw(pid), Signal::SIGTERM).context("signalling skiff up")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while pid_alive(pid) {
                if Instant::now() > deadline {
                    bail!("skiff up (pid {pid}) did not stop within 60s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("skiff: cluster stopped");
        }
        _ => println!("skiff: no cluster running from {}", data_dir.display()),
    }
    if purge {
        // Only remove a directory that is recognisably a skiff data directory.
        let looks_like_ours =
            paths.db().exists() || paths.pki().exists() || data_dir.join("config.json").exists();
        if data_dir.parent().is_none() || !looks_like_ours {
            if data_dir.exists() {
                bail!(
                    "{} does not look like a skiff data directory; not removing it",
                    data_dir.display()
                );
            }
        } else {
            fs::remove_dir_all(data_dir)
                .with_context(|| format!("removing {}", data_dir.display()))?;
            println!("skiff: removed {}", data_dir.display());
        }
    }
    Ok(0)
}

pub async fn status(data_dir: &Path) -> Result<u8> {
    let paths = Paths::new(data_dir);
    let Some(pid) = read_pid(&paths.up_pid()).filter(|p| pid_alive(*p)) else {
        println!("skiff: not running (data dir {})", data_dir.display());
        return Ok(1);
    };
    println!(
        "skiff up: running (pid {pid}), data dir {}",
        data_dir.display()
    );
    let api = api_ready(&paths.socket()).await;
    println!("{:<12} {:<8} {:<11} RESTARTS", "DAEMON", "PID", "STATUS");
    let health = fs::read_to_string(paths.health()).unwrap_or_default();
    for line in health.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4 {
            let st = if f[0] == "apiserver" && !api {
                "unhealthy"
            } else {
                f[2]
            };
            println!("{:<12} {:<8} {:<11} {}", f[0], f[1], st, f[3]);
        }
    }
    Ok(if api { 0 } else { 1 })
}
