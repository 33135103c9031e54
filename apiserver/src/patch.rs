//! PATCH bodies: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386), and Kubernetes strategic
//! merge patch, which merges lists of objects by a per-field key (containers by `name`,
//! volumeMounts by `mountPath`, ...) and understands the `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives that `kubectl apply` sends.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` to `doc`; errors are the message of a 400 (or 422 for a failed JSON Patch test).
pub fn apply(pt: PatchType, doc: &Value, patch: &Value, kind: &str) -> Result<Value, String> {
    match pt {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("invalid JSON Patch: {e}"))?;
            let mut out = doc.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| e.to_string())?;
            Ok(out)
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            let mut out = doc.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            Ok(merge_value(doc, patch, &mut Vec::new(), kind)?.unwrap_or(Value::Null))
        }
    }
}

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    Replace,
    MergeKey(&'static str),
    MergePrimitive,
}

/// The patch strategy of the list at `path` (field names from the root), as the Kubernetes
/// types declare it with `patchStrategy`/`patchMergeKey`.
fn strategy(path: &[String], kind: &str) -> ListStrategy {
    let field = path.last().map(String::as_str).unwrap_or("");
    let in_container = path
        .iter()
        .any(|p| p == "containers" || p == "initContainers" || p == "ephemeralContainers");
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeKey("name"),
        "env" if in_container => ListStrategy::MergeKey("name"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if kind == "Service" && path.len() == 2 && path[0] == "spec" => {
            ListStrategy::MergeKey("port")
        }
        "conditions" => ListStrategy::MergeKey("type"),
        "addresses" if kind == "Node" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "finalizers" if path.len() == 2 && path[0] == "metadata" => ListStrategy::MergePrimitive,
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "readinessGates" => ListStrategy::MergeKey("conditionType"),
        _ => ListStrategy::Replace,
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Merges `patch` into `orig`; `None` means "delete this value".
fn merge_value(
    orig: &Value,
    patch: &Value,
    path: &mut Vec<String>,
    kind: &str,
) -> Result<Option<Value>, String> {
    let Value::Object(pm) = patch else {
        return Ok(Some(strip_directives(patch)));
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => return Ok(Some(strip_directives(patch))),
        Some("delete") => return Ok(None),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    let mut out: Map<String, Value> = match orig {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut orders: Vec<(String, &Vec<Value>)> = Vec::new();
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Value::Array(order) = pv {
                orders.push((field.to_string(), order));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<&Value> = pv
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|x| !remove.contains(&x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.clone());
        let cur = out.get(k).cloned().unwrap_or(Value::Null);
        let merged = match pv {
            Value::Object(_) => merge_value(&cur, pv, path, kind)?,
            Value::Array(items) => Some(merge_list(&cur, items, path, kind)?),
            scalar => Some(scalar.clone()),
        };
        path.pop();
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strat = strategy(path, kind);
        path.pop();
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            reorder(list, order, strat);
        }
    }
    if let Some(Value::Array(keep)) = pm.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(Value::Object(out)))
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_list(
    orig: &Value,
    items: &[Value],
    path: &mut Vec<String>,
    kind: &str,
) -> Result<Value, String> {
    let orig_items: Vec<Value> = orig.as_array().cloned().unwrap_or_default();
    match strategy(path, kind) {
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(items.to_vec()))),
        ListStrategy::MergePrimitive => {
            let mut out = orig_items;
            for i in items {
                if !out.contains(i) {
                    out.push(i.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeKey(key) => {
            if items
                .iter()
                .any(|i| key_of(i, "$patch").and_then(Value::as_str) == Some("replace"))
            {
                let kept: Vec<Value> = items
                    .iter()
                    .filter(|i| key_of(i, "$patch").is_none())
                    .map(strip_directives)
                    .collect();
                return Ok(Value::Array(kept));
            }
            let mut out = orig_items;
            for item in items {
                let Some(kv) = key_of(item, key) else {
                    return Err(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    ));
                };
                let pos = out.iter().position(|o| key_of(o, key) == Some(kv));
                if key_of(item, "$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| key_of(o, key) != Some(kv));
                    continue;
                }
                match pos {
                    Some(p) => {
                        if let Some(m) = merge_value(&out[p], item, path, kind)? {
                            out[p] = m;
                        } else {
                            out.remove(p);
                        }
                    }
                    None => out.push(strip_directives(item)),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// `$setElementOrder`: items named in `order` come first in that order, others keep their place
/// after them.
fn reorder(list: &mut [Value], order: &[Value], strat: ListStrategy) {
    let rank = |v: &Value| -> usize {
        let pos = match strat {
            ListStrategy::MergeKey(key) => order
                .iter()
                .position(|o| key_of(o, key).is_some() && key_of(o, key) == key_of(v, key)),
            _ => order.iter().position(|o| o == v),
        };
        pos.unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "labels": {"a": "1"}, "finalizers": ["x"]},
               "spec": {"containers": [
                   {"name": "c1", "image": "i1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                   {"name": "c2", "image": "i2"}]}})
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let patch = json!({"spec": {"containers": [{"name": "c2", "image": "new"}, {"name": "c3", "image": "i3"}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        let cs = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0]["image"], "i1");
        assert_eq!(cs[1]["image"], "new");
        assert_eq!(cs[2]["name"], "c3");
        // A merge patch replaces the list instead.
        let out = apply(PatchType::Merge, &pod(), &patch, "Pod").unwrap();
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["containers"][0]["name"], "c2");
    }

    #[test]
    fn strategic_directives() {
        let patch = json!({"metadata": {"labels": {"a": null, "b": "2"}, "finalizers": ["y"]},
                           "spec": {"containers": [{"name": "c1", "$patch": "delete"}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "c2"}, {"name": "c1"}], "containers": [{"name": "c1", "image": "z"}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        assert_eq!(out["spec"]["containers"][0]["name"], "c2");
        assert_eq!(out["spec"]["containers"][1]["image"], "z");
        let patch = json!({"spec": {"containers": [{"name": "only"}, {"$patch": "replace"}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "only"}]));
        let patch = json!({"spec": {"$patch": "replace", "containers": []}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        assert_eq!(out["spec"], json!({"containers": []}));
        let patch =
            json!({"spec": {"containers": [{"name": "c1", "env": [{"name": "B", "value": "2"}]}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch, "Pod").unwrap();
        assert_eq!(
            out["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn strategic_errors_and_service_ports() {
        let patch = json!({"spec": {"containers": [{"image": "no-name"}]}});
        assert!(apply(PatchType::Strategic, &pod(), &patch, "Pod").is_err());
        let svc =
            json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]}});
        let out = apply(
            PatchType::Strategic,
            &svc,
            &json!({"spec": {"ports": [{"port": 81, "name": "bb"}]}}),
            "Service",
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"][1]["name"], "bb");
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_patch_and_merge() {
        let ops = json!([{"op": "replace", "path": "/metadata/labels/a", "value": "9"}, {"op": "add", "path": "/metadata/labels/z", "value": "1"}]);
        let out = apply(PatchType::Json, &pod(), &ops, "Pod").unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "9", "z": "1"}));
        let bad = json!([{"op": "test", "path": "/metadata/name", "value": "other"}]);
        assert!(apply(PatchType::Json, &pod(), &bad, "Pod").is_err());
        assert!(apply(PatchType::Merge, &pod(), &json!([1]), "Pod").is_err());
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
    }
}
