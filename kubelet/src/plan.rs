//! From a Pod to what the runtime executes: per container the argv (with `$(VAR)` expansion),
//! the environment (values and downward-API fieldRefs), working directory and user; per pod the
//! hostname, `/etc/hosts` and `/etc/resolv.conf` as the Kubernetes kubelet writes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

/// Everything the per-pod supervisor needs, written to the pod's directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodPlan {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub netns: String,
    #[serde(default)]
    pub pod_ip: String,
    pub restart_policy: String,
    pub termination_grace_seconds: i64,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    pub hosts: String,
    pub resolv_conf: String,
    pub log_dir: String,
    pub share_process_namespace: bool,
    /// On the host's network (and UTS) namespace: `hostNetwork: true`.
    #[serde(default)]
    pub host_network: bool,
    /// Host paths hidden from the containers (the cluster's data directory).
    pub masked: Vec<String>,
    /// `<cluster>/<uid>`: where under the `skiff` cgroup this pod's containers go.
    #[serde(default)]
    pub cgroup_pod: String,
    /// The kubelet's datagram socket, told the pod's UID whenever its state changes.
    #[serde(default)]
    pub notify: String,
    /// Whether the shim hides the wait of a cgroup move (`cgroup::warm_up`): on hosts where
    /// moves are not already cheap.
    #[serde(default)]
    pub warm_cgroups: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    /// Empty or `host`: the host's root filesystem; an absolute path: that directory.
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub privileged: bool,
    pub memory_limit: Option<i64>,
    #[serde(default)]
    pub cpu_limit_millis: Option<i64>,
    /// Named container ports (for probes).
    #[serde(default)]
    pub ports: Vec<(String, i32)>,
    #[serde(default)]
    pub readiness: Option<k8s_openapi::api::core::v1::Probe>,
    #[serde(default)]
    pub liveness: Option<k8s_openapi::api::core::v1::Probe>,
    #[serde(default)]
    pub startup: Option<k8s_openapi::api::core::v1::Probe>,
    /// `lifecycle.preStop`: run before SIGTERM, within the grace period.
    #[serde(default)]
    pub pre_stop: Option<k8s_openapi::api::core::v1::LifecycleHandler>,
    /// `lifecycle.postStart`: run once the container has started; it counts as running only
    /// after, and is killed if it fails.
    #[serde(default)]
    pub post_start: Option<k8s_openapi::api::core::v1::LifecycleHandler>,
}

/// Facts about the node and pod the downward API can expose.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
    pub cluster_domain: String,
    pub dns_ip: String,
    pub host_resolv_conf: String,
    /// The node's hostname and /etc/hosts, which pods on the host's network get.
    pub host_hostname: String,
    pub host_hosts: String,
}

/// Kubernetes `$(VAR)` expansion: `$(NAME)` is replaced when NAME is defined, `$$` escapes a
/// dollar, and references to undefined names are left as they are.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = vars.get(name) {
                        out.push_str(v);
                    } else {
                        out.push_str(&s[i..i + 3 + end]);
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{0}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

fn field_ref(pod: &Pod, path: &str, f: &Facts) -> Option<String> {
    let m = &pod.metadata;
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => f.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => f.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => f.host_ip.clone(),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|r| r.strip_suffix("']"))
            {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|r| r.strip_suffix("']"))
            {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// The environment of a container, in order, with `$(VAR)` references to earlier entries
/// expanded.
pub fn environment(pod: &Pod, c: &Container, f: &Facts) -> Vec<(String, String)> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(fr) = e.value_from.as_ref().and_then(|vf| vf.field_ref.as_ref()) {
            field_ref(pod, &fr.field_path, f).unwrap_or_default()
        } else {
            String::new()
        };
        vars.insert(e.name.clone(), value.clone());
        out.retain(|(k, _)| k != &e.name);
        out.push((e.name.clone(), value));
    }
    out
}

pub fn hosts_file(pod_ip: &str, hostname: &str) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    if !pod_ip.is_empty() {
        s.push_str(&format!("{pod_ip}\t{hostname}\n"));
    }
    s
}

