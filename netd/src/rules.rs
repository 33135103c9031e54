//! The nftables ruleset netd owns, computed as data (a `nft -j` batch) from the cluster
//! configuration, and applied in one transaction. It lives in its own table, `inet skiff`, and
//! never touches other tables.
//!
//! The safety rule: with forwarding on, anything from the pod CIDR to a destination outside the
//! pod and service CIDRs is dropped (traffic to the host's own addresses never reaches the
//! forward hook). Outbound NAT (masquerade) is an explicit opt-in.

use serde_json::{json, Value};
use skiff_core::config::Cidr;

pub const TABLE: &str = "skiff";

/// The cluster facts the base ruleset depends on.
#[derive(Debug, Clone)]
pub struct BaseConfig {
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub bridge: String,
    pub masquerade: bool,
}

fn prefix(c: &Cidr) -> Value {
    json!({"prefix": {"addr": c.addr.to_string(), "len": c.prefix}})
}

fn rule(chain: &str, expr: Value, comment: &str) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr, "comment": comment}}})
}

/// The whole base table as one batch: create-or-replace, atomically.
pub fn base_ruleset(cfg: &BaseConfig) -> Value {
    json!({"nftables": base_commands(cfg)})
}

/// The commands of [`base_ruleset`], to prepend to a larger transaction.
pub fn base_commands(cfg: &BaseConfig) -> Vec<Value> {
    let pod = prefix(&cfg.pod_cidr);
    let svc = prefix(&cfg.service_cidr);
    let mut cmds = vec![
        // add + delete + add: replaces the table whether or not it existed, in one transaction.
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
        rule(
            "forward",
            json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
            "replies of allowed connections",
        ),
        rule(
            "forward",
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": pod}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [pod, svc]}}},
                {"counter": null},
                {"drop": null}
            ]),
            "pod traffic never leaves the host",
        ),
    ];
    cmds.extend(crate::policy_nft::skeleton());
    if cfg.masquerade {
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}));
        cmds.push(rule(
            "postrouting",
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": pod}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": pod}},
                {"masquerade": null}
            ]),
            "opt-in outbound NAT",
        ));
        // The safety drop stays first in forward; with masquerade on, forwarding out is allowed.
        cmds.retain(|c| c["add"]["rule"]["comment"] != "pod traffic never leaves the host");
    }
    cmds
}

/// Removes skiff's table (shutdown and `skiff down --purge`).
pub fn delete_table() -> Value {
    json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}}
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(masquerade: bool) -> BaseConfig {
        BaseConfig {
            pod_cidr: Cidr::parse("10.244.0.0/16").unwrap(),
            service_cidr: Cidr::parse("10.96.0.0/12").unwrap(),
            bridge: "skiff0".into(),
            masquerade,
        }
    }

    #[test]
    fn safety_rule_drops_pod_traffic_to_outside() {
        let r = base_ruleset(&cfg(false));
        let cmds = r["nftables"].as_array().unwrap();
        // Only our own table is named.
        assert!(cmds.iter().all(|c| c.to_string().contains("\"skiff\"")));
        let drop = cmds
            .iter()
            .find(|c| c["add"]["rule"]["comment"] == "pod traffic never leaves the host")
            .unwrap();
        let expr = &drop["add"]["rule"]["expr"];
        assert_eq!(expr[0]["match"]["right"]["prefix"]["addr"], "10.244.0.0");
        assert_eq!(expr[1]["match"]["op"], "!=");
        assert_eq!(
            expr[1]["match"]["right"]["set"][1]["prefix"]["addr"],
            "10.96.0.0"
        );
        assert!(expr
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.get("drop").is_some()));
        // Established/related first.
        let first_rule = cmds
            .iter()
            .position(|c| c["add"].get("rule").is_some())
            .unwrap();
        assert_eq!(
            cmds[first_rule]["add"]["rule"]["comment"],
            "replies of allowed connections"
        );
        assert!(!r.to_string().contains("masquerade"));
    }

    #[test]
    fn masquerade_is_opt_in() {
        let r = base_ruleset(&cfg(true)).to_string();
        assert!(r.contains("masquerade"));
        assert!(!r.contains("pod traffic never leaves the host"));
    }
}
