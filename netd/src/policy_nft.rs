//! The NetworkPolicy ruleset as nftables JSON: the fixed skeleton (two base chains on the
//! forward hook, the dispatch maps, the hairpin set) and the *difference* between two
//! [`Desired`] states as one batch, so a sync touches only what changed and is atomic.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::policy::{Desired, Elem, Match, Rule, Set, SetKind, Verdict};
use crate::rules::TABLE;

pub const INGRESS_CHAIN: &str = "policy-ingress";
pub const EGRESS_CHAIN: &str = "policy-egress";
pub const INGRESS_MAP: &str = "ingress-pods";
pub const EGRESS_MAP: &str = "egress-pods";
pub const SELF_SET: &str = "policy-self";

fn obj(kind: &str, body: Value) -> Value {
    let mut b = body;
    if let Some(m) = b.as_object_mut() {
        m.insert("family".into(), json!("inet"));
        m.insert("table".into(), json!(TABLE));
    }
    json!({ kind: b })
}

fn saddr() -> Value {
    json!({"payload": {"protocol": "ip", "field": "saddr"}})
}
fn daddr() -> Value {
    json!({"payload": {"protocol": "ip", "field": "daddr"}})
}
fn l4proto_dport() -> Vec<Value> {
    vec![
        json!({"meta": {"key": "l4proto"}}),
        json!({"payload": {"protocol": "th", "field": "dport"}}),
    ]
}
fn in_set(left: Value, set: &str) -> Value {
    json!({"match": {"op": "==", "left": left, "right": format!("@{set}")}})
}

/// The policy skeleton, added to the base table: it never changes at runtime.
pub fn skeleton() -> Vec<Value> {
    let established = json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let mut cmds = vec![
        json!({"add": obj("map", json!({"name": INGRESS_MAP, "type": "ipv4_addr", "map": "verdict"}))}),
        json!({"add": obj("map", json!({"name": EGRESS_MAP, "type": "ipv4_addr", "map": "verdict"}))}),
        json!({"add": obj("set", json!({"name": SELF_SET, "type": ["ipv4_addr", "ipv4_addr"]}))}),
    ];
    // Egress is checked first, and an egress accept only ends that base chain: the ingress
    // chain still runs (no short-circuit on a single host).
    for (chain, prio, map, key) in [
        (EGRESS_CHAIN, 1, EGRESS_MAP, saddr()),
        (INGRESS_CHAIN, 2, INGRESS_MAP, daddr()),
    ] {
        cmds.push(json!({"add": obj("chain", json!({"name": chain, "type": "filter", "hook": "forward", "prio": prio, "policy": "accept"}))}));
        for (expr, comment) in [
            (
                json!([established.clone(), {"accept": null}]),
                "replies of allowed connections",
            ),
            (
                json!([in_set(json!({"concat": [saddr(), daddr()]}), SELF_SET), {"accept": null}]),
                "a pod's traffic to itself",
            ),
            (
                json!([{"vmap": {"key": key, "data": format!("@{map}")}}]),
                "isolated pods: their policies",
            ),
        ] {
            cmds.push(json!({"add": obj("rule", json!({"chain": chain, "expr": expr, "comment": comment}))}));
        }
    }
    cmds
}

fn elem_json(e: &Elem) -> Value {
    match *e {
        Elem::Addr(a) => json!(a.to_string()),
        Elem::Range(a, b) if a == b => json!(a.to_string()),
        Elem::Range(a, b) => json!({"range": [a.to_string(), b.to_string()]}),
        Elem::Ports(p, a, b) => json!({"concat": [p.nft(), {"range": [a, b]}]}),
        Elem::Named(ip, p, port) => json!({"concat": [ip.to_string(), p.nft(), port]}),
    }
}

fn set_decl(name: &str, s: &Set) -> Value {
    let body = match s.kind {
        SetKind::Addrs => json!({"name": name, "type": "ipv4_addr"}),
        SetKind::Ranges => json!({"name": name, "type": "ipv4_addr", "flags": ["interval"]}),
        SetKind::Ports => {
            json!({"name": name, "type": ["inet_proto", "inet_service"], "flags": ["interval"]})
        }
        SetKind::Named => {
            json!({"name": name, "type": ["ipv4_addr", "inet_proto", "inet_service"]})
        }
    };
    json!({"add": obj("set", body)})
}

fn elements(op: &str, set: &str, elems: Vec<Value>) -> Option<Value> {
    if elems.is_empty() {
        return None;
    }
    Some(json!({ op: obj("element", json!({"name": set, "elem": elems})) }))
}

