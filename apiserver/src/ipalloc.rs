//! Service ClusterIP allocation, as the Kubernetes API server does it since 1.33: every
//! allocated address is an `networking.k8s.io/v1` IPAddress object named after the address,
//! whose parentRef names the Service. Creating that object is the reservation, so two Services
//! can never get the same address; deleting the Service releases it.

use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{json, Value};
use skiff_core::config::Cidr;
use skiff_core::json::str_at;
use skiff_core::validation::Cause;

use crate::handlers::App;
use crate::registry;
use crate::status::{ApiError, ApiResult};
use crate::storage::Outcome;

/// Offsets never handed out dynamically: the network address, the first address (the
/// `kubernetes` Service in Kubernetes) and the tenth (the cluster DNS Service, kube-dns).
pub const RESERVED_OFFSETS: &[u32] = &[0, 1, 10];

/// The lower band of the range, kept for addresses users choose, as Kubernetes does:
/// min(max(16, size/16), 256) addresses.
pub fn static_band(c: &Cidr) -> u32 {
    let size = c.size().min(u64::from(u32::MAX)) as u32;
    (size / 16).clamp(16, 256).min(size)
}

/// Candidate offsets for a dynamic allocation: the upper band from a random start, then the
/// lower band, never the reserved offsets nor the broadcast address.
pub fn candidates(c: &Cidr, start: u32) -> impl Iterator<Item = u32> {
    let size = c.size().min(u64::from(u32::MAX)) as u32;
    let band = static_band(c);
    let upper = size.saturating_sub(1).saturating_sub(band);
    let upper_iter = (0..upper).map(move |i| band + (start.wrapping_add(i) % upper.max(1)));
    let lower_iter = 0..band;
    upper_iter
        .chain(lower_iter)
        .filter(move |o| !RESERVED_OFFSETS.contains(o) && *o < size.saturating_sub(1))
}

fn ipaddress_kind() -> ApiResult<&'static registry::Kind> {
    registry::by_kind("IPAddress").ok_or_else(|| ApiError::internal("IPAddress kind missing"))
}

fn invalid(svc: &Value, field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        str_at(svc, "metadata.name"),
        &[Cause::invalid(field, value, detail)],
    )
}

/// Tries to reserve `ip` for the Service; false if it is taken.
async fn reserve(app: &App, ip: Ipv4Addr, ns: &str, name: &str) -> ApiResult<bool> {
    let kind = ipaddress_kind()?;
    let key = kind.key(None, &ip.to_string());
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {
            "name": ip.to_string(),
            "labels": {"ipaddress.kubernetes.io/ip-family": "IPv4", "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"},
            "uid": crate::handlers::new_uid(),
            "creationTimestamp": skiff_core::time::now_rfc3339(),
        },
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": ns, "name": name}},
    });
    let res = app.storage.mutate(&key, |cur| match cur {
        Some(_) => Err(ApiError::already_exists(
            "ipaddresses.networking.k8s.io",
            &ip.to_string(),
        )),
        None => Ok(Outcome::Put(obj)),
    });
    match res.await {
        Ok(_) => Ok(true),
        Err(e) if e.reason == "AlreadyExists" => Ok(false),
        Err(e) => Err(e),
    }
}

/// Fills in `spec.clusterIP`/`clusterIPs` of a Service being created, reserving the address.
/// Returns the reserved address (to release if the Service is not stored after all).
pub async fn allocate(app: &App, svc: &mut Value) -> ApiResult<Option<Ipv4Addr>> {
    let ns = str_at(svc, "metadata.namespace").to_string();
    let name = str_at(svc, "metadata.name").to_string();
    let ty = str_at(svc, "spec.type").to_string();
    let requested = str_at(svc, "spec.clusterIP").to_string();
    if ty == "ExternalName" {
        if !requested.is_empty() {
            return Err(invalid(
                svc,
                "spec.clusterIPs",
                &requested,
                "must be empty for ExternalName services",
            ));
        }
        return Ok(None);
    }
    if requested == "None" {
        svc["spec"]["clusterIPs"] = json!(["None"]);
        return Ok(None);
    }
    let range = app.service_cidr;
    let ip = if requested.is_empty() {
        let start: u32 = rand::rng().random();
        let mut found = None;
        for off in candidates(&range, start) {
            let Some(ip) = range.nth(off) else { continue };
            if reserve(app, ip, &ns, &name).await? {
                found = Some(ip);
                break;
            }
        }
        found.ok_or_else(|| {
            invalid(
                svc,
                "spec.clusterIPs",
                "",
                &format!("failed to allocate a serviceIP: range is full ({range})"),
            )
        })?
    } else {
        let ip: Ipv4Addr = requested.parse().map_err(|_| {
            invalid(
                svc,
                "spec.clusterIPs[0]",
                &requested,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )
        })?;
        if !range.contains(ip) || ip == range.addr {
            return Err(invalid(svc, "spec.clusterIPs[0]", &requested, &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}")));
        }
        if !reserve(app, ip, &ns, &name).await? {
            return Err(invalid(
                svc,
                "spec.clusterIPs[0]",
                &requested,
                &format!("failed to allocate IP {ip}: provided IP is already allocated"),
            ));
        }
        ip
    };
    svc["spec"]["clusterIP"] = json!(ip.to_string());
    svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
    Ok(Some(ip))
}

/// Releases the address of a Service that is gone (only if the reservation is that Service's).
pub async fn release(app: &App, ip: &str, ns: &str, name: &str) -> ApiResult<()> {
    if ip.is_empty() || ip == "None" {
        return Ok(());
    }
    let kind = ipaddress_kind()?;
    let key = kind.key(None, ip);
    app.storage
        .mutate(&key, |cur| match cur {
            Some(o)
                if str_at(&o, "spec.parentRef.namespace") == ns
                    && str_at(&o, "spec.parentRef.name") == name =>
            {
                Ok(Outcome::Delete(o))
            }
            Some(o) => Ok(Outcome::Unchanged(o)),
            None => Ok(Outcome::Unchanged(Value::Null)),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_skip_reserved_and_prefer_upper_band() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(static_band(&c), 256);
        let first: Vec<u32> = candidates(&c, 0).take(3).collect();
        assert_eq!(first, vec![256, 257, 258]);
        let small = Cidr::parse("10.0.0.0/28").unwrap();
        let all: Vec<u32> = candidates(&small, 5).collect();
        assert!(!all.contains(&0) && !all.contains(&1) && !all.contains(&10) && !all.contains(&15));
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "no offset twice: {all:?}");
        assert_eq!(sorted, vec![2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]);
    }
}
