//! Pod benchmark (root): pod start latency (create → Running seen by a watch) for pods one at
//! a time and many at once, delete latency, and the RSS of the daemons and pod supervisors at
//! 0, 100 and 500 pods, against a release `skiff up` in a throwaway network namespace.
//! Run: `cargo build --release --workspace && cargo bench --bench pods`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_core::client::ApiClient;

mod common;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A `Name:   123 kB` field of a /proc file, in kB (0 when missing).
fn kb_field(path: &str, name: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// RSS and PSS in MiB of processes whose command line mentions `needle`, grouped by program.
/// RSS counts pages shared between processes (the shims' program text) once per process; PSS
/// divides them among the processes sharing them, so it adds up to what the pods really cost.
fn rss(needle: &str) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(needle) {
            continue;
        }
        let kb = kb_field(&format!("/proc/{pid}/status"), "VmRSS:");
        let pss_kb = kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        let prog = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let key = if cmd.contains(" shim ") {
            format!("{prog} shim (all)")
        } else if cmd.contains(" pause ") {
            format!("{prog} pause (all)")
        } else if prog == "skiff-kubelet" {
            "skiff-kubelet".into()
        } else {
            prog
        };
        let e = out.entry(key).or_default();
        e.0 += kb / 1024.0;
        e.1 += pss_kb / 1024.0;
    }
    out
}

fn pod(name: &str) -> String {
    json!({"metadata": {"name": name, "labels": {"bench": "1"}}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "command": ["sleep", "3600"]}]}}).to_string()
}

/// Watches pods and records when each was first seen Running / deleted.
async fn watch(c: ApiClient, tx: tokio::sync::mpsc::UnboundedSender<(String, String, Instant)>) {
    let (_, mut lines) = c
        .stream(
            "/api/v1/namespaces/default/pods?watch=true&labelSelector=bench%3D1",
            None,
        )
        .await
        .unwrap();
    let trace = std::env::var("SKIFF_BENCH_TRACE").is_ok();
    let t0 = Instant::now();
    while let Ok(Some(l)) = lines.next_line().await {
        let v: Value = serde_json::from_slice(&l).unwrap_or_default();
        let name = v["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let what = if v["type"] == "DELETED" {
            "deleted".to_string()
        } else {
            v["object"]["status"]["phase"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        if trace {
            // SKIFF_BENCH_TRACE: every event of the one-at-a-time pods, to see where time goes.
            let o = &v["object"];
            eprintln!(
                "{:>10.1} ms {name} {} node={} fins={} ip={} phase={}",
                t0.elapsed().as_secs_f64() * 1e3,
                v["type"].as_str().unwrap_or(""),
                o["spec"]["nodeName"].as_str().unwrap_or("-"),
                o["metadata"]["finalizers"].as_array().map_or(0, Vec::len),
                o["status"]["podIP"].as_str().unwrap_or("-"),
                o["status"]["phase"].as_str().unwrap_or("-"),
            );
        }
        let _ = tx.send((name, what, Instant::now()));
    }
}

async fn wait_all(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String, Instant)>,
    names: &[String],
    state: &str,
    seen: &mut HashMap<String, Instant>,
) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while names.iter().any(|n| !seen.contains_key(n)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((n, what, at))) if what == state => {
                seen.entry(n).or_insert(at);
            }
            Ok(Some(_)) => {}
            _ => panic!("timed out waiting for {state}"),
        }
    }
}

