//! End-to-end tests of pods (kubelet + netd): real processes in their own namespaces, with
//! their own addresses, files, hostnames and status, as a user of kubectl would check them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{can_run, Cluster};
use serde_json::{json, Value};

fn create(c: &Cluster, pod: Value) {
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&pod.to_string()),
        "application/json",
    );
    assert_eq!(code, 201, "{v}");
}

fn get(c: &Cluster, name: &str) -> Value {
    c.curl(
        "GET",
        &format!("/api/v1/namespaces/default/pods/{name}"),
        None,
        "application/json",
    )
    .1
}

fn wait_for(c: &Cluster, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let p = get(c, name);
        if f(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: timed out waiting for {what}: {p}\nkubelet log:\n{}",
            c.daemon_log("kubelet")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The reasons of the events about a pod, waiting until `want` is among them.
fn wait_event(c: &Cluster, pod: &str, want: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, l) = c.curl(
            "GET",
            &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{pod}"),
            None,
            "application/json",
        );
        let items = l["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|e| e["reason"] == want) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} event for {pod}: {items:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// kubectl run on a terminal of util-linux `script` (30 rows, 100 columns), inside the
/// cluster's network namespace, with `input` typed into it.
fn kubectl_tty(c: &Cluster, args: &str, input: &str) -> std::process::Output {
    let line = format!(
        "kubectl --kubeconfig {} --cache-dir {} {args}",
        c.kubeconfig().display(),
        c.dir.join("kube-cache").display()
    );
    on_terminal(c, &line, input)
}

/// A shell command line run on a terminal of util-linux `script` (30 rows, 100 columns).
fn on_terminal(c: &Cluster, line: &str, input: &str) -> std::process::Output {
    use std::io::Write;
    let line = format!("stty rows 30 cols 100; {line}");
    let mut child = c
        .netns_cmd("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Typed after the session is up, as a person would.
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(input.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

/// The pod's Ready condition is True.
fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|x| x["type"] == "Ready" && x["status"] == "True")
    })
}

/// Where a container's log files are (`<restart>.log`).
fn log_dir(c: &Cluster, p: &Value, container: &str) -> std::path::PathBuf {
    c.data
        .join("logs/pods")
        .join(format!(
            "default_{}_{}",
            p["metadata"]["name"].as_str().unwrap(),
            p["metadata"]["uid"].as_str().unwrap()
        ))
        .join(container)
}

/// The log of a container's first run, held open: still readable once the pod is deleted
/// (its logs go with it).
fn held_log(c: &Cluster, p: &Value, container: &str) -> std::fs::File {
    let path = log_dir(c, p, container).join("0.log");
    std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_held(mut f: &std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut out = String::new();
    f.rewind().unwrap();
    f.read_to_string(&mut out).unwrap();
    out
}

/// The container's log (CRI format) as plain lines.
fn logs(c: &Cluster, p: &Value, container: &str) -> String {
    let dir = log_dir(c, p, container);
    let mut out = String::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
            // <time> <stream> <P|F> <message>
            let parts: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(
                parts.len() == 4
                    && (parts[1] == "stdout" || parts[1] == "stderr")
                    && parts[2] == "F",
                "not CRI format: {l}"
            );
            out.push_str(parts[3]);
            out.push('\n');
        }
    }
    out
}

#[allow(dead_code)]
fn server(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "host", "command": ["python3", "-u", "-m", "http.server", "8080"]}]}})
}