fn rule_expr(r: &Rule) -> Value {
    let mut expr: Vec<Value> = r
        .matches
        .iter()
        .map(|m| match m {
            Match::SrcIn(s) => in_set(saddr(), s),
            Match::DstIn(s) => in_set(daddr(), s),
            Match::PortIn(s) => in_set(json!({"concat": l4proto_dport()}), s),
            Match::NamedIn(s) => {
                let mut c = vec![daddr()];
                c.extend(l4proto_dport());
                in_set(json!({"concat": c}), s)
            }
        })
        .collect();
    match &r.verdict {
        Verdict::Accept => expr.push(json!({"accept": null})),
        Verdict::Drop => {
            expr.push(json!({"counter": null}));
            expr.push(json!({"drop": null}));
        }
        Verdict::Jump(c) => expr.push(json!({"jump": {"target": c}})),
    }
    Value::Array(expr)
}

fn map_elem(ip: &std::net::Ipv4Addr, chain: &str) -> Value {
    json!([ip.to_string(), {"goto": {"target": chain}}])
}

/// The commands that take the kernel from `old` to `new`, in an order nftables accepts within
/// one transaction: new sets and chains first, then elements and rules, then the dispatch maps,
/// and last the removal of what nothing references any more.
pub fn diff(old: &Desired, new: &Desired) -> Vec<Value> {
    let mut cmds = Vec::new();
    // 1. New sets (with their elements) and new chains (empty for now: rules may jump to
    //    chains created in the same batch).
    for (name, s) in &new.sets {
        match old.sets.get(name) {
            Some(o) if o.kind == s.kind => {}
            Some(_) => {
                // Same name, other type (cannot happen with the naming scheme; be safe).
                cmds.push(json!({"delete": obj("set", json!({"name": name}))}));
                cmds.push(set_decl(name, s));
                cmds.extend(elements(
                    "add",
                    name,
                    s.elems.iter().map(elem_json).collect(),
                ));
            }
            None => {
                cmds.push(set_decl(name, s));
                cmds.extend(elements(
                    "add",
                    name,
                    s.elems.iter().map(elem_json).collect(),
                ));
            }
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            cmds.push(json!({"add": obj("chain", json!({"name": name}))}));
        }
    }
    // 2. Elements of sets that stay.
    for (name, s) in &new.sets {
        let Some(o) = old.sets.get(name).filter(|o| o.kind == s.kind) else {
            continue;
        };
        let gone: Vec<Value> = o.elems.difference(&s.elems).map(elem_json).collect();
        let added: Vec<Value> = s.elems.difference(&o.elems).map(elem_json).collect();
        cmds.extend(elements("delete", name, gone));
        cmds.extend(elements("add", name, added));
    }
    let old_selves: BTreeSet<_> = old.selves.iter().collect();
    let new_selves: BTreeSet<_> = new.selves.iter().collect();
    let pair = |ip: &&std::net::Ipv4Addr| json!({"concat": [ip.to_string(), ip.to_string()]});
    cmds.extend(elements(
        "add",
        SELF_SET,
        new_selves.difference(&old_selves).map(pair).collect(),
    ));
    // 3. Chain contents: new chains get their rules, changed chains are rewritten.
    for (name, rules) in &new.chains {
        if old.chains.get(name) == Some(rules) {
            continue;
        }
        if old.chains.contains_key(name) {
            cmds.push(json!({"flush": obj("chain", json!({"name": name}))}));
        }
        for r in rules {
            cmds.push(json!({"add": obj("rule", json!({"chain": name, "expr": rule_expr(r)}))}));
        }
    }
    // 4. Dispatch: pods that changed class or stopped being isolated lose their element,
    //    then pods that became isolated or changed class get the new one.
    for (map, o, n) in [
        (INGRESS_MAP, &old.ingress, &new.ingress),
        (EGRESS_MAP, &old.egress, &new.egress),
    ] {
        let gone: Vec<Value> = o
            .iter()
            .filter(|(ip, c)| n.get(ip) != Some(c))
            .map(|(ip, _)| json!(ip.to_string()))
            .collect();
        let added: Vec<Value> = n
            .iter()
            .filter(|(ip, c)| o.get(ip) != Some(c))
            .map(|(ip, c)| map_elem(ip, c))
            .collect();
        cmds.extend(elements("delete", map, gone));
        cmds.extend(elements("add", map, added));
    }
    cmds.extend(elements(
        "delete",
        SELF_SET,
        old_selves.difference(&new_selves).map(pair).collect(),
    ));
    // 5. Removals: chains no longer referenced (flush all first: they may jump to each
    //    other), then sets no rule uses any more.
    let gone_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for c in &gone_chains {
        cmds.push(json!({"flush": obj("chain", json!({"name": c}))}));
    }
    for c in &gone_chains {
        cmds.push(json!({"delete": obj("chain", json!({"name": c}))}));
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            cmds.push(json!({"delete": obj("set", json!({"name": name}))}));
        }
    }
    cmds
}

/// Wraps commands into a batch document.
pub fn batch(cmds: Vec<Value>) -> Value {
    json!({ "nftables": cmds })
}
