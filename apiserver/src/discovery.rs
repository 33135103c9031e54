//! API discovery (`/api`, `/apis`, per-group-version resource lists), `/version`, and the
//! OpenAPI v3 documents, generated from the registry. kubectl reads the OpenAPI v3 PATCH
//! operations to learn that the server validates fields itself (`fieldValidation`), and the
//! absence of a strategic-merge media type there makes it compute apply patches from its own
//! compiled-in types.

use serde_json::{json, Map, Value};
use skiff_core::config::KUBERNETES_VERSION;

use crate::registry::{self, Kind, KINDS};

pub fn version() -> Value {
    let v = KUBERNETES_VERSION.trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("{KUBERNETES_VERSION}+skiff"),
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rustc",
        "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }),
    })
}

pub fn root_paths() -> Value {
    let mut paths = vec![
        "/api".to_string(),
        "/api/v1".into(),
        "/apis".into(),
        "/healthz".into(),
        "/livez".into(),
        "/readyz".into(),
        "/version".into(),
        "/openapi/v3".into(),
    ];
    for g in registry::groups() {
        paths.push(format!("/apis/{g}"));
        paths.push(format!("/apis/{g}/v1"));
    }
    json!({"paths": paths})
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_value(g: &str) -> Value {
    let versions: Vec<&str> = {
        let mut v: Vec<&str> = KINDS
            .iter()
            .filter(|k| k.group == g)
            .map(|k| k.version)
            .collect();
        v.dedup();
        v
    };
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = registry::groups().iter().map(|g| group_value(g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(g: &str) -> Option<Value> {
    if !registry::groups().contains(&g) {
        return None;
    }
    let mut v = group_value(g);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn resource_list(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for k in KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": VERBS,
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        if k.status {
            resources.push(json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
        }
        if k.kind == "Pod" {
            resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            resources.push(json!({"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]}));
        }
        if k.kind == "Namespace" {
            resources.push(json!({"name": "namespaces/finalize", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["update"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in KINDS {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// `/openapi/v3`: one entry per group-version.
pub fn openapi_index() -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions() {
        let p = gv_path(g, v);
        let hash = doc_hash(&openapi_for(g, v));
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

fn doc_hash(v: &Value) -> String {
    // FNV-1a over the document: a stable cache key, not a security measure.
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

pub fn openapi_doc(path: &str) -> Option<Value> {
    let (g, v) = group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path)?;
    Some(openapi_for(g, v))
}

fn schema_name(k: &Kind) -> String {
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    (k.schema)(&mut g)
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "required": location == "path", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(
    k: &Kind,
    action: &str,
    query: &[&str],
    with_path_params: &[&str],
    body: Option<&[&str]>,
) -> Value {
    let mut params: Vec<Value> = with_path_params.iter().map(|p| param(p, "path")).collect();
    params.extend(query.iter().map(|q| param(q, "query")));
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(k))});
    let mut op = json!({
        "operationId": format!("{action}{}", k.kind),
        "tags": [k.group],
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
    });
    if let Some(types) = body {
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": reference})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// The OpenAPI v3 document of one group-version: every path with its operations and the
/// query parameters skiff honours, and the kinds' schemas by reference name.
fn openapi_for(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let base = format!("/{}", gv_path(group, version));
    let write_q: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let list_q: &[&str] = &[
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
        "pretty",
    ];
    // Patch bodies kubectl may send; strategic merge is accepted but not advertised, so
    // kubectl computes strategic patches from its compiled-in types.
    let patch_types: &[&str] = &[
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    for k in KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let (coll, item, pp): (String, String, &[&str]) = if k.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", k.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", k.plural),
                &["namespace", "name"],
            )
        } else {
            (
                format!("{base}/{}", k.plural),
                format!("{base}/{}/{{name}}", k.plural),
                &["name"],
            )
        };
        let cp = &pp[..pp.len() - 1];
        paths.insert(coll.clone(), json!({
            "get": operation(k, "list", list_q, cp, None),
            "post": operation(k, "post", write_q, cp, Some(&["application/json", "application/yaml"])),
            "delete": operation(k, "deletecollection", list_q, cp, None),
        }));
        paths.insert(item.clone(), json!({
            "get": operation(k, "get", &["pretty"], pp, None),
            "put": operation(k, "put", write_q, pp, Some(&["application/json", "application/yaml"])),
            "patch": operation(k, "patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"], pp, Some(patch_types)),
            "delete": operation(k, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy", "pretty"], pp, None),
        }));
        if k.status {
            paths.insert(format!("{item}/status"), json!({
                "get": operation(k, "get", &["pretty"], pp, None),
                "put": operation(k, "put", write_q, pp, Some(&["application/json"])),
                "patch": operation(k, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"], pp, Some(patch_types)),
            }));
        }
        (k.schema)(&mut generator);
    }
    // Every kind's schema and the types it references, generated from the k8s-openapi types.
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for k in KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        if let Some(Value::Object(s)) = schemas.get_mut(&schema_name(k)) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": k.group, "version": k.version, "kind": k.kind}]),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": skiff_core::config::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_patch_ops_declare_field_validation() {
        let doc = openapi_doc("api/v1").unwrap();
        let p = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(p["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "fieldValidation" && x["in"] == "query"));
        assert!(p["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_none());
        let idx = openapi_index();
        assert!(
            idx["paths"]["apis/networking.k8s.io/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/networking.k8s.io/v1?hash=")
        );
        assert!(openapi_doc("apis/nope/v1").is_none());
        let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert_eq!(
            pod["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        assert!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                .is_object()
        );
    }

    #[test]
    fn discovery_lists_every_kind() {
        let core = resource_list("", "v1");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        for n in [
            "pods",
            "pods/status",
            "services",
            "namespaces",
            "namespaces/finalize",
            "configmaps",
            "secrets",
            "events",
            "nodes",
            "serviceaccounts",
            "persistentvolumes",
            "persistentvolumeclaims",
            "endpoints",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert_eq!(group_list()["groups"].as_array().unwrap().len(), 3);
        assert!(group("storage.k8s.io").is_some());
    }
}
