//! API server benchmark: durable creates/s and latency at 1 and 64 concurrent clients, GET and
//! LIST latency, and watch latency (write acknowledged → event received), against a release
//! `skiff-apiserver` over its Unix socket. In the same run, etcd (if installed) is driven with
//! the same harness and concurrency through its HTTP/JSON gateway (`/v3/kv/put`) as the
//! reference. Run: `cargo build --release --workspace && cargo bench --bench api`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

enum Target {
    Unix(PathBuf),
    Tcp(String),
}

async fn connect(t: &Target) -> SendRequest<Full<Bytes>> {
    let (sender, conn) = match t {
        Target::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await.expect("connect");
            let (a, b) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .expect("handshake");
            tokio::spawn(async move {
                let _ = b.await;
            });
            return a;
        }
        Target::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .expect("handshake")
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn call(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Bytes) {
    s.ready().await.expect("ready");
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = s.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

struct Run {
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// `clients` concurrent clients, each issuing `per_client` requests built by `mk`.
async fn load<F>(target: Arc<Target>, clients: usize, per_client: usize, mk: F) -> Run
where
    F: Fn(usize, usize) -> (String, String, Vec<u8>, u16) + Send + Sync + 'static,
{
    let mk = Arc::new(mk);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (target, mk) = (target.clone(), mk.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&target).await;
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let (m, p, b, want) = mk(c, i);
                let t = Instant::now();
                let (code, body) = call(&mut s, &m, &p, b).await;
                lat.push(t.elapsed());
                assert_eq!(code, want, "{m} {p}: {}", String::from_utf8_lossy(&body));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    let n = all.len();
    Run {
        ops_per_s: n as f64 / secs,
        p50: pct(&mut all, 0.50),
        p99: pct(&mut all, 0.99),
    }
}

fn wait_for(what: impl Fn() -> bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !what() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
        / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{cores} cores ({cpu}), {mem} GiB RAM, Linux {kernel}")
}

const SMALL: usize = 64;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
    let apiserver = exe.parent().unwrap().join("skiff-apiserver");
    assert!(
        apiserver.exists(),
        "build first: cargo build --release --workspace"
    );
    let dir = std::env::temp_dir().join(format!("skiff-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let quick = std::env::var("SKIFF_BENCH_QUICK").is_ok();
    let (n1, n64) = if quick { (200, 30) } else { (3000, 400) };
    println!("# skiff API benchmark\n\nmachine: {}\n", machine());

    let data = dir.join("skiff");
    let sock = data.join("apiserver.sock");
    let _server = Proc(
        Command::new(&apiserver)
            .arg("--data-dir")
            .arg(&data)
            .arg("--api-port")
            .arg(free_port().to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        || Path::new(&sock).exists() && std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        Duration::from_secs(30),
    );
    let skiff = Arc::new(Target::Unix(sock.clone()));
    let payload = "x".repeat(SMALL);

    let mut rows = Vec::new();
    for (clients, per) in [(1usize, n1), (64, n64)] {
        let p = payload.clone();
        let r = rt.block_on(load(skiff.clone(), clients, per, move |c, i| {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{clients}-{c}-{i}")}, "data": {"v": p}});
            ("POST".into(), "/api/v1/namespaces/default/configmaps".into(), body.to_string().into_bytes(), 201)
        }));
        rows.push(format!(
            "| skiff create (durable) | {clients} | {} | {:.0} | {} | {} |",
            clients * per,
            r.ops_per_s,
            ms(r.p50),
            ms(r.p99)
        ));
    }
    let total = n1 + 64 * n64;
    let r = rt.block_on(load(skiff.clone(), 1, n1, move |_, i| {
        (
            "GET".into(),
            format!("/api/v1/namespaces/default/configmaps/c1-0-{}", i % n1),
            Vec::new(),
            200,
        )
    }));
    rows.push(format!(
        "| skiff GET one object | 1 | {n1} | {:.0} | {} | {} |",
        r.ops_per_s,
        ms(r.p50),
        ms(r.p99)
    ));
    let r = rt.block_on(load(skiff.clone(), 64, n64, move |c, i| {
        (
            "GET".into(),
            format!("/api/v1/namespaces/default/configmaps/c64-{c}-{i}"),
            Vec::new(),
            200,
        )
    }));
    rows.push(format!(
        "| skiff GET one object | 64 | {} | {:.0} | {} | {} |",
        64 * n64,
        r.ops_per_s,
        ms(r.p50),
        ms(r.p99)
    ));
    // LIST: a namespace of 100 objects, and the whole store.
    rt.block_on(async {
        let mut s = connect(&skiff).await;
        call(
            &mut s,
            "POST",
            "/api/v1/namespaces",
            json!({"metadata": {"name": "list100"}})
                .to_string()
                .into_bytes(),
        )
        .await;
        for i in 0..100 {
            call(
                &mut s,
                "POST",
                "/api/v1/namespaces/list100/configmaps",
                json!({"metadata": {"name": format!("o{i}")}, "data": {"v": payload}})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        }
    });
    let r = rt.block_on(load(skiff.clone(), 1, 300, |_, _| {
        (
            "GET".into(),
            "/api/v1/namespaces/list100/configmaps".into(),
            Vec::new(),
            200,
        )
    }));
    rows.push(format!(
        "| skiff LIST 100 objects | 1 | 300 | {:.0} | {} | {} |",
        r.ops_per_s,
        ms(r.p50),
        ms(r.p99)
    ));
    let r = rt.block_on(load(skiff.clone(), 1, 10, |_, _| {
        ("GET".into(), "/api/v1/configmaps".into(), Vec::new(), 200)
    }));
    rows.push(format!(
        "| skiff LIST all ({} objects) | 1 | 10 | {:.1} | {} | {} |",
        total + 100,
        r.ops_per_s,
        ms(r.p50),
        ms(r.p99)
    ));

    // Watch latency: time from the create's acknowledgement back to the writer... and from the
    // write being sent to the event arriving on an open watch.
    let watch = rt.block_on(async {
        let mut w = connect(&skiff).await;
        w.ready().await.unwrap();
        let req = Request::builder().uri("/api/v1/namespaces/default/configmaps?watch=true&labelSelector=w%3D1&resourceVersion=0").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
        let resp = w.send_request(req).await.unwrap();
        let mut body = resp.into_body();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                        let name = v["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
                        let _ = tx.send((name, Instant::now()));
                    }
                }
            }
        });
        let mut s = connect(&skiff).await;
        let mut lat = Vec::new();
        let n = if quick { 50 } else { 500 };
        for i in 0..n {
            let name = format!("watched-{i}");
            let t = Instant::now();
            let (code, _) = call(&mut s, "POST", "/api/v1/namespaces/default/configmaps", json!({"metadata": {"name": name, "labels": {"w": "1"}}}).to_string().into_bytes()).await;
            assert_eq!(code, 201);
            loop {
                let (got, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("watch event").expect("watch open");
                if got == name {
                    lat.push(at - t);
                    break;
                }
            }
        }
        lat
    });
    let mut wl = watch;
    rows.push(format!(
        "| skiff watch: create sent → event received | 1 | {} | - | {} | {} |",
        wl.len(),
        ms(pct(&mut wl, 0.5)),
        ms(pct(&mut wl, 0.99))
    ));

    // etcd reference, same harness and concurrency, HTTP/JSON gateway.
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match etcd {
        Some(bin) => {
            let port = free_port();
            let peer = free_port();
            let edir = dir.join("etcd");
            let _etcd = Proc(
                Command::new(bin)
                    .arg("--data-dir")
                    .arg(&edir)
                    .args([
                        "--listen-client-urls",
                        &format!("http://127.0.0.1:{port}"),
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{port}"),
                    ])
                    .args([
                        "--listen-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                        "--initial-cluster",
                        &format!("default=http://127.0.0.1:{peer}"),
                    ])
                    .env("ETCD_UNSUPPORTED_ARCH", "arm64")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let addr = format!("127.0.0.1:{port}");
            wait_for(
                || std::net::TcpStream::connect(&addr).is_ok(),
                Duration::from_secs(30),
            );
            std::thread::sleep(Duration::from_millis(1500));
            let version = Command::new(bin)
                .arg("--version")
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            let target = Arc::new(Target::Tcp(addr));
            for (clients, per) in [(1usize, n1), (64, n64)] {
                let p = payload.clone();
                let r = rt.block_on(load(target.clone(), clients, per, move |c, i| {
                    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                    // A value of the same size as skiff's stored ConfigMap JSON.
                    let value = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{clients}-{c}-{i}"), "namespace": "default", "uid": "00000000-0000-4000-8000-000000000000", "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"}, "data": {"v": p}}).to_string();
                    let body = json!({"key": b64(&format!("/registry/configmaps/default/c{clients}-{c}-{i}")), "value": b64(&value)});
                    ("POST".into(), "/v3/kv/put".into(), body.to_string().into_bytes(), 200)
                }));
                rows.push(format!(
                    "| etcd put ({}) | {clients} | {} | {:.0} | {} | {} |",
                    version.trim(),
                    clients * per,
                    r.ops_per_s,
                    ms(r.p50),
                    ms(r.p99)
                ));
            }
        }
        None => rows.push("| etcd: not installed (apt-get install etcd-server) | | | | | |".into()),
    }
    println!(
        "| operation | clients | requests | ops/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|"
    );
    for r in rows {
        println!("{r}");
    }
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
}