/// `/etc/resolv.conf` for a pod, by `dnsPolicy` and `dnsConfig`.
pub fn resolv_conf(pod: &Pod, f: &Facts) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let policy = spec
        .dns_policy
        .clone()
        .unwrap_or_else(|| "ClusterFirst".into());
    let host_network = spec.host_network == Some(true);
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy.as_str() {
            "ClusterFirst" if !host_network => (
                vec![f.dns_ip.clone()],
                vec![
                    format!("{ns}.svc.{0}", f.cluster_domain),
                    format!("svc.{}", f.cluster_domain),
                    f.cluster_domain.clone(),
                ],
                vec!["ndots:5".into()],
            ),
            "ClusterFirstWithHostNet" => (
                vec![f.dns_ip.clone()],
                vec![
                    format!("{ns}.svc.{0}", f.cluster_domain),
                    format!("svc.{}", f.cluster_domain),
                    f.cluster_domain.clone(),
                ],
                vec!["ndots:5".into()],
            ),
            "None" => (vec![], vec![], vec![]),
            // Default, and ClusterFirst with host networking: the node's resolver configuration.
            _ => {
                let mut s = (vec![], vec![], vec![]);
                for l in f.host_resolv_conf.lines() {
                    let mut w = l.split_whitespace();
                    match w.next() {
                        Some("nameserver") => s.0.extend(w.map(String::from)),
                        Some("search") => s.1.extend(w.map(String::from)),
                        Some("options") => s.2.extend(w.map(String::from)),
                        _ => {}
                    }
                }
                s
            }
        };
    if let Some(dc) = &spec.dns_config {
        servers.extend(dc.nameservers.iter().flatten().cloned());
        searches.extend(dc.searches.iter().flatten().cloned());
        for o in dc.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    servers.dedup();
    let mut s = String::new();
    for n in servers.iter().take(3) {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !searches.is_empty() {
        s.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn container_plan(pod: &Pod, c: &Container, f: &Facts) -> ContainerPlan {
    let env = environment(pod, c, f);
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let mut argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|a| expand(a, &vars))
        .collect();
    argv.extend(c.args.iter().flatten().map(|a| expand(a, &vars)));
    let pod_sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let memory_limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| skiff_core::quantity::parse_bytes(&q.0));
    ContainerPlan {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        argv,
        env,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        uid: sc.run_as_user.or(pod_sc.run_as_user),
        gid: sc.run_as_group.or(pod_sc.run_as_group),
        privileged: sc.privileged == Some(true),
        memory_limit,
        cpu_limit_millis: c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("cpu"))
            .and_then(|q| skiff_core::quantity::parse_millicores(&q.0)),
        ports: c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect(),
        readiness: c.readiness_probe.clone(),
        liveness: c.liveness_probe.clone(),
        startup: c.startup_probe.clone(),
        pre_stop: c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()),
        post_start: c.lifecycle.as_ref().and_then(|l| l.post_start.clone()),
    }
}

/// The cgroup leaf (`<container>-<run>`) of a container's run and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupLeaf {
    pub leaf: String,
    pub memory: Option<i64>,
    pub cpu_millis: Option<i64>,
}

impl ContainerPlan {
    pub fn cgroup_leaf(&self, run: i32) -> CgroupLeaf {
        CgroupLeaf {
            leaf: format!("{}-{run}", self.name),
            memory: self.memory_limit,
            cpu_millis: self.cpu_limit_millis,
        }
    }
}

