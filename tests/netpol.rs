//! End-to-end NetworkPolicy tests on the upstream e2e model (kubernetes
//! test/e2e/network/netpol): namespaces x, y, z with pods a, b, c in each, all serving TCP and
//! UDP on ports 80 and 81 (named `serve-<port>-<proto>`). For each scenario the full 9×9
//! reachability matrix is probed from each pod's network namespace (1 s connect timeout, the
//! whole matrix retried briefly while rules converge) and compared with the expected one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{can_run, Cluster};
use serde_json::{json, Value};

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// The server every pod runs: binds everything first (so readiness on TCP 80 means all are
/// bound), then answers TCP and SCTP with the pod's name, echoes UDP, and echoes TCP on 82
/// for long-lived connections.
const SERVER: &str = r#"
import os, socket, threading
name = os.environ["POD"].encode()
socks = []
for port in (80, 81):
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(128); socks.append(("tcp", t))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port)); socks.append(("udp", u))
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        s.bind(("0.0.0.0", port)); s.listen(128); socks.append(("tcp", s))
    except OSError:
        pass
e = socket.socket(); e.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
e.bind(("0.0.0.0", 82)); e.listen(16); socks.append(("echo", e))
def serve(kind, s):
    while True:
        if kind == "udp":
            _, peer = s.recvfrom(2048); s.sendto(name, peer); continue
        c, _ = s.accept()
        if kind == "echo":
            def loop(c=c):
                while True:
                    d = c.recv(4096)
                    if not d: break
                    c.sendall(d)
            threading.Thread(target=loop, daemon=True).start(); continue
        try: c.sendall(name)
        except OSError: pass
        c.close()
for k, s in socks:
    threading.Thread(target=serve, args=(k, s), daemon=True).start()
threading.Event().wait()
"#;

/// Probes every target at once from the namespace it runs in; prints a JSON list of booleans.
const PROBE: &str = r#"
import json, socket, sys, threading
proto, port, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
res = [False] * len(targets)
def one(i, ip):
    try:
        if proto == "UDP":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
            s.sendto(b"ping", (ip, port)); s.recvfrom(64)
        else:
            p = socket.IPPROTO_SCTP if proto == "SCTP" else 0
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, p); s.settimeout(1)
            s.connect((ip, port))
            if not s.recv(64): raise OSError("no answer")
        s.close(); res[i] = True
    except OSError:
        pass
ts = [threading.Thread(target=one, args=(i, ip)) for i, ip in enumerate(targets)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(res))
"#;

/// A pod of the model: `pod=<name>` label, the server, readiness on TCP 80.
fn server_pod(ns: &str, pod: &str) -> Value {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for proto in ["TCP", "UDP", "SCTP"] {
            ports.push(json!({"name": format!("serve-{port}-{}", proto.to_lowercase()), "containerPort": port, "protocol": proto}));
        }
    }
    json!({
        "metadata": {"name": pod, "labels": {"pod": pod}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "server",
                "command": ["python3", "-c", SERVER],
                "env": [{"name": "POD", "value": format!("{ns}/{pod}")}],
                "ports": ports,
                "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1}
            }]
        }
    })
}

struct Net {
    c: Cluster,
    /// "ns/pod" → (uid, ip)
    pods: BTreeMap<String, (String, String)>,
    sctp: bool,
}

type Matrix = BTreeMap<(String, String), bool>;

fn keys() -> Vec<String> {
    NSS.iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
        .collect()
}

fn show(m: &Matrix, want: &Matrix) -> String {
    let mut s = String::from("        ");
    for t in keys() {
        s += &format!("{t:>5}");
    }
    s.push('\n');
    for f in keys() {
        s += &format!("{f:>8}");
        for t in keys() {
            let got = m[&(f.clone(), t.clone())];
            let mark = match (got, want[&(f.clone(), t.clone())]) {
                (true, true) => ".",
                (false, false) => "X",
                (true, false) => "!.",
                (false, true) => "!X",
            };
            s += &format!("{mark:>5}");
        }
        s.push('\n');
    }
    s + "(. reachable, X blocked, ! differs from the expected)"
}

