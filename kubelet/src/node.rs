//! The Node this kubelet registers: capacity and allocatable from the host, the Ready
//! condition with heartbeats, addresses and node info.

use serde_json::{json, Value};

/// Host facts for the Node object.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub name: String,
    pub cpus: u64,
    pub memory_bytes: u64,
    pub address: String,
    pub kernel: String,
    pub os_image: String,
    pub boot_id: String,
    pub max_pods: u64,
}

impl HostInfo {
    pub fn detect(name: &str, address: &str) -> Self {
        let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .unwrap_or_else(|| "Linux".into());
        Self {
            name: name.to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            memory_bytes: mem_kib * 1024,
            address: address.to_string(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            os_image,
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            max_pods: MAX_PODS,
        }
    }
}

/// Memory kept back from pods for the system (as kubelet's system-reserved).
pub const RESERVED_MEMORY: u64 = 256 * 1024 * 1024;
pub const MAX_PODS: u64 = 110;

/// The Node's status, as of `now`.
pub fn node_status(h: &HostInfo, now: &str, ready_since: &str) -> Value {
    let alloc_mem = h.memory_bytes.saturating_sub(RESERVED_MEMORY);
    json!({
        "capacity": {"cpu": h.cpus.to_string(), "memory": format!("{}Ki", h.memory_bytes / 1024), "pods": h.max_pods.to_string(), "ephemeral-storage": "0"},
        "allocatable": {"cpu": h.cpus.to_string(), "memory": format!("{}Ki", alloc_mem / 1024), "pods": h.max_pods.to_string(), "ephemeral-storage": "0"},
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": ready_since},
        ],
        "addresses": [{"type": "InternalIP", "address": h.address}, {"type": "Hostname", "address": h.name}],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": h.boot_id,
            "kernelVersion": h.kernel, "osImage": h.os_image,
            "containerRuntimeVersion": format!("skiff://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": format!("{}+skiff", skiff_core::config::KUBERNETES_VERSION),
            "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" },
        },
    })
}

pub fn node_object(h: &HostInfo, now: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": h.name,
            "labels": {
                "kubernetes.io/hostname": h.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" },
                "node-role.kubernetes.io/control-plane": "",
            },
        },
        "spec": {},
        "status": node_status(h, now, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_parses_and_reserves_memory() {
        let h = HostInfo {
            name: "n1".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            address: "10.0.0.1".into(),
            kernel: "6.1".into(),
            os_image: "Debian".into(),
            boot_id: "b".into(),
            max_pods: 110,
        };
        let n = node_object(&h, "2026-01-01T00:00:00Z");
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(n.clone()).unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        assert_eq!(n["status"]["capacity"]["memory"], "4194304Ki");
        assert_eq!(
            n["status"]["allocatable"]["memory"],
            format!("{}Ki", (4u64 << 30) / 1024 - 262144)
        );
    }
}
