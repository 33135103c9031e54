//! The resources skiff serves: group/version/kind/plural, scope, subresources, which field
//! selectors each supports, and the per-kind rules (defaulting, status reset, validation).
//! Storage is generic; only what differs between kinds lives here.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use skiff_core::json::str_at;
use skiff_core::validation::{self, is_config_map_key, is_dns1123_label, Cause, NameRule};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::api::storage::v1 as storage;

/// One served resource.
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource (status is then ignored on main-resource writes).
    pub status: bool,
    pub name_rule: NameRule,
    pub field_selectors: &'static [&'static str],
    /// Decodes into the k8s-openapi type and encodes back: type-checks every field and drops
    /// unknown ones (which the caller detects by comparing).
    pub roundtrip: fn(&Value) -> Result<Value, String>,
    /// Adds the kind's OpenAPI schema (generated from the k8s-openapi type) to a generator and
    /// returns its reference name.
    pub schema: fn(&mut schemars::SchemaGenerator) -> String,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `plural` or `plural.group`, as errors name a resource.
    pub fn gr(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    pub fn prefix(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}/{}/{}/", self.group, self.plural, ns),
            _ => format!("{}/{}/", self.group, self.plural),
        }
    }
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        let ns = if self.namespaced {
            ns.unwrap_or("")
        } else {
            ""
        };
        format!("{}/{}/{}/{}", self.group, self.plural, ns, name)
    }
}

fn sch<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> String {
    g.subschema_for::<T>();
    T::schema_name().into_owned()
}

fn rt<T: Serialize + DeserializeOwned>(v: &Value) -> Result<Value, String> {
    let t = T::deserialize(v).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

/// The Kubernetes API version whose types skiff serves (k8s-openapi feature).
pub const API_TYPES_VERSION: &str = "1.33";

use NameRule::*;

pub static KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        status: true,
        name_rule: Dns1123Label,
        field_selectors: &["status.phase"],
        roundtrip: rt::<core::Namespace>,
        schema: sch::<core::Namespace>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        status: true,
        name_rule: Dns1123Subdomain,
        field_selectors: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        roundtrip: rt::<core::Pod>,
        schema: sch::<core::Pod>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        status: true,
        name_rule: Dns1035Label,
        field_selectors: &["spec.clusterIP", "spec.type"],
        roundtrip: rt::<core::Service>,
        schema: sch::<core::Service>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<core::Endpoints>,
        schema: sch::<core::Endpoints>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<core::ConfigMap>,
        schema: sch::<core::ConfigMap>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &["type"],
        roundtrip: rt::<core::Secret>,
        schema: sch::<core::Secret>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status: false,
        name_rule: PathSegment,
        field_selectors: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        roundtrip: rt::<core::Event>,
        schema: sch::<core::Event>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        status: true,
        name_rule: Dns1123Subdomain,
        field_selectors: &["spec.unschedulable"],
        roundtrip: rt::<core::Node>,
        schema: sch::<core::Node>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<core::ServiceAccount>,
        schema: sch::<core::ServiceAccount>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        namespaced: false,
        short_names: &["pv"],
        categories: &[],
        status: true,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<core::PersistentVolume>,
        schema: sch::<core::PersistentVolume>,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: &[],
        status: true,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<core::PersistentVolumeClaim>,
        schema: sch::<core::PersistentVolumeClaim>,
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        singular: "networkpolicy",
        namespaced: true,
        short_names: &["netpol"],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<networking::NetworkPolicy>,
        schema: sch::<networking::NetworkPolicy>,
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        namespaced: true,
        short_names: &["ing"],
        categories: &[],
        status: true,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<networking::Ingress>,
        schema: sch::<networking::Ingress>,
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IngressClass",
        plural: "ingressclasses",
        singular: "ingressclass",
        namespaced: false,
        short_names: &[],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<networking::IngressClass>,
        schema: sch::<networking::IngressClass>,
    },
    Kind {
        group: "storage.k8s.io",
        version: "v1",
        kind: "StorageClass",
        plural: "storageclasses",
        singular: "storageclass",
        namespaced: false,
        short_names: &["sc"],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &[],
        roundtrip: rt::<storage::StorageClass>,
        schema: sch::<storage::StorageClass>,
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IPAddress",
        plural: "ipaddresses",
        singular: "ipaddress",
        namespaced: false,
        short_names: &["ip"],
        categories: &[],
        status: false,
        name_rule: PathSegment,
        field_selectors: &[],
        roundtrip: rt::<networking::IPAddress>,
        schema: sch::<networking::IPAddress>,
    },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        name_rule: Dns1123Subdomain,
        field_selectors: &["addressType"],
        roundtrip: rt::<discovery::EndpointSlice>,
        schema: sch::<discovery::EndpointSlice>,
    },
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

