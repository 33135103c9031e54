//! Pod status as Kubernetes reports it, computed from the shim's container states: phase,
//! conditions (PodScheduled, Initialized, ContainersReady, Ready), container and init-container
//! statuses with restart counts, and the QoS class.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::shim::{ContainerState, PodState};

fn state_json(cs: &ContainerState) -> Value {
    // Timestamps are set only when known: an empty string is not a valid time.
    let ts = |v: &mut Value, k: &str, t: &str| {
        if !t.is_empty() {
            v[k] = json!(t);
        }
    };
    match cs.state.as_str() {
        "running" => {
            let mut r = json!({});
            ts(&mut r, "startedAt", &cs.started_at);
            json!({"running": r})
        }
        "terminated" => {
            let mut t = json!({"exitCode": cs.exit_code, "reason": cs.reason});
            ts(&mut t, "startedAt", &cs.started_at);
            ts(&mut t, "finishedAt", &cs.finished_at);
            if !cs.message.is_empty() {
                t["message"] = json!(cs.message);
            }
            json!({"terminated": t})
        }
        _ => {
            let mut w = json!({"reason": cs.reason});
            if !cs.message.is_empty() {
                w["message"] = json!(cs.message);
            }
            json!({"waiting": w})
        }
    }
}

fn container_status(uid: &str, image: &str, cs: &ContainerState, init: bool) -> Value {
    let running = cs.state == "running";
    let ready = if init {
        cs.state == "terminated" && cs.exit_code == 0
    } else {
        running && cs.ready
    };
    let last = cs
        .last_terminated
        .as_deref()
        .map(state_json)
        .unwrap_or_else(|| json!({}));
    let mut v = json!({
        "name": cs.name,
        "image": if image.is_empty() { "host" } else { image },
        "imageID": "",
        "ready": ready,
        "started": running && (init || cs.started),
        "restartCount": cs.restart_count,
        "state": state_json(cs),
        "lastState": last,
    });
    if cs.state != "waiting" || cs.restart_count > 0 {
        v["containerID"] = json!(format!("skiff://{uid}/{}", cs.name));
    }
    v
}

