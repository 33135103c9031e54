//! NetworkPolicy end-to-end benchmark (root), against a release `skiff up` in a throwaway
//! network namespace: the time from a pod-label change (PATCH sent) to the new verdict being
//! in force (first connection that gets through), and iperf3 throughput plus a TCP
//! connection rate between two pods with 0 and with 1000 policies in the same run.
//! Run: `cargo build --release --workspace && cargo bench --bench netpol` (needs `iperf3`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

struct Bench {
    exe: PathBuf,
    data: PathBuf,
}

impl Bench {
    fn api(&self, method: &str, path: &str, body: Option<Value>, ctype: &str) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H"])
            .arg(format!("Content-Type: {ctype}"))
            .arg("--unix-socket")
            .arg(self.data.join("apiserver.sock"))
            .arg(format!("http://localhost{path}"));
        if let Some(b) = body {
            c.args(["--data-binary", &b.to_string()]);
        }
        let out = c.output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let (body, code) = s.rsplit_once('\n').unwrap();
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn create(&self, path: &str, body: Value) {
        let (code, v) = self.api("POST", path, Some(body), "application/json");
        assert_eq!(code, 201, "{v}");
    }

    /// (uid, ip) once the pod is Running.
    fn wait_running(&self, name: &str) -> (String, String) {
        let t = Instant::now();
        loop {
            let (_, p) = self.api(
                "GET",
                &format!("/api/v1/namespaces/bench/pods/{name}"),
                None,
                "application/json",
            );
            if p["status"]["phase"] == "Running" {
                if let Some(ip) = p["status"]["podIP"].as_str() {
                    return (p["metadata"]["uid"].as_str().unwrap().into(), ip.into());
                }
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{name}: {p}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command in a pod's network namespace (the pod netns mounts live in `skiff up`'s
    /// mount namespace).
    fn in_pod(&self, uid: &str, program: &str) -> Command {
        let up = std::fs::read_to_string(self.data.join("run/up.pid")).unwrap();
        let mut c = Command::new("nsenter");
        c.args(["-t", up.trim(), "-m", "--", "nsenter"])
            .arg(format!(
                "--net={}",
                self.data.join("run/netns").join(uid).display()
            ))
            .args(["--", program]);
        c
    }
}

const CONN_SERVER: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
"#;

const CONN_RATE: &str = r#"
import socket, sys, time
ip, secs = sys.argv[1], float(sys.argv[2])
n, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    s = socket.create_connection((ip, 8080), timeout=1); s.recv(1); s.close(); n += 1
print(n / secs)
"#;

/// Reads "go" lines; for each, says "started", then connects with a short timeout until one
/// gets through and prints the milliseconds that took.
const OPENER: &str = r#"
import socket, sys, time
ip = sys.argv[1]
for line in sys.stdin:
    t0 = time.monotonic()
    print("started", flush=True)
    while True:
        s = socket.socket(); s.settimeout(0.005)
        try:
            s.connect((ip, 8080)); s.close(); break
        except OSError:
            s.close()
    print((time.monotonic() - t0) * 1000, flush=True)
"#;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn measure(b: &Bench, client: &str, server_ip: &str) -> (f64, f64) {
    let out = b
        .in_pod(client, "iperf3")
        .args(["-c", server_ip, "-t", "5", "-J"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("iperf3: {}", String::from_utf8_lossy(&out.stderr));
    });
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9;
    let out = b
        .in_pod(client, "python3")
        .args(["-c", CONN_RATE, server_ip, "3"])
        .output()
        .unwrap();
    let rate: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("conn rate: {}", String::from_utf8_lossy(&out.stderr)));
    (gbps, rate)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the NetworkPolicy benchmark needs root");
        return;
    }
    if Command::new("iperf3").arg("-v").output().is_err() {
        eprintln!("SKIPPED: iperf3 is not installed (Debian package iperf3)");
        return;
    }
    // Stopped, with its namespace and files removed, however the run ends.
    let cluster = common::Cluster::start("skiff-npe2e", &[]);
    let (exe, data) = (cluster.exe.clone(), cluster.data.clone());
    let b = Bench {
        exe,
        data: data.clone(),
    };
    let _ = &b.exe;
    b.create("/api/v1/namespaces", json!({"metadata": {"name": "bench"}}));
    b.create(
        "/api/v1/namespaces/bench/pods",
        json!({"metadata": {"name": "server", "labels": {"app": "server"}}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [
            {"name": "iperf", "command": ["iperf3", "-s"]},
            {"name": "conn", "command": ["python3", "-c", CONN_SERVER]}
        ]}}),
    );
    b.create(
        "/api/v1/namespaces/bench/pods",
        json!({"metadata": {"name": "client", "labels": {"app": "client", "role": "client"}}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [
            {"name": "c", "command": ["sleep", "infinity"]}
        ]}}),
    );
    let (_, server_ip) = b.wait_running("server");
    let (client, _) = b.wait_running("client");
    std::thread::sleep(Duration::from_secs(1));
    let policies = "/apis/networking.k8s.io/v1/namespaces/bench/networkpolicies";

    let mut rows = Vec::new();
    let base = measure(&b, &client, &server_ip);
    rows.push(("0 policies".to_string(), base));
    // 1000 policies, one of which lets the client in; the others select pods that do not
    // exist (policies elsewhere in the cluster).
    b.create(
        policies,
        json!({"metadata": {"name": "allow-client"}, "spec": {"podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}}),
    );
    for i in 0..999 {
        b.create(
            policies,
            json!({"metadata": {"name": format!("other-{i}")}, "spec": {"podSelector": {"matchLabels": {"app": format!("app-{i}")}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("r-{i}")}}}], "ports": [{"port": 80 + (i % 100)}]}]}}),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    rows.push((
        "1000 policies, 1 selecting the server".into(),
        measure(&b, &client, &server_ip),
    ));
    // Worst case for this design: all 1000 select the server (its chain checks each).
    for i in 0..999 {
        let (code, v) = b.api(
            "PATCH",
            &format!("{policies}/other-{i}"),
            Some(json!({"spec": {"podSelector": {"matchLabels": {"app": "server"}}}})),
            "application/merge-patch+json",
        );
        assert_eq!(code, 200, "{v}");
    }
    std::thread::sleep(Duration::from_secs(2));
    rows.push((
        "1000 policies, all selecting the server".into(),
        measure(&b, &client, &server_ip),
    ));

    // Label change → verdict in force.
    let mut opener = b
        .in_pod(&client, "python3")
        .args(["-c", OPENER, &server_ip])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = opener.stdin.take().unwrap();
    let mut out = BufReader::new(opener.stdout.take().unwrap());
    let mut lat = Vec::new();
    for _ in 0..20 {
        let (code, _) = b.api(
            "PATCH",
            "/api/v1/namespaces/bench/pods/client",
            Some(json!({"metadata": {"labels": {"role": null}}})),
            "application/merge-patch+json",
        );
        assert_eq!(code, 200);
        // Blocked again?
        let t = Instant::now();
        loop {
            let o = b
                .in_pod(&client, "python3")
                .args(["-c", "import socket,sys; s=socket.socket(); s.settimeout(0.05); s.connect((sys.argv[1], 8080))", &server_ip])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if !o.success() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "label removal never took effect"
            );
        }
        // The prober starts first and times from then: the figure includes the PATCH
        // round trip, the watch, the sync and the first connection that gets through.
        writeln!(stdin, "go").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "started");
        let (code, _) = b.api(
            "PATCH",
            "/api/v1/namespaces/bench/pods/client",
            Some(json!({"metadata": {"labels": {"role": "client"}}})),
            "application/merge-patch+json",
        );
        assert_eq!(code, 200);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lat.push(line.trim().parse::<f64>().unwrap());
    }
    drop(stdin);
    let _ = opener.kill();
    let _ = opener.wait();

    println!("# NetworkPolicy end-to-end benchmark\n");
    println!("| setting | iperf3 Gbit/s | vs 0 policies | TCP connections/s | vs 0 policies |\n|---|---|---|---|---|");
    for (what, (g, r)) in &rows {
        println!(
            "| {what} | {g:.2} | {:.2}× | {r:.0} | {:.2}× |",
            g / base.0,
            r / base.1
        );
    }
    println!(
        "\nlabel change → verdict in force (1000 policies present), {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(&mut lat.clone(), 0.5),
        pct(&mut lat.clone(), 0.99),
        pct(&mut lat.clone(), 1.0)
    );

    drop(cluster);
}