/// The reference: the same container (`sleep`, the host's /usr, /bin, /lib and /etc read-only)
/// started by crun with a network namespace from the CNI `bridge` plugin (host-local IPAM), the
/// way a CRI runtime does it: `ip netns add`, CNI ADD, `crun run --detach`; deleted with
/// `crun delete --force`, CNI DEL, `ip netns del`. Runs on a thread inside a throwaway network
/// namespace (the bridge lives there) and a private mount namespace. Returns (start, delete)
/// latencies, or why it could not run.
fn crun_reference(n: usize, dir: &Path) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    for (tool, pkg) in [
        ("crun", "crun"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is missing (Debian package {pkg})"));
        }
    }
    let host = format!("skiff-bench-ref-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &host])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("cannot create the reference's network namespace".into());
    }
    let dir = dir.to_path_buf();
    let hostns = format!("/run/netns/{host}");
    let res = std::thread::spawn(move || -> Result<(Vec<Duration>, Vec<Duration>), String> {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        use nix::sched::{setns, unshare, CloneFlags};
        let fd = std::fs::File::open(&hostns).map_err(|e| e.to_string())?;
        setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        // crun 1.8 refuses hosts with both cgroup versions mounted; in a private mount
        // namespace the (controller-less) v2 hierarchy is set aside and crun runs without a
        // cgroup manager.
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| e.to_string())?;
        let _ = umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH);
        let bundle = dir.join("ref-bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(|e| e.to_string())?;
        let spec = Command::new("crun")
            .arg("spec")
            .current_dir(&bundle)
            .status()
            .map_err(|e| e.to_string())?;
        if !spec.success() {
            return Err("crun spec failed".into());
        }
        let mut cfg: Value = serde_json::from_slice(
            &std::fs::read(bundle.join("config.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        cfg["process"]["terminal"] = json!(false);
        cfg["process"]["args"] = json!(["sleep", "3600"]);
        cfg["root"] = json!({"path": bundle.join("rootfs"), "readonly": true});
        // The network namespace is the one CNI set up (its path is filled in per container).
        if let Some(nss) = cfg["linux"]["namespaces"].as_array_mut() {
            nss.retain(|n| n["type"] != "network");
            nss.push(json!({"type": "network", "path": ""}));
        }
        for d in ["usr", "bin", "lib", "lib64", "sbin", "etc"] {
            if Path::new("/").join(d).exists() {
                if let Some(m) = cfg["mounts"].as_array_mut() {
                    m.push(json!({"destination": format!("/{d}"), "type": "bind", "source": format!("/{d}"), "options": ["rbind", "ro"]}));
                }
            }
        }
        let cni = json!({"cniVersion": "1.0.0", "name": "skiff-bench", "type": "bridge", "bridge": "cni-bench0",
            "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "dataDir": dir.join("ref-ipam")}})
        .to_string();
        let crun = |args: &[&str]| -> Result<(), String> {
            // A detached container inherits crun's stdio: a file, not a pipe, so crun's
            // exit is not held up by the container's open descriptors.
            let err = std::fs::File::create(dir.join("ref-crun.err")).map_err(|e| e.to_string())?;
            let status = Command::new("crun")
                .args(["--cgroup-manager=disabled", "--root"])
                .arg(dir.join("ref-state"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .status()
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "crun {}: {}",
                    args[0],
                    std::fs::read_to_string(dir.join("ref-crun.err"))
                        .unwrap_or_default()
                        .trim()
                ))
            }
        };
        let cni_call = |cmd: &str, id: &str| {
            let mut c = Command::new("/usr/lib/cni/bridge")
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", id)
                .env("CNI_NETNS", format!("/run/netns/{id}"))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            if let Some(mut i) = c.stdin.take() {
                use std::io::Write;
                i.write_all(cni.as_bytes()).map_err(|e| e.to_string())?;
            }
            match c.wait() {
                Ok(s) if s.success() => Ok(()),
                _ => Err(format!("CNI {cmd} failed")),
            }
        };
        let (mut start, mut del) = (Vec::new(), Vec::new());
        for i in 0..n {
            let id = format!("skiff-ref-{i}");
            let r = (|| -> Result<(Duration, Duration), String> {
                let t = Instant::now();
                let out = Command::new("ip")
                    .args(["netns", "add", &id])
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "ip netns add: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                cni_call("ADD", &id)?;
                // Each container gets its own bundle config, as a CRI runtime writes one.
                let b = bundle.join(&id);
                std::fs::create_dir_all(&b).map_err(|e| e.to_string())?;
                let mut c = cfg.clone();
                if let Some(nss) = c["linux"]["namespaces"].as_array_mut() {
                    for ns in nss.iter_mut().filter(|n| n["type"] == "network") {
                        ns["path"] = json!(format!("/run/netns/{id}"));
                    }
                }
                std::fs::write(b.join("config.json"), c.to_string()).map_err(|e| e.to_string())?;
                crun(&["run", "--detach", "--bundle", &b.to_string_lossy(), &id])?;
                let started = t.elapsed();
                let t = Instant::now();
                let deleted = crun(&["delete", "--force", &id]);
                cni_call("DEL", &id)?;
                let _ = Command::new("ip").args(["netns", "del", &id]).status();
                deleted?;
                Ok((started, t.elapsed()))
            })();
            match r {
                Ok((s, d)) => {
                    start.push(s);
                    del.push(d);
                }
                Err(e) => {
                    let _ = crun(&["delete", "--force", &id]);
                    let _ = cni_call("DEL", &id);
                    let _ = Command::new("ip").args(["netns", "del", &id]).status();
                    return Err(e);
                }
            }
        }
        Ok((start, del))
    })
    .join()
    .unwrap_or_else(|_| Err("the reference thread panicked".into()));
    let _ = Command::new("ip")
        .args(["netns", "del", &host])
        .stderr(Stdio::null())
        .status();
    res
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the pod benchmark needs root");
        return;
    }
    let quick = std::env::var("SKIFF_BENCH_QUICK").is_ok();
    let (n, big) = if quick { (20, 50) } else { (100, 500) };
    // Stopped, with its namespace and files removed, however the run ends.
    let cluster = common::Cluster::start("skiff-bench", &["--max-pods", "1000"]);
    let (dir, data, startup) = (cluster.dir.clone(), cluster.data.clone(), cluster.startup);
    let sock = data.join("apiserver.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let needle = data.display().to_string();
    let mut rows = Vec::new();
    let mut rss_rows = vec![(0, rss(&needle))];
    rt.block_on(async {
        let c = ApiClient::unix(&sock);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(watch(c.clone(), tx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One at a time.
        let mut lat = Vec::new();
        for i in 0..n {
            let name = format!("seq-{i}");
            let t = Instant::now();
            if std::env::var("SKIFF_BENCH_TRACE").is_ok() {
                eprintln!("create {name}");
            }
            let r = c
                .request(
                    "POST",
                    "/api/v1/namespaces/default/pods",
                    Some("application/json"),
                    pod(&name).into_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201);
            let mut seen = HashMap::new();
            wait_all(&mut rx, std::slice::from_ref(&name), "Running", &mut seen).await;
            lat.push(seen[&name] - t);
        }
        rows.push(format!(
            "| start, one at a time | {n} | {} | {} | {} |",
            ms(pct(&mut lat.clone(), 0.5)),
            ms(pct(&mut lat.clone(), 0.99)),
            ms(*lat.iter().max().unwrap())
        ));
        rss_rows.push((n, rss(&needle)));
        // Delete them one at a time.
        let mut del = Vec::new();
        for i in 0..n {
            let name = format!("seq-{i}");
            let t = Instant::now();
            c.request(
                "DELETE",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
                Vec::new(),
            )
            .await
            .unwrap();
            let mut seen = HashMap::new();
            wait_all(&mut rx, std::slice::from_ref(&name), "deleted", &mut seen).await;
            del.push(seen[&name] - t);
        }
        rows.push(format!(
            "| delete, one at a time | {n} | {} | {} | {} |",
            ms(pct(&mut del.clone(), 0.5)),
            ms(pct(&mut del.clone(), 0.99)),
            ms(*del.iter().max().unwrap())
        ));
        // Many at once.
        let names: Vec<String> = (0..n).map(|i| format!("par-{i}")).collect();
        let mut created = HashMap::new();
        for name in &names {
            created.insert(name.clone(), Instant::now());
            let r = c
                .request(
                    "POST",
                    "/api/v1/namespaces/default/pods",
                    Some("application/json"),
                    pod(name).into_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201);
        }
        let mut seen = HashMap::new();
        wait_all(&mut rx, &names, "Running", &mut seen).await;
        let lat: Vec<Duration> = names.iter().map(|n| seen[n] - created[n]).collect();
        rows.push(format!(
            "| start, {n} at once | {n} | {} | {} | {} |",
            ms(pct(&mut lat.clone(), 0.5)),
            ms(pct(&mut lat.clone(), 0.99)),
            ms(*lat.iter().max().unwrap())
        ));
        // Up to `big` pods held at once.
        let more: Vec<String> = (n..big).map(|i| format!("par-{i}")).collect();
        for name in &more {
            let r = c
                .request(
                    "POST",
                    "/api/v1/namespaces/default/pods",
                    Some("application/json"),
                    pod(name).into_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201);
        }
        wait_all(&mut rx, &more, "Running", &mut seen).await;
        rss_rows.push((big, rss(&needle)));
    });
    println!(
        "# skiff pod benchmark\n\ncluster start to `ready`: {} ms\n",
        ms(startup)
    );
    // The reference, in the same run (the cluster is idle meanwhile).
    match crun_reference(n, &dir) {
        Ok((mut start, mut del)) => {
            rows.push(format!(
                "| reference: crun + CNI bridge start, one at a time | {n} | {} | {} | {} |",
                ms(pct(&mut start, 0.5)),
                ms(pct(&mut start, 0.99)),
                ms(*start.iter().max().unwrap())
            ));
            rows.push(format!(
                "| reference: crun + CNI bridge delete, one at a time | {n} | {} | {} | {} |",
                ms(pct(&mut del, 0.5)),
                ms(pct(&mut del, 0.99)),
                ms(*del.iter().max().unwrap())
            ));
        }
        Err(e) => eprintln!("SKIPPED: the crun + CNI reference: {e}"),
    }
    println!("| operation | pods | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    let mut progs: Vec<String> = rss_rows
        .iter()
        .flat_map(|(_, m)| m.keys().cloned())
        .collect();
    progs.sort();
    progs.dedup();
    for (what, pick) in [
        ("RSS", (|m: &(f64, f64)| m.0) as fn(&(f64, f64)) -> f64),
        ("PSS", |m: &(f64, f64)| m.1),
    ] {
        println!(
            "\n| process | {} |\n|---|{}",
            rss_rows
                .iter()
                .map(|(n, _)| format!("{what} MiB, {n} pods"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(rss_rows.len())
        );
        for p in &progs {
            println!(
                "| {p} | {} |",
                rss_rows
                    .iter()
                    .map(|(_, m)| format!("{:.1}", m.get(p).map(pick).unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
}
