//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0`
//! envelope around a `runtime.Unknown` holding the object. Typed clients send these, kubectl's
//! generator commands among them (`kubectl create namespace|configmap|secret|serviceaccount|
//! service|ingress`). The objects are decoded with k8s-pb's types and turned into the JSON
//! form the rest of the server handles; responses stay JSON, which those clients accept.

use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::networking::v1 as net;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{json, Map, Value};

const MAGIC: &[u8] = b"k8s\0";

fn put<T: Into<Value>>(m: &mut Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), v.into());
    }
}

fn put_list(m: &mut Map<String, Value>, k: &str, v: Vec<Value>) {
    if !v.is_empty() {
        m.insert(k.into(), Value::Array(v));
    }
}

fn put_map<V: Into<Value>>(
    m: &mut Map<String, Value>,
    k: &str,
    v: std::collections::BTreeMap<String, V>,
) {
    if !v.is_empty() {
        m.insert(
            k.into(),
            Value::Object(v.into_iter().map(|(a, b)| (a, b.into())).collect()),
        );
    }
}

fn strings(v: Vec<String>) -> Vec<Value> {
    v.into_iter().map(Value::String).collect()
}

fn object_meta(m: Option<meta::ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut o = Map::new();
    put(&mut o, "name", m.name);
    put(&mut o, "generateName", m.generate_name);
    put(&mut o, "namespace", m.namespace);
    put(&mut o, "uid", m.uid);
    put(&mut o, "resourceVersion", m.resource_version);
    put_map(&mut o, "labels", m.labels);
    put_map(&mut o, "annotations", m.annotations);
    put_list(&mut o, "finalizers", strings(m.finalizers));
    let owners = m
        .owner_references
        .into_iter()
        .map(|r| {
            let mut x = Map::new();
            put(&mut x, "apiVersion", r.api_version);
            put(&mut x, "kind", r.kind);
            put(&mut x, "name", r.name);
            put(&mut x, "uid", r.uid);
            put(&mut x, "controller", r.controller);
            put(&mut x, "blockOwnerDeletion", r.block_owner_deletion);
            Value::Object(x)
        })
        .collect();
    put_list(&mut o, "ownerReferences", owners);
    Value::Object(o)
}

fn int_or_string(v: Option<IntOrString>) -> Option<Value> {
    let v = v?;
    match v.r#type {
        Some(1) => v.str_val.map(Value::String),
        _ => v.int_val.map(Value::from),
    }
}

fn names(v: Vec<core::LocalObjectReference>) -> Vec<Value> {
    v.into_iter()
        .map(|r| json!({"name": r.name.unwrap_or_default()}))
        .collect()
}

fn ingress_backend(b: Option<net::IngressBackend>) -> Option<Value> {
    let b = b?;
    let mut o = Map::new();
    if let Some(s) = b.service {
        let mut svc = Map::new();
        put(&mut svc, "name", s.name);
        if let Some(p) = s.port {
            let mut port = Map::new();
            put(&mut port, "name", p.name);
            put(&mut port, "number", p.number);
            svc.insert("port".into(), Value::Object(port));
        }
        o.insert("service".into(), Value::Object(svc));
    }
    if let Some(r) = b.resource {
        o.insert(
            "resource".into(),
            json!({"apiGroup": r.api_group, "kind": r.kind, "name": r.name}),
        );
    }
    Some(Value::Object(o))
}