pub fn by_kind(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The groups served, in discovery order (core first).
pub fn groups() -> Vec<&'static str> {
    let mut seen = Vec::new();
    for k in KINDS {
        if !k.group.is_empty() && !seen.contains(&k.group) {
            seen.push(k.group);
        }
    }
    seen
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let e = v.as_object_mut()?.entry(key).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut()
}

fn obj_mut_in<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let e = m.entry(key).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut()
}

fn default_str(m: &mut Map<String, Value>, k: &str, v: &str) {
    if !m
        .get(k)
        .is_some_and(|x| x.is_string() && !x.as_str().unwrap_or("").is_empty())
    {
        m.insert(k.into(), json!(v));
    }
}

fn default_val(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.into(), v);
    }
}

/// Keys whose values are maps of quantities, which manifests often write as bare numbers
/// (`cpu: 1`); Kubernetes accepts both, so numbers become their string form before decoding.
const QUANTITY_MAPS: &[&str] = &[
    "limits",
    "requests",
    "capacity",
    "allocatable",
    "hard",
    "used",
];

pub fn normalize_quantities(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if QUANTITY_MAPS.contains(&k.as_str()) {
                    if let Value::Object(q) = val {
                        for qv in q.values_mut() {
                            if let Value::Number(n) = qv {
                                *qv = Value::String(n.to_string());
                            }
                        }
                    }
                } else if k == "sizeLimit" || k == "storage" {
                    if let Value::Number(n) = val {
                        *val = Value::String(n.to_string());
                    }
                }
                normalize_quantities(val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_quantities),
        _ => {}
    }
}

/// Kinds whose `metadata.generation` the API server maintains (bumped on spec changes).
pub fn has_generation(kind: &str) -> bool {
    matches!(
        kind,
        "Pod"
            | "NetworkPolicy"
            | "Ingress"
            | "IngressClass"
            | "PersistentVolumeClaim"
            | "EndpointSlice"
    )
}

/// What a freshly created object's status is reset to (kinds with a status subresource).
pub fn initial_status(kind: &str) -> Option<Value> {
    match kind {
        "Pod" => Some(json!({"phase": "Pending"})),
        "Namespace" => Some(json!({"phase": "Active"})),
        "Service" => Some(json!({"loadBalancer": {}})),
        "PersistentVolume" | "PersistentVolumeClaim" => Some(json!({"phase": "Pending"})),
        "Ingress" => Some(json!({"loadBalancer": {}})),
        _ => None,
    }
}

/// The finalizers of the daemons that hold kernel state for a pod (the kubelet: processes,
/// mounts, cgroups; netd: namespace, veth, address).
pub const POD_FINALIZERS: [&str; 2] = ["skiff.io/kubelet", "skiff.io/netd"];

/// Admission of a new object: a pod gets the finalizers of the daemons that will hold state
/// for it, so nothing is released before they have torn it down (and they need not add them,
/// which would cost each pod two more writes before it can start).
pub fn admit_create(kind: &str, o: &mut Value) {
    if kind != "Pod" {
        return;
    }
    let host_network = o["spec"]["hostNetwork"].as_bool() == Some(true);
    let Some(meta) = obj_mut(o, "metadata") else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        for f in POD_FINALIZERS {
            if f == "skiff.io/netd" && host_network {
                continue;
            }
            if !list.iter().any(|x| x == f) {
                list.push(json!(f));
            }
        }
    }
}