impl Net {
    fn setup() -> Net {
        let c = Cluster::start("netpol");
        for ns in NSS {
            let (code, v) = c.curl(
                "POST",
                "/api/v1/namespaces",
                Some(&json!({"metadata": {"name": ns}}).to_string()),
                "application/json",
            );
            assert_eq!(code, 201, "{v}");
        }
        for ns in NSS {
            for pod in PODS {
                let body = server_pod(ns, pod);
                let (code, v) = c.curl(
                    "POST",
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    Some(&body.to_string()),
                    "application/json",
                );
                assert_eq!(code, 201, "{v}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut pods = BTreeMap::new();
        while pods.len() < 9 {
            pods.clear();
            for ns in NSS {
                let (_, list) = c.curl(
                    "GET",
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    None,
                    "application/json",
                );
                for p in list["items"].as_array().unwrap() {
                    let ready = p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    if let (true, Some(ip)) = (ready, p["status"]["podIP"].as_str()) {
                        pods.insert(
                            format!("{ns}/{}", p["metadata"]["name"].as_str().unwrap()),
                            (
                                p["metadata"]["uid"].as_str().unwrap().to_string(),
                                ip.to_string(),
                            ),
                        );
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "pods not ready: {pods:?}\nkubelet log:\n{}",
                c.daemon_log("kubelet")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let sctp = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Net { c, pods, sctp }
    }

    fn ip(&self, pod: &str) -> &str {
        &self.pods[pod].1
    }

    fn probe(&self, proto: &str, port: u16) -> Matrix {
        let targets: Vec<String> = keys().iter().map(|k| self.ip(k).to_string()).collect();
        let children: Vec<_> = keys()
            .into_iter()
            .map(|from| {
                let mut cmd = self.c.in_pod_netns(&self.pods[&from].0, "python3");
                cmd.args(["-c", PROBE, proto, &port.to_string()])
                    .args(&targets)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                (from, cmd.spawn().expect("probe"))
            })
            .collect();
        let mut m = Matrix::new();
        for (from, child) in children {
            let out = child.wait_with_output().expect("probe");
            let res: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                panic!(
                    "probe from {from} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            for (to, ok) in keys().into_iter().zip(res) {
                m.insert((from.clone(), to), ok);
            }
        }
        m
    }

    /// Probes until the matrix matches `allowed(from, to)` (self-traffic always passes) or
    /// the rules had ample time to converge.
    fn expect(&self, what: &str, proto: &str, port: u16, allowed: impl Fn(&str, &str) -> bool) {
        let mut want = Matrix::new();
        for f in keys() {
            for t in keys() {
                let ok = f == t || allowed(&f, &t);
                want.insert((f.clone(), t), ok);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.probe(proto, port);
            if got == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: {proto}/{port} reachability differs:\n{}\nnetd log:\n{}",
                    show(&got, &want),
                    self.c.daemon_log("netd")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn create(&self, ns: &str, name: &str, spec: Value) {
        let body = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec
        });
        let (code, v) = self.c.curl(
            "POST",
            &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
            Some(&body.to_string()),
            "application/json",
        );
        assert_eq!(code, 201, "{v}");
    }

    fn patch(&self, path: &str, body: Value) {
        let (code, v) = self.c.curl(
            "PATCH",
            path,
            Some(&body.to_string()),
            "application/merge-patch+json",
        );
        assert_eq!(code, 200, "{v}");
    }

    fn clear(&self) {
        for ns in NSS {
            let (code, v) = self.c.curl(
                "DELETE",
                &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
                None,
                "application/json",
            );
            assert_eq!(code, 200, "{v}");
        }
    }
}

fn ns_of(p: &str) -> &str {
    p.split('/').next().unwrap_or("")
}

fn sel(labels: Value) -> Value {
    json!({"matchLabels": labels})
}

fn ns_label(ns: &str) -> Value {
    sel(json!({"kubernetes.io/metadata.name": ns}))
}

fn not_in_x() -> Value {
    json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]})
}

fn all(_: &str, _: &str) -> bool {
    true
}

#[test]
fn network_policy_reachability_matrices() {
    if !can_run("network_policy_reachability_matrices") {
        return;
    }
    let n = Net::setup();
    let a = json!({"pod": "a"});

    n.expect("no policies", "TCP", 80, all);
    n.expect("no policies", "UDP", 81, all);

    // default-deny-ingress
    n.create("x", "deny-ingress", json!({"podSelector": {}}));
    n.expect("default-deny-ingress", "TCP", 80, |_, t| ns_of(t) != "x");
    n.expect("default-deny-ingress", "UDP", 80, |_, t| ns_of(t) != "x");
    n.clear();

    // default-deny-all
    n.create(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    n.expect("default-deny-all", "TCP", 80, |f, t| {
        ns_of(t) != "x" && ns_of(f) != "x"
    });
    n.clear();

    // allow traffic from pods within the server namespace based on PodSelector
    n.create(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"podSelector": sel(json!({"pod": "b"}))}]}]}),
    );
    n.expect("podSelector", "TCP", 80, |f, t| t != "x/a" || f == "x/b");
    n.clear();

