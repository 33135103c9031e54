//! The `skiff-netd` daemon: pod networking for one skiff cluster.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use skiff_core::config::{self, Cidr, Paths};
use skiff_core::controller::Controller;
use skiff_netd::controller::{error_policy, reconcile, Ctx};
use skiff_netd::ipam::Ipam;
use skiff_netd::link::{Kernel, PodLinks};
use skiff_netd::nft::{Nft, NftCommand};
use skiff_netd::policyctl::{self, Caches, Trigger};
use skiff_netd::rules::{base_commands, base_ruleset, delete_table, BaseConfig, TABLE};

#[derive(Parser)]
#[command(name = "skiff-netd", about = "skiff pod networking")]
struct Args {
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long, default_value = config::DEFAULT_POD_CIDR, value_parser = Cidr::parse)]
    pod_cidr: Cidr,
    #[arg(long, default_value = config::DEFAULT_SERVICE_CIDR, value_parser = Cidr::parse)]
    service_cidr: Cidr,
    #[arg(long, default_value = config::DEFAULT_BRIDGE)]
    bridge: String,
    /// Masquerade pod traffic leaving the host (off by default: pod traffic stays on the host).
    #[arg(long)]
    masquerade: bool,
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("setting {path}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let paths = Paths::new(&args.data_dir);
    let netd_dir = args.data_dir.join("netd");
    std::fs::create_dir_all(&netd_dir)?;
    let netns_dir = paths.run().join("netns");
    std::fs::create_dir_all(&netns_dir)?;

    // Host side: the bridge, forwarding, bridged traffic visible to nftables, the safety rules.
    let links = Kernel;
    let ipam = Ipam::load(args.pod_cidr, &netd_dir.join("ipam.json"))?;
    links
        .ensure_bridge(&args.bridge, ipam.gateway(), ipam.prefix())
        .await
        .context("creating the bridge")?;
    sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    if let Err(e) = sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables", "1") {
        tracing::warn!("bridged pod traffic is not visible to nftables: {e:#}");
    }
    let base = BaseConfig {
        pod_cidr: args.pod_cidr,
        service_cidr: args.service_cidr,
        bridge: args.bridge.clone(),
        masquerade: args.masquerade,
    };
    // A fresh start installs the base table now (the safety rule before any pod network).
    // After a crash the old table stays in force until the first policy sync replaces it,
    // base and policies together, in one transaction.
    let nft = Arc::new(NftCommand);
    if !nft.table_exists(TABLE) {
        nft.apply(&base_ruleset(&base))
            .context("installing the nftables rules")?;
    }

    let client = skiff_core::kubeclient::connect(&paths, Duration::from_secs(60)).await?;
    let trigger = Arc::new(Trigger::default());
    let (namespaces, policies) = policyctl::watch_objects(client.clone(), trigger.clone());
    // The controller's pod cache is the one the policy sync reads: a pod being reconciled is
    // always in it.
    let controller = Controller::new(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(Ctx {
        pods: controller.store(),
        client: client.clone(),
        links: Kernel,
        ipam: Mutex::new(ipam),
        bridge: args.bridge.clone(),
        netns_dir,
        policy: trigger.clone(),
        policies: policies.clone(),
        seen: Mutex::new(Default::default()),
        verified: Mutex::new(Default::default()),
        published: Mutex::new(Default::default()),
    });

    // Restart safety: drop whatever no existing pod explains before reconciling.
    let pods = Api::<Pod>::all(client.clone())
        .list(&Default::default())
        .await?;
    let live: HashSet<String> = pods
        .items
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                || p.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == skiff_netd::controller::FINALIZER)
        })
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let removed = ctx.gc(&live).await?;
    if removed > 0 {
        tracing::info!("removed {removed} stale network objects");
    }
    let _ = std::fs::write(paths.run().join("netd.ready"), "");
    tracing::info!("netd ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let caches = Caches {
        pods: controller.store(),
        namespaces,
        policies,
    };
    let ctx2 = ctx.clone();
    let ip_of =
        Arc::new(move |uid: &str| ctx2.ipam.lock().unwrap_or_else(|e| e.into_inner()).get(uid));
    let sync = tokio::spawn(policyctl::run(
        caches,
        trigger,
        nft.clone(),
        ip_of,
        base_commands(&base),
    ));
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .await;
    sync.abort();

    // Orderly stop: remove the kernel state; the objects stay for the next start.
    tracing::info!("netd stopping: removing pod networks, bridge and rules");
    let _ = std::fs::remove_file(paths.run().join("netd.ready"));
    if let Err(e) = ctx.teardown_all().await {
        tracing::warn!("removing pod networks: {e}");
    }
    if let Err(e) = ctx.links.delete_link(&args.bridge).await {
        tracing::warn!("removing the bridge: {e}");
    }
    if let Err(e) = nft.apply(&delete_table()) {
        tracing::warn!("removing the nftables table: {e}");
    }
    Ok(())
}