/// Defaulting, as the Kubernetes API's defaulting functions and admission do it.
pub fn apply_defaults(kind: &str, o: &mut Value) {
    match kind {
        "Namespace" => {
            let name = str_at(o, "metadata.name").to_string();
            let Some(meta) = obj_mut(o, "metadata") else {
                return;
            };
            let Some(labels) = obj_mut_in(meta, "labels") else {
                return;
            };
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            let Some(spec) = obj_mut(o, "spec") else {
                return;
            };
            default_val(spec, "finalizers", json!(["kubernetes"]));
        }
        "Pod" => {
            let Some(spec) = obj_mut(o, "spec") else {
                return;
            };
            default_str(spec, "restartPolicy", "Always");
            default_str(spec, "dnsPolicy", "ClusterFirst");
            default_str(spec, "schedulerName", "default-scheduler");
            default_val(spec, "terminationGracePeriodSeconds", json!(30));
            default_val(spec, "securityContext", json!({}));
            default_val(spec, "enableServiceLinks", json!(true));
            default_str(spec, "serviceAccountName", "default");
            if let Some(sa) = spec.get("serviceAccountName").cloned() {
                default_val(spec, "serviceAccount", sa);
            }
            for list in ["containers", "initContainers"] {
                for c in spec
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = c.as_object_mut() {
                        default_str(c, "terminationMessagePath", "/dev/termination-log");
                        default_str(c, "terminationMessagePolicy", "File");
                        default_str(c, "imagePullPolicy", "IfNotPresent");
                        for p in c
                            .get_mut("ports")
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(p) = p.as_object_mut() {
                                default_str(p, "protocol", "TCP");
                            }
                        }
                    }
                }
            }
        }
        "Service" => {
            let Some(spec) = obj_mut(o, "spec") else {
                return;
            };
            default_str(spec, "type", "ClusterIP");
            default_str(spec, "sessionAffinity", "None");
            if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                default_str(spec, "internalTrafficPolicy", "Cluster");
                default_val(spec, "ipFamilies", json!(["IPv4"]));
                default_str(spec, "ipFamilyPolicy", "SingleStack");
            }
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    default_str(p, "protocol", "TCP");
                    if let Some(port) = p.get("port").cloned() {
                        default_val(p, "targetPort", port);
                    }
                }
            }
        }
        "Secret" => {
            let m = match o.as_object_mut() {
                Some(m) => m,
                None => return,
            };
            default_str(m, "type", "Opaque");
            // stringData is write-only: merged into data (base64) and dropped, as Kubernetes does.
            if let Some(Value::Object(sd)) = m.remove("stringData") {
                let Some(data) = obj_mut_in(m, "data") else {
                    return;
                };
                use base64::Engine;
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or("").to_string();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
        }
        "PersistentVolume" => {
            let Some(spec) = obj_mut(o, "spec") else {
                return;
            };
            default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
            default_str(spec, "volumeMode", "Filesystem");
        }
        "PersistentVolumeClaim" => {
            let Some(spec) = obj_mut(o, "spec") else {
                return;
            };
            default_str(spec, "volumeMode", "Filesystem");
        }
        "StorageClass" => {
            if let Some(m) = o.as_object_mut() {
                default_str(m, "reclaimPolicy", "Delete");
                default_str(m, "volumeBindingMode", "Immediate");
            }
        }
        "NetworkPolicy" => {
            // policyTypes defaults to Ingress, plus Egress when egress rules are present.
            let Some(spec) = obj_mut(o, "spec") else {
                return;
            };
            let empty = spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if empty {
                let has_egress = spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty());
                let types = if has_egress {
                    json!(["Ingress", "Egress"])
                } else {
                    json!(["Ingress"])
                };
                spec.insert("policyTypes".into(), types);
            }
            default_val(spec, "podSelector", json!({}));
            for dir in ["ingress", "egress"] {
                for r in spec
                    .get_mut(dir)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    for p in r
                        .get_mut("ports")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(p) = p.as_object_mut() {
                            default_str(p, "protocol", "TCP");
                        }
                    }
                }
            }
        }
        "EndpointSlice" => {
            for p in o
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    default_str(p, "protocol", "TCP");
                }
            }
        }
        _ => {}
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn check_port(field: String, v: Option<&Value>, out: &mut Vec<Cause>) {
    match v.and_then(Value::as_i64) {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(p) => out.push(Cause::invalid(
            field,
            &p.to_string(),
            "must be between 1 and 65535, inclusive",
        )),
        None => out.push(Cause::required(field, "")),
    }
}

fn check_protocol(field: String, v: Option<&Value>, out: &mut Vec<Cause>) {
    if let Some(p) = v.and_then(Value::as_str) {
        if !["TCP", "UDP", "SCTP"].contains(&p) {
            out.push(Cause::not_supported(field, p, &["SCTP", "TCP", "UDP"]));
        }
    }
}