/// The QoS class from requests and limits (Guaranteed, Burstable, BestEffort).
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<_> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let any = all.iter().any(|c| {
        c.resources.as_ref().is_some_and(|r| {
            r.requests.as_ref().is_some_and(|m| !m.is_empty())
                || r.limits.as_ref().is_some_and(|m| !m.is_empty())
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        let Some(r) = &c.resources else { return false };
        let limits = r.limits.clone().unwrap_or_default();
        let requests = r.requests.clone().unwrap_or_default();
        ["cpu", "memory"].iter().all(|k| {
            limits.contains_key(*k) && requests.get(*k).is_none_or(|q| Some(q) == limits.get(*k))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn phase(restart_policy: &str, st: &PodState) -> &'static str {
    if !st.initialized {
        let failed = st
            .init_containers
            .iter()
            .any(|c| c.state == "terminated" && c.exit_code != 0);
        return if failed && restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let cs = &st.containers;
    if cs.iter().any(|c| c.state == "running") {
        return "Running";
    }
    if !cs.is_empty() && cs.iter().all(|c| c.state == "terminated") {
        if cs.iter().all(|c| c.exit_code == 0) {
            return if restart_policy == "Always" {
                "Running"
            } else {
                "Succeeded"
            };
        }
        return if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        };
    }
    if cs
        .iter()
        .any(|c| c.restart_count > 0 || c.state == "terminated")
    {
        "Running"
    } else {
        "Pending"
    }
}

fn condition(ty: &str, ok: bool, reason: Option<&str>, old: &Value, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let prev = old["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let since = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c =
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let (false, Some(r)) = (ok, reason) {
        c["reason"] = json!(r);
    }
    c
}

/// The full status for a pod the kubelet runs. `old` is the current status (kept for
/// transition times, the addresses netd wrote and the start time).
pub fn pod_status(pod: &Pod, st: &PodState, host_ip: &str, now: &str) -> Value {
    let old = serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let image = |name: &str, list: &[k8s_openapi::api::core::v1::Container]| {
        list.iter()
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let inits = spec.init_containers.clone().unwrap_or_default();
    let statuses: Vec<Value> = st
        .containers
        .iter()
        .map(|c| container_status(&uid, &image(&c.name, &spec.containers), c, false))
        .collect();
    let init_statuses: Vec<Value> = st
        .init_containers
        .iter()
        .map(|c| container_status(&uid, &image(&c.name, &inits), c, true))
        .collect();
    let ph = phase(&policy, st);
    let ready = st.initialized
        && !st.containers.is_empty()
        && st
            .containers
            .iter()
            .all(|c| c.state == "running" && c.ready);
    let finished = ph == "Succeeded" || ph == "Failed";
    let reason_not_ready = if finished {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut out = json!({
        "phase": ph,
        "conditions": [
            condition("PodReadyToStartContainers", true, None, &old, now),
            condition("Initialized", st.initialized, Some(if finished { "PodCompleted" } else { "ContainersNotInitialized" }), &old, now),
            condition("Ready", ready, Some(reason_not_ready), &old, now),
            condition("ContainersReady", ready, Some(reason_not_ready), &old, now),
            condition("PodScheduled", true, None, &old, now),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "containerStatuses": statuses,
        "qosClass": qos_class(pod),
    });
    if !init_statuses.is_empty() {
        out["initContainerStatuses"] = json!(init_statuses);
    }
    out["startTime"] = old
        .get("startTime")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| json!(now));
    if spec.host_network == Some(true) {
        // A pod on the host's network has the host's address (the kubelet reports it; netd
        // has nothing to do with it).
        out["podIP"] = json!(host_ip);
        out["podIPs"] = json!([{"ip": host_ip}]);
    } else {
        for k in ["podIP", "podIPs"] {
            if let Some(v) = old.get(k).filter(|v| !v.is_null()) {
                out[k] = v.clone();
            }
        }
    }
    out
}

/// Whether two statuses differ in anything but timestamps of unchanged conditions.
pub fn differs(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastTransitionTime");
                    m.remove("lastProbeTime");
                }
            }
        }
        v
    };
    let keys = [
        "phase",
        "conditions",
        "containerStatuses",
        "initContainerStatuses",
        "hostIP",
        "qosClass",
        "startTime",
    ];
    let (a, b) = (strip(old), strip(new));
    keys.iter()
        .any(|k| a.get(*k).filter(|v| !v.is_null()) != b.get(*k).filter(|v| !v.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(name: &str, state: &str, code: i32, restarts: i32) -> ContainerState {
        ContainerState {
            name: name.into(),
            state: state.into(),
            exit_code: code,
            restart_count: restarts,
            ready: state == "running",
            started: state == "running",
            reason: if state == "waiting" {
                "CrashLoopBackOff".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    #[test]
    fn phases() {
        let st = |c: Vec<ContainerState>| PodState {
            containers: c,
            initialized: true,
            ..Default::default()
        };
        assert_eq!(
            phase("Always", &st(vec![cs("a", "running", 0, 0)])),
            "Running"
        );
        assert_eq!(
            phase("Never", &st(vec![cs("a", "terminated", 0, 0)])),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", &st(vec![cs("a", "terminated", 1, 0)])),
            "Failed"
        );
        assert_eq!(
            phase("OnFailure", &st(vec![cs("a", "terminated", 0, 0)])),
            "Succeeded"
        );
        assert_eq!(
            phase("Always", &st(vec![cs("a", "waiting", 0, 2)])),
            "Running"
        );
        assert_eq!(
            phase("Always", &st(vec![cs("a", "waiting", 0, 0)])),
            "Pending"
        );
        let init = PodState {
            init_containers: vec![cs("i", "terminated", 1, 0)],
            containers: vec![cs("a", "waiting", 0, 0)],
            ..Default::default()
        };
        assert_eq!(phase("Never", &init), "Failed");
        assert_eq!(phase("Always", &init), "Pending");
    }

    #[test]
    fn status_shape() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}, "status": {"podIP": "10.244.0.2"}})).unwrap();
        let st = PodState {
            containers: vec![cs("a", "running", 0, 1)],
            initialized: true,
            ..Default::default()
        };
        let s = pod_status(&pod, &st, "10.0.0.1", "2026-01-01T00:00:00Z");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.0.2");
        assert_eq!(s["qosClass"], "Guaranteed");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert_eq!(s["containerStatuses"][0]["restartCount"], 1);
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        // It parses as a Kubernetes PodStatus.
        let _: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(s.clone()).unwrap();
        assert!(!differs(&s, &s));
        let mut later = s.clone();
        later["containerStatuses"][0]["restartCount"] = json!(2);
        assert!(differs(&s, &later));
    }
}
