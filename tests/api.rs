//! End-to-end tests of the foundation: a real cluster per test (own network namespace and data
//! dir), driven by the machine's unmodified kubectl, curl over the Unix socket and HTTPS, the
//! skiff CLI, and kube-rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{can_run, have_kubectl, ok, stderr, stdout, Cluster};
use serde_json::{json, Value};

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels:\n    app: demo\ndata:\n  mode: fast\n";

#[test]
fn kubectl_create_apply_get_label_watch_delete() {
    if !can_run("kubectl_create_apply_get_label_watch_delete")
        || !have_kubectl("kubectl_create_apply_get_label_watch_delete")
    {
        return;
    }
    let c = Cluster::start("kubectl");
    let out = ok(&c.kubectl_stdin(&["create", "-f", "-"], Some(CM)));
    assert!(out.contains("configmap/settings created"), "{out}");
    // A second create is refused as AlreadyExists.
    let again = c.kubectl_stdin(&["create", "-f", "-"], Some(CM));
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("AlreadyExists"),
        "{}",
        stderr(&again)
    );

    // apply twice: first adopts (patch), then updates a value and adds one through a patch.
    ok(&c.kubectl_stdin(&["apply", "-f", "-"], Some(CM)));
    let changed = CM.replace("mode: fast", "mode: slow\n  extra: \"1\"");
    let out = ok(&c.kubectl_stdin(&["apply", "-f", "-"], Some(&changed)));
    assert!(out.contains("configmap/settings configured"), "{out}");
    let out = ok(&c.kubectl_stdin(&["apply", "-f", "-"], Some(&changed)));
    assert!(out.contains("configmap/settings unchanged"), "{out}");
    let y = ok(&c.kubectl(&["get", "configmap", "settings", "-o", "yaml"]));
    assert!(
        y.contains("mode: slow") && y.contains("extra: \"1\""),
        "{y}"
    );
    assert!(
        y.contains("resourceVersion:") && y.contains("uid:") && y.contains("creationTimestamp:"),
        "{y}"
    );
    // Removing a key from the manifest removes it from the object (three-way merge).
    let out = ok(&c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&CM.replace("mode: fast", "mode: slow")),
    ));
    assert!(out.contains("configured"), "{out}");
    let j: Value =
        serde_json::from_str(&ok(&c.kubectl(&["get", "cm", "settings", "-o", "json"]))).unwrap();
    assert_eq!(j["data"], json!({"mode": "slow"}));

    // Tables with kubectl's columns, and label selectors.
    let t = ok(&c.kubectl(&["get", "configmaps"]));
    let header: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "DATA", "AGE"]);
    assert!(
        t.lines()
            .any(|l| l.starts_with("settings") && l.split_whitespace().nth(1) == Some("1")),
        "{t}"
    );
    ok(&c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n  labels: {app: else}\n"),
    ));
    let sel = ok(&c.kubectl(&["get", "cm", "-l", "app=demo", "-o", "name"]));
    assert_eq!(sel.trim(), "configmap/settings");
    let sel = ok(&c.kubectl(&[
        "get",
        "cm",
        "-l",
        "app in (demo,else),app!=demo",
        "-o",
        "name",
    ]));
    assert_eq!(sel.trim(), "configmap/other");

    // get -w sees a change made meanwhile.
    let mut w = c
        .netns_cmd("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .arg("--cache-dir")
        .arg(c.dir.join("kube-cache"))
        .args([
            "get",
            "cm",
            "other",
            "-w",
            "--output-watch-events",
            "--request-timeout=20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    ok(&c.kubectl(&["label", "cm", "other", "tier=gold"]));
    let deadline = Instant::now() + Duration::from_secs(15);
    let watched = loop {
        std::thread::sleep(Duration::from_millis(300));
        let gone = w.try_wait().unwrap().is_some();
        if gone || Instant::now() > deadline {
            break w;
        }
        // Stop after the change shows up: kubectl prints one line per event.
        let v = ok(&c.kubectl(&[
            "get",
            "cm",
            "other",
            "-o",
            "jsonpath={.metadata.labels.tier}",
        ]));
        if v == "gold" {
            std::thread::sleep(Duration::from_millis(700));
            break w;
        }
    };
    let mut watched = watched;
    let _ = watched.kill();
    let out = watched.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("ADDED") && text.contains("MODIFIED"),
        "watch output: {text}\n{}",
        stderr(&out)
    );

    // label shows up in the object; delete removes it.
    let l = ok(&c.kubectl(&["get", "cm", "other", "--show-labels"]));
    assert!(l.contains("tier=gold"), "{l}");
    let d = ok(&c.kubectl(&["delete", "cm", "other"]));
    assert!(d.contains("configmap \"other\" deleted"), "{d}");
    let g = c.kubectl(&["get", "cm", "other"]);
    assert!(
        !g.status.success() && stderr(&g).contains("NotFound"),
        "{}",
        stderr(&g)
    );

    // Discovery.
    let ar = ok(&c.kubectl(&["api-resources"]));
    for r in [
        "pods",
        "services",
        "configmaps",
        "networkpolicies",
        "ingresses",
        "storageclasses",
        "endpointslices",
        "persistentvolumeclaims",
    ] {
        assert!(
            ar.lines().any(|l| l.starts_with(r)),
            "api-resources lacks {r}:\n{ar}"
        );
    }
    // kubectl's generator commands send protobuf bodies.
    ok(&c.kubectl(&["create", "namespace", "gen"]));
    ok(&c.kubectl(&[
        "create",
        "configmap",
        "gcm",
        "-n",
        "gen",
        "--from-literal=k=v",
    ]));
    ok(&c.kubectl(&[
        "create",
        "secret",
        "generic",
        "gsec",
        "-n",
        "gen",
        "--from-literal=a=b",
    ]));
    ok(&c.kubectl(&["create", "serviceaccount", "gsa", "-n", "gen"]));
    ok(&c.kubectl(&[
        "create",
        "service",
        "clusterip",
        "gsvc",
        "-n",
        "gen",
        "--tcp=80:8080",
    ]));
    assert_eq!(
        ok(&c.kubectl(&[
            "get",
            "secret",
            "gsec",
            "-n",
            "gen",
            "-o",
            "jsonpath={.data.a}"
        ])),
        "Yg=="
    );
    assert_eq!(
        ok(&c.kubectl(&[
            "get",
            "svc",
            "gsvc",
            "-n",
            "gen",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ])),
        "8080"
    );
    assert_eq!(
        ok(&c.kubectl(&["get", "cm", "gcm", "-n", "gen", "-o", "jsonpath={.data.k}"])),
        "v"
    );
    // Every namespace gets the default ServiceAccount and the CA ConfigMap.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .kubectl(&["get", "cm", "kube-root-ca.crt", "-n", "gen"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "kube-root-ca.crt never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&c.kubectl(&["get", "serviceaccount", "default", "-n", "gen"]));

    // The OpenAPI documents carry the real schemas (generated from the types).
    let ex = ok(&c.kubectl(&["explain", "configmap.data"]));
    assert!(ex.contains("Data contains the configuration data"), "{ex}");
    let ex = ok(&c.kubectl(&["explain", "networkpolicy.spec.podSelector"]));
    assert!(ex.contains("podSelector"), "{ex}");
    let ns = ok(&c.kubectl(&["get", "ns"]));
    for n in ["default", "kube-system", "kube-public"] {
        assert!(ns.contains(n), "{ns}");
    }
    // Typed objects with server-side defaults and kubectl's pod columns.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    command: [\"sleep\", \"1000\"]\n    resources: {limits: {cpu: 1, memory: 64Mi}}\n";
    ok(&c.kubectl_stdin(&["apply", "-f", "-"], Some(pod)));
    let t = ok(&c.kubectl(&["get", "pods", "-o", "wide"]));
    let header: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        &header[..5],
        &["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    let p: Value =
        serde_json::from_str(&ok(&c.kubectl(&["get", "pod", "web", "-o", "json"]))).unwrap();
    assert_eq!(p["spec"]["restartPolicy"], "Always");
    assert_eq!(p["spec"]["dnsPolicy"], "ClusterFirst");
    // Scheduled and started by the kubelet within moments: Pending, then Running.
    assert!(
        matches!(p["status"]["phase"].as_str(), Some("Pending" | "Running")),
        "{p}"
    );
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1"
    );
    c.stop();
}

#[test]
fn curl_over_socket_and_https_auth() {
    if !can_run("curl_over_socket_and_https_auth") {
        return;
    }
    let c = Cluster::start("curl");
    let body =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"via-curl"},"data":{"k":"v"}}"#;
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(body),
        "application/json",
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["metadata"]["namespace"], "default");
    let (code, v) = c.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps/via-curl",
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(v["data"]["k"], "v");
    // YAML bodies work too.
    let (code, _) = c.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: via-yaml}\n"),
        "application/yaml",
    );
    assert_eq!(code, 201);
    // Stale update → 409 Conflict; current resourceVersion → 200.
    let (_, cur) = c.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps/via-curl",
        None,
        "application/json",
    );
    let mut stale = cur.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, v) = c.curl(
        "PUT",
        "/api/v1/namespaces/default/configmaps/via-curl",
        Some(&stale.to_string()),
        "application/json",
    );
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")), "{v}");
    let mut fresh = cur.clone();
    fresh["data"]["k"] = json!("w");
    let (code, v) = c.curl(
        "PUT",
        "/api/v1/namespaces/default/configmaps/via-curl",
        Some(&fresh.to_string()),
        "application/json",
    );
    assert_eq!(code, 200, "{v}");
    assert!(
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > cur["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
    );
    // Patches of each type.
    let (code, v) = c.curl(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/via-curl",
        Some(r#"{"data":{"m":"1"}}"#),
        "application/merge-patch+json",
    );
    assert_eq!((code, &v["data"]), (200, &json!({"k": "w", "m": "1"})));
    let (code, v) = c.curl(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/via-curl",
        Some(r#"[{"op":"remove","path":"/data/k"}]"#),
        "application/json-patch+json",
    );
    assert_eq!((code, &v["data"]), (200, &json!({"m": "1"})));
    // generateName.
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(r#"{"metadata":{"generateName":"gen-"}}"#),
        "application/json",
    );
    assert_eq!(code, 201);
    assert!(v["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    // Field selectors on list.
    let (code, v) = c.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dvia-yaml",
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (code, v) = c.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?fieldSelector=spec.nope%3D1",
        None,
        "application/json",
    );
    assert_eq!(code, 400, "{v}");
    // Discovery and health over the socket.
    assert_eq!(c.curl("GET", "/version", None, "application/json").0, 200);
    assert_eq!(
        c.curl(
            "GET",
            "/apis/networking.k8s.io/v1",
            None,
            "application/json"
        )
        .1["groupVersion"],
        "networking.k8s.io/v1"
    );

    // HTTPS: no token or a wrong one → 401; the admin token → 200.
    let https = |auth: Option<&str>| {
        let mut cmd = c.netns_cmd("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(c.data.join("pki/ca.crt"));
        if let Some(t) = auth {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        cmd.arg("https://127.0.0.1:6443/api/v1/namespaces");
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    assert_eq!(https(None), "401");
    assert_eq!(https(Some("wrong")), "401");
    let token = std::fs::read_to_string(c.data.join("pki/admin.token")).unwrap();
    assert_eq!(https(Some(token.trim())), "200");
    // The socket is root-only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(c.socket()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(c.kubeconfig())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    c.stop();
}

#[test]
fn invalid_objects_are_rejected_and_change_nothing() {
    if !can_run("invalid_objects_are_rejected_and_change_nothing") {
        return;
    }
    let c = Cluster::start("invalid");
    let count = |c: &Cluster| {
        c.curl("GET", "/api/v1/configmaps", None, "application/json")
            .1["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = count(&c);
    let head = |c: &Cluster| {
        c.curl("GET", "/api/v1/configmaps", None, "application/json")
            .1["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let rv0 = head(&c);
    let cases: &[(&str, u16, Option<&str>)] = &[
        (
            r#"{"metadata":{"name":"Bad_Name"}}"#,
            422,
            Some("metadata.name"),
        ),
        (
            r#"{"metadata":{"name":"ok","labels":{"bad key":"x"}}}"#,
            422,
            Some("metadata.labels"),
        ),
        (
            r#"{"metadata":{"name":"ok","labels":{"k":"-bad-"}}}"#,
            422,
            Some("metadata.labels.k"),
        ),
        (
            r#"{"metadata":{"name":"ok"},"data":{"a/b":"x"}}"#,
            422,
            Some("data[a/b]"),
        ),
        (r#"{"metadata":{"name":"ok"},"bogus":1}"#, 400, None),
        (r#"{"metadata":{"name":"ok"},"data":"notamap"}"#, 400, None),
        (
            r#"{"apiVersion":"v2","kind":"ConfigMap","metadata":{"name":"ok"}}"#,
            400,
            None,
        ),
        (r#"{"metadata":{}}"#, 422, Some("metadata.name")),
    ];
    for (body, want, field) in cases {
        let (code, v) = c.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            Some(body),
            "application/json",
        );
        assert_eq!(code, *want, "{body} → {v}");
        assert_eq!(v["kind"], "Status");
        if let Some(f) = field {
            let causes = v["details"]["causes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                causes.iter().any(|x| x["field"] == *f),
                "{body}: causes {causes:?}"
            );
            assert_eq!(v["reason"], "Invalid");
        }
    }
    // An invalid pod (duplicate container names) and a Service with a bad port.
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a"},{"name":"a"}]}}"#),
        "application/json",
    );
    assert_eq!(code, 422, "{v}");
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(r#"{"metadata":{"name":"s"},"spec":{"ports":[{"port":70000}]}}"#),
        "application/json",
    );
    assert_eq!(code, 422, "{v}");
    // Unknown fields are dropped with a warning when validation is not strict.
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldValidation=Ignore",
        Some(r#"{"metadata":{"name":"lenient"},"bogus":1}"#),
        "application/json",
    );
    assert_eq!(code, 201);
    assert!(v.get("bogus").is_none());
    // Nothing but the lenient one was stored, and no version was spent on failures.
    assert_eq!(count(&c), before + 1);
    assert_eq!(
        head(&c).parse::<u64>().unwrap(),
        rv0.parse::<u64>().unwrap() + 1
    );
    // A namespace that does not exist.
    let (code, _) = c.curl(
        "POST",
        "/api/v1/namespaces/nope/configmaps",
        Some(r#"{"metadata":{"name":"x"}}"#),
        "application/json",
    );
    assert_eq!(code, 404);
    // kubectl surfaces the same errors.
    if have_kubectl("invalid_objects (kubectl part)") {
        let o = c.kubectl_stdin(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict\ndata: {a: b}\nbogus: 1\n"));
        assert!(!o.status.success());
        assert!(stderr(&o).contains("unknown field"), "{}", stderr(&o));
        let o = c.kubectl_stdin(
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad\n"),
        );
        assert!(!o.status.success());
        assert!(stderr(&o).contains("is invalid"), "{}", stderr(&o));
        assert_eq!(count(&c), before + 1);
    }
    c.stop();
}

#[test]
fn namespace_deletion_and_finalizers() {
    if !can_run("namespace_deletion_and_finalizers") {
        return;
    }
    let c = Cluster::start("nsdel");
    assert_eq!(
        c.curl(
            "POST",
            "/api/v1/namespaces",
            Some(r#"{"metadata":{"name":"team"}}"#),
            "application/json"
        )
        .0,
        201
    );
    let (_, ns) = c.curl("GET", "/api/v1/namespaces/team", None, "application/json");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    assert_eq!(ns["status"]["phase"], "Active");
    for name in ["a", "b"] {
        let body = format!(r#"{{"metadata":{{"name":"{name}"}}}}"#);
        assert_eq!(
            c.curl(
                "POST",
                "/api/v1/namespaces/team/configmaps",
                Some(&body),
                "application/json"
            )
            .0,
            201
        );
    }
    assert_eq!(c.curl("POST", "/api/v1/namespaces/team/secrets", Some(r#"{"metadata":{"name":"held","finalizers":["example.com/hold"]},"stringData":{"x":"y"}}"#), "application/json").0, 201);
    let (_, sec) = c.curl(
        "GET",
        "/api/v1/namespaces/team/secrets/held",
        None,
        "application/json",
    );
    assert_eq!(sec["data"]["x"], "eQ==");

    // A finalizer holds a single object: delete marks it, it stays until the finalizer goes.
    assert_eq!(
        c.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(r#"{"metadata":{"name":"fin","finalizers":["example.com/hold"]}}"#),
            "application/json"
        )
        .0,
        201
    );
    let (code, v) = c.curl(
        "DELETE",
        "/api/v1/namespaces/default/configmaps/fin",
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        c.curl(
            "GET",
            "/api/v1/namespaces/default/configmaps/fin",
            None,
            "application/json"
        )
        .0,
        200
    );
    // No new finalizers while deleting.
    let (code, _) = c.curl(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/fin",
        Some(r#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#),
        "application/merge-patch+json",
    );
    assert_eq!(code, 422);
    let (code, _) = c.curl(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/fin",
        Some(r#"{"metadata":{"finalizers":null}}"#),
        "application/merge-patch+json",
    );
    assert_eq!(code, 200);
    assert_eq!(
        c.curl(
            "GET",
            "/api/v1/namespaces/default/configmaps/fin",
            None,
            "application/json"
        )
        .0,
        404
    );

    // Deleting the namespace: Terminating, content removed, finalized object waits.
    let (code, v) = c.curl(
        "DELETE",
        "/api/v1/namespaces/team",
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(v["status"]["phase"], "Terminating");
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/team/configmaps",
        Some(r#"{"metadata":{"name":"late"}}"#),
        "application/json",
    );
    assert_eq!(code, 403, "{v}");
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&|| {
        c.curl(
            "GET",
            "/api/v1/namespaces/team/configmaps",
            None,
            "application/json",
        )
        .1["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let (_, held) = c.curl(
        "GET",
        "/api/v1/namespaces/team/secrets/held",
        None,
        "application/json",
    );
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.curl("GET", "/api/v1/namespaces/team", None, "application/json")
            .1["status"]["phase"],
        "Terminating"
    );
    let (code, _) = c.curl(
        "PATCH",
        "/api/v1/namespaces/team/secrets/held",
        Some(r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/hold"]}}"#),
        "application/strategic-merge-patch+json",
    );
    assert_eq!(code, 200);
    wait_for(&|| {
        c.curl("GET", "/api/v1/namespaces/team", None, "application/json")
            .0
            == 404
    });
    c.stop();
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if !can_run("acknowledged_writes_survive_kill_9") {
        return;
    }
    let c = Cluster::start("kill9");
    let socket = c.socket();
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut writers = Vec::new();
    for w in 0..16 {
        let (acked, stop, socket) = (acked.clone(), stop.clone(), socket.clone());
        writers.push(rt.spawn(async move {
            let client = skiff_core::client::ApiClient::unix(&socket);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("w{w}-{i}");
                i += 1;
                let body =
                    json!({"metadata": {"name": name}, "data": {"payload": "x".repeat(200)}});
                if let Ok(r) = client
                    .request(
                        "POST",
                        "/api/v1/namespaces/default/configmaps",
                        Some("application/json"),
                        body.to_string().into_bytes(),
                    )
                    .await
                {
                    if r.status == 201 {
                        acked.lock().unwrap().push(name);
                    }
                }
            }
        }));
    }
    // Kill the apiserver while the writers are busy.
    while acked.lock().unwrap().len() < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let old = c.kill9("apiserver");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    assert!(c.pid_of("apiserver").is_some_and(|p| p != old));
    let (code, list) = c.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps",
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    let stored: std::collections::HashSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let acked = acked.lock().unwrap();
    let missing: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Every stored object is whole.
    for o in list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["metadata"]["name"].as_str().unwrap().starts_with('w'))
    {
        assert_eq!(o["data"]["payload"].as_str().map(str::len), Some(200));
    }
    // resourceVersions keep increasing after the restart.
    let (_, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(r#"{"metadata":{"name":"after"}}"#),
        "application/json",
    );
    let rv: u64 = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let max_before = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .max()
        .unwrap();
    assert!(rv > max_before);
    eprintln!(
        "{} acknowledged writes before kill -9, all present",
        acked.len()
    );
    c.stop();
}

#[test]
fn kube_rs_watcher_resumes_across_restart_and_handles_gone() {
    if !can_run("kube_rs_watcher_resumes_across_restart_and_handles_gone") {
        return;
    }
    let c = Cluster::start("kubers");
    let kubeconfig = c.kubeconfig();
    let data = c.data.clone();
    let c = Arc::new(c);
    let c2 = c.clone();
    c.in_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use futures::{StreamExt, TryStreamExt};
            use k8s_openapi::api::core::v1::ConfigMap;
            use kube::api::{
                Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
            };
            use kube::runtime::{watcher, WatchStreamExt};

            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .unwrap();
            let client = kube::Client::try_from(cfg).unwrap();
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

            // Raw watch: ADDED, MODIFIED, DELETED in order.
            let list = api.list(&Default::default()).await.unwrap();
            let rv = list.metadata.resource_version.clone().unwrap();
            let mut stream = api
                .watch(&WatchParams::default().timeout(30), &rv)
                .await
                .unwrap()
                .boxed();
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some("watched".into());
            api.create(&PostParams::default(), &cm).await.unwrap();
            api.patch(
                "watched",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"a": "1"}})),
            )
            .await
            .unwrap();
            api.delete("watched", &DeleteParams::default())
                .await
                .unwrap();
            let mut seen = Vec::new();
            while seen.len() < 3 {
                match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                    .await
                    .unwrap()
                    .unwrap()
                {
                    Some(WatchEvent::Added(o)) => seen.push(("ADDED", o.metadata.name.unwrap())),
                    Some(WatchEvent::Modified(o)) => {
                        seen.push(("MODIFIED", o.metadata.name.unwrap()))
                    }
                    Some(WatchEvent::Deleted(o)) => {
                        seen.push(("DELETED", o.metadata.name.unwrap()))
                    }
                    Some(WatchEvent::Bookmark(_)) => {}
                    Some(WatchEvent::Error(e)) => panic!("watch error {e:?}"),
                    None => panic!("watch ended early"),
                }
            }
            let types: Vec<&str> = seen.iter().map(|s| s.0).collect();
            assert_eq!(types, vec!["ADDED", "MODIFIED", "DELETED"]);

            // kube-runtime's watcher: sees objects, survives a kill -9 of the apiserver.
            let events = Arc::new(Mutex::new(Vec::<String>::new()));
            let ev2 = events.clone();
            let w = tokio::spawn(async move {
                let s = watcher(api.clone(), watcher::Config::default()).default_backoff();
                futures::pin_mut!(s);
                while let Some(e) = s.next().await {
                    if let Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) = e {
                        ev2.lock()
                            .unwrap()
                            .push(o.metadata.name.unwrap_or_default());
                    }
                }
            });
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            let wait_seen = |name: &'static str| {
                let events = events.clone();
                async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !events.lock().unwrap().iter().any(|n| n == name) {
                        assert!(Instant::now() < deadline, "watcher never saw {name}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let mut one = ConfigMap::default();
            one.metadata.name = Some("before-restart".into());
            api.create(&PostParams::default(), &one).await.unwrap();
            wait_seen("before-restart").await;
            let c3 = c2.clone();
            tokio::task::spawn_blocking(move || c3.kill9("apiserver"))
                .await
                .unwrap();
            let mut two = ConfigMap::default();
            two.metadata.name = Some("after-restart".into());
            api.create(&PostParams::default(), &two).await.unwrap();
            wait_seen("after-restart").await;
            w.abort();

            // A version older than the server's window: an ERROR event with 410 Gone.
            let mut stream = api
                .watch(&WatchParams::default().timeout(5), "1")
                .await
                .unwrap()
                .boxed();
            match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .unwrap()
                .unwrap()
            {
                Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
                other => panic!("expected 410, got {other:?}"),
            }
            // kube-runtime's watcher recovers from that by re-listing: a fresh watcher starting
            // from a stale version still converges.
            let stale = watcher::Config::default();
            let s = watcher(api.clone(), stale);
            let first = tokio::time::timeout(Duration::from_secs(10), s.boxed().try_next())
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(first, Some(watcher::Event::Init)));
        });
    });
    let _ = data;
    match Arc::try_unwrap(c) {
        Ok(c) => c.stop(),
        Err(_) => panic!("cluster still shared"),
    }
}

#[test]
fn skiff_cli_apply_get_delete_and_examples() {
    if !can_run("skiff_cli_apply_get_delete_and_examples") {
        return;
    }
    let c = Cluster::start("cli");
    let out = ok(&c.skiff_stdin(&["apply", "-f", "-"], Some(CM)));
    assert!(out.contains("configmap/settings created"), "{out}");
    let out = ok(&c.skiff_stdin(&["apply", "-f", "-"], Some(CM)));
    assert!(out.contains("configmap/settings unchanged"), "{out}");
    let out = ok(&c.skiff_stdin(&["apply", "-f", "-"], Some(&CM.replace("fast", "slow"))));
    assert!(out.contains("configmap/settings configured"), "{out}");
    let t = ok(&c.skiff(&["get", "cm"]));
    assert!(t.starts_with("NAME") && t.contains("settings"), "{t}");
    let y = ok(&c.skiff(&["get", "cm", "settings", "-o", "yaml"]));
    assert!(y.contains("mode: slow"), "{y}");
    let t = ok(&c.skiff(&["get", "ns", "-o", "name"]));
    assert!(t.contains("namespace/kube-system"), "{t}");
    let d = ok(&c.skiff(&["describe", "cm", "settings"]));
    assert!(d.contains("Name:") && d.contains("app=demo"), "{d}");
    let s = ok(&c.skiff(&["status"]));
    assert!(s.contains("apiserver") && s.contains("healthy"), "{s}");
    // wait --for on a jsonpath, then delete by label.
    ok(&c.skiff(&[
        "wait",
        "cm/settings",
        "--for=jsonpath={.data.mode}=slow",
        "--timeout=5s",
    ]));
    let d = ok(&c.skiff(&["delete", "cm", "-l", "app=demo"]));
    assert!(d.contains("deleted"), "{d}");
    let g = c.skiff(&["get", "cm", "settings"]);
    assert!(!g.status.success() && stderr(&g).contains("NotFound"));

    // Every example applies as it is.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let out = ok(&c.skiff(&["apply", "-f", examples]));
    let n = out.lines().filter(|l| l.ends_with(" created")).count();
    assert!(n >= 3, "{out}");
    let again = ok(&c.skiff(&["apply", "-f", examples]));
    assert!(!again.contains(" created"), "{again}");
    c.stop();
}

#[test]
fn up_restarts_a_crashed_daemon_and_down_stops_cleanly() {
    if !can_run("up_restarts_a_crashed_daemon_and_down_stops_cleanly") {
        return;
    }
    let c = Cluster::start("updown");
    assert_eq!(
        c.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(r#"{"metadata":{"name":"keep"}}"#),
            "application/json"
        )
        .0,
        201
    );
    c.kill9("apiserver");
    let s = stdout(&c.skiff(&["status"]));
    assert!(s.contains("apiserver"), "{s}");
    // down stops everything; objects stay on disk for the next up.
    let d = ok(&c.skiff(&["down"]));
    assert!(d.contains("stopped"), "{d}");
    assert!(!c.api_ok());
    let st = c.skiff(&["status"]);
    assert!(!st.status.success());
    assert!(c.data.join("db").exists());
    let _ = Command::new("true").status();
    c.stop();
}

#[test]
fn services_get_cluster_ips_from_the_range() {
    if !can_run("services_get_cluster_ips_from_the_range") {
        return;
    }
    let c = Cluster::start("svcip");
    let svc = |name: &str, extra: &str| {
        format!(
            r#"{{"metadata":{{"name":"{name}"}},"spec":{{"selector":{{"app":"x"}},"ports":[{{"port":80}}]{extra}}}}}"#
        )
    };
    let (code, a) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc("a", "")),
        "application/json",
    );
    assert_eq!(code, 201, "{a}");
    let ip: std::net::Ipv4Addr = a["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let o = ip.octets();
    assert!(
        o[0] == 10 && (96..112).contains(&o[1]),
        "{ip} outside 10.96.0.0/12"
    );
    assert_eq!(a["spec"]["clusterIPs"], json!([ip.to_string()]));
    // The reservation is an IPAddress object naming the Service.
    let (code, r) = c.curl(
        "GET",
        &format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}"),
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(r["spec"]["parentRef"]["name"], "a");
    // A chosen address: in range and free, else 422.
    let (code, b) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc("b", r#","clusterIP":"10.96.0.50""#)),
        "application/json",
    );
    assert_eq!(
        (code, b["spec"]["clusterIP"].as_str()),
        (201, Some("10.96.0.50")),
        "{b}"
    );
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc("c", r#","clusterIP":"10.96.0.50""#)),
        "application/json",
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("already allocated"),
        "{v}"
    );
    let (code, v) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc("c", r#","clusterIP":"192.168.0.1""#)),
        "application/json",
    );
    assert_eq!(code, 422, "{v}");
    // Headless and ExternalName get no address.
    let (code, h) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc("h", r#","clusterIP":"None""#)),
        "application/json",
    );
    assert_eq!(
        (code, h["spec"]["clusterIPs"].clone()),
        (201, json!(["None"]))
    );
    let (code, v) = c.curl("POST", "/api/v1/namespaces/default/services", Some(r#"{"metadata":{"name":"ext"},"spec":{"type":"ExternalName","externalName":"db.example","clusterIP":"10.96.0.60"}}"#), "application/json");
    assert_eq!(code, 422, "{v}");
    // Updates may not change the address; deleting the Service releases it for reuse.
    let (code, _) = c.curl(
        "PATCH",
        "/api/v1/namespaces/default/services/b",
        Some(r#"{"spec":{"clusterIP":"10.96.0.51"}}"#),
        "application/merge-patch+json",
    );
    assert_eq!(code, 422);
    assert_eq!(
        c.curl(
            "DELETE",
            "/api/v1/namespaces/default/services/b",
            None,
            "application/json"
        )
        .0,
        200
    );
    assert_eq!(
        c.curl(
            "GET",
            "/apis/networking.k8s.io/v1/ipaddresses/10.96.0.50",
            None,
            "application/json"
        )
        .0,
        404
    );
    let (code, _) = c.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc("c", r#","clusterIP":"10.96.0.50""#)),
        "application/json",
    );
    assert_eq!(code, 201);
    // Many Services, all distinct.
    let mut seen = std::collections::HashSet::new();
    seen.insert(ip.to_string());
    for i in 0..30 {
        let (code, v) = c.curl(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(&svc(&format!("s{i}"), "")),
            "application/json",
        );
        assert_eq!(code, 201);
        assert!(
            seen.insert(v["spec"]["clusterIP"].as_str().unwrap().to_string()),
            "duplicate address"
        );
    }
    // Deleting the namespace's Services through namespace deletion releases theirs too.
    assert_eq!(
        c.curl(
            "POST",
            "/api/v1/namespaces",
            Some(r#"{"metadata":{"name":"gone"}}"#),
            "application/json"
        )
        .0,
        201
    );
    let (_, g) = c.curl(
        "POST",
        "/api/v1/namespaces/gone/services",
        Some(&svc("g", "")),
        "application/json",
    );
    let gip = g["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_eq!(
        c.curl(
            "DELETE",
            "/api/v1/namespaces/gone",
            None,
            "application/json"
        )
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .curl(
            "GET",
            &format!("/apis/networking.k8s.io/v1/ipaddresses/{gip}"),
            None,
            "application/json",
        )
        .0
        != 404
    {
        assert!(
            Instant::now() < deadline,
            "address of a deleted namespace's Service was not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if have_kubectl("services_get_cluster_ips (kubectl part)") {
        let t = ok(&c.kubectl(&["get", "svc", "a"]));
        assert!(t.contains(&ip.to_string()), "{t}");
    }
    c.stop();
}
