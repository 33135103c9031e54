//! Server-side printing (`meta.k8s.io/v1` Table): the columns kubectl shows for each kind, as
//! the Kubernetes API server's printers define them. The API server returns these when a client
//! asks for `as=Table`; the skiff CLI prints the same tables.

use serde_json::{json, Value};

use crate::json::{path, str_at};
use crate::time::age;

/// One column: name, type (`string`, `integer`, `date`), priority (0 = always, 1 = `-o wide`).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub priority: u8,
    pub description: &'static str,
}

const fn col(name: &'static str, priority: u8) -> Column {
    Column {
        name,
        ty: "string",
        priority,
        description: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = Column { name: "Age", ty: "string", priority: 0, description: "CreationTimestamp is a timestamp representing the server time when this object was created." };

/// The columns for a kind (falls back to Name + Age, as the API server's default table does).
pub fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col("Ready", 0),
            col("Status", 0),
            Column {
                ty: "integer",
                ..col("Restarts", 0)
            },
            AGE,
            col("IP", 1),
            col("Node", 1),
            col("Nominated Node", 1),
            col("Readiness Gates", 1),
        ],
        "Namespace" => vec![NAME, col("Status", 0), AGE],
        "Service" => vec![
            NAME,
            col("Type", 0),
            col("Cluster-IP", 0),
            col("External-IP", 0),
            col("Port(s)", 0),
            AGE,
            col("Selector", 1),
        ],
        "Endpoints" => vec![NAME, col("Endpoints", 0), AGE],
        "ConfigMap" => vec![
            NAME,
            Column {
                ty: "integer",
                ..col("Data", 0)
            },
            AGE,
        ],
        "Secret" => vec![
            NAME,
            col("Type", 0),
            Column {
                ty: "integer",
                ..col("Data", 0)
            },
            AGE,
        ],
        "ServiceAccount" => vec![
            NAME,
            Column {
                ty: "integer",
                ..col("Secrets", 0)
            },
            AGE,
        ],
        "Node" => vec![
            NAME,
            col("Status", 0),
            col("Roles", 0),
            AGE,
            col("Version", 0),
            col("Internal-IP", 1),
            col("External-IP", 1),
            col("OS-Image", 1),
            col("Kernel-Version", 1),
            col("Container-Runtime", 1),
        ],
        "Event" => vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Message", 0),
        ],
        "PersistentVolume" => vec![
            NAME,
            col("Capacity", 0),
            col("Access Modes", 0),
            col("Reclaim Policy", 0),
            col("Status", 0),
            col("Claim", 0),
            col("StorageClass", 0),
            col("VolumeAttributesClass", 0),
            col("Reason", 0),
            AGE,
            col("VolumeMode", 1),
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", 0),
            col("Volume", 0),
            col("Capacity", 0),
            col("Access Modes", 0),
            col("StorageClass", 0),
            col("VolumeAttributesClass", 0),
            AGE,
            col("VolumeMode", 1),
        ],
        "NetworkPolicy" => vec![NAME, col("Pod-Selector", 0), AGE],
        "Ingress" => vec![
            NAME,
            col("Class", 0),
            col("Hosts", 0),
            col("Address", 0),
            col("Ports", 0),
            AGE,
        ],
        "IngressClass" => vec![NAME, col("Controller", 0), col("Parameters", 0), AGE],
        "StorageClass" => vec![
            NAME,
            col("Provisioner", 0),
            col("ReclaimPolicy", 0),
            col("VolumeBindingMode", 0),
            col("AllowVolumeExpansion", 0),
            AGE,
        ],
        "EndpointSlice" => vec![
            NAME,
            col("AddressType", 0),
            col("Ports", 0),
            col("Endpoints", 0),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn arr<'a>(v: &'a Value, p: &str) -> &'a [Value] {
    path(v, p)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn count_keys(v: &Value, p: &str) -> usize {
    path(v, p).and_then(Value::as_object).map_or(0, |m| m.len())
}

