//! Built-in controllers the API server runs itself, as kube-controller-manager would: the
//! namespace lifecycle (a terminating namespace is emptied, then its `kubernetes` finalizer is
//! removed and it disappears), the `default` ServiceAccount of every namespace, and the
//! `kube-root-ca.crt` ConfigMap holding the cluster CA. Also the bootstrap of the namespaces
//! every cluster starts with.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_core::json::str_at;

use crate::handlers::{delete_object, App};
use crate::registry::{self, KINDS};
use crate::status::ApiResult;
use crate::storage::{EventType, Outcome};

pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

fn ns_kind() -> Option<&'static registry::Kind> {
    registry::by_kind("Namespace")
}

/// Creates an object if absent (bootstrap). The object must already be canonical.
async fn ensure(
    app: &App,
    kind: &'static registry::Kind,
    ns: Option<&str>,
    obj: Value,
) -> ApiResult<()> {
    let name = str_at(&obj, "metadata.name").to_string();
    let key = kind.key(ns, &name);
    if app.storage.get(&key)?.is_some() {
        return Ok(());
    }
    let mut obj = obj;
    registry::apply_defaults(kind.kind, &mut obj);
    let canonical = (kind.roundtrip)(&obj).map_err(crate::status::ApiError::internal)?;
    app.storage
        .mutate(&key, |cur| match cur {
            Some(c) => Ok(Outcome::Unchanged(c)),
            None => Ok(Outcome::Put(canonical)),
        })
        .await?;
    Ok(())
}

fn fresh_meta(name: &str, ns: Option<&str>) -> Value {
    let uid_bytes: [u8; 16] = rand::random();
    let h: String = uid_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    let mut m =
        json!({"name": name, "uid": uid, "creationTimestamp": skiff_core::time::now_rfc3339()});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

pub async fn bootstrap(app: &App) -> ApiResult<()> {
    let Some(nsk) = ns_kind() else { return Ok(()) };
    for ns in SYSTEM_NAMESPACES {
        ensure(app, nsk, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": fresh_meta(ns, None), "status": {"phase": "Active"}})).await?;
    }
    Ok(())
}

/// One pass over all namespaces: default ServiceAccounts for active ones, and progress on
/// terminating ones.
async fn reconcile(app: &App) -> ApiResult<()> {
    let Some(nsk) = ns_kind() else { return Ok(()) };
    let Some(sak) = registry::by_kind("ServiceAccount") else {
        return Ok(());
    };
    let Some(cmk) = registry::by_kind("ConfigMap") else {
        return Ok(());
    };
    for (_, ns) in app.storage.list(&nsk.prefix(None), None, None)? {
        let name = str_at(&ns, "metadata.name").to_string();
        if ns["metadata"].get("deletionTimestamp").is_none() {
            ensure(app, sak, Some(&name), json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": fresh_meta("default", Some(&name))})).await?;
            ensure(app, cmk, Some(&name), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": fresh_meta("kube-root-ca.crt", Some(&name)), "data": {"ca.crt": app.ca_pem}})).await?;
            continue;
        }
        // Terminating: delete everything in it; objects with finalizers stay until released.
        let mut remaining = 0;
        for kind in KINDS.iter().filter(|k| k.namespaced) {
            for (_, o) in app.storage.list(&kind.prefix(Some(&name)), None, None)? {
                remaining += 1;
                if o["metadata"].get("deletionTimestamp").is_some() {
                    continue;
                }
                match delete_object(
                    app,
                    kind,
                    Some(&name),
                    str_at(&o, "metadata.name"),
                    &json!({}),
                    false,
                )
                .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if remaining > 0 {
            // Check again: some may be gone already.
            let left: usize = KINDS
                .iter()
                .filter(|k| k.namespaced)
                .map(|k| {
                    app.storage
                        .list(&k.prefix(Some(&name)), None, Some(1))
                        .map_or(1, |v| v.len())
                })
                .sum();
            if left > 0 {
                continue;
            }
        }
        // Empty: drop the `kubernetes` finalizer; the namespace goes once no finalizer remains.
        let key = nsk.key(None, &name);
        app.storage
            .mutate(&key, |cur| {
                let Some(mut o) = cur else {
                    return Ok(Outcome::Unchanged(Value::Null));
                };
                if let Some(f) = o["spec"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != "kubernetes");
                }
                let spec_left = o["spec"]["finalizers"].as_array().map_or(0, Vec::len);
                let meta_left = o["metadata"]["finalizers"].as_array().map_or(0, Vec::len);
                if spec_left == 0 && meta_left == 0 {
                    Ok(Outcome::Delete(o))
                } else {
                    Ok(Outcome::Put(o))
                }
            })
            .await?;
    }
    Ok(())
}

/// Runs the controllers: on every relevant change (level-based), and every few seconds.
pub async fn run(app: Arc<App>) {
    let mut rx = match app.storage.subscribe(app.storage.head()) {
        Ok((_, rx)) => Some(rx),
        Err(_) => None,
    };
    loop {
        if let Err(e) = reconcile(&app).await {
            tracing::warn!("namespace controller: {}", e.message);
        }
        let wait = async {
            match rx.as_mut() {
                Some(rx) => loop {
                    match rx.recv().await {
                        Ok(e)
                            if e.ty == EventType::Deleted || e.key.starts_with("/namespaces/") =>
                        {
                            break
                        }
                        Ok(_) => continue,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    }
                },
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        tokio::select! {
            _ = app.ns_wake.notified() => {}
            _ = wait => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