/// An IANA service name (named ports): at most 15 characters, lowercase letters, digits and
/// hyphens, at least one letter, no leading/trailing or double hyphens.
pub fn is_port_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if s.contains("--") || s.starts_with('-') || s.ends_with('-') {
        return Err("must not contain consecutive hyphens or begin or end with a hyphen".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    Ok(())
}

fn check_int_or_name(field: String, v: Option<&Value>, out: &mut Vec<Cause>) {
    match v {
        Some(Value::Number(n)) => check_port(field, Some(&Value::Number(n.clone())), out),
        Some(Value::String(s)) => {
            if let Err(e) = is_port_name(s) {
                out.push(Cause::invalid(field, s, &e));
            }
        }
        _ => {}
    }
}

fn validate_path(field: String, p: &str, out: &mut Vec<Cause>) {
    if p.split('/').any(|seg| seg == "..") {
        out.push(Cause::invalid(field, p, "must not contain '..'"));
    }
}

fn validate_pod_spec(spec: &Value, out: &mut Vec<Cause>) {
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        out.push(Cause::required("spec.containers", ""));
    }
    let volumes: BTreeSet<&str> = arr(spec, "volumes")
        .iter()
        .map(|v| str_at(v, "name"))
        .collect();
    let mut seen_vol = BTreeSet::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let n = str_at(v, "name");
        if let Err(e) = is_dns1123_label(n) {
            out.push(Cause::invalid(format!("spec.volumes[{i}].name"), n, &e));
        }
        if !seen_vol.insert(n) {
            out.push(Cause::duplicate(format!("spec.volumes[{i}].name"), n));
        }
        if let Some(hp) = v.get("hostPath") {
            validate_path(
                format!("spec.volumes[{i}].hostPath.path"),
                str_at(hp, "path"),
                out,
            );
        }
    }
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in arr(spec, list).iter().enumerate() {
            let f = format!("spec.{list}[{i}]");
            let n = str_at(c, "name");
            if let Err(e) = is_dns1123_label(n) {
                out.push(Cause::invalid(format!("{f}.name"), n, &e));
            }
            if !names.insert(n) {
                out.push(Cause::duplicate(format!("{f}.name"), n));
            }
            let mut port_names = BTreeSet::new();
            for (j, p) in arr(c, "ports").iter().enumerate() {
                check_port(
                    format!("{f}.ports[{j}].containerPort"),
                    p.get("containerPort"),
                    out,
                );
                check_protocol(format!("{f}.ports[{j}].protocol"), p.get("protocol"), out);
                if let Some(pn) = p.get("name").and_then(Value::as_str) {
                    if let Err(e) = is_port_name(pn) {
                        out.push(Cause::invalid(format!("{f}.ports[{j}].name"), pn, &e));
                    } else if !port_names.insert(pn) {
                        out.push(Cause::duplicate(format!("{f}.ports[{j}].name"), pn));
                    }
                }
            }
            for (j, m) in arr(c, "volumeMounts").iter().enumerate() {
                let vn = str_at(m, "name");
                if !volumes.contains(vn) {
                    out.push(Cause {
                        reason: "FieldValueNotFound",
                        field: format!("{f}.volumeMounts[{j}].name"),
                        message: format!("Not found: {vn:?}"),
                    });
                }
                let mp = str_at(m, "mountPath");
                if mp.is_empty() {
                    out.push(Cause::required(
                        format!("{f}.volumeMounts[{j}].mountPath"),
                        "",
                    ));
                }
                validate_path(format!("{f}.volumeMounts[{j}].mountPath"), mp, out);
                validate_path(
                    format!("{f}.volumeMounts[{j}].subPath"),
                    str_at(m, "subPath"),
                    out,
                );
            }
            for (j, e) in arr(c, "env").iter().enumerate() {
                if str_at(e, "name").is_empty() {
                    out.push(Cause::required(format!("{f}.env[{j}].name"), ""));
                }
            }
        }
    }
    let rp = str_at(spec, "restartPolicy");
    if !["Always", "OnFailure", "Never"].contains(&rp) {
        out.push(Cause::not_supported(
            "spec.restartPolicy",
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let dp = str_at(spec, "dnsPolicy");
    if !["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"].contains(&dp) {
        out.push(Cause::not_supported(
            "spec.dnsPolicy",
            dp,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    if dp == "None" && spec.get("dnsConfig").is_none() {
        out.push(Cause::required(
            "spec.dnsConfig",
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ));
    }
}

fn validate_data_keys(o: &Value, out: &mut Vec<Cause>) {
    let mut total = 0usize;
    let mut keys = BTreeSet::new();
    for field in ["data", "binaryData"] {
        for (k, v) in o
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Err(e) = is_config_map_key(k) {
                out.push(Cause::invalid(format!("{field}[{k}]"), k, &e));
            }
            if !keys.insert(k.clone()) {
                out.push(Cause::duplicate(format!("{field}[{k}]"), k));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
    }
    // Kubernetes limits ConfigMaps and Secrets to 1 MiB.
    if total > 1024 * 1024 {
        out.push(Cause::too_long("data", 1024 * 1024));
    }
}

/// A structured label selector (`matchLabels`, `matchExpressions`), as apimachinery's
/// `ValidateLabelSelector` checks it.
fn validate_label_selector(sel: &Value, f: &str, out: &mut Vec<Cause>) {
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        let labels = m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        out.extend(validation::validate_labels(
            Some(&labels),
            &format!("{f}.matchLabels"),
        ));
    }
    for (i, e) in arr(sel, "matchExpressions").iter().enumerate() {
        let ef = format!("{f}.matchExpressions[{i}]");
        let key = str_at(e, "key");
        if let Err(msg) = validation::is_qualified_name(key) {
            out.push(Cause::invalid(format!("{ef}.key"), key, &msg));
        }
        let values = arr(e, "values");
        match str_at(e, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    out.push(Cause::required(
                        format!("{ef}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    out.push(Cause::forbidden(
                        format!("{ef}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => out.push(Cause::not_supported(
                format!("{ef}.operator"),
                op,
                &["DoesNotExist", "Exists", "In", "NotIn"],
            )),
        }
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or("");
            if let Err(msg) = validation::is_valid_label_value(v) {
                out.push(Cause::invalid(format!("{ef}.values[{j}]"), v, &msg));
            }
        }
    }
}

/// A CIDR as (address bits, prefix length, address width): IPv4 or IPv6.
fn parse_cidr(s: &str) -> Option<(u128, u32, u32)> {
    let (a, p) = s.split_once('/')?;
    let ip: std::net::IpAddr = a.parse().ok()?;
    let prefix: u32 = p.parse().ok()?;
    let (bits, width) = match ip {
        std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    (prefix <= width && !p.starts_with('+')).then_some((bits, prefix, width))
}

const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn validate_network_policy_port(p: &Value, f: &str, out: &mut Vec<Cause>) {
    check_protocol(format!("{f}.protocol"), p.get("protocol"), out);
    let end = p.get("endPort").and_then(Value::as_i64);
    match p.get("port") {
        Some(Value::Number(n)) => {
            check_port(format!("{f}.port"), Some(&Value::Number(n.clone())), out);
            if let Some(e) = end {
                if Some(e) < n.as_i64() {
                    out.push(Cause::invalid(
                        format!("{f}.endPort"),
                        &n.to_string(),
                        "must be greater than or equal to `port`",
                    ));
                }
                check_port(format!("{f}.endPort"), p.get("endPort"), out);
            }
        }
        Some(Value::String(name)) => {
            if let Some(e) = end {
                out.push(Cause::invalid(
                    format!("{f}.endPort"),
                    &e.to_string(),
                    "may not be specified when `port` is non-numeric",
                ));
            }
            if let Err(msg) = is_port_name(name) {
                out.push(Cause::invalid(format!("{f}.port"), name, &msg));
            }
        }
        _ => {
            if let Some(e) = end {
                out.push(Cause::invalid(
                    format!("{f}.endPort"),
                    &e.to_string(),
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
}

fn validate_network_policy_peer(peer: &Value, f: &str, out: &mut Vec<Cause>) {
    let mut n = 0;
    for key in ["podSelector", "namespaceSelector"] {
        if let Some(sel) = peer.get(key).filter(|v| !v.is_null()) {
            n += 1;
            validate_label_selector(sel, &format!("{f}.{key}"), out);
        }
    }
    if let Some(b) = peer.get("ipBlock").filter(|v| !v.is_null()) {
        n += 1;
        let bf = format!("{f}.ipBlock");
        let cidr = str_at(b, "cidr");
        if cidr.is_empty() {
            out.push(Cause::required(format!("{bf}.cidr"), ""));
        } else if let Some((bits, prefix, width)) = parse_cidr(cidr) {
            let mask = |p: u32| {
                if p == 0 {
                    0
                } else {
                    (u128::MAX >> (128 - width)) & !((1u128 << (width - p)) - 1)
                }
            };
            for (i, e) in arr(b, "except").iter().enumerate() {
                let es = e.as_str().unwrap_or("");
                let ef = format!("{bf}.except[{i}]");
                match parse_cidr(es) {
                    None => out.push(Cause::invalid(ef, es, CIDR_MSG)),
                    Some((ebits, eprefix, ewidth)) => {
                        let inside =
                            ewidth == width && (ebits & mask(prefix)) == (bits & mask(prefix));
                        if !inside || eprefix <= prefix {
                            out.push(Cause::invalid(ef, es, "must be a strict subset of `cidr`"));
                        }
                    }
                }
            }
        } else {
            out.push(Cause::invalid(format!("{bf}.cidr"), cidr, CIDR_MSG));
        }
    }
    if n == 0 {
        out.push(Cause::required(f, "must specify a peer"));
    } else if n > 1 && peer.get("ipBlock").is_some_and(|v| !v.is_null()) {
        out.push(Cause::forbidden(
            f,
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// networking.k8s.io/v1 NetworkPolicy spec, as `ValidateNetworkPolicySpec` checks it.
fn validate_network_policy(spec: &Value, out: &mut Vec<Cause>) {
    if let Some(sel) = spec.get("podSelector") {
        validate_label_selector(sel, "spec.podSelector", out);
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, r) in arr(spec, dir).iter().enumerate() {
            let rf = format!("spec.{dir}[{i}]");
            for (j, p) in arr(r, "ports").iter().enumerate() {
                validate_network_policy_port(p, &format!("{rf}.ports[{j}]"), out);
            }
            for (j, p) in arr(r, peers).iter().enumerate() {
                validate_network_policy_peer(p, &format!("{rf}.{peers}[{j}]"), out);
            }
        }
    }
    let types = arr(spec, "policyTypes");
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if t != "Ingress" && t != "Egress" {
            out.push(Cause::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Egress", "Ingress"],
            ));
        }
    }
    if types.len() > 2 {
        out.push(Cause::invalid(
            "spec.policyTypes",
            "",
            "may not specify more than two policyTypes",
        ));
    }
}

/// Kind-specific validation of a canonical object (after defaulting). `old` on update.
pub fn validate(kind: &str, o: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    match kind {
        "Pod" => {
            if let Some(spec) = o.get("spec") {
                validate_pod_spec(spec, &mut out);
            } else {
                out.push(Cause::required("spec", ""));
            }
            if let Some(old) = old {
                // Pod specs are immutable but for a few fields, as in Kubernetes.
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                    for list in ["containers", "initContainers"] {
                        for c in s
                            .get_mut(list)
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(c) = c.as_object_mut() {
                                c.remove("image");
                            }
                        }
                    }
                    if let Some(m) = s.as_object_mut() {
                        m.remove("activeDeadlineSeconds");
                        m.remove("tolerations");
                        m.remove("schedulingGates");
                        if str_at(&old["spec"], "nodeName").is_empty() {
                            m.remove("nodeName");
                        }
                    }
                    s
                };
                if strip(o) != strip(old) {
                    out.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`"));
                }
            }
        }
        "Service" => {
            let spec = &o["spec"];
            let ty = str_at(spec, "type");
            if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
                out.push(Cause::not_supported(
                    "spec.type",
                    ty,
                    &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
                ));
            }
            let ports = arr(spec, "ports");
            let headless = str_at(spec, "clusterIP") == "None";
            if ports.is_empty() && ty != "ExternalName" && !headless {
                out.push(Cause::required("spec.ports", ""));
            }
            let mut names = BTreeSet::new();
            for (i, p) in ports.iter().enumerate() {
                let f = format!("spec.ports[{i}]");
                let n = str_at(p, "name");
                if ports.len() > 1 && n.is_empty() {
                    out.push(Cause::required(format!("{f}.name"), ""));
                }
                if !n.is_empty() {
                    if let Err(e) = is_dns1123_label(n) {
                        out.push(Cause::invalid(format!("{f}.name"), n, &e));
                    }
                    if !names.insert(n) {
                        out.push(Cause::duplicate(format!("{f}.name"), n));
                    }
                }
                check_port(format!("{f}.port"), p.get("port"), &mut out);
                check_protocol(format!("{f}.protocol"), p.get("protocol"), &mut out);
                check_int_or_name(format!("{f}.targetPort"), p.get("targetPort"), &mut out);
                if let Some(np) = p.get("nodePort") {
                    check_port(format!("{f}.nodePort"), Some(np), &mut out);
                }
            }
            let sel = spec.get("selector").and_then(Value::as_object).map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            });
            out.extend(validation::validate_labels(sel.as_ref(), "spec.selector"));
            if let Some(old) = old {
                let (a, b) = (str_at(&old["spec"], "clusterIP"), str_at(spec, "clusterIP"));
                if !a.is_empty() && a != b && ty != "ExternalName" {
                    out.push(Cause::invalid(
                        "spec.clusterIPs[0]",
                        b,
                        "may not change once set",
                    ));
                }
            }
        }
        "NetworkPolicy" => validate_network_policy(&o["spec"], &mut out),
        "IPAddress" => {
            let name = str_at(o, "metadata.name");
            if name.parse::<std::net::IpAddr>().map(|ip| ip.to_string()) != Ok(name.to_string()) {
                out.push(Cause::invalid(
                    "metadata.name",
                    name,
                    "must be a canonical format IP address",
                ));
            }
            for f in ["resource", "name"] {
                if str_at(o, &format!("spec.parentRef.{f}")).is_empty() {
                    out.push(Cause::required(format!("spec.parentRef.{f}"), ""));
                }
            }
            if let Some(old) = old {
                if old.get("spec") != o.get("spec") {
                    out.push(Cause::invalid("spec.parentRef", "", "field is immutable"));
                }
            }
        }
        "ConfigMap" | "Secret" => {
            validate_data_keys(o, &mut out);
            if let Some(old) = old {
                if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                    let same = old.get("data") == o.get("data")
                        && old.get("binaryData") == o.get("binaryData")
                        && old.get("immutable") == o.get("immutable");
                    if !same {
                        out.push(Cause::forbidden(
                            "data",
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if kind == "Secret" && old.get("type") != o.get("type") {
                    out.push(Cause::invalid(
                        "type",
                        str_at(o, "type"),
                        "field is immutable",
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_a_minimal_object() {
        for k in KINDS {
            let v =
                json!({"apiVersion": k.api_version(), "kind": k.kind, "metadata": {"name": "x"}});
            let v = match k.kind {
                "Event" => {
                    json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x"}, "involvedObject": {}})
                }
                "EndpointSlice" => {
                    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "x"}, "addressType": "IPv4", "endpoints": []})
                }
                "StorageClass" => {
                    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "x"}, "provisioner": "p"})
                }
                _ => v,
            };
            let out = (k.roundtrip)(&v);
            assert!(out.is_ok(), "{}: {:?}", k.kind, out);
        }
    }

    #[test]
    fn quantities_accept_numbers() {
        let mut v = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}]}});
        normalize_quantities(&mut v);
        assert_eq!(
            v["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            json!("1")
        );
    }

    #[test]
    fn pod_admission_finalizers() {
        let mut p =
            json!({"metadata": {"name": "a", "finalizers": ["x/y"]}, "spec": {"containers": []}});
        admit_create("Pod", &mut p);
        assert_eq!(
            p["metadata"]["finalizers"],
            json!(["x/y", "skiff.io/kubelet", "skiff.io/netd"])
        );
        admit_create("Pod", &mut p);
        assert_eq!(
            p["metadata"]["finalizers"].as_array().map(Vec::len),
            Some(3)
        );
        let mut h = json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true}});
        admit_create("Pod", &mut h);
        assert_eq!(h["metadata"]["finalizers"], json!(["skiff.io/kubelet"]));
        let mut cm = json!({"metadata": {"name": "c"}});
        admit_create("ConfigMap", &mut cm);
        assert!(cm["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn defaults() {
        let mut ns = json!({"metadata": {"name": "a"}});
        apply_defaults("Namespace", &mut ns);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "a");
        let mut np = json!({"spec": {"egress": [{}]}});
        apply_defaults("NetworkPolicy", &mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let mut np = json!({"spec": {"egress": []}});
        apply_defaults("NetworkPolicy", &mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
        let mut s = json!({"stringData": {"a": "hello"}});
        apply_defaults("Secret", &mut s);
        assert_eq!(s["data"]["a"], "aGVsbG8=");
        assert!(s.get("stringData").is_none());
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults("Service", &mut svc);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn pod_validation() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "a", "volumeMounts": [{"name": "nope", "mountPath": "/x/../etc"}]}]}});
        apply_defaults("Pod", &mut p);
        let causes = validate("Pod", &p, None);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.containers[1].name"));
        assert!(fields.contains(&"spec.containers[1].volumeMounts[0].name"));
        assert!(fields.contains(&"spec.containers[1].volumeMounts[0].mountPath"));
        let mut ok = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "http"}]}]}});
        apply_defaults("Pod", &mut ok);
        assert!(validate("Pod", &ok, None).is_empty());
    }

    #[test]
    fn service_and_configmap_validation() {
        let mut s = json!({"spec": {"ports": [{"port": 0}, {"port": 80, "protocol": "XTP"}]}});
        apply_defaults("Service", &mut s);
        let c = validate("Service", &s, None);
        assert!(c.iter().any(|c| c.field == "spec.ports[0].port"));
        assert!(c.iter().any(|c| c.field == "spec.ports[1].protocol"));
        assert!(c.iter().any(|c| c.field == "spec.ports[0].name"));
        let cm = json!({"data": {"ok": "1", "bad/key": "2"}});
        let c = validate("ConfigMap", &cm, None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "data[bad/key]");
        assert!(is_port_name("http").is_ok());
        assert!(is_port_name("80").is_err());
    }

    fn np_causes(spec: Value) -> Vec<(String, String)> {
        let mut o = json!({"metadata": {"name": "p", "namespace": "x"}, "spec": spec});
        apply_defaults("NetworkPolicy", &mut o);
        validate("NetworkPolicy", &o, None)
            .into_iter()
            .map(|c| (c.field, c.reason.to_string()))
            .collect()
    }

    #[test]
    fn network_policy_validation() {
        // Valid: every feature at once.
        let ok = np_causes(json!({
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"podSelector": {}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                {"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/80"]}}
            ], "ports": [{"port": 80, "endPort": 90}, {"port": "serve-80-tcp", "protocol": "UDP"}, {"protocol": "SCTP"}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}]
        }));
        assert!(ok.is_empty(), "{ok:?}");
        let bad = np_causes(json!({
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In"}, {"key": "x", "operator": "Exists", "values": ["v"]}, {"key": "y", "operator": "Near", "values": ["v"]}]},
            "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{"from": [
                {},
                {"ipBlock": {"cidr": "10.0.0.0/33"}},
                {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24", "10.0.0.0/16", "nonsense"]}},
                {"ipBlock": {"cidr": "10.0.0.0/16"}, "podSelector": {}}
            ], "ports": [
                {"port": 0}, {"port": 90, "endPort": 80}, {"port": "serve", "endPort": 81},
                {"endPort": 81}, {"port": 80, "protocol": "ICMP"}, {"port": "Bad_Name"}
            ]}]
        }));
        let has = |f: &str, r: &str| bad.iter().any(|(bf, br)| bf == f && br == r);
        for (f, r) in [
            (
                "spec.podSelector.matchExpressions[0].values",
                "FieldValueRequired",
            ),
            (
                "spec.podSelector.matchExpressions[1].values",
                "FieldValueForbidden",
            ),
            (
                "spec.podSelector.matchExpressions[2].operator",
                "FieldValueNotSupported",
            ),
            ("spec.policyTypes[1]", "FieldValueNotSupported"),
            ("spec.ingress[0].from[0]", "FieldValueRequired"),
            ("spec.ingress[0].from[1].ipBlock.cidr", "FieldValueInvalid"),
            (
                "spec.ingress[0].from[2].ipBlock.except[0]",
                "FieldValueInvalid",
            ),
            (
                "spec.ingress[0].from[2].ipBlock.except[1]",
                "FieldValueInvalid",
            ),
            (
                "spec.ingress[0].from[2].ipBlock.except[2]",
                "FieldValueInvalid",
            ),
            ("spec.ingress[0].from[3]", "FieldValueForbidden"),
            ("spec.ingress[0].ports[0].port", "FieldValueInvalid"),
            ("spec.ingress[0].ports[1].endPort", "FieldValueInvalid"),
            ("spec.ingress[0].ports[2].endPort", "FieldValueInvalid"),
            ("spec.ingress[0].ports[3].endPort", "FieldValueInvalid"),
            (
                "spec.ingress[0].ports[4].protocol",
                "FieldValueNotSupported",
            ),
            ("spec.ingress[0].ports[5].port", "FieldValueInvalid"),
        ] {
            assert!(has(f, r), "missing {f} {r} in {bad:?}");
        }
        assert_eq!(bad.len(), 16, "{bad:?}");
    }
}