    // allow ingress for a target: deny-all in x plus allow-all to x/a
    n.create("x", "deny-all", json!({"podSelector": {}, "ingress": []}));
    n.create(
        "x",
        "allow-all-to-a",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}]}),
    );
    n.expect("ingress for a target", "TCP", 80, |_, t| {
        ns_of(t) != "x" || t == "x/a"
    });
    n.clear();

    // allow ingress from pods in all namespaces
    n.create(
        "x",
        "allow-from-all-ns",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    n.expect("all namespaces", "TCP", 80, all);
    n.clear();

    // only from a different namespace, by NamespaceSelector (matchLabels, default ns label)
    n.create(
        "x",
        "allow-from-y",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y")}]}]}),
    );
    n.expect("namespaceSelector", "TCP", 80, |f, t| {
        t != "x/a" || ns_of(f) == "y"
    });
    n.clear();

    // PodSelector with matchExpressions
    n.create(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]}]}),
    );
    n.expect("podSelector matchExpressions", "TCP", 80, |f, t| {
        t != "x/a" || f == "x/b"
    });
    n.clear();

    // NamespaceSelector with matchExpressions
    n.create(
        "x",
        "allow-ns-y",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}]}}]}]}),
    );
    n.expect("namespaceSelector matchExpressions", "TCP", 80, |f, t| {
        t != "x/a" || ns_of(f) == "y"
    });
    n.clear();

    // PodSelector OR NamespaceSelector (two peers)
    n.create(
        "x",
        "or",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": not_in_x()}, {"podSelector": sel(json!({"pod": "b"}))}]}]}),
    );
    n.expect("podSelector or namespaceSelector", "TCP", 80, |f, t| {
        t != "x/a" || f != "x/c"
    });
    n.clear();

    // PodSelector AND NamespaceSelector (one peer)
    n.create(
        "x",
        "and",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": not_in_x(), "podSelector": sel(json!({"pod": "b"}))}]}]}),
    );
    n.expect("podSelector and namespaceSelector", "TCP", 80, |f, t| {
        t != "x/a" || f == "y/b" || f == "z/b"
    });
    n.clear();

    // Multiple PodSelectors and NamespaceSelectors
    n.create(
        "x",
        "multi",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": not_in_x(), "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}),
    );
    n.expect("multiple selectors", "TCP", 80, |f, t| {
        t != "x/a" || (ns_of(f) != "x" && !f.ends_with("/a"))
    });
    n.clear();

    // any PodSelectors
    n.create(
        "x",
        "any",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"podSelector": sel(json!({"pod": "b"}))}, {"podSelector": sel(json!({"pod": "c"}))}]}]}),
    );
    n.expect("any podSelectors", "TCP", 80, |f, t| {
        t != "x/a" || f == "x/b" || f == "x/c"
    });
    n.clear();

    // only from a pod in a different namespace (PodSelector and NamespaceSelector)
    n.create(
        "x",
        "y-a",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y"), "podSelector": sel(a.clone())}]}]}),
    );
    n.expect("pod in another namespace", "TCP", 80, |f, t| {
        t != "x/a" || f == "y/a"
    });
    n.clear();

    // Ports, then stacked policies
    n.create(
        "x",
        "allow-81-from-y",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y")}], "ports": [{"port": 81, "protocol": "TCP"}]}]}),
    );
    let from_y = |f: &str, t: &str| t != "x/a" || ns_of(f) == "y";
    n.expect("ports", "TCP", 81, from_y);
    n.expect("ports", "TCP", 80, |_, t| t != "x/a");
    n.create(
        "x",
        "allow-80-from-y",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y")}], "ports": [{"port": 80, "protocol": "TCP"}]}]}),
    );
    n.expect("stacked policies", "TCP", 80, from_y);
    n.expect("stacked policies", "TCP", 81, from_y);
    n.clear();

    // allow-all
    n.create(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    n.expect("allow-all", "TCP", 80, all);
    n.expect("allow-all", "UDP", 81, all);
    n.clear();

    // ingress on one named port
    n.create(
        "x",
        "named-81",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    );
    n.expect("named port", "TCP", 81, all);
    n.expect("named port", "TCP", 80, |_, t| ns_of(t) != "x");
    n.clear();

    // ingress from a namespace on one named port
    n.create(
        "x",
        "named-80-from-y",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y")}], "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}]}),
    );
    n.expect("named port from namespace", "TCP", 80, from_y);
    n.expect("named port from namespace", "TCP", 81, |_, t| t != "x/a");
    n.clear();

    // egress on one named port
    n.create(
        "x",
        "egress-named-80",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
    );
    n.expect("egress named port", "TCP", 80, all);
    n.expect("egress named port", "TCP", 81, |f, _| ns_of(f) != "x");
    n.clear();

    // updated policy
    n.create(
        "x",
        "updated",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y")}]}]}),
    );
    n.expect("before update", "TCP", 80, from_y);
    n.patch(
        "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/updated",
        json!({"spec": {"ingress": [{"from": [{"namespaceSelector": ns_label("z")}]}]}}),
    );
    n.expect("after update", "TCP", 80, |f, t| {
        t != "x/a" || ns_of(f) == "z"
    });
    n.clear();

    // ingress from an updated namespace (namespace labels change)
    n.create(
        "x",
        "from-ns2",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": sel(json!({"ns2": "updated"}))}]}]}),
    );
    n.expect("before namespace label", "TCP", 80, |_, t| t != "x/a");
    n.patch(
        "/api/v1/namespaces/y",
        json!({"metadata": {"labels": {"ns2": "updated"}}}),
    );
    n.expect("after namespace label", "TCP", 80, from_y);
    n.patch(
        "/api/v1/namespaces/y",
        json!({"metadata": {"labels": {"ns2": null}}}),
    );
    n.expect("namespace label removed", "TCP", 80, |_, t| t != "x/a");
    n.clear();
    // The name label is the API server's: it can be neither removed nor changed.
    for labels in [
        json!({"kubernetes.io/metadata.name": null}),
        json!({"kubernetes.io/metadata.name": "z"}),
    ] {
        n.patch(
            "/api/v1/namespaces/y",
            json!({"metadata": {"labels": labels}}),
        );
        let (_, ns) =
            n.c.curl("GET", "/api/v1/namespaces/y", None, "application/json");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "y",
            "{ns}"
        );
    }

    // deny ingress from pods in other namespaces
    n.create(
        "x",
        "same-namespace-only",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    );
    n.expect("other namespaces denied", "TCP", 80, |f, t| {
        ns_of(t) != "x" || ns_of(f) == "x"
    });
    n.clear();

    // egress to a pod in another namespace by PodSelector and NamespaceSelector
    n.create(
        "x",
        "egress-to-y-b",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns_label("y"), "podSelector": sel(json!({"pod": "b"}))}]}]}),
    );
    n.expect("egress pod+namespace", "TCP", 80, |f, t| {
        f != "x/a" || t == "y/b"
    });
    n.clear();

    // ingress from an updated pod (pod labels change)
    n.create(
        "x",
        "from-pod2",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"podSelector": sel(json!({"pod2": "updated"}))}]}]}),
    );
    n.expect("before pod label", "TCP", 80, |_, t| t != "x/a");
    n.patch(
        "/api/v1/namespaces/x/pods/b",
        json!({"metadata": {"labels": {"pod2": "updated"}}}),
    );
    n.expect("after pod label", "TCP", 80, |f, t| {
        t != "x/a" || f == "x/b"
    });
    n.patch(
        "/api/v1/namespaces/x/pods/b",
        json!({"metadata": {"labels": {"pod2": null}}}),
    );
    n.expect("pod label removed", "TCP", 80, |_, t| t != "x/a");
    n.clear();

    // deny ingress access to an updated pod (the pod becomes selected)
    n.create(
        "x",
        "deny-isolated",
        json!({"podSelector": sel(json!({"target": "isolated"})), "ingress": []}),
    );
    n.expect("nothing selected yet", "TCP", 80, all);
    n.patch(
        "/api/v1/namespaces/x/pods/a",
        json!({"metadata": {"labels": {"target": "isolated"}}}),
    );
    n.expect("pod became selected", "TCP", 80, |_, t| t != "x/a");
    n.patch(
        "/api/v1/namespaces/x/pods/a",
        json!({"metadata": {"labels": {"target": null}}}),
    );
    n.clear();

    // deny egress based on PodSelector; deny egress from all pods in a namespace
    n.create(
        "x",
        "deny-egress-a",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"]}),
    );
    n.expect("deny egress x/a", "TCP", 80, |f, _| f != "x/a");
    n.clear();
    n.create(
        "x",
        "deny-egress-all",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": []}),
    );
    n.expect("deny egress namespace", "UDP", 80, |f, _| ns_of(f) != "x");
    n.clear();

    // Ingress and Egress specified together
    n.create(
        "x",
        "both",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"from": [{"namespaceSelector": ns_label("y")}]}],
               "egress": [{"to": [{"namespaceSelector": ns_label("y")}]}]}),
    );
    n.expect("ingress and egress", "TCP", 80, |f, t| {
        (t != "x/a" || ns_of(f) == "y") && (f != "x/a" || ns_of(t) == "y")
    });
    n.clear();

    // Denying egress on the client side wins over a server that allows everything
    n.create(
        "y",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    n.create(
        "x",
        "deny-egress-a",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"]}),
    );
    n.expect("client egress deny", "TCP", 80, |f, _| f != "x/a");
    // ...and an egress allow does not skip the server's ingress isolation.
    n.clear();
    n.create(
        "x",
        "allow-egress-a",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{}]}),
    );
    n.create("y", "deny-ingress", json!({"podSelector": {}}));
    n.expect("egress allow, ingress deny", "TCP", 80, |_, t| {
        ns_of(t) != "y"
    });
    n.clear();

    // stop enforcing after deletion
    n.create("x", "deny", json!({"podSelector": {}}));
    n.expect("before delete", "TCP", 80, |_, t| ns_of(t) != "x");
    let (code, v) = n.c.curl(
        "DELETE",
        "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/deny",
        None,
        "application/json",
    );
    assert_eq!(code, 200, "{v}");
    n.expect("after delete", "TCP", 80, all);

    // egress to a server in a CIDR block
    let yb = n.ip("y/b").to_string();
    n.create(
        "x",
        "egress-cidr",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": format!("{yb}/32")}}]}]}),
    );
    n.expect("egress to CIDR", "TCP", 80, |f, t| f != "x/a" || t == "y/b");
    n.clear();

    // except clause on egress, then a second block that re-allows the excepted address
    n.create(
        "x",
        "egress-except",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{yb}/32")]}}]}]}),
    );
    n.expect("egress except", "TCP", 80, |f, t| f != "x/a" || t != "y/b");
    n.patch(
        "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/egress-except",
        json!({"spec": {"egress": [{"to": [
            {"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{yb}/32")]}},
            {"ipBlock": {"cidr": format!("{yb}/32")}}
        ]}]}}),
    );
    n.expect("IP in both cidr and except", "TCP", 80, all);
    n.clear();

    // except clause on ingress
    n.create(
        "x",
        "ingress-except",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{yb}/32")]}}]}]}),
    );
    n.expect("ingress except", "TCP", 80, |f, t| t != "x/a" || f != "y/b");
    n.clear();

    // ingress and egress controlled independently
    n.create(
        "x",
        "allow-egress-to-y",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns_label("y")}]}]}),
    );
    n.create(
        "x",
        "deny-ingress-a",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Ingress"]}),
    );
    n.expect("independent directions", "TCP", 80, |f, t| {
        t != "x/a" && (f != "x/a" || ns_of(t) == "y")
    });
    n.clear();

    // SCTP is not TCP; a policy with only UDP does not allow TCP; a protocol alone
    n.create(
        "x",
        "sctp-only",
        json!({"podSelector": sel(a.clone()), "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}),
    );
    n.expect("SCTP is not TCP", "TCP", 80, |_, t| t != "x/a");
    n.clear();
    n.create(
        "x",
        "udp-only",
        json!({"podSelector": sel(a.clone()), "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
    );
    n.expect("UDP only: TCP denied", "TCP", 81, |_, t| t != "x/a");
    n.expect("UDP only: UDP allowed", "UDP", 81, all);
    n.expect("UDP only: other UDP port denied", "UDP", 80, |_, t| {
        t != "x/a"
    });
    n.clear();
    n.create(
        "x",
        "any-tcp",
        json!({"podSelector": sel(a.clone()), "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
    );
    n.expect("any TCP port", "TCP", 80, all);
    n.expect("any TCP port", "TCP", 81, all);
    n.expect("any TCP port: UDP denied", "UDP", 80, |_, t| t != "x/a");
    n.clear();

    // endPort ranges are inclusive
    n.create(
        "x",
        "range",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y")}], "ports": [{"port": 81, "endPort": 90, "protocol": "TCP"}]}]}),
    );
    n.expect("endPort: start of range", "TCP", 81, from_y);
    n.expect("endPort: below range", "TCP", 80, |_, t| t != "x/a");
    n.clear();
    n.create(
        "x",
        "range",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 70, "endPort": 80, "protocol": "UDP"}]}]}),
    );
    n.expect("egress endPort: end of range", "UDP", 80, all);
    n.expect("egress endPort: above range", "UDP", 81, |f, _| f != "x/a");
    n.clear();

    // multiple ingress / egress policies with an allow-all taking precedence
    n.create(
        "x",
        "only-b-80",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"podSelector": sel(json!({"pod": "b"}))}], "ports": [{"port": 80}]}]}),
    );
    n.expect("before allow-all", "TCP", 80, |f, t| {
        t != "x/a" || f == "x/b"
    });
    n.create(
        "x",
        "allow-all-ingress",
        json!({"podSelector": sel(a.clone()), "ingress": [{}]}),
    );
    n.expect("ingress allow-all precedence", "TCP", 81, all);
    n.clear();
    n.create(
        "x",
        "egress-80",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80}]}]}),
    );
    n.expect("before egress allow-all", "TCP", 81, |f, _| f != "x/a");
    n.create(
        "x",
        "allow-all-egress",
        json!({"podSelector": sel(a.clone()), "policyTypes": ["Egress"], "egress": [{}]}),
    );
    n.expect("egress allow-all precedence", "TCP", 81, all);
    n.clear();

    // Egress with the usual DNS exception: only DNS anywhere, plus namespace y
    n.create(
        "x",
        "dns-and-y",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"namespaceSelector": ns_label("y")}]}
        ]}),
    );
    n.expect("egress DNS exception", "TCP", 80, |f, t| {
        ns_of(f) != "x" || ns_of(t) == "y"
    });
    n.clear();

    // UDP: policy by namespace and pod, on a port
    n.create(
        "x",
        "udp-y-a-81",
        json!({"podSelector": sel(a.clone()), "ingress": [{"from": [{"namespaceSelector": ns_label("y"), "podSelector": sel(a.clone())}], "ports": [{"port": 81, "protocol": "UDP"}]}]}),
    );
    n.expect("UDP pod+namespace", "UDP", 81, |f, t| {
        t != "x/a" || f == "y/a"
    });
    n.clear();

    // SCTP needs the kernel's sctp module.
    if n.sctp {
        n.create("x", "deny-ingress", json!({"podSelector": {}}));
        n.expect("SCTP default deny", "SCTP", 80, |_, t| ns_of(t) != "x");
        n.clear();
    } else {
        eprintln!("SKIPPED: SCTP reachability (the kernel has no SCTP support here)");
    }

    n.expect("all policies gone", "TCP", 80, all);
    n.c.stop();
}