fn decode_kind(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value, String> {
    let err = |e: prost::DecodeError| format!("decoding {kind}: {e}");
    let mut o = Map::new();
    match (api_version, kind) {
        ("v1", "Namespace") => {
            let n = core::Namespace::decode(raw).map_err(err)?;
            o.insert("metadata".into(), object_meta(n.metadata));
            if let Some(spec) = n.spec {
                if !spec.finalizers.is_empty() {
                    o.insert("spec".into(), json!({"finalizers": spec.finalizers}));
                }
            }
        }
        ("v1", "ConfigMap") => {
            let c = core::ConfigMap::decode(raw).map_err(err)?;
            o.insert("metadata".into(), object_meta(c.metadata));
            put_map(&mut o, "data", c.data);
            let bin: std::collections::BTreeMap<String, String> = c
                .binary_data
                .into_iter()
                .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
                .collect();
            put_map(&mut o, "binaryData", bin);
            put(&mut o, "immutable", c.immutable);
        }
        ("v1", "Secret") => {
            let s = core::Secret::decode(raw).map_err(err)?;
            o.insert("metadata".into(), object_meta(s.metadata));
            let data: std::collections::BTreeMap<String, String> = s
                .data
                .into_iter()
                .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
                .collect();
            put_map(&mut o, "data", data);
            put_map(&mut o, "stringData", s.string_data);
            put(&mut o, "type", s.r#type);
            put(&mut o, "immutable", s.immutable);
        }
        ("v1", "ServiceAccount") => {
            let s = core::ServiceAccount::decode(raw).map_err(err)?;
            o.insert("metadata".into(), object_meta(s.metadata));
            let secrets = s
                .secrets
                .into_iter()
                .map(|r| json!({"name": r.name.unwrap_or_default()}))
                .collect();
            put_list(&mut o, "secrets", secrets);
            put_list(&mut o, "imagePullSecrets", names(s.image_pull_secrets));
            put(
                &mut o,
                "automountServiceAccountToken",
                s.automount_service_account_token,
            );
        }
        ("v1", "Service") => {
            let s = core::Service::decode(raw).map_err(err)?;
            o.insert("metadata".into(), object_meta(s.metadata));
            let sp = s.spec.unwrap_or_default();
            let mut spec = Map::new();
            let ports = sp
                .ports
                .into_iter()
                .map(|p| {
                    let mut x = Map::new();
                    put(&mut x, "name", p.name.filter(|n| !n.is_empty()));
                    put(&mut x, "protocol", p.protocol);
                    put(&mut x, "appProtocol", p.app_protocol);
                    put(&mut x, "port", p.port);
                    put(&mut x, "targetPort", int_or_string(p.target_port));
                    put(&mut x, "nodePort", p.node_port.filter(|n| *n != 0));
                    Value::Object(x)
                })
                .collect();
            put_list(&mut spec, "ports", ports);
            put_map(&mut spec, "selector", sp.selector);
            put(
                &mut spec,
                "clusterIP",
                sp.cluster_ip.filter(|c| !c.is_empty()),
            );
            put_list(&mut spec, "clusterIPs", strings(sp.cluster_ips));
            put(&mut spec, "type", sp.r#type.filter(|t| !t.is_empty()));
            put_list(&mut spec, "externalIPs", strings(sp.external_ips));
            put(
                &mut spec,
                "sessionAffinity",
                sp.session_affinity.filter(|t| !t.is_empty()),
            );
            put(
                &mut spec,
                "externalName",
                sp.external_name.filter(|t| !t.is_empty()),
            );
            put(
                &mut spec,
                "externalTrafficPolicy",
                sp.external_traffic_policy.filter(|t| !t.is_empty()),
            );
            put(
                &mut spec,
                "publishNotReadyAddresses",
                sp.publish_not_ready_addresses,
            );
            put_list(&mut spec, "ipFamilies", strings(sp.ip_families));
            put(
                &mut spec,
                "ipFamilyPolicy",
                sp.ip_family_policy.filter(|t| !t.is_empty()),
            );
            put(
                &mut spec,
                "internalTrafficPolicy",
                sp.internal_traffic_policy.filter(|t| !t.is_empty()),
            );
            o.insert("spec".into(), Value::Object(spec));
        }
        ("networking.k8s.io/v1", "Ingress") => {
            let i = net::Ingress::decode(raw).map_err(err)?;
            o.insert("metadata".into(), object_meta(i.metadata));
            let sp = i.spec.unwrap_or_default();
            let mut spec = Map::new();
            put(&mut spec, "ingressClassName", sp.ingress_class_name);
            put(
                &mut spec,
                "defaultBackend",
                ingress_backend(sp.default_backend),
            );
            let tls = sp
                .tls
                .into_iter()
                .map(|t| {
                    let mut x = Map::new();
                    put_list(&mut x, "hosts", strings(t.hosts));
                    put(&mut x, "secretName", t.secret_name);
                    Value::Object(x)
                })
                .collect();
            put_list(&mut spec, "tls", tls);
            let rules = sp
                .rules
                .into_iter()
                .map(|r| {
                    let mut x = Map::new();
                    put(&mut x, "host", r.host.filter(|h| !h.is_empty()));
                    if let Some(http) = r.ingress_rule_value.and_then(|v| v.http) {
                        let paths: Vec<Value> = http
                            .paths
                            .into_iter()
                            .map(|p| {
                                let mut y = Map::new();
                                put(&mut y, "path", p.path);
                                put(&mut y, "pathType", p.path_type);
                                put(&mut y, "backend", ingress_backend(p.backend));
                                Value::Object(y)
                            })
                            .collect();
                        x.insert("http".into(), json!({"paths": paths}));
                    }
                    Value::Object(x)
                })
                .collect();
            put_list(&mut spec, "rules", rules);
            o.insert("spec".into(), Value::Object(spec));
        }
        _ => {
            return Err(format!(
                "protobuf bodies are not supported for {api_version} {kind}; send JSON or YAML"
            ))
        }
    }
    o.insert("apiVersion".into(), json!(api_version));
    o.insert("kind".into(), json!(kind));
    Ok(Value::Object(o))
}

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf body (missing the k8s\\0 prefix)")?;
    let unknown =
        Unknown::decode(inner).map_err(|e| format!("decoding the protobuf envelope: {e}"))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err("compressed protobuf bodies are not supported".into());
    }
    decode_kind(
        tm.api_version.as_deref().unwrap_or(""),
        tm.kind.as_deref().unwrap_or(""),
        &raw,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut b = MAGIC.to_vec();
        b.extend(u.encode_to_vec());
        b
    }

    fn meta(name: &str) -> Option<meta::ObjectMeta> {
        Some(meta::ObjectMeta {
            name: Some(name.into()),
            labels: [("app".to_string(), "x".to_string())].into(),
            ..Default::default()
        })
    }

    #[test]
    fn secret_and_configmap() {
        let s = core::Secret {
            metadata: meta("s"),
            data: [("a".to_string(), b"hi".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Secret", s.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"app": "x"}}, "data": {"a": "aGk="}, "type": "Opaque"})
        );
        let c = core::ConfigMap {
            metadata: meta("c"),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "ConfigMap", c.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "v");
    }

    #[test]
    fn service_ports_and_errors() {
        let s = core::Service {
            metadata: meta("svc"),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: None,
                    }),
                    ..Default::default()
                }],
                selector: [("app".to_string(), "svc".to_string())].into(),
                r#type: Some("ClusterIP".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Service", s.encode_to_vec())).unwrap();
        assert_eq!(
            v["spec"]["ports"][0],
            json!({"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080})
        );
        assert!(decode(b"{}").is_err());
        assert!(decode(&envelope("v1", "Pod", Vec::new())).is_err());
        assert!(decode(&envelope("v1", "Secret", vec![0xff, 0xff])).is_err());
    }
}