#[test]
fn pods_run_reach_each_other_and_report_status() {
    if !can_run("pods_run_reach_each_other_and_report_status") {
        return;
    }
    let c = Cluster::start("pods");
    create(&c, server("b"));
    let b = wait_for(&c, "b", "Running", |p| phase(p) == "Running");
    let ipb = b["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(
        b["spec"]["nodeName"].as_str().map(str::is_empty),
        Some(false)
    );
    assert_eq!(b["status"]["containerStatuses"][0]["ready"], true);
    let cond = |p: &Value, t: &str| {
        p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"] == t)
            .map(|x| x["status"].as_str().unwrap_or("").to_string())
    };
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(cond(&b, t).as_deref(), Some("True"), "{t}: {b}");
    }
    // Pod a reaches b by its address; b sees a's own address.
    create(
        &c,
        json!({"metadata": {"name": "a"}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "client", "command": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do curl -s -o /dev/null -w 'code=%{http_code}\\n' http://$(B_IP):8080/ && break; sleep 0.5; done; hostname -i; sleep 3600"], "env": [{"name": "B_IP", "value": ipb}]}]}}),
    );
    let a = wait_for(&c, "a", "Running", |p| phase(p) == "Running");
    let ipa = a["status"]["podIP"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs(&c, &a, "client").contains("code=200") {
        assert!(
            Instant::now() < deadline,
            "a never reached b: {}",
            logs(&c, &a, "client")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        logs(&c, &b, "web").contains(&format!("{ipa} - - ")),
        "b did not see a's address:\n{}",
        logs(&c, &b, "web")
    );
    // The host reaches the pod.
    assert_eq!(c.http_code(&format!("http://{ipb}:8080/"), 3), "200");

    // A pod's files, names and exit code are its own.
    let marker = format!("/etc/skiff-e2e-{}", std::process::id());
    create(
        &c,
        json!({"metadata": {"name": "iso"}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "command": ["sh", "-c", format!("echo written > {marker} && cat {marker}; echo host=$(hostname); cat /etc/resolv.conf; grep iso /etc/hosts; echo pid1=$(cat /proc/1/comm); echo env=$MY_POD/$MY_NS; exit 3")],
        "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}]}}),
    );
    let iso = wait_for(&c, "iso", "Failed", |p| phase(p) == "Failed");
    let term = &iso["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(3), Some("Error")),
        "{iso}"
    );
    let out = logs(&c, &iso, "c");
    assert!(out.contains("written"), "{out}");
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the pod changed the host's /etc"
    );
    assert!(out.contains("host=iso"), "{out}");
    assert!(
        out.contains("nameserver 10.96.0.10")
            && out.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && out.contains("options ndots:5"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}\tiso",
            iso["status"]["podIP"].as_str().unwrap()
        )),
        "{out}"
    );
    assert!(
        out.contains("pid1=sh"),
        "not in its own PID namespace: {out}"
    );
    assert!(out.contains("env=iso/default"), "{out}");

    // Success, and init containers run first, in order.
    create(
        &c,
        json!({"metadata": {"name": "ok"}, "spec": {"restartPolicy": "OnFailure",
        "initContainers": [{"name": "one", "command": ["sh", "-c", "echo first"]}, {"name": "two", "command": ["sh", "-c", "echo second"]}],
        "containers": [{"name": "main", "command": ["sh", "-c", "echo main"]}]}}),
    );
    let ok = wait_for(&c, "ok", "Succeeded", |p| phase(p) == "Succeeded");
    let inits = ok["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    assert!(inits
        .iter()
        .all(|s| s["state"]["terminated"]["reason"] == "Completed"));
    assert!(
        inits[0]["state"]["terminated"]["finishedAt"].as_str()
            <= inits[1]["state"]["terminated"]["startedAt"].as_str()
    );
    assert_eq!(logs(&c, &ok, "main").trim(), "main");

    // A crashing container is restarted with back-off.
    create(
        &c,
        json!({"metadata": {"name": "crash"}, "spec": {"containers": [{"name": "c", "command": ["sh", "-c", "echo boom; exit 1"]}]}}),
    );
    let crash = wait_for(&c, "crash", "CrashLoopBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert_eq!(crash["status"]["containerStatuses"][0]["restartCount"], 1);
    assert_eq!(
        crash["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        1
    );
    let t = String::from_utf8_lossy(&c.skiff(&["get", "pod", "crash"]).stdout).into_owned();
    assert!(t.contains("CrashLoopBackOff"), "{t}");

    // Requests beyond what the node has: Pending, Unschedulable, naming the resource.
    create(
        &c,
        json!({"metadata": {"name": "huge"}, "spec": {"containers": [{"name": "c", "command": ["true"], "resources": {"requests": {"cpu": "1000"}}}]}}),
    );
    let huge = wait_for(&c, "huge", "Unschedulable", |p| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|x| x["reason"] == "Unschedulable"))
    });
    assert_eq!(phase(&huge), "Pending");
    // Not on a node, so no address (as in Kubernetes).
    std::thread::sleep(Duration::from_millis(300));
    let huge = get(&c, "huge");
    assert!(huge["status"]["podIP"].is_null(), "{huge}");
    let msg = huge["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "PodScheduled")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("Insufficient cpu"), "{msg}");
    // What happened is recorded as Events, shown by describe.
    wait_event(&c, "huge", "FailedScheduling");
    wait_event(&c, "crash", "BackOff");
    wait_event(&c, "b", "Started");
    // Once per container start, however the kubelet's status writes interleave.
    std::thread::sleep(Duration::from_millis(500));
    let evs = wait_event(&c, "b", "Started");
    assert_eq!(
        evs.iter().filter(|e| e["reason"] == "Started").count(),
        1,
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["reason"] == "Scheduled" && e["source"]["component"] == "default-scheduler"),
        "{evs:?}"
    );
    let d = String::from_utf8_lossy(&c.skiff(&["describe", "pod", "b"]).stdout).into_owned();
    assert!(d.contains("Started") && d.contains("Scheduled"), "{d}");
    if common::have_kubectl("describe (kubectl part)") {
        let d = common::ok(&c.kubectl(&["describe", "pod", "crash"]));
        assert!(d.contains("BackOff"), "{d}");
    }

    // kill -9 of the kubelet: the pods keep running and stay reachable.
    c.kill9("kubelet");
    assert_eq!(c.http_code(&format!("http://{ipb}:8080/"), 3), "200");
    let b2 = get(&c, "b");
    assert_eq!(
        b2["status"]["containerStatuses"][0]["restartCount"], 0,
        "b was restarted: {b2}"
    );

    // Deletion: the processes stop (grace period), then the object goes.
    let t0 = Instant::now();
    assert_eq!(
        c.curl(
            "DELETE",
            "/api/v1/namespaces/default/pods/b",
            None,
            "application/json"
        )
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .curl(
            "GET",
            "/api/v1/namespaces/default/pods/b",
            None,
            "application/json",
        )
        .0
        != 404
    {
        assert!(
            Instant::now() < deadline,
            "b was never deleted:\n{}",
            c.daemon_log("kubelet")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("deleted in {:?}", t0.elapsed());
    assert_ne!(c.http_code(&format!("http://{ipb}:8080/"), 1), "200");
    // The node is registered and Ready.
    let (_, nodes) = c.curl("GET", "/api/v1/nodes", None, "application/json");
    let node = &nodes["items"][0];
    assert!(node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["type"] == "Ready" && x["status"] == "True"));
    assert!(node["status"]["allocatable"]["cpu"].is_string());
    c.stop();
}

#[test]
fn logs_through_the_api_with_kubectl_and_skiff() {
    if !can_run("logs_through_the_api_with_kubectl_and_skiff") {
        return;
    }
    let c = Cluster::start("logs");
    create(
        &c,
        json!({"metadata": {"name": "talker"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; i=6; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "two"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "first", "command": ["sh", "-c", "echo from-first; sleep 3600"]}, {"name": "second", "command": ["sh", "-c", "echo from-second; sleep 3600"]}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "crash"}, "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "command": ["sh", "-c", "echo attempt; exit 1"]}]}}),
    );
    wait_for(&c, "talker", "Running", |p| phase(p) == "Running");
    wait_for(&c, "two", "Running", |p| phase(p) == "Running");
    wait_for(&c, "crash", "a crash", |p| {
        p["status"]["containerStatuses"][0]["restartCount"] == 1
    });
    std::thread::sleep(Duration::from_millis(500));

    // Over the socket, as the API serves it.
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(c.socket())
        .arg("http://localhost/api/v1/namespaces/default/pods/talker/log?tailLines=100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for i in 1..=5 {
        assert!(text.contains(&format!("line {i}\n")), "{text}");
    }
    assert!(text.contains("oops"), "stderr missing: {text}");
    let (code, v) = c.curl(
        "GET",
        "/api/v1/namespaces/default/pods/two/log",
        None,
        "application/json",
    );
    assert_eq!(code, 400);
    assert!(
        v["message"].as_str().unwrap().contains(
            "a container name must be specified for pod two, choose one of: [first second]"
        ),
        "{v}"
    );
    assert_eq!(
        c.curl(
            "GET",
            "/api/v1/namespaces/default/pods/nope/log",
            None,
            "application/json"
        )
        .0,
        404
    );

    if common::have_kubectl("logs (kubectl part)") {
        let o = common::ok(&c.kubectl(&["logs", "talker", "--tail=2"]));
        assert_eq!(o.lines().count(), 2, "{o}");
        let o = common::ok(&c.kubectl(&["logs", "talker", "--timestamps", "--tail=1"]));
        assert!(
            o.split_whitespace()
                .next()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok(),
            "{o}"
        );
        assert_eq!(
            common::ok(&c.kubectl(&["logs", "two", "-c", "second"])).trim(),
            "from-second"
        );
        assert!(common::ok(&c.kubectl(&["logs", "crash", "--previous"])).contains("attempt"));
        // -f keeps streaming new lines.
        let mut f = c
            .netns_cmd("kubectl")
            .arg("--kubeconfig")
            .arg(c.kubeconfig())
            .args(["logs", "-f", "talker"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let _ = f.kill();
        let out = String::from_utf8_lossy(&f.wait_with_output().unwrap().stdout).into_owned();
        let last: u32 = out
            .lines()
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .max()
            .unwrap_or(0);
        let before: u32 = text
            .lines()
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .max()
            .unwrap_or(0);
        assert!(
            last > before + 3,
            "follow did not stream: {before} then {last}"
        );
    }
    let o = common::ok(&c.skiff(&["logs", "talker", "--tail", "1"]));
    assert!(o.starts_with("line "), "{o}");
    let o = c.skiff(&["logs", "two"]);
    assert!(!o.status.success() && common::stderr(&o).contains("container name must be specified"));
    c.stop();
}

#[test]
fn probes_drive_readiness_and_restarts() {
    if !can_run("probes_drive_readiness_and_restarts") {
        return;
    }
    let c = Cluster::start("probes");
    let ready_cond = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == "Ready"))
            .map(|x| x["status"] == "True")
            .unwrap_or(false)
    };
    create(
        &c,
        json!({"metadata": {"name": "flip"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
        "command": ["sh", "-c", "sleep 2; touch /tmp/ready; sleep 4; rm /tmp/ready; sleep 3600"],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "live"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
        "command": ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 3600"],
        "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2}}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "web"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
        "command": ["python3", "-m", "http.server", "8080"], "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "initialDelaySeconds": 1}}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "deaf"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
        "command": ["sleep", "3600"], "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1}}]}}),
    );

    // Running but not Ready until the probe passes, then Ready, then not Ready again.
    let p = wait_for(&c, "flip", "Running", |p| phase(p) == "Running");
    assert!(!ready_cond(&p), "ready before its probe passed: {p}");
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], false);
    wait_for(&c, "flip", "Ready", ready_cond);
    wait_for(&c, "flip", "not Ready again", |p| {
        !ready_cond(p) && phase(p) == "Running"
    });
    assert_eq!(
        get(&c, "flip")["status"]["containerStatuses"][0]["restartCount"],
        0,
        "readiness must not restart"
    );

    // A failing liveness probe restarts the container.
    let live = wait_for(&c, "live", "a liveness restart", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    assert!(
        live["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object(),
        "{live}"
    );
    let deaf = wait_for(&c, "deaf", "a tcpSocket liveness restart", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    assert_eq!(phase(&deaf), "Running");
    let evs = wait_event(&c, "live", "Unhealthy");
    assert!(
        evs.iter().any(|e| e["reason"] == "Unhealthy"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("Liveness probe failed")),
        "{evs:?}"
    );

    // httpGet readiness on a named port, tcpSocket liveness that passes: Ready, never restarted.
    let web = wait_for(&c, "web", "Ready", ready_cond);
    std::thread::sleep(Duration::from_secs(3));
    let web2 = get(&c, "web");
    assert_eq!(
        web2["status"]["containerStatuses"][0]["restartCount"], 0,
        "{web2}"
    );
    assert!(ready_cond(&web2));
    assert_eq!(web["status"]["containerStatuses"][0]["started"], true);
    c.stop();
}

#[test]
fn limits_are_enforced_with_cgroups() {
    if !can_run("limits_are_enforced_with_cgroups") {
        return;
    }
    let c = Cluster::start("limits");
    create(
        &c,
        json!({"metadata": {"name": "hog"}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c",
        "command": ["python3", "-c", "x = b'x' * (256 * 1024 * 1024); print('survived')"],
        "resources": {"limits": {"memory": "48Mi"}}}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "capped"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
        "command": ["sleep", "3600"], "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}]}}),
    );
    let hog = wait_for(&c, "hog", "OOMKilled", |p| phase(p) == "Failed");
    let t = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    // OOMKilled whenever the kernel's OOM killer acted in the container's cgroup (as containerd
    // reports it); usually SIGKILL, 137.
    assert_eq!(t["reason"].as_str(), Some("OOMKilled"), "{hog}");
    assert_ne!(t["exitCode"].as_i64(), Some(0), "{hog}");
    assert!(!logs(&c, &hog, "c").contains("survived"));
    let capped = wait_for(&c, "capped", "Running", |p| phase(p) == "Running");
    let uid = capped["metadata"]["uid"].as_str().unwrap().to_string();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    // skiff/<cluster>/<pod uid>/<container>-<run>
    let pod_cg = |ctrl: &str, uid: &str| -> String {
        let base = if v2 {
            "/sys/fs/cgroup/skiff".to_string()
        } else {
            format!("/sys/fs/cgroup/{ctrl}/skiff")
        };
        std::fs::read_dir(&base)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(uid))
            .find(|p| p.exists())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("{base}/<none>/{uid}"))
    };
    let (cpu, mem) = if v2 {
        let d = format!("{}/c-0", pod_cg("", &uid));
        (
            std::fs::read_to_string(format!("{d}/cpu.max")).unwrap(),
            std::fs::read_to_string(format!("{d}/memory.max")).unwrap(),
        )
    } else {
        (
            std::fs::read_to_string(format!("{}/c-0/cpu.cfs_quota_us", pod_cg("cpu", &uid)))
                .unwrap(),
            std::fs::read_to_string(format!(
                "{}/c-0/memory.limit_in_bytes",
                pod_cg("memory", &uid)
            ))
            .unwrap(),
        )
    };
    assert!(cpu.starts_with("25000"), "cpu quota {cpu}");
    assert_eq!(mem.trim(), (64 * 1024 * 1024).to_string());
    // The container's processes are in it.
    let procs = format!("{}/c-0/cgroup.procs", pod_cg("memory", &uid));
    assert!(!std::fs::read_to_string(&procs).unwrap().trim().is_empty());
    // Deleting the pod removes its cgroups.
    assert_eq!(
        c.curl(
            "DELETE",
            "/api/v1/namespaces/default/pods/capped",
            None,
            "application/json"
        )
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .curl(
            "GET",
            "/api/v1/namespaces/default/pods/capped",
            None,
            "application/json",
        )
        .0
        != 404
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let base = pod_cg("memory", &uid);
    assert!(!std::path::Path::new(&base).exists(), "{base} left behind");
    let hog_uid = hog["metadata"]["uid"].as_str().unwrap();
    let hog_base = pod_cg("memory", hog_uid);
    assert!(
        !std::path::Path::new(&hog_base).exists(),
        "{hog_base} left behind after the pod finished"
    );
    c.stop();
}

#[test]
fn exec_and_pods_coming_back_after_a_restart() {
    if !can_run("exec_and_pods_coming_back_after_a_restart") {
        return;
    }
    let mut c = Cluster::start("exec");
    create(
        &c,
        json!({"metadata": {"name": "box"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "command": ["sleep", "3600"], "env": [{"name": "GREETING", "value": "hello"}]}]}}),
    );
    let b = wait_for(&c, "box", "Running", |p| phase(p) == "Running");
    let ip = b["status"]["podIP"].as_str().unwrap().to_string();
    // skiff exec: output, exit code, stdin.
    let o = c.skiff(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo out $GREETING $(hostname); echo err >&2; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(common::stdout(&o), "out hello box\n");
    assert_eq!(common::stderr(&o), "err\n");
    let o = c.skiff_stdin(
        &[
            "exec",
            "-i",
            "box",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo pid1=$(cat /proc/1/comm)",
        ],
        Some("from stdin\n"),
    );
    assert_eq!(common::stdout(&o), "FROM STDIN\npid1=sleep\n");
    assert!(o.status.success());
    if common::have_kubectl("exec (kubectl part)") {
        let o = c.kubectl(&[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out $GREETING; exit 3",
        ]);
        assert_eq!(o.status.code(), Some(3), "{}", common::stderr(&o));
        assert_eq!(common::stdout(&o), "out hello\n");
        let o = c.kubectl_stdin(&["exec", "-i", "box", "--", "cat"], Some("piped input\n"));
        assert!(o.status.success(), "{}", common::stderr(&o));
        assert_eq!(common::stdout(&o), "piped input\n");
        let o = c.kubectl(&["exec", "nope", "--", "true"]);
        assert!(
            !o.status.success() && common::stderr(&o).contains("NotFound"),
            "{}",
            common::stderr(&o)
        );
        // exec -t: kubectl on a terminal (util-linux `script` gives it one, 30x100) gets a
        // terminal in the container, named inside it, with kubectl's window size; typed input
        // reaches an interactive shell and the exit code comes back.
        let o = kubectl_tty(
            &c,
            "exec -it box -- sh -c 'tty; stty size; [ -t 0 ] && echo interactive; exit 5'",
            "",
        );
        let out = common::stdout(&o);
        assert_eq!(
            o.status.code(),
            Some(5),
            "{out}
{}",
            common::stderr(&o)
        );
        assert!(out.contains("/dev/pts/0"), "{out}");
        assert!(out.contains("30 100"), "{out}");
        assert!(out.contains("interactive"), "{out}");
        let o = kubectl_tty(&c, "exec -it box -- sh", "echo typed-$((6*7))\nexit 7\n");
        let out = common::stdout(&o);
        assert_eq!(
            o.status.code(),
            Some(7),
            "{out}
{}",
            common::stderr(&o)
        );
        assert!(out.contains("typed-42"), "{out}");
    }
    // A restart of the whole cluster: the pod comes back, with the same address.
    c.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = c.skiff(&["exec", "box", "--", "echo", "back"]);
        if o.status.success() && common::stdout(&o) == "back\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod did not come back: {}\n{}",
            common::stderr(&o),
            c.daemon_log("kubelet")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        get(&c, "box")["status"]["podIP"].as_str(),
        Some(ip.as_str())
    );
    c.stop();
}

#[test]
fn graceful_termination_with_prestop() {
    if !can_run("graceful_termination_with_prestop") {
        return;
    }
    let c = Cluster::start("grace");
    let script = "import signal, sys, time\ndef h(*a):\n    print('got SIGTERM', flush=True)\n    sys.exit(0)\nsignal.signal(signal.SIGTERM, h)\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.1)\n";
    create(
        &c,
        json!({"metadata": {"name": "polite"}, "spec": {"terminationGracePeriodSeconds": 20, "containers": [{"name": "c", "command": ["python3", "-u", "-c", script],
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop-ran > /proc/1/fd/1"]}}}}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "stubborn"}, "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "c", "command": ["sleep", "3600"]}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "hurried"}, "spec": {"terminationGracePeriodSeconds": 30, "containers": [{"name": "c", "command": ["sleep", "3600"]}]}}),
    );
    let polite = wait_for(&c, "polite", "Running", |p| phase(p) == "Running");
    wait_for(&c, "stubborn", "Running", |p| phase(p) == "Running");
    wait_for(&c, "hurried", "Running", |p| phase(p) == "Running");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs(&c, &polite, "c").contains("ready") {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = |name: &str, limit: u64| {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(limit);
        while c
            .curl(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
                "application/json",
            )
            .0
            != 404
        {
            assert!(
                Instant::now() < deadline,
                "{name} not deleted within {limit}s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t0.elapsed()
    };
    // preStop runs first, then SIGTERM; a process that exits on SIGTERM ends the wait early.
    let log = held_log(&c, &polite, "c");
    let (code, v) = c.curl(
        "DELETE",
        "/api/v1/namespaces/default/pods/polite",
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 20);
    let took = gone("polite", 15);
    let out = read_held(&log);
    let (pre, term) = (out.find("prestop-ran"), out.find("got SIGTERM"));
    assert!(
        pre.is_some() && term.is_some() && pre < term,
        "order wrong: {out}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A PID 1 that ignores SIGTERM is killed when the grace period ends.
    assert_eq!(
        c.curl(
            "DELETE",
            "/api/v1/namespaces/default/pods/stubborn",
            None,
            "application/json"
        )
        .0,
        200
    );
    let took = gone("stubborn", 15);
    assert!(
        took >= Duration::from_millis(1800),
        "killed before its grace period: {took:?}"
    );
    // gracePeriodSeconds on the delete overrides the pod's own.
    let (code, v) = c.curl(
        "DELETE",
        "/api/v1/namespaces/default/pods/hurried?gracePeriodSeconds=1",
        None,
        "application/json",
    );
    assert_eq!(
        (code, v["metadata"]["deletionGracePeriodSeconds"].as_i64()),
        (200, Some(1))
    );
    let took = gone("hurried", 15);
    assert!(took < Duration::from_secs(8), "{took:?}");
    c.stop();
}

#[test]
fn security_context_users_and_capabilities() {
    if !can_run("security_context_users_and_capabilities") {
        return;
    }
    let c = Cluster::start("secctx");
    let show =
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status | tr '\\t' ' '; echo uid=$(id -u) gid=$(id -g)";
    create(
        &c,
        json!({"metadata": {"name": "sec"}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "plain", "command": ["sh", "-c", show]},
        {"name": "user", "command": ["sh", "-c", show], "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}},
        {"name": "priv", "command": ["sh", "-c", show], "securityContext": {"privileged": true}}]}}),
    );
    let p = wait_for(&c, "sec", "Succeeded", |p| {
        phase(p) == "Succeeded" || phase(p) == "Failed"
    });
    assert_eq!(phase(&p), "Succeeded", "{p}");
    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    let plain = logs(&c, &p, "plain");
    assert!(
        plain.contains("CapEff: 00000000a80425fb") && plain.contains("CapBnd: 00000000a80425fb"),
        "{plain}"
    );
    assert!(plain.contains("uid=0 gid=0"), "{plain}");
    let user = logs(&c, &p, "user");
    assert!(user.contains("uid=1000 gid=3000"), "{user}");
    assert!(
        user.contains("CapEff: 0000000000000000") && user.contains("CapBnd: 00000000a80425fb"),
        "{user}"
    );
    let privileged = logs(&c, &p, "priv");
    let eff = privileged
        .lines()
        .find_map(|l| l.strip_prefix("CapEff: "))
        .unwrap_or("");
    assert!(
        u64::from_str_radix(eff.trim(), 16).unwrap_or(0) > 0xa80425fb,
        "{privileged}"
    );
    c.stop();
}

/// The pod sandbox: containers share the pod's UTS (hostname) and IPC namespaces, each has its
/// own PID namespace unless `shareProcessNamespace` is set, in which case they see and can
/// signal each other's processes.
#[test]
fn pod_sandbox_and_share_process_namespace() {
    if !can_run("pod_sandbox_and_share_process_namespace") {
        return;
    }
    let c = Cluster::start("sandbox");
    for (name, share) in [("solo", false), ("shared", true)] {
        create(
            &c,
            json!({"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 0, "shareProcessNamespace": share, "containers": [
                {"name": "a", "command": ["sleep", "3601"]},
                {"name": "b", "command": ["sleep", "3602"]}]}}),
        );
    }
    let show = "readlink /proc/self/ns/uts /proc/self/ns/ipc /proc/self/ns/pid; hostname; cat /proc/1/comm";
    let ns = |pod: &str, container: &str| -> Vec<String> {
        let o = c.skiff(&["exec", pod, "-c", container, "--", "sh", "-c", show]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        common::stdout(&o).lines().map(String::from).collect()
    };
    for pod in ["solo", "shared"] {
        wait_for(&c, pod, "Running", |p| {
            p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|s| {
                    s.len() == 2 && s.iter().all(|x| x["state"]["running"].is_object())
                })
        });
    }
    let (a, b) = (ns("solo", "a"), ns("solo", "b"));
    assert_eq!(a[0], b[0], "UTS shared: {a:?} {b:?}");
    assert_eq!(a[1], b[1], "IPC shared: {a:?} {b:?}");
    assert_ne!(
        a[2], b[2],
        "PID namespaces are the containers' own: {a:?} {b:?}"
    );
    assert_eq!(a[3], "solo");
    assert_eq!(a[4], "sleep", "the container is PID 1 of its own namespace");
    // Different pods, different sandboxes.
    let (sa, sb) = (ns("shared", "a"), ns("shared", "b"));
    assert_ne!(a[0], sa[0]);
    assert_ne!(a[1], sa[1]);
    assert_eq!(
        sa[2], sb[2],
        "shareProcessNamespace: one PID namespace {sa:?} {sb:?}"
    );
    assert_eq!(sa[3], "shared");
    assert_ne!(
        sa[4], "sleep",
        "PID 1 is the sandbox, not a container: {sa:?}"
    );
    // b sees a's process and can signal it; a is restarted.
    let kill_a = "for p in /proc/[0-9]*; do if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^sleep 3601'; then kill ${p#/proc/} && echo killed; fi; done";
    let o = c.skiff(&["exec", "shared", "-c", "b", "--", "sh", "-c", kill_a]);
    assert_eq!(
        common::stdout(&o).trim(),
        "killed",
        "{}",
        common::stderr(&o)
    );
    wait_for(&c, "shared", "a restarted", |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "a" && s["restartCount"].as_i64() >= Some(1))
    });
    // In the pod without a shared namespace, b cannot see a.
    let o = c.skiff(&["exec", "solo", "-c", "b", "--", "sh", "-c", kill_a]);
    assert_eq!(common::stdout(&o).trim(), "", "{}", common::stderr(&o));
    c.stop();
}

/// The host PID of a running container's PID 1, from the shim's state.
fn container_pid(c: &Cluster, p: &Value, container: &str) -> i32 {
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let st: Value =
        serde_json::from_slice(&std::fs::read(c.pod_dir(uid).join("state.json")).unwrap()).unwrap();
    st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == container)
        .and_then(|x| x["pid"].as_i64())
        .unwrap() as i32
}

/// Resumes the stopped supervisor however the test ends.
struct Resume(i32);
impl Drop for Resume {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[test]
fn status_catches_up_after_an_apiserver_outage() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !can_run("status_catches_up_after_an_apiserver_outage") {
        return;
    }
    let c = Cluster::start("outage");
    create(
        &c,
        json!({"metadata": {"name": "once"}, "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "command": ["sleep", "300"]}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "always"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "command": ["sleep", "300"]}]}}),
    );
    let once = wait_for(&c, "once", "Running", |p| phase(p) == "Running");
    let always = wait_for(&c, "always", "Running", |p| phase(p) == "Running");
    let (once_pid, always_pid) = (
        container_pid(&c, &once, "c"),
        container_pid(&c, &always, "c"),
    );

    // The apiserver goes down and stays down (its supervisor is stopped) while the
    // containers change: one ends for good, the other is restarted by the kubelet.
    let up = c.up_pid().unwrap();
    kill(Pid::from_raw(up), Signal::SIGSTOP).unwrap();
    let resume = Resume(up);
    let api = c.pid_of("apiserver").unwrap();
    kill(Pid::from_raw(api), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(once_pid), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(always_pid), Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(!c.api_ok(), "the apiserver should still be down");
    drop(resume);

    // Back up: the status reports what happened meanwhile.
    let once = wait_for(&c, "once", "Failed with exit code 137", |p| {
        phase(p) == "Failed"
            && p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    });
    assert_eq!(
        once["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "Error",
        "{once}"
    );
    let always = wait_for(&c, "always", "restarted and Running", |p| {
        phase(p) == "Running"
            && p["status"]["containerStatuses"][0]["restartCount"] == 1
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    });
    assert_eq!(
        always["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "{always}"
    );
    assert_ne!(container_pid(&c, &always, "c"), always_pid);
    c.stop();
}

#[test]
fn host_network_pods() {
    if !can_run("host_network_pods") {
        return;
    }
    let c = Cluster::start("hostnet");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_lowercase();
    create(
        &c,
        json!({"metadata": {"name": "hn"}, "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 0, "containers": [{"name": "web", "command": ["python3", "-m", "http.server", "18081", "--bind", "0.0.0.0"], "readinessProbe": {"tcpSocket": {"port": 18081}, "periodSeconds": 1}}]}}),
    );
    let p = wait_for(&c, "hn", "Ready", pod_ready);
    // The host's address, its network (a server there is the host's), its hostname.
    assert_eq!(p["status"]["podIP"], p["status"]["hostIP"], "{p}");
    assert_eq!(p["status"]["podIPs"][0]["ip"], p["status"]["hostIP"], "{p}");
    assert_eq!(c.http_code("http://127.0.0.1:18081/", 3), "200");
    let o = c.skiff(&["exec", "hn", "--", "hostname"]);
    assert_eq!(
        common::stdout(&o).trim(),
        host_name,
        "{}",
        common::stderr(&o)
    );
    // Nothing of netd's: no namespace, no veth for it.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    assert!(!c.data.join("run/netns").join(uid).exists());
    c.delete_pod("hn", 20);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_lowercase(),
        host_name
    );
    c.stop();
}

/// A Python HTTPS server on 8443 with the certificate and key given in its environment.
const HTTPS_SERVER: &str = "import http.server, ssl, os
open('/tmp/c.pem', 'w').write(os.environ['CRT'])
open('/tmp/k.pem', 'w').write(os.environ['KEY'])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('/tmp/c.pem', '/tmp/k.pem')
s = http.server.HTTPServer(('0.0.0.0', 8443), http.server.SimpleHTTPRequestHandler)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()";

#[test]
fn https_probes_do_not_check_certificates() {
    if !can_run("https_probes_do_not_check_certificates") {
        return;
    }
    let c = Cluster::start("https");
    // Self-signed, for a name that is not the pod's: the kubelet does not check either.
    let key = rcgen::generate_simple_self_signed(vec!["example.invalid".to_string()]).unwrap();
    let env = json!([
        {"name": "CRT", "value": key.cert.pem()},
        {"name": "KEY", "value": key.signing_key.serialize_pem()}
    ]);
    for (name, scheme) in [("tls", "HTTPS"), ("plain", "HTTP")] {
        create(
            &c,
            json!({"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "web", "command": ["python3", "-c", HTTPS_SERVER], "env": env, "readinessProbe": {"httpGet": {"scheme": scheme, "port": 8443, "path": "/"}, "periodSeconds": 1}}]}}),
        );
    }
    wait_for(&c, "tls", "Ready", pod_ready);
    // Plain HTTP to a TLS server fails the probe: the pod stays unready, and says why.
    let evs = wait_event(&c, "plain", "Unhealthy");
    // Its server is up as long as the other one's; still unready after more probes.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!pod_ready(&get(&c, "plain")));
    assert!(
        evs.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Readiness probe failed"))),
        "{evs:?}"
    );
    c.stop();
}

#[test]
fn lifecycle_hooks_post_start_and_http_pre_stop() {
    if !can_run("lifecycle_hooks_post_start_and_http_pre_stop") {
        return;
    }
    let c = Cluster::start("hooks");
    // The command waits for what postStart leaves; preStop asks the server itself over HTTP.
    create(
        &c,
        json!({"metadata": {"name": "web"}, "spec": {"terminationGracePeriodSeconds": 3, "containers": [{"name": "c",
            "command": ["sh", "-c", "while [ ! -f /tmp/started ]; do sleep 0.05; done; exec python3 -u -m http.server 8080"],
            "lifecycle": {
                "postStart": {"exec": {"command": ["sh", "-c", "echo from-post-start > /tmp/started"]}},
                "preStop": {"httpGet": {"path": "/pre-stop-hook", "port": 8080}}
            },
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
    );
    create(
        &c,
        json!({"metadata": {"name": "badstart"}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "command": ["sleep", "3600"],
            "lifecycle": {"postStart": {"exec": {"command": ["false"]}}}}]}}),
    );
    let web = wait_for(&c, "web", "Ready", pod_ready);
    let o = c.skiff(&["exec", "web", "--", "cat", "/tmp/started"]);
    assert_eq!(
        common::stdout(&o),
        "from-post-start\n",
        "{}",
        common::stderr(&o)
    );
    // A failed postStart hook kills the container.
    let bad = wait_for(&c, "badstart", "Failed", |p| phase(p) == "Failed");
    assert_eq!(
        bad["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137,
        "{bad}"
    );
    assert!(logs(&c, &bad, "c").contains("postStart hook failed"));
    // preStop over HTTP reaches the server before it is stopped.
    let log = held_log(&c, &web, "c");
    c.delete_pod("web", 20);
    let out = read_held(&log);
    assert!(out.contains("GET /pre-stop-hook"), "{out}");
    c.stop();
}

const GRPC_HEALTH_SERVER: &str = "import grpc, os, time
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
h = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(h, s)
s.add_insecure_port('0.0.0.0:50051')
s.start()
h.set('', health_pb2.HealthCheckResponse.SERVING)
while True:
    up = os.path.exists('/tmp/db-up')
    h.set('db', health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING)
    time.sleep(0.1)
";

#[test]
fn grpc_probes_speak_the_health_protocol() {
    if !can_run("grpc_probes_speak_the_health_protocol") {
        return;
    }
    // The python3 a container runs: the first on the container's PATH.
    let have_grpc = std::process::Command::new("python3")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .args(["-c", "import grpc, grpc_health.v1.health"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_grpc {
        eprintln!("SKIPPED grpc_probes_speak_the_health_protocol: python3 grpcio and grpcio-health-checking are not installed (scripts/test.sh installs them)");
        return;
    }
    let c = Cluster::start("grpc");
    // The startup probe waits for the server (importing grpcio takes a while); then liveness
    // asks for the server as a whole (SERVING), readiness for service `db`, which is
    // NOT_SERVING until /tmp/db-up exists.
    create(
        &c,
        json!({"metadata": {"name": "rpc"}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
            "command": ["python3", "-u", "-c", GRPC_HEALTH_SERVER],
            "startupProbe": {"grpc": {"port": 50051}, "periodSeconds": 1, "failureThreshold": 30},
            "livenessProbe": {"grpc": {"port": 50051}, "periodSeconds": 1, "failureThreshold": 1},
            "readinessProbe": {"grpc": {"port": 50051, "service": "db"}, "periodSeconds": 1}}]}}),
    );
    let unready = "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let evs = wait_event(&c, "rpc", "Unhealthy");
        if evs.iter().any(|e| e["message"] == unready) {
            break;
        }
        assert!(Instant::now() < deadline, "{evs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!pod_ready(&get(&c, "rpc")));
    let o = c.skiff(&["exec", "rpc", "--", "touch", "/tmp/db-up"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let p = wait_for(&c, "rpc", "Ready", pod_ready);
    // The liveness probe passed all along: never restarted.
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "{p}"
    );
    c.stop();
}
