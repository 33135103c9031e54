//! NetworkPolicy sync benchmark: 1000 pods × 1000 policies compiled to the desired ruleset
//! (pure) and installed with one `nft -j` transaction into a throwaway network namespace
//! (root); then one pod's labels change and the incremental sync (compute, diff, apply) is
//! timed. Run: `cargo bench -p skiff-netd --bench policy_sync`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use skiff_core::config::Cidr;
use skiff_netd::nft::{Nft, NftCommand};
use skiff_netd::policy::{compute, Cluster, Desired, Labels, NamedPort, PodInfo, Proto};
use skiff_netd::policy_nft::{batch, diff};
use skiff_netd::rules::{base_commands, BaseConfig};

const NAMESPACES: usize = 20;
const APPS: usize = 50;

fn pods(n: usize) -> Vec<PodInfo> {
    (0..n)
        .map(|i| PodInfo {
            namespace: format!("ns-{}", i % NAMESPACES),
            name: format!("pod-{i}"),
            labels: Labels::from([
                ("app".to_string(), format!("app-{}", i % APPS)),
                ("tier".to_string(), ["web", "api", "db"][i % 3].to_string()),
            ]),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i as u32),
            ports: vec![NamedPort {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 8080,
            }],
        })
        .collect()
}

/// A mix of the shapes people write: pod and namespace selectors, both, ipBlock with except,
/// numeric, named and ranged ports, egress.
fn policies(n: usize) -> Vec<NetworkPolicy> {
    (0..n)
        .map(|i| {
            let app = format!("app-{}", i % APPS);
            let peer = format!("app-{}", (i + 1) % APPS);
            let spec = match i % 4 {
                0 => json!({"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}], "ports": [{"port": 80}, {"port": "http"}]}]}),
                1 => json!({"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}]}]}),
                2 => json!({"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", i % 200)]}}], "ports": [{"port": 8000, "endPort": 8100}]}],
                    "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": 5432}]}, {"ports": [{"port": 53, "protocol": "UDP"}]}]}),
                _ => json!({"podSelector": {"matchLabels": {"tier": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns-{}", i % NAMESPACES)}}}]}]}),
            };
            serde_json::from_value(json!({
                "metadata": {"name": format!("np-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
                "spec": spec
            }))
            .unwrap()
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn elements(d: &Desired) -> usize {
    d.sets.values().map(|s| s.elems.len()).sum::<usize>() + d.ingress.len() + d.egress.len()
}

fn main() {
    let (npods, npols) = (1000, 1000);
    let pods = pods(npods);
    let mut nss: BTreeMap<String, Labels> = BTreeMap::new();
    for i in 0..NAMESPACES {
        let mut l = Labels::from([("kubernetes.io/metadata.name".to_string(), format!("ns-{i}"))]);
        if i % 2 == 0 {
            l.insert("team".into(), "blue".into());
        }
        nss.insert(format!("ns-{i}"), l);
    }
    let pols = policies(npols);

    // Compute: the whole picture to the desired ruleset.
    let mut times = Vec::new();
    let mut want = Desired::default();
    for _ in 0..5 {
        let t = Instant::now();
        want = compute(&pols, &Cluster::new(&pods, &nss));
        times.push(t.elapsed());
    }
    let compute_ms = median(times);
    let full = diff(&Desired::default(), &want);
    println!("# NetworkPolicy sync benchmark\n");
    println!(
        "{npods} pods in {NAMESPACES} namespaces, {npols} policies: {} chains, {} sets, {} set and map elements, {} commands in the full transaction\n",
        want.chains.len(),
        want.sets.len(),
        elements(&want),
        full.len()
    );
    println!("| step | median ms |\n|---|---|");
    println!("| compute desired ruleset (pure) | {} |", ms(compute_ms));

    // Label change, pure part: recompute and diff.
    let mut changed = pods.clone();
    // pod-0 (ns-0, app-0) stops being selected by np-0 and becomes one of its peers instead.
    changed[0].labels.insert("app".into(), "app-1".into());
    let t = Instant::now();
    let after = compute(&pols, &Cluster::new(&changed, &nss));
    let small = diff(&want, &after);
    let label_pure = t.elapsed();
    println!(
        "| label change: recompute + diff ({} commands) | {} |",
        small.len(),
        ms(label_pure)
    );

    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: applying to the kernel needs root");
        return;
    }
    let ns = format!("skiff-npbench-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let path = format!("/run/netns/{ns}");
    let results = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let base = base_commands(&BaseConfig {
            pod_cidr: Cidr::parse("10.244.0.0/16").unwrap(),
            service_cidr: Cidr::parse("10.96.0.0/12").unwrap(),
            bridge: "skiff0".into(),
            masquerade: false,
        });
        let mut full_apply = Vec::new();
        let mut full_sync = Vec::new();
        let mut inc = Vec::new();
        for _ in 0..5 {
            // Full sync as netd's first sync does it: compute, then replace the table with
            // base + policies in one transaction.
            let t = Instant::now();
            let want = compute(&pols, &Cluster::new(&pods, &nss));
            let mut cmds = base.clone();
            cmds.extend(diff(&Desired::default(), &want));
            let t_apply = Instant::now();
            NftCommand.apply(&batch(cmds)).unwrap();
            full_apply.push(t_apply.elapsed());
            full_sync.push(t.elapsed());
            // A label change there and back, as netd syncs it: compute, diff against what
            // was applied, apply.
            let mut applied = want;
            for to in [&changed, &pods] {
                let t = Instant::now();
                let next = compute(&pols, &Cluster::new(to, &nss));
                let cmds = diff(&applied, &next);
                assert!(!cmds.is_empty());
                NftCommand.apply(&batch(cmds)).unwrap();
                inc.push(t.elapsed());
                applied = next;
            }
        }
        NftCommand
            .apply(&skiff_netd::rules::delete_table())
            .unwrap();
        (median(full_apply), median(full_sync), median(inc))
    })
    .join();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let (apply, sync, inc) = results.unwrap();
    println!("| full transaction applied by `nft -j` | {} |", ms(apply));
    println!("| full sync (compute + apply) | {} |", ms(sync));
    println!("| label change: compute + diff + apply | {} |", ms(inc));
}
