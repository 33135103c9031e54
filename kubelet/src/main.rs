//! The `skiff-kubelet` binary: the node daemon (`run`), the per-pod supervisor (`shim`) and the
//! container init (`init`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use skiff_core::config::{self, Cidr, Paths};
use skiff_core::controller::Controller;
use skiff_kubelet::controller::{error_policy, reconcile, Ctx};
use skiff_kubelet::node::{node_object, node_status, HostInfo, RESERVED_MEMORY};
use skiff_kubelet::plan::Facts;

#[derive(Parser)]
#[command(name = "skiff-kubelet", about = "skiff node agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon.
    Run {
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long, default_value = config::DEFAULT_CLUSTER_DOMAIN)]
        cluster_domain: String,
        #[arg(long, default_value = config::DEFAULT_SERVICE_CIDR, value_parser = Cidr::parse)]
        service_cidr: Cidr,
        #[arg(long, default_value = config::DEFAULT_POD_CIDR, value_parser = Cidr::parse)]
        pod_cidr: Cidr,
        /// Most pods this node runs (Kubernetes' kubelet defaults to 110).
        #[arg(long, default_value_t = 110)]
        max_pods: u64,
        /// Make cgroup moves cheap host-wide with the kernel's `favordynmods` (an empty named
        /// cgroup hierarchy mounted under the data dir while the kubelet runs): containers with
        /// limits start without waiting for an RCU grace period; forks and exits cost slightly
        /// more. Off by default: it changes the whole host's kernel, and the mode was seen to
        /// outlast the mount.
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        cgroup_favor_dynmods: bool,
    },
    /// Supervise one pod (started by the kubelet).
    Shim {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Hold a pod's sandbox namespaces (started by a shim).
    Pause {
        #[arg(long)]
        hostname: String,
        /// The pod's directory: unused, it names the pod in process listings.
        #[arg(long)]
        pod_dir: Option<PathBuf>,
    },
    /// Set up a container and exec its command (started by a shim).
    Init {
        #[arg(long)]
        config: PathBuf,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

async fn register(nodes: &Api<Node>, h: &HostInfo) -> Result<()> {
    let now = skiff_core::time::now_rfc3339();
    match nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node_object(h, &now))?,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            nodes
                .patch_status(
                    &h.name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": node_status(h, &now, &now)})),
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn run(
    data_dir: PathBuf,
    node_name: Option<String>,
    cluster_domain: String,
    service_cidr: Cidr,
    pod_cidr: Cidr,
    max_pods: u64,
    favor_dynmods: bool,
) -> Result<()> {
    let paths = Paths::new(&data_dir);
    let node = node_name.unwrap_or_else(hostname);
    let host_ip = pod_cidr
        .nth(1)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut host = HostInfo::detect(&node, &host_ip);
    host.max_pods = max_pods;
    if let Err(e) = skiff_kubelet::cgroup::ensure_mounted() {
        tracing::warn!("cgroups are not available, resource limits cannot be enforced: {e}");
    }
    // Whatever an earlier run of this cluster left empty.
    skiff_kubelet::cgroup::sweep(&skiff_kubelet::cgroup::cluster_id(&data_dir));
    let dynmods_dir = paths.run().join("cgroup-dynmods");
    let dynmods = favor_dynmods
        && match skiff_kubelet::cgroup::favor_dynmods(&dynmods_dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cgroup favordynmods is not available ({e}): containers join their cgroups the slow way");
                false
            }
        };
    let client = skiff_core::kubeclient::connect(&paths, Duration::from_secs(60)).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    register(&nodes, &host)
        .await
        .context("registering the node")?;
    let pods_dir = data_dir.join("kubelet/pods");
    let logs_dir = data_dir.join("logs/pods");
    skiff_kubelet::sandbox::mount_state_dir(&pods_dir)?;
    std::fs::create_dir_all(&logs_dir)?;
    let facts = Facts {
        cluster_domain,
        dns_ip: service_cidr
            .nth(10)
            .map(|i| i.to_string())
            .unwrap_or_default(),
        host_resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_hostname: hostname(),
        host_hosts: std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        ..Default::default()
    };
    let controller = Controller::new(Api::<Pod>::all(client.clone()), watcher::Config::default());
    // Shims say which pod changed on this socket; that pod is reconciled at once.
    let notify_path = paths.run().join("kubelet-notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify =
        tokio::net::UnixDatagram::bind(&notify_path).context("binding the notify socket")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o600))?;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        reported: Default::default(),
        client: client.clone(),
        node: node.clone(),
        host_ip,
        pods_dir,
        logs_dir,
        netns_dir: paths.run().join("netns"),
        facts,
        masked: vec![data_dir.display().to_string()],
        alloc_cpu_m: host.cpus as i64 * 1000,
        alloc_mem: host.memory_bytes.saturating_sub(RESERVED_MEMORY) as i64,
        max_pods: max_pods as i64,
        cgroup_cluster: skiff_kubelet::cgroup::cluster_id(&data_dir),
        cgroup_dynmods: dynmods,
        pods: controller.store(),
        bound: Default::default(),
        notify: notify_path.display().to_string(),
        status_locks: Default::default(),
    });
    {
        let (store, ctx) = (controller.store(), ctx.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok(n) = notify.recv(&mut buf).await {
                let uid = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = store
                    .state()
                    .into_iter()
                    .find(|p| p.metadata.uid.as_deref() == Some(uid.as_str()));
                if let Some(p) = found {
                    // A running pod's new state goes to the API at once; anything else (a
                    // shim that ended, a pod being deleted) is the controller's to handle.
                    let (ctx, tx) = (ctx.clone(), tx.clone());
                    tokio::spawn(async move {
                        if !skiff_kubelet::controller::sync_running(&ctx, &p).await {
                            let _ = tx.send(ObjectRef::from_obj(&*p));
                        }
                    });
                }
            }
        });
    }
    // Heartbeats keep the Ready condition fresh.
    {
        let (nodes, host) = (nodes.clone(), host.clone());
        tokio::spawn(async move {
            let since = skiff_core::time::now_rfc3339();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = skiff_core::time::now_rfc3339();
                let _ = nodes
                    .patch_status(
                        &host.name,
                        &PatchParams::default(),
                        &Patch::Merge(
                            serde_json::json!({"status": node_status(&host, &now, &since)}),
                        ),
                    )
                    .await;
            }
        });
    }
    {
        let server = skiff_kubelet::server::Server {
            logs_root: ctx.logs_dir.clone(),
            pods_dir: ctx.pods_dir.clone(),
        };
        let sock = paths.run().join("kubelet.sock");
        tokio::spawn(async move {
            if let Err(e) = skiff_kubelet::server::serve(sock, server).await {
                tracing::error!("kubelet API socket: {e}");
            }
        });
    }
    let _ = std::fs::write(paths.run().join("kubelet.ready"), "");
    tracing::info!("kubelet ready as node {node}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let triggers =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .await;
    tracing::info!("kubelet stopping: stopping every pod");
    let _ = std::fs::remove_file(paths.run().join("kubelet.ready"));
    ctx.stop_all().await;
    // Like a node going down: nothing of the pods is left; the next start recreates them.
    for d in std::fs::read_dir(&ctx.pods_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        skiff_kubelet::cgroup::remove_pod(&format!(
            "{}/{}",
            ctx.cgroup_cluster,
            d.file_name().to_string_lossy()
        ));
        skiff_kubelet::sandbox::release(&d.path());
        let _ = std::fs::remove_dir_all(d.path());
    }
    skiff_kubelet::sandbox::unmount_state_dir(&ctx.pods_dir);
    skiff_kubelet::cgroup::sweep(&ctx.cgroup_cluster);
    if dynmods {
        skiff_kubelet::cgroup::release_dynmods(&dynmods_dir);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Pause { hostname, .. } => skiff_kubelet::init::pause(&hostname),
        Cmd::Init { config } => skiff_kubelet::init::main(&config),
        Cmd::Shim { dir } => skiff_kubelet::shim::main(&dir),
        Cmd::Run {
            data_dir,
            node_name,
            cluster_domain,
            service_cidr,
            pod_cidr,
            max_pods,
            cgroup_favor_dynmods,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match rt.map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(run(
                    data_dir,
                    node_name,
                    cluster_domain,
                    service_cidr,
                    pod_cidr,
                    max_pods,
                    cgroup_favor_dynmods,
                ))
            }) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff-kubelet: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