/// The plan for a pod whose network is ready.
pub fn pod_plan(pod: &Pod, netns: &str, log_dir: &str, f: &Facts) -> PodPlan {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    // On the host's network a pod shares the node's UTS namespace, hence its hostname, and
    // gets the node's /etc/hosts (as the kubelet does).
    let hostname = if host_network {
        f.host_hostname.clone()
    } else {
        spec.hostname
            .clone()
            .unwrap_or_else(|| name.chars().take(63).collect())
    };
    let hosts = if host_network && !f.host_hosts.is_empty() {
        f.host_hosts.clone()
    } else {
        hosts_file(&f.pod_ip, &hostname)
    };
    PodPlan {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name,
        hostname: hostname.clone(),
        netns: netns.to_string(),
        pod_ip: f.pod_ip.clone(),
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
        termination_grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
        init_containers: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| container_plan(pod, c, f))
            .collect(),
        containers: spec
            .containers
            .iter()
            .map(|c| container_plan(pod, c, f))
            .collect(),
        hosts,
        resolv_conf: resolv_conf(pod, f),
        log_dir: log_dir.to_string(),
        share_process_namespace: spec.share_process_namespace == Some(true),
        host_network,
        masked: Vec::new(),
        cgroup_pod: String::new(),
        notify: String::new(),
        warm_cgroups: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expansion_rules() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("no refs é", &vars), "no refs é");
    }

    #[test]
    fn env_and_argv() {
        let p = pod(
            json!({"metadata": {"name": "web", "namespace": "ns1", "uid": "u1", "labels": {"app": "w"}},
            "spec": {"containers": [{"name": "c", "command": ["echo", "$(GREETING)"], "args": ["$(POD_IP)", "$(MISSING)"],
                "env": [{"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "GREETING", "value": "hi-$(NAME)"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}],
                "resources": {"limits": {"memory": "64Mi"}}}]}}),
        );
        let f = Facts {
            pod_ip: "10.244.0.9".into(),
            cluster_domain: "cluster.local".into(),
            dns_ip: "10.96.0.10".into(),
            ..Default::default()
        };
        let plan = pod_plan(&p, "/ns", "/logs", &f);
        let c = &plan.containers[0];
        assert_eq!(c.argv, vec!["echo", "hi-web", "10.244.0.9", "$(MISSING)"]);
        assert!(c.env.contains(&("APP".into(), "w".into())));
        assert_eq!(c.memory_limit, Some(64 * 1024 * 1024));
        assert_eq!(plan.hostname, "web");
        assert!(plan.hosts.contains("10.244.0.9\tweb"));
    }

    #[test]
    fn host_network_pods_get_the_nodes_name_and_hosts() {
        let f = Facts {
            pod_ip: "10.244.0.1".into(),
            host_hostname: "node-a".into(),
            host_hosts: "127.0.0.1 localhost node-a\n".into(),
            ..Default::default()
        };
        let p = pod(
            json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"hostNetwork": true, "hostname": "ignored", "containers": [{"name": "c"}]}}),
        );
        let plan = pod_plan(&p, "", "/logs", &f);
        assert!(plan.host_network);
        assert_eq!(plan.hostname, "node-a");
        assert_eq!(plan.hosts, f.host_hosts);
        let p = pod(
            json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"containers": [{"name": "c"}]}}),
        );
        let plan = pod_plan(&p, "/ns", "/logs", &f);
        assert!(!plan.host_network);
        assert_eq!(plan.hostname, "p");
        assert!(plan.hosts.contains("10.244.0.1\tp\n"), "{}", plan.hosts);
    }

    #[test]
    fn resolv_conf_by_policy() {
        let f = Facts {
            cluster_domain: "cluster.local".into(),
            dns_ip: "10.96.0.10".into(),
            host_resolv_conf: "nameserver 1.2.3.4\nsearch corp\n".into(),
            ..Default::default()
        };
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "team"}, "spec": {"containers": []}}),
        );
        assert_eq!(resolv_conf(&p, &f), "nameserver 10.96.0.10\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n");
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "team"}, "spec": {"containers": [], "dnsPolicy": "Default"}}),
        );
        assert_eq!(resolv_conf(&p, &f), "nameserver 1.2.3.4\nsearch corp\n");
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "team"}, "spec": {"containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["9.9.9.9"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}}),
        );
        assert_eq!(
            resolv_conf(&p, &f),
            "nameserver 9.9.9.9\nsearch a.b\noptions ndots:2 edns0\n"
        );
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "team"}, "spec": {"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}}),
        );
        assert!(resolv_conf(&p, &f).ends_with("options ndots:1\n"));
    }
}
