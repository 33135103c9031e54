//! End-to-end tests of pod networking (netd): addresses from the pod CIDR, pod-to-pod and
//! host-to-pod traffic without NAT, the safety rule, re-adoption after a crash, teardown.
//! Processes standing in for containers are started inside each pod's network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{can_run, Cluster};
use serde_json::Value;

fn pod(c: &Cluster, name: &str) {
    let body = format!(
        r#"{{"metadata":{{"name":"{name}","labels":{{"app":"{name}"}}}},"spec":{{"terminationGracePeriodSeconds":0,"containers":[{{"name":"c","command":["sleep","3600"]}}]}}}}"#
    );
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&body),
        "application/json",
    );
    assert_eq!(code, 201, "{v}");
}

/// Waits for the pod's address; returns (uid, ip).
fn wait_running(c: &Cluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = c
            .curl(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
                "application/json",
            )
            .1;
        if p["status"]["phase"] == "Running" {
            return;
        }
        let uid = p["metadata"]["uid"].as_str().unwrap_or("");
        let dir = c.pod_dir(uid);
        assert!(
            Instant::now() < deadline,
            "{name} is not Running: {p}\nshim log: {}\nplan: {}\nkubelet log:\n{}",
            std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("plan.json")).unwrap_or_default(),
            c.daemon_log("kubelet")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_ip(c: &Cluster, name: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, p) = c.curl(
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
            "application/json",
        );
        if let Some(ip) = p["status"]["podIP"].as_str() {
            assert_eq!(p["status"]["podIPs"][0]["ip"], ip);
            return (
                p["metadata"]["uid"].as_str().unwrap().to_string(),
                ip.to_string(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "{name} never got an address: {p}\nnetd log:\n{}",
            c.daemon_log("netd")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_gone(c: &Cluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
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
            "{name} was never released: {}\nnetd log:\n{}\nkubelet log:\n{}",
            c.curl(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
                "application/json",
            )
            .1,
            c.daemon_log("netd"),
            c.daemon_log("kubelet")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl_in_pod(c: &Cluster, uid: &str, url: &str) -> String {
    let out = c
        .in_pod_netns(uid, "curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_links(c: &Cluster) -> String {
    String::from_utf8_lossy(
        &c.netns_cmd("ip")
            .args(["-br", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn pods_get_addresses_and_talk_without_nat() {
    if !can_run("pods_get_addresses_and_talk_without_nat") {
        return;
    }
    let c = Cluster::start("podnet");
    pod(&c, "a");
    pod(&c, "b");
    let (ua, ipa) = wait_ip(&c, "a");
    let (ub, ipb) = wait_ip(&c, "b");
    assert_ne!(ipa, ipb);
    for ip in [&ipa, &ipb] {
        let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
        assert_eq!(&o[..2], &[10, 244], "{ip} outside the pod CIDR");
    }
    // Each pod's namespace: eth0 with its address, default route via the gateway.
    let addr = String::from_utf8_lossy(
        &c.in_pod_netns(&ua, "ip")
            .args(["-br", "addr", "show", "eth0"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(addr.contains(&format!("{ipa}/16")), "{addr}");
    let route = String::from_utf8_lossy(
        &c.in_pod_netns(&ua, "ip")
            .args(["route", "show", "default"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(route.contains("via 10.244.0.1 dev eth0"), "{route}");

    // A server in pod b; pod a reaches it by IP and b sees a's own address.
    let log = c.dir.join("server.log");
    let _srv = Server(
        c.in_pod_netns(&ub, "python3")
            .args(["-u", "-m", "http.server", "8080"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl_in_pod(&c, &ua, &format!("http://{ipb}:8080/")) != "200" {
        assert!(Instant::now() < deadline, "pod a cannot reach pod b");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.lines().any(|l| l.starts_with(&format!("{ipa} "))),
        "b did not see a's address: {seen}"
    );
    // The host reaches the pod, from the gateway address (no NAT).
    assert_eq!(c.http_code(&format!("http://{ipb}:8080/"), 3), "200");
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.lines().any(|l| l.starts_with("10.244.0.1 ")), "{seen}");

    // The safety rule: give the test host a route out (a veth into nowhere, IPv6 off so it is
    // silent), then let pod a try an outside address. Nothing leaves; the drop rule counts it.
    let sh = |cmd: &str| {
        let o = c.netns_cmd("sh").args(["-c", cmd]).output().unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    sh("ip link add sink0 type veth peer name sink1 && sysctl -qw net.ipv6.conf.sink0.disable_ipv6=1 net.ipv6.conf.sink1.disable_ipv6=1 && ip link set sink0 up && ip link set sink1 up && ip route add 198.51.100.0/24 dev sink0");
    let tx_before = sh("cat /sys/class/net/sink0/statistics/tx_packets");
    let code = curl_in_pod(&c, &ua, "http://198.51.100.7/");
    assert_eq!(code, "000", "an outside address answered?");
    let rules = sh("nft list chain inet skiff forward");
    let dropped: u64 = rules
        .lines()
        .find(|l| l.contains("never leaves"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped >= 1,
        "the safety rule did not drop anything:\n{rules}"
    );
    assert_eq!(
        sh("cat /sys/class/net/sink0/statistics/tx_packets"),
        tx_before,
        "pod traffic left through the host's route"
    );

    // kill -9 of netd: pods keep their network; the restarted netd re-adopts them.
    c.kill9("netd");
    assert_eq!(curl_in_pod(&c, &ua, &format!("http://{ipb}:8080/")), "200");
    assert_eq!(wait_ip(&c, "a").1, ipa);
    pod(&c, "c");
    let (_, ipc) = wait_ip(&c, "c");
    assert!(ipc != ipa && ipc != ipb, "duplicate address {ipc}");
    // kill -9 of the apiserver: same.
    c.kill9("apiserver");
    assert_eq!(curl_in_pod(&c, &ua, &format!("http://{ipb}:8080/")), "200");

    // Deleting a pod removes its veth and namespace before the object goes.
    let links = host_links(&c);
    let veth_a = format!(
        "skv{}",
        ua.chars()
            .filter(|ch| ch.is_ascii_hexdigit())
            .take(11)
            .collect::<String>()
    );
    assert!(links.contains(&veth_a), "{links}");
    assert_eq!(
        c.curl(
            "DELETE",
            "/api/v1/namespaces/default/pods/a",
            None,
            "application/json"
        )
        .0,
        200
    );
    wait_gone(&c, "a");
    assert!(!host_links(&c).contains(&veth_a));
    let up = c.up_pid().unwrap().to_string();
    let nsfile = c.data.join("run/netns").join(&ua);
    let exists = std::process::Command::new("nsenter")
        .args(["-t", &up, "-m", "--", "test", "-e"])
        .arg(&nsfile)
        .status()
        .unwrap()
        .success();
    assert!(!exists, "pod a's namespace is still there");

    // An orderly stop removes the bridge, the veths and skiff's nftables table.
    sh("ip link del sink0");
    let d = c.skiff(&["down"]);
    assert!(d.status.success());
    let links = host_links(&c);
    assert!(
        !links.contains("skiff0") && !links.contains("skv"),
        "{links}"
    );
    assert_eq!(sh("nft list tables"), "");
    c.stop();
}

#[test]
fn pod_create_delete_cycles_leave_nothing_behind() {
    if !can_run("pod_create_delete_cycles_leave_nothing_behind") {
        return;
    }
    let c = Cluster::start("cycles");
    for i in 0..200 {
        let name = format!("p{i}");
        pod(&c, &name);
        wait_ip(&c, &name);
        // One supervisor per pod, however the kubelet's looks at it interleave with its start.
        if i % 10 == 0 {
            wait_running(&c, &name);
            assert_eq!(c.shim_count(), 1, "pod {name} has more than one shim");
        }
        assert_eq!(
            c.curl(
                "DELETE",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
                "application/json"
            )
            .0,
            200
        );
        wait_gone(&c, &name);
    }
    assert_nothing_left(&c);
    c.stop();
}

/// No veth, network namespace, mount under the data dir (but the kubelet's own), pod
/// directory, address or process of a pod is left.
fn assert_nothing_left(c: &Cluster) {
    let links = host_links(c);
    assert!(!links.contains("skv"), "veths left: {links}");
    let up = c.up_pid().unwrap().to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &up, "-m", "--", "sh", "-c"])
        .arg(format!(
            "ls {0} | wc -l; grep {1} /proc/self/mountinfo | grep -v cgroup-dynmods | grep -vc ' {2} ' || true; ls {2} | wc -l; grep ' {2} ' /proc/self/mountinfo | grep -c ' - tmpfs ' || true",
            c.data.join("run/netns").display(),
            c.data.display(),
            c.data.join("kubelet/pods").display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<&str> = text.split_whitespace().collect();
    // No network namespace, no mount under the data dir (pod namespaces, container roots; the
    // kubelet's own cgroup-dynmods and state tmpfs aside), no pod directory; the kubelet's
    // per-pod state is on its tmpfs.
    assert_eq!(
        nums,
        vec!["0", "0", "0", "1"],
        "namespaces, mounts or pod directories left: {text}"
    );
    let ipam: Value =
        serde_json::from_slice(&std::fs::read(c.data.join("netd/ipam.json")).unwrap()).unwrap();
    assert_eq!(
        ipam["allocations"].as_object().map_or(0, |m| m.len()),
        0,
        "addresses left: {ipam}"
    );
    let needle = c.data.display().to_string();
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?)
                .replace('\0', " ");
            (cmd.contains(&needle) && cmd.contains("skiff-pod")).then_some(cmd)
        })
        .collect();
    assert!(procs.is_empty(), "pod processes left: {procs:?}");
    let logs: Vec<_> = std::fs::read_dir(c.data.join("logs/pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(logs.is_empty(), "pod logs left: {logs:?}");
}

#[test]
fn pods_deleted_while_starting_leave_nothing_behind() {
    if !can_run("pods_deleted_while_starting_leave_nothing_behind") {
        return;
    }
    // Deleted at every stage of their start: before the binding, while netd makes the network
    // and the shim builds the containers ahead of it, around the address.
    let c = Cluster::start("early");
    let names: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        pod(&c, name);
        std::thread::sleep(Duration::from_millis((i % 10) as u64));
        let (code, v) = c.curl(
            "DELETE",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
            "application/json",
        );
        assert_eq!(code, 200, "{v}");
    }
    for name in &names {
        wait_gone(&c, name);
    }
    assert_eq!(c.shim_count(), 0, "shims left");
    assert_nothing_left(&c);
    c.stop();
}