fn selector_string(v: Option<&Value>) -> String {
    let Some(v) = v else { return String::new() };
    let mut parts = Vec::new();
    if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
        for (k, val) in m {
            parts.push(format!("{k}={}", val.as_str().unwrap_or("")));
        }
    }
    for e in v
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = str_at(e, "key");
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match str_at(e, "operator") {
            "In" => parts.push(format!("{key} in ({})", vals.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", vals.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

fn access_modes(v: &Value, p: &str) -> String {
    arr(v, p)
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn pod_status(o: &Value) -> (String, i64, usize, usize) {
    let statuses = arr(o, "status.containerStatuses");
    let total = arr(o, "spec.containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let mut reason = str_at(o, "status.phase").to_string();
    if !str_at(o, "status.reason").is_empty() {
        reason = str_at(o, "status.reason").to_string();
    }
    // Init containers first, then app containers, as kubectl's printer does.
    let inits = arr(o, "status.initContainerStatuses");
    let n_init = arr(o, "spec.initContainers").len();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        if let Some(t) = path(c, "state.terminated") {
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!(
                    "Init:ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                ),
            };
            initializing = true;
        } else if let Some(w) = path(c, "state.waiting")
            .and_then(|w| w.get("reason"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{w}");
            initializing = true;
        } else {
            reason = format!("Init:{i}/{n_init}");
            initializing = true;
        }
        break;
    }
    if !initializing {
        for c in statuses.iter().rev() {
            if let Some(w) = path(c, "state.waiting")
                .and_then(|w| w.get("reason"))
                .and_then(Value::as_str)
            {
                if !w.is_empty() {
                    reason = w.to_string();
                }
            } else if let Some(t) = path(c, "state.terminated") {
                reason = match t.get("reason").and_then(Value::as_str) {
                    Some(r) if !r.is_empty() => r.to_string(),
                    _ => format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                };
            }
        }
    }
    if path(o, "metadata.deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    (reason, restarts, ready, total)
}

fn service_ports(o: &Value) -> String {
    arr(o, "spec.ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoints_summary(o: &Value) -> String {
    let mut eps = Vec::new();
    for s in arr(o, "subsets") {
        let ports: Vec<i64> = arr(s, "ports")
            .iter()
            .filter_map(|p| p.get("port").and_then(Value::as_i64))
            .collect();
        for a in arr(s, "addresses") {
            let ip = str_at(a, "ip");
            if ports.is_empty() {
                eps.push(ip.to_string());
            }
            for p in &ports {
                eps.push(format!("{ip}:{p}"));
            }
        }
    }
    let n = eps.len();
    if n > 3 {
        format!("{} + {} more...", eps[..3].join(","), n - 3)
    } else {
        eps.join(",")
    }
}

/// The cells of one row, in `columns(kind)` order.
pub fn row(kind: &str, o: &Value) -> Vec<Value> {
    let name = str_at(o, "metadata.name");
    let created = age(str_at(o, "metadata.creationTimestamp"));
    match kind {
        "Pod" => {
            let (status, restarts, ready, total) = pod_status(o);
            let ip = none_if_empty(str_at(o, "status.podIP").to_string());
            let node = none_if_empty(str_at(o, "spec.nodeName").to_string());
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                json!(created),
                json!(ip),
                json!(node),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Namespace" => vec![
            json!(name),
            json!(str_at(o, "status.phase")),
            json!(created),
        ],
        "Service" => {
            let ty = str_at(o, "spec.type");
            let ty = if ty.is_empty() { "ClusterIP" } else { ty };
            let cip = none_if_empty(str_at(o, "spec.clusterIP").to_string());
            let mut ext: Vec<String> = arr(o, "spec.externalIPs")
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            for i in arr(o, "status.loadBalancer.ingress") {
                ext.push(str_at(i, "ip").to_string());
            }
            let ext = if ty == "ExternalName" {
                str_at(o, "spec.externalName").to_string()
            } else if ext.is_empty() && ty == "LoadBalancer" {
                "<pending>".into()
            } else {
                none_if_empty(ext.join(","))
            };
            let sel = path(o, "spec.selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                json!(name),
                json!(ty),
                json!(cip),
                json!(ext),
                json!(none_if_empty(service_ports(o))),
                json!(created),
                json!(none_if_empty(sel)),
            ]
        }
        "Endpoints" => vec![
            json!(name),
            json!(none_if_empty(endpoints_summary(o))),
            json!(created),
        ],
        "ConfigMap" => vec![
            json!(name),
            json!(count_keys(o, "data") + count_keys(o, "binaryData")),
            json!(created),
        ],
        "Secret" => vec![
            json!(name),
            json!(str_at(o, "type")),
            json!(count_keys(o, "data")),
            json!(created),
        ],
        "ServiceAccount" => vec![json!(name), json!(arr(o, "secrets").len()), json!(created)],
        "Node" => {
            let ready = arr(o, "status.conditions")
                .iter()
                .find(|c| str_at(c, "type") == "Ready")
                .map(|c| {
                    if str_at(c, "status") == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if path(o, "spec.unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = path(o, "metadata.labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let addr = |t: &str| {
                arr(o, "status.addresses")
                    .iter()
                    .find(|a| str_at(a, "type") == t)
                    .map(|a| str_at(a, "address").to_string())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                json!(name),
                json!(status),
                json!(none_if_empty(roles.join(","))),
                json!(created),
                json!(str_at(o, "status.nodeInfo.kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(str_at(o, "status.nodeInfo.osImage")),
                json!(str_at(o, "status.nodeInfo.kernelVersion")),
                json!(str_at(o, "status.nodeInfo.containerRuntimeVersion")),
            ]
        }
        "Event" => {
            let last = [
                str_at(o, "lastTimestamp"),
                str_at(o, "eventTime"),
                str_at(o, "metadata.creationTimestamp"),
            ]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("");
            let obj = format!(
                "{}/{}",
                str_at(o, "involvedObject.kind").to_lowercase(),
                str_at(o, "involvedObject.name")
            );
            vec![
                json!(age(last)),
                json!(str_at(o, "type")),
                json!(str_at(o, "reason")),
                json!(obj),
                json!(str_at(o, "message")),
            ]
        }
        "PersistentVolume" => {
            let claim = match path(o, "spec.claimRef") {
                Some(c) => format!("{}/{}", str_at(c, "namespace"), str_at(c, "name")),
                None => String::new(),
            };
            vec![
                json!(name),
                json!(str_at(o, "spec.capacity.storage")),
                json!(access_modes(o, "spec.accessModes")),
                json!(str_at(o, "spec.persistentVolumeReclaimPolicy")),
                json!(str_at(o, "status.phase")),
                json!(claim),
                json!(str_at(o, "spec.storageClassName")),
                json!(none_if_empty(
                    str_at(o, "spec.volumeAttributesClassName").to_string()
                )),
                json!(str_at(o, "status.reason")),
                json!(created),
                json!(str_at(o, "spec.volumeMode")),
            ]
        }
        "PersistentVolumeClaim" => vec![
            json!(name),
            json!(str_at(o, "status.phase")),
            json!(str_at(o, "spec.volumeName")),
            json!(str_at(o, "status.capacity.storage")),
            json!(access_modes(o, "status.accessModes")),
            json!(str_at(o, "spec.storageClassName")),
            json!(none_if_empty(
                str_at(o, "spec.volumeAttributesClassName").to_string()
            )),
            json!(created),
            json!(str_at(o, "spec.volumeMode")),
        ],
        "NetworkPolicy" => vec![
            json!(name),
            json!(none_if_empty(selector_string(path(o, "spec.podSelector")))),
            json!(created),
        ],
        "Ingress" => {
            let hosts: Vec<&str> = arr(o, "spec.rules")
                .iter()
                .map(|r| str_at(r, "host"))
                .map(|h| if h.is_empty() { "*" } else { h })
                .collect();
            let addrs: Vec<String> = arr(o, "status.loadBalancer.ingress")
                .iter()
                .map(|i| {
                    let ip = str_at(i, "ip");
                    if ip.is_empty() {
                        str_at(i, "hostname").to_string()
                    } else {
                        ip.to_string()
                    }
                })
                .collect();
            let ports = if arr(o, "spec.tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            let class = none_if_empty(str_at(o, "spec.ingressClassName").to_string());
            let hosts = if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts.join(",")
            };
            vec![
                json!(name),
                json!(class),
                json!(hosts),
                json!(addrs.join(",")),
                json!(ports),
                json!(created),
            ]
        }
        "IngressClass" => {
            let params = match path(o, "spec.parameters") {
                Some(p) => format!("{}/{}", str_at(p, "kind"), str_at(p, "name")),
                None => "<none>".into(),
            };
            vec![
                json!(name),
                json!(str_at(o, "spec.controller")),
                json!(params),
                json!(created),
            ]
        }
        "StorageClass" => {
            let is_default = path(o, "metadata.annotations")
                .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                .and_then(Value::as_str)
                == Some("true");
            let shown = if is_default {
                format!("{name} (default)")
            } else {
                name.to_string()
            };
            let reclaim = str_at(o, "reclaimPolicy");
            let mode = str_at(o, "volumeBindingMode");
            let expand = path(o, "allowVolumeExpansion")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            vec![
                json!(shown),
                json!(str_at(o, "provisioner")),
                json!(if reclaim.is_empty() {
                    "Delete"
                } else {
                    reclaim
                }),
                json!(if mode.is_empty() { "Immediate" } else { mode }),
                json!(expand),
                json!(created),
            ]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = arr(o, "ports")
                .iter()
                .filter_map(|p| p.get("port").and_then(Value::as_i64))
                .map(|p| p.to_string())
                .collect();
            let eps: Vec<String> = arr(o, "endpoints")
                .iter()
                .flat_map(|e| {
                    arr(e, "addresses")
                        .iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                })
                .collect();
            let n = eps.len();
            let eps = if n > 3 {
                format!("{} + {} more...", eps[..3].join(","), n - 3)
            } else {
                eps.join(",")
            };
            vec![
                json!(name),
                json!(str_at(o, "addressType")),
                json!(none_if_empty(ports.join(","))),
                json!(none_if_empty(eps)),
                json!(created),
            ]
        }
        _ => vec![json!(name), json!(created)],
    }
}

/// A whole `meta.k8s.io/v1` Table for a list of objects of one kind. `include_object` is the
/// `includeObject` parameter: `None`, `Metadata` (the default) or `Object`.
pub fn table(kind: &str, items: &[&Value], resource_version: &str, include_object: &str) -> Value {
    let cols: Vec<Value> = columns(kind)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" }, "description": c.description, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let object = match include_object {
                "None" => Value::Null,
                "Object" => (*o).clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)}),
            };
            json!({"cells": row(kind, o), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": cols,
        "rows": rows,
    })
}

/// Renders cells as text for a terminal table.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_row_reports_ready_and_restarts() {
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": crate::time::now_rfc3339()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let r = row("Pod", &pod);
        assert_eq!(r[0], json!("p"));
        assert_eq!(r[1], json!("1/2"));
        assert_eq!(r[2], json!("CrashLoopBackOff"));
        assert_eq!(r[3], json!(3));
        assert_eq!(r[5], json!("10.244.0.5"));
        assert_eq!(r.len(), columns("Pod").len());
    }

    #[test]
    fn every_kind_has_matching_cell_count() {
        let o = json!({"metadata": {"name": "x"}});
        for k in [
            "Pod",
            "Namespace",
            "Service",
            "Endpoints",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Node",
            "Event",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "NetworkPolicy",
            "Ingress",
            "IngressClass",
            "StorageClass",
            "EndpointSlice",
            "Other",
        ] {
            assert_eq!(row(k, &o).len(), columns(k).len(), "{k}");
        }
    }

    #[test]
    fn service_ports_and_selector() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let r = row("Service", &svc);
        assert_eq!(r[4], json!("80:30080/TCP"));
        assert_eq!(r[6], json!("app=web"));
    }

    #[test]
    fn table_shape() {
        let o = json!({"metadata": {"name": "x", "namespace": "d"}, "data": {"a": "1"}});
        let t = table("ConfigMap", &[&o], "7", "Metadata");
        assert_eq!(t["rows"][0]["cells"][1], json!(1));
        assert_eq!(
            t["rows"][0]["object"]["kind"],
            json!("PartialObjectMetadata")
        );
        assert_eq!(t["metadata"]["resourceVersion"], json!("7"));
    }
}