/// An allowed, long-lived TCP connection keeps working while unrelated policies come and go,
/// and a policy that covers it (allowing it) does not cut it either.
#[test]
fn network_policy_keeps_established_connections() {
    if !can_run("network_policy_keeps_established_connections") {
        return;
    }
    let n = Net::setup();
    let client = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 82), timeout=2)
print("connected", flush=True)
n = 0
for line in sys.stdin:
    s.sendall(b"ping"); d = s.recv(16)
    if d != b"ping": print("bad echo", d, flush=True); sys.exit(1)
    n += 1
    print("ok", n, flush=True)
"#;
    let mut child =
        n.c.in_pod_netns(&n.pods["x/b"].0, "python3")
            .args(["-c", client, n.ip("y/a")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("client");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let mut ping = |what: &str| {
        writeln!(stdin, "go").unwrap();
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert!(l.starts_with("ok"), "{what}: connection broke: {l:?}");
    };
    ping("before");
    let changes: Vec<(&str, &str, Value)> = vec![
        ("z", "deny-z", json!({"podSelector": {}})),
        (
            "x",
            "deny-c",
            json!({"podSelector": sel(json!({"pod": "c"})), "policyTypes": ["Ingress", "Egress"]}),
        ),
        (
            "y",
            "y-b-only",
            json!({"podSelector": sel(json!({"pod": "b"})), "ingress": [{"from": [{"namespaceSelector": ns_label("z")}]}]}),
        ),
        (
            "y",
            "allow-82",
            json!({"podSelector": sel(json!({"pod": "a"})), "ingress": [{"from": [{"namespaceSelector": ns_label("x")}], "ports": [{"port": 82}]}]}),
        ),
    ];
    for (ns, name, spec) in changes {
        n.create(ns, name, spec);
        std::thread::sleep(Duration::from_millis(300));
        ping(name);
    }
    // The policies took effect meanwhile (z is isolated) ...
    n.expect("unrelated policies", "TCP", 80, |f, t| {
        ns_of(t) != "z" && t != "x/c" && f != "x/c" && (t != "y/b" || ns_of(f) == "z") && t != "y/a"
    });
    ping("after the checks");
    n.clear();
    std::thread::sleep(Duration::from_millis(300));
    ping("after deleting them");
    drop(stdin);
    let _ = child.wait();

    // kill -9 of netd: the rules stay in force, and the restarted netd replaces the table,
    // dropping whatever an earlier run left that no policy explains.
    n.create("x", "deny-ingress", json!({"podSelector": {}}));
    n.expect("before netd restart", "TCP", 80, |_, t| ns_of(t) != "x");
    let out =
        n.c.netns_cmd("nft")
            .args(["add", "chain", "inet", "skiff", "stale-chain"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    n.c.kill9("netd");
    n.expect("after netd kill -9", "TCP", 80, |_, t| ns_of(t) != "x");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let table =
            n.c.netns_cmd("nft")
                .args(["list", "table", "inet", "skiff"])
                .output()
                .unwrap();
        let text = String::from_utf8_lossy(&table.stdout).to_string();
        if !text.contains("stale-chain") {
            assert!(text.contains("ingress-pods"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale state survived a restart:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    n.clear();
    n.expect("after clearing", "TCP", 80, all);

    // A pod created while a policy selects it is isolated as soon as it runs.
    n.create("x", "deny-ingress", json!({"podSelector": {}}));
    n.expect("deny before the new pod", "TCP", 80, |_, t| ns_of(t) != "x");
    let (code, v) = n.c.curl(
        "POST",
        "/api/v1/namespaces/x/pods",
        Some(&server_pod("x", "d").to_string()),
        "application/json",
    );
    assert_eq!(code, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let d_ip = loop {
        let (_, p) = n.c.curl(
            "GET",
            "/api/v1/namespaces/x/pods/d",
            None,
            "application/json",
        );
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if let (true, Some(ip)) = (ready, p["status"]["podIP"].as_str()) {
            break ip.to_string();
        }
        assert!(Instant::now() < deadline, "x/d never became ready: {p}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The host reaches it (so the server is up) ...
    let out =
        n.c.netns_cmd("python3")
            .args(["-c", PROBE, "TCP", "80", &d_ip])
            .output()
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[true]");
    // ... other pods do not, from the first try.
    for from in ["y/a", "x/b"] {
        let out =
            n.c.in_pod_netns(&n.pods[from].0, "python3")
                .args(["-c", PROBE, "TCP", "80", &d_ip])
                .output()
                .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "[false]",
            "{from} reached the new pod x/d"
        );
    }
    let (code, v) = n.c.curl(
        "DELETE",
        "/api/v1/namespaces/x/pods/d",
        None,
        "application/json",
    );
    assert_eq!(code, 200, "{v}");
    n.clear();

    // Bad policies are refused with field causes and change nothing.
    let bad = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}],
                 "ports": [{"port": "http", "endPort": 90}]}]}
    });
    let (code, v) = n.c.curl(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies",
        Some(&bad.to_string()),
        "application/json",
    );
    assert_eq!(code, 422, "{v}");
    let fields: Vec<&str> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"spec.ingress[0].from[0].ipBlock.except[0]")
            && fields.contains(&"spec.ingress[0].ports[0].endPort"),
        "{v}"
    );
    n.expect("nothing changed", "TCP", 80, all);

    // Stopping the cluster removes skiff's nftables table.
    let out = n.c.skiff(&["down"]);
    assert!(out.status.success());
    let tables =
        n.c.netns_cmd("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("skiff"),
        "{}",
        String::from_utf8_lossy(&tables.stdout)
    );
    n.c.stop();
}
