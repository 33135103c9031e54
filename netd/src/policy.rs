//! NetworkPolicy (networking.k8s.io/v1) compiled to nftables objects, as plain data.
//!
//! [`compute`] takes the whole picture (policies, pods with their IPs and named ports,
//! namespaces with their labels) and returns the [`Desired`] ruleset; [`crate::policy_nft`]
//! turns the difference between two of them into one `nft -j` transaction. No I/O here.
//!
//! Layout (all in table `inet skiff`, in two base chains on the forward hook so that an egress
//! allow can never skip the ingress check):
//! - `policy-egress` (priority 1) dispatches on the source IP through the verdict map
//!   `egress-pods`, `policy-ingress` (priority 2) on the destination IP through `ingress-pods`.
//!   Only isolated pods have an element; everything else passes untouched.
//! - A pod's element jumps to a *class* chain shared by all pods selected by the same set of
//!   policies; the class chain jumps to each policy's chain and drops what none accepted.
//! - A policy chain has one rule per (rule, peer kind, port kind): peers are named sets (pod
//!   IPs, and interval sets for ipBlock with its `except` holes cut out), ports are
//!   `l4proto . port` interval sets, named ports `daddr . l4proto . port` sets resolved per
//!   destination pod. Label changes therefore move set and map elements; chains change only
//!   when a policy's spec does, or a new combination of policies appears.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_core::config::Cidr;
use skiff_core::selector::Selector;

pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
    /// The name nftables uses for the protocol.
    pub fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// What policy needs to know of a pod that has an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    pub ports: Vec<NamedPort>,
}

/// One element of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    /// One address (pod IP sets).
    Addr(Ipv4Addr),
    /// An inclusive address range (ipBlock interval sets).
    Range(Ipv4Addr, Ipv4Addr),
    /// `l4proto . port range` (numeric ports; a protocol alone is the whole range).
    Ports(Proto, u16, u16),
    /// `daddr . l4proto . port` (named ports resolved on the destination pod).
    Named(Ipv4Addr, Proto, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Addrs,
    Ranges,
    Ports,
    Named,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    pub elems: BTreeSet<Elem>,
}

/// One condition of a rule; each names a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    SrcIn(String),
    DstIn(String),
    /// `meta l4proto . th dport @set`
    PortIn(String),
    /// `ip daddr . meta l4proto . th dport @set`
    NamedIn(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
}

/// The policy part of the ruleset, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Destination pod IP → class chain (pods isolated for ingress).
    pub ingress: BTreeMap<Ipv4Addr, String>,
    /// Source pod IP → class chain (pods isolated for egress).
    pub egress: BTreeMap<Ipv4Addr, String>,
    /// Isolated pods, whose traffic to themselves (hairpin through a Service) always passes.
    pub selves: BTreeSet<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    fn tag(self) -> &'static str {
        match self {
            Dir::Ingress => "in",
            Dir::Egress => "eg",
        }
    }
}

/// FNV-1a: short, stable object names from policy names (nft names have a length limit and
/// a restricted alphabet; Kubernetes names do not fit both).
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// The stable name prefix of a policy's chains and sets.
pub fn policy_id(namespace: &str, name: &str) -> String {
    format!("np-{}", fnv(&format!("{namespace}/{name}")))
}

/// The policy types in force: `policyTypes` when given, else Ingress plus Egress when there
/// are egress rules.
pub fn effective_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// A selector that matches nothing when it is invalid (the API server rejects those; this
/// keeps a bad object from opening anything up).
fn selector(ls: &LabelSelector) -> Option<Selector> {
    Selector::from_label_selector(ls).ok()
}

fn matches(sel: &Option<Selector>, labels: &Labels) -> bool {
    sel.as_ref().is_some_and(|s| s.matches(labels))
}

/// An IPv4 ipBlock as inclusive ranges: the CIDR minus its exceptions. IPv6 blocks yield
/// nothing (pods are IPv4 only).
pub fn ipblock_ranges(cidr: &str, except: &[String]) -> Vec<(u32, u32)> {
    let Ok(c) = Cidr::parse(cidr) else {
        return Vec::new();
    };
    let lo = u32::from(c.addr);
    let hi = lo + ((c.size() - 1) as u32);
    let mut out = vec![(lo, hi)];
    for e in except {
        let Ok(x) = Cidr::parse(e) else { continue };
        let xlo = u32::from(x.addr);
        let xhi = xlo + ((x.size() - 1) as u32);
        out = out
            .into_iter()
            .flat_map(|(a, b)| {
                let mut parts = Vec::new();
                if xhi < a || xlo > b {
                    parts.push((a, b));
                } else {
                    if xlo > a {
                        parts.push((a, xlo - 1));
                    }
                    if xhi < b {
                        parts.push((xhi + 1, b));
                    }
                }
                parts
            })
            .collect();
    }
    out
}

/// Merges overlapping or adjacent ranges (interval sets refuse overlaps).
fn merge(mut v: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn merge_ports(v: Vec<(Proto, u16, u16)>) -> BTreeSet<Elem> {
    let mut by: BTreeMap<Proto, Vec<(u32, u32)>> = BTreeMap::new();
    for (p, a, b) in v {
        by.entry(p).or_default().push((u32::from(a), u32::from(b)));
    }
    let mut out = BTreeSet::new();
    for (p, r) in by {
        for (a, b) in merge(r) {
            // Ranges came from u16 values, so they fit.
            out.insert(Elem::Ports(
                p,
                u16::try_from(a).unwrap_or(u16::MAX),
                u16::try_from(b).unwrap_or(u16::MAX),
            ));
        }
    }
    out
}

/// The cluster as policy sees it.
pub struct Cluster<'a> {
    pub pods: &'a [PodInfo],
    pub namespaces: &'a BTreeMap<String, Labels>,
    by_ns: BTreeMap<&'a str, Vec<&'a PodInfo>>,
}

impl<'a> Cluster<'a> {
    pub fn new(pods: &'a [PodInfo], namespaces: &'a BTreeMap<String, Labels>) -> Self {
        let mut by_ns: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        for p in pods {
            by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        Self {
            pods,
            namespaces,
            by_ns,
        }
    }

    fn ns_pods(&self, ns: &str) -> &[&'a PodInfo] {
        self.by_ns.get(ns).map(Vec::as_slice).unwrap_or(&[])
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).cloned().unwrap_or_else(|| {
            // A namespace not seen yet still carries its name label.
            Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
        })
    }

    /// Pods a peer with pod and/or namespace selectors selects (not ipBlock).
    fn peer_pods(&self, policy_ns: &str, peer: &NetworkPolicyPeer, out: &mut BTreeSet<Elem>) {
        let pod_sel = peer.pod_selector.as_ref().map(selector);
        match &peer.namespace_selector {
            None => {
                if let Some(ps) = pod_sel {
                    for p in self.ns_pods(policy_ns) {
                        if matches(&ps, &p.labels) {
                            out.insert(Elem::Addr(p.ip));
                        }
                    }
                }
            }
            Some(nsl) => {
                let ns_sel = selector(nsl);
                for (ns, pods) in &self.by_ns {
                    if !matches(&ns_sel, &self.ns_labels(ns)) {
                        continue;
                    }
                    for p in pods {
                        if pod_sel.as_ref().is_none_or(|ps| matches(ps, &p.labels)) {
                            out.insert(Elem::Addr(p.ip));
                        }
                    }
                }
            }
        }
    }
}

struct Builder<'c, 'a> {
    cluster: &'c Cluster<'a>,
    out: Desired,
}

impl Builder<'_, '_> {
    /// A set named after its content, so identical sets are shared between rules and
    /// policies (fewer kernel objects, smaller transactions).
    fn content_set(&mut self, prefix: &str, kind: SetKind, elems: BTreeSet<Elem>) -> String {
        let name = format!("{prefix}-{}", fnv(&format!("{elems:?}")));
        self.out
            .sets
            .entry(name.clone())
            .or_insert(Set { kind, elems });
        name
    }

    /// A set named after what defines its content (selectors, port names), computed once per
    /// sync however many rules use it.
    fn keyed_set(
        &mut self,
        prefix: &str,
        key: &str,
        kind: SetKind,
        elems: impl FnOnce(&Cluster<'_>) -> BTreeSet<Elem>,
    ) -> String {
        let name = format!("{prefix}-{}", fnv(key));
        if !self.out.sets.contains_key(&name) {
            let elems = elems(self.cluster);
            self.out.sets.insert(name.clone(), Set { kind, elems });
        }
        name
    }

    /// The nft rules of one policy rule (`from`/`to` peers × `ports`).
    fn rule(
        &mut self,
        policy_ns: &str,
        dir: Dir,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
    ) -> Vec<Rule> {
        let peers = peers.unwrap_or(&[]);
        let ports = ports.unwrap_or(&[]);
        let peer_match = |set: String| match dir {
            Dir::Ingress => Match::SrcIn(set),
            Dir::Egress => Match::DstIn(set),
        };
        // Peers: none listed = everyone.
        let mut peer_matches: Vec<Option<Match>> = Vec::new();
        if peers.is_empty() {
            peer_matches.push(None);
        } else {
            let has_pod_peers = peers.iter().any(|p| p.ip_block.is_none());
            let blocks: Vec<_> = peers.iter().filter_map(|p| p.ip_block.as_ref()).collect();
            if has_pod_peers {
                let pod_peers: Vec<&NetworkPolicyPeer> =
                    peers.iter().filter(|p| p.ip_block.is_none()).collect();
                let key = format!(
                    "{policy_ns}|{}",
                    serde_json::to_string(&pod_peers).unwrap_or_default()
                );
                let s = self.keyed_set("peers", &key, SetKind::Addrs, |c| {
                    let mut elems = BTreeSet::new();
                    for p in &pod_peers {
                        c.peer_pods(policy_ns, p, &mut elems);
                    }
                    elems
                });
                peer_matches.push(Some(peer_match(s)));
            }
            if !blocks.is_empty() {
                let mut ranges = Vec::new();
                for b in blocks {
                    ranges.extend(ipblock_ranges(&b.cidr, b.except.as_deref().unwrap_or(&[])));
                }
                let elems = merge(ranges)
                    .into_iter()
                    .map(|(a, b)| Elem::Range(Ipv4Addr::from(a), Ipv4Addr::from(b)))
                    .collect();
                let s = self.content_set("cidr", SetKind::Ranges, elems);
                peer_matches.push(Some(peer_match(s)));
            }
        }
        // Ports: none listed = every port and protocol.
        let mut port_matches: Vec<Option<Match>> = Vec::new();
        if ports.is_empty() {
            port_matches.push(None);
        } else {
            let mut numeric = Vec::new();
            let mut named: Vec<(String, Proto)> = Vec::new();
            for p in ports {
                let Some(proto) = Proto::parse(p.protocol.as_deref().unwrap_or("TCP")) else {
                    continue;
                };
                match &p.port {
                    None => numeric.push((proto, 0, u16::MAX)),
                    Some(IntOrString::Int(n)) => {
                        let Ok(lo) = u16::try_from(*n) else { continue };
                        let hi = p
                            .end_port
                            .and_then(|e| u16::try_from(e).ok())
                            .unwrap_or(lo)
                            .max(lo);
                        numeric.push((proto, lo, hi));
                    }
                    Some(IntOrString::String(s)) => named.push((s.clone(), proto)),
                }
            }
            if !numeric.is_empty() {
                let s = self.content_set("ports", SetKind::Ports, merge_ports(numeric));
                port_matches.push(Some(Match::PortIn(s)));
            }
            if !named.is_empty() {
                // Resolved on every pod that has such a port: the destination is checked by
                // the same match (`daddr . proto . port`), and for ingress the chain is only
                // reached for pods the policy selects.
                named.sort();
                named.dedup();
                let s = self.keyed_set("named", &format!("{named:?}"), SetKind::Named, |c| {
                    let mut elems = BTreeSet::new();
                    for pod in c.pods {
                        for np in &pod.ports {
                            if named.iter().any(|(n, pr)| *n == np.name && *pr == np.proto) {
                                elems.insert(Elem::Named(pod.ip, np.proto, np.port));
                            }
                        }
                    }
                    elems
                });
                port_matches.push(Some(Match::NamedIn(s)));
            }
            if port_matches.is_empty() {
                // Only unknown protocols: the rule can match nothing (validation prevents it).
                return Vec::new();
            }
        }
        let mut rules = Vec::new();
        for pm in &peer_matches {
            for qm in &port_matches {
                let matches = pm.iter().chain(qm.iter()).cloned().collect();
                rules.push(Rule {
                    matches,
                    verdict: Verdict::Accept,
                });
            }
        }
        rules
    }
}

/// Compiles the policies into the desired ruleset. Deterministic: the same inputs give the
/// same names and the same elements.
pub fn compute(policies: &[NetworkPolicy], cluster: &Cluster<'_>) -> Desired {
    let mut b = Builder {
        cluster,
        out: Desired::default(),
    };
    let mut ingress_of: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    let mut egress_of: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    let mut sorted: Vec<&NetworkPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    for pol in sorted {
        let ns = pol.metadata.namespace.as_deref().unwrap_or("default");
        let name = pol.metadata.name.as_deref().unwrap_or_default();
        let Some(spec) = pol.spec.as_ref() else {
            continue;
        };
        let id = policy_id(ns, name);
        let (ingress, egress) = effective_types(spec);
        let sel = selector(&spec.pod_selector.clone().unwrap_or_default());
        let selected: Vec<&PodInfo> = cluster
            .ns_pods(ns)
            .iter()
            .copied()
            .filter(|p| matches(&sel, &p.labels))
            .collect();
        if ingress {
            let chain = format!("{id}-in");
            let mut rules = Vec::new();
            for r in spec.ingress.iter().flatten() {
                rules.extend(b.rule(ns, Dir::Ingress, r.from.as_deref(), r.ports.as_deref()));
            }
            b.out.chains.insert(chain.clone(), rules);
            for p in &selected {
                ingress_of.entry(p.ip).or_default().push(chain.clone());
            }
        }
        if egress {
            let chain = format!("{id}-eg");
            let mut rules = Vec::new();
            for r in spec.egress.iter().flatten() {
                rules.extend(b.rule(ns, Dir::Egress, r.to.as_deref(), r.ports.as_deref()));
            }
            b.out.chains.insert(chain.clone(), rules);
            for p in &selected {
                egress_of.entry(p.ip).or_default().push(chain.clone());
            }
        }
    }
    let mut out = b.out;
    for (dir, of) in [(Dir::Ingress, ingress_of), (Dir::Egress, egress_of)] {
        for (ip, chains) in of {
            let class = format!("class-{}-{}", dir.tag(), fnv(&chains.join(",")));
            out.chains.entry(class.clone()).or_insert_with(|| {
                let mut rules: Vec<Rule> = chains
                    .iter()
                    .map(|c| Rule {
                        matches: Vec::new(),
                        verdict: Verdict::Jump(c.clone()),
                    })
                    .collect();
                rules.push(Rule {
                    matches: Vec::new(),
                    verdict: Verdict::Drop,
                });
                rules
            });
            out.selves.insert(ip);
            match dir {
                Dir::Ingress => out.ingress.insert(ip, class),
                Dir::Egress => out.egress.insert(ip, class),
            };
        }
    }
    out
}

impl Desired {
    fn set_has(&self, name: &str, e: impl Fn(&Elem) -> bool) -> bool {
        self.sets.get(name).is_some_and(|s| s.elems.iter().any(e))
    }

    fn rule_matches(
        &self,
        m: &Match,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: Proto,
        port: u16,
    ) -> bool {
        let addr_in = |set: &str, ip: Ipv4Addr| {
            self.set_has(set, |e| match *e {
                Elem::Addr(a) => a == ip,
                Elem::Range(a, b) => a <= ip && ip <= b,
                _ => false,
            })
        };
        match m {
            Match::SrcIn(s) => addr_in(s, src),
            Match::DstIn(s) => addr_in(s, dst),
            Match::PortIn(s) => self.set_has(
                s,
                |e| matches!(*e, Elem::Ports(p, a, b) if p == proto && a <= port && port <= b),
            ),
            Match::NamedIn(s) => self.set_has(s, |e| *e == Elem::Named(dst, proto, port)),
        }
    }

    /// Runs a chain the way nftables does: `Some(verdict)` if one was reached, `None` if the
    /// chain returned.
    fn run(
        &self,
        chain: &str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: Proto,
        port: u16,
    ) -> Option<bool> {
        for r in self.chains.get(chain).into_iter().flatten() {
            if !r
                .matches
                .iter()
                .all(|m| self.rule_matches(m, src, dst, proto, port))
            {
                continue;
            }
            match &r.verdict {
                Verdict::Accept => return Some(true),
                Verdict::Drop => return Some(false),
                Verdict::Jump(c) => {
                    if let Some(v) = self.run(c, src, dst, proto, port) {
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    /// Whether a new connection passes the compiled ruleset: an interpreter of the data this
    /// module emits, in the order the kernel evaluates it (egress base chain, then ingress).
    pub fn allows(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: Proto, port: u16) -> bool {
        if src == dst && self.selves.contains(&src) {
            return true;
        }
        if let Some(c) = self.egress.get(&src) {
            if self.run(c, src, dst, proto, port) == Some(false) {
                return false;
            }
        }
        if let Some(c) = self.ingress.get(&dst) {
            if self.run(c, src, dst, proto, port) == Some(false) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_nft::diff;
    use serde_json::json;

    const NSS: [&str; 3] = ["x", "y", "z"];
    const PODS: [&str; 3] = ["a", "b", "c"];

    fn ip(ns: &str, pod: &str) -> Ipv4Addr {
        let n = NSS.iter().position(|x| *x == ns).unwrap() as u8;
        let p = PODS.iter().position(|x| *x == pod).unwrap() as u8;
        Ipv4Addr::new(10, 244, 0, 10 + n * 3 + p)
    }

    /// The upstream e2e model: namespaces x, y, z with pods a, b, c, each labelled pod=<name>,
    /// serving TCP/UDP 80 and 81 under the names serve-<port>-<proto>.
    fn world() -> (Vec<PodInfo>, BTreeMap<String, Labels>) {
        let mut pods = Vec::new();
        let mut nss = BTreeMap::new();
        for ns in NSS {
            nss.insert(
                ns.to_string(),
                Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]),
            );
            for pod in PODS {
                let mut ports = Vec::new();
                for port in [80u16, 81] {
                    for (proto, tag) in [(Proto::Tcp, "tcp"), (Proto::Udp, "udp")] {
                        ports.push(NamedPort {
                            name: format!("serve-{port}-{tag}"),
                            proto,
                            port,
                        });
                    }
                }
                pods.push(PodInfo {
                    namespace: ns.into(),
                    name: pod.into(),
                    labels: Labels::from([("pod".to_string(), pod.to_string())]),
                    ip: ip(ns, pod),
                    ports,
                });
            }
        }
        (pods, nss)
    }

    fn np(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": spec
        }))
        .unwrap()
    }

    fn build(policies: &[NetworkPolicy]) -> Desired {
        let (pods, nss) = world();
        compute(policies, &Cluster::new(&pods, &nss))
    }

    /// The 9×9 matrix for one protocol and port, as a set of (from, to) pairs that connect.
    fn matrix(d: &Desired, proto: Proto, port: u16) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for fns in NSS {
            for fp in PODS {
                for tns in NSS {
                    for tp in PODS {
                        if d.allows(ip(fns, fp), ip(tns, tp), proto, port) {
                            out.insert((format!("{fns}/{fp}"), format!("{tns}/{tp}")));
                        }
                    }
                }
            }
        }
        out
    }

    /// All pairs, minus those `deny` says no to (self-traffic always passes).
    fn expect(deny: impl Fn(&str, &str) -> bool) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for fns in NSS {
            for fp in PODS {
                for tns in NSS {
                    for tp in PODS {
                        let (f, t) = (format!("{fns}/{fp}"), format!("{tns}/{tp}"));
                        if f == t || !deny(&f, &t) {
                            out.insert((f, t));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn no_policies_allow_everything() {
        let d = build(&[]);
        assert_eq!(matrix(&d, Proto::Tcp, 80), expect(|_, _| false));
        assert!(d.ingress.is_empty() && d.egress.is_empty() && d.chains.is_empty());
    }

    #[test]
    fn default_deny_ingress_and_all() {
        let d = build(&[np("x", "deny", json!({"podSelector": {}}))]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|_, t| t.starts_with("x/"))
        );
        let d = build(&[np(
            "x",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )]);
        assert_eq!(
            matrix(&d, Proto::Udp, 81),
            expect(|f, t| t.starts_with("x/") || f.starts_with("x/"))
        );
    }

    #[test]
    fn empty_rule_list_denies_and_empty_rule_allows() {
        let d = build(&[np("x", "p", json!({"podSelector": {}, "ingress": []}))]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|_, t| t.starts_with("x/"))
        );
        let d = build(&[np("x", "p", json!({"podSelector": {}, "ingress": [{}]}))]);
        assert_eq!(matrix(&d, Proto::Tcp, 80), expect(|_, _| false));
        assert_eq!(matrix(&d, Proto::Udp, 81), expect(|_, _| false));
    }

    #[test]
    fn effective_policy_types() {
        // egress rules present, no policyTypes: Ingress and Egress.
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        )]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|f, t| f == "x/a" || t == "x/a")
        );
        // policyTypes [Ingress]: the egress rules are ignored.
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"], "ingress": [{}], "egress": [{"ports": [{"port": 53}]}]}),
        )]);
        assert_eq!(matrix(&d, Proto::Tcp, 80), expect(|_, _| false));
        // policyTypes [Egress] only: ingress stays open.
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        )]);
        assert_eq!(matrix(&d, Proto::Tcp, 80), expect(|f, _| f == "x/a"));
    }

    #[test]
    fn pod_selector_alone_is_the_policy_namespace() {
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        )]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|f, t| t == "x/a" && f != "x/b")
        );
    }

    #[test]
    fn namespace_selector_alone_is_every_pod_there() {
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "y"}}}]}]}),
        )]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|f, t| t == "x/a" && !f.starts_with("y/"))
        );
        // An empty namespaceSelector: every pod in every namespace.
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        )]);
        assert_eq!(matrix(&d, Proto::Tcp, 80), expect(|_, _| false));
    }

    #[test]
    fn both_selectors_in_one_peer_are_and_separate_peers_are_or() {
        let and = np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{
                "namespaceSelector": {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": ["x"]}]},
                "podSelector": {"matchLabels": {"pod": "b"}}
            }]}]}),
        );
        assert_eq!(
            matrix(&build(&[and]), Proto::Tcp, 80),
            expect(|f, t| t == "x/a" && f != "y/b" && f != "z/b")
        );
        let or = np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": ["x"]}]}},
                {"podSelector": {"matchLabels": {"pod": "b"}}}
            ]}]}),
        );
        assert_eq!(
            matrix(&build(&[or]), Proto::Tcp, 80),
            expect(|f, t| t == "x/a" && (f == "x/c" || f == "x/a"))
        );
    }

    #[test]
    fn match_expressions_operators() {
        let (mut pods, nss) = world();
        // Give x/c an extra label for Exists / DoesNotExist.
        pods.iter_mut()
            .filter(|p| p.namespace == "x" && p.name == "c")
            .for_each(|p| {
                p.labels.insert("tier".into(), "db".into());
            });
        let c = Cluster::new(&pods, &nss);
        let with = |expr: serde_json::Value| {
            compute(
                &[np(
                    "x",
                    "p",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [expr]}}]}]}),
                )],
                &c,
            )
        };
        let allowed = |d: &Desired| -> Vec<&str> {
            PODS.iter()
                .copied()
                .filter(|p| *p != "a" && d.allows(ip("x", p), ip("x", "a"), Proto::Tcp, 80))
                .collect()
        };
        assert_eq!(
            allowed(&with(
                json!({"key": "pod", "operator": "In", "values": ["b"]})
            )),
            ["b"]
        );
        assert_eq!(
            allowed(&with(
                json!({"key": "pod", "operator": "NotIn", "values": ["b"]})
            )),
            ["c"]
        );
        assert_eq!(
            allowed(&with(json!({"key": "tier", "operator": "Exists"}))),
            ["c"]
        );
        assert_eq!(
            allowed(&with(json!({"key": "tier", "operator": "DoesNotExist"}))),
            ["b"]
        );
    }

    #[test]
    fn ipblock_with_except_both_ways() {
        // Ingress to x/a from 10.244.0.0/24 except y/b's address.
        let yb = ip("y", "b");
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/24", "except": [format!("{yb}/32")]}}]}]}),
        )]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|f, t| t == "x/a" && f == "y/b")
        );
        // Egress from x/a only to z/c's /32.
        let zc = ip("z", "c");
        let d = build(&[np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": format!("{zc}/32")}}]}]}),
        )]);
        assert_eq!(
            matrix(&d, Proto::Tcp, 80),
            expect(|f, t| f == "x/a" && t != "z/c")
        );
    }

    #[test]
    fn ipblock_ranges_cut_holes() {
        let r = ipblock_ranges(
            "10.0.0.0/24",
            &["10.0.0.0/25".into(), "10.0.0.200/32".into()],
        );
        let v: Vec<(Ipv4Addr, Ipv4Addr)> = r
            .iter()
            .map(|(a, b)| (Ipv4Addr::from(*a), Ipv4Addr::from(*b)))
            .collect();
        assert_eq!(
            v,
            [
                (Ipv4Addr::new(10, 0, 0, 128), Ipv4Addr::new(10, 0, 0, 199)),
                (Ipv4Addr::new(10, 0, 0, 201), Ipv4Addr::new(10, 0, 0, 255)),
            ]
        );
        assert_eq!(ipblock_ranges("0.0.0.0/0", &[]), [(0, u32::MAX)]);
        assert!(ipblock_ranges("fd00::/64", &[]).is_empty());
        assert_eq!(
            merge(vec![(5, 9), (1, 3), (4, 4), (20, 30)]),
            [(1, 9), (20, 30)]
        );
    }

    #[test]
    fn ports_numeric_named_ranges_and_protocol_only() {
        let only = |ports: serde_json::Value| {
            build(&[np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": ports}]}),
            )])
        };
        let (yb, xa) = (ip("y", "b"), ip("x", "a"));
        let d = only(json!([{"port": 81, "protocol": "TCP"}]));
        assert!(d.allows(yb, xa, Proto::Tcp, 81));
        assert!(!d.allows(yb, xa, Proto::Tcp, 80));
        assert!(!d.allows(yb, xa, Proto::Udp, 81));
        // endPort is inclusive.
        let d = only(json!([{"port": 80, "endPort": 81, "protocol": "UDP"}]));
        assert!(d.allows(yb, xa, Proto::Udp, 80) && d.allows(yb, xa, Proto::Udp, 81));
        assert!(!d.allows(yb, xa, Proto::Udp, 82) && !d.allows(yb, xa, Proto::Tcp, 80));
        // A protocol alone: every port of it.
        let d = only(json!([{"protocol": "UDP"}]));
        assert!(d.allows(yb, xa, Proto::Udp, 80) && d.allows(yb, xa, Proto::Udp, 9999));
        assert!(!d.allows(yb, xa, Proto::Tcp, 80));
        // SCTP is not TCP.
        let d = only(json!([{"port": 80, "protocol": "SCTP"}]));
        assert!(d.allows(yb, xa, Proto::Sctp, 80) && !d.allows(yb, xa, Proto::Tcp, 80));
        // Named: by name and protocol.
        let d = only(json!([{"port": "serve-81-udp", "protocol": "UDP"}]));
        assert!(d.allows(yb, xa, Proto::Udp, 81));
        assert!(!d.allows(yb, xa, Proto::Udp, 80) && !d.allows(yb, xa, Proto::Tcp, 81));
        let d = only(json!([{"port": "serve-81-udp", "protocol": "TCP"}]));
        assert!(!d.allows(yb, xa, Proto::Tcp, 81) && !d.allows(yb, xa, Proto::Udp, 81));
    }

    #[test]
    fn named_ports_resolve_per_destination_pod() {
        let (mut pods, nss) = world();
        // x/b serves "web" on 8080, y/c on 80.
        for p in pods.iter_mut() {
            let port = match (p.namespace.as_str(), p.name.as_str()) {
                ("x", "b") => 8080,
                ("y", "c") => 80,
                _ => continue,
            };
            p.ports.push(NamedPort {
                name: "web".into(),
                proto: Proto::Tcp,
                port,
            });
        }
        let c = Cluster::new(&pods, &nss);
        // Egress from x/a only to named port web.
        let d = compute(
            &[np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "web"}]}]}),
            )],
            &c,
        );
        let xa = ip("x", "a");
        assert!(d.allows(xa, ip("x", "b"), Proto::Tcp, 8080));
        assert!(!d.allows(xa, ip("x", "b"), Proto::Tcp, 80));
        assert!(d.allows(xa, ip("y", "c"), Proto::Tcp, 80));
        assert!(!d.allows(xa, ip("y", "c"), Proto::Tcp, 8080));
        assert!(!d.allows(xa, ip("z", "a"), Proto::Tcp, 80));
    }

    #[test]
    fn egress_allow_does_not_skip_ingress_check() {
        let d = build(&[
            np(
                "x",
                "eg",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{}]}),
            ),
            np("y", "deny", json!({"podSelector": {}})),
        ]);
        assert!(!d.allows(ip("x", "a"), ip("y", "a"), Proto::Tcp, 80));
        assert!(d.allows(ip("x", "a"), ip("z", "a"), Proto::Tcp, 80));
        // And an ingress allow does not help a source whose egress is denied.
        let d = build(&[
            np(
                "x",
                "eg",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
            ),
            np("y", "allow", json!({"podSelector": {}, "ingress": [{}]})),
        ]);
        assert!(!d.allows(ip("x", "a"), ip("y", "a"), Proto::Tcp, 80));
    }

    #[test]
    fn policies_are_additive_and_self_traffic_passes() {
        let d = build(&[
            np(
                "x",
                "p1",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            ),
            np(
                "x",
                "p2",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            ),
        ]);
        let xa = ip("x", "a");
        assert!(d.allows(ip("x", "b"), xa, Proto::Tcp, 80));
        assert!(d.allows(ip("x", "c"), xa, Proto::Tcp, 80));
        assert!(!d.allows(ip("y", "b"), xa, Proto::Tcp, 80));
        assert!(d.allows(xa, xa, Proto::Tcp, 80));
        // x/a has both policies, x/b only p2: two classes.
        assert_ne!(d.ingress[&xa], d.ingress[&ip("x", "b")]);
        assert_eq!(d.ingress[&ip("x", "b")], d.ingress[&ip("x", "c")]);
    }

    #[test]
    fn label_changes_move_elements_not_chains() {
        let pols = [np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
        )];
        let (mut pods, nss) = world();
        let before = compute(&pols, &Cluster::new(&pods, &nss));
        assert!(!before.allows(ip("x", "b"), ip("x", "a"), Proto::Tcp, 80));
        for p in pods
            .iter_mut()
            .filter(|p| p.namespace == "x" && p.name == "b")
        {
            p.labels.insert("role".into(), "client".into());
        }
        let after = compute(&pols, &Cluster::new(&pods, &nss));
        assert!(after.allows(ip("x", "b"), ip("x", "a"), Proto::Tcp, 80));
        assert_eq!(before.chains, after.chains);
        let cmds = diff(&before, &after);
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert!(cmds[0]["add"]["element"]["name"]
            .as_str()
            .unwrap()
            .starts_with("peers-"));
        // A pod newly selected by the policy: a map element, no chain.
        for p in pods
            .iter_mut()
            .filter(|p| p.namespace == "x" && p.name == "c")
        {
            p.labels.insert("pod".into(), "a".into());
        }
        let third = compute(&pols, &Cluster::new(&pods, &nss));
        let cmds = diff(&after, &third);
        assert!(
            cmds.iter().all(|c| c["add"].get("element").is_some()),
            "{cmds:?}"
        );
        assert!(!third.allows(ip("y", "a"), ip("x", "c"), Proto::Tcp, 80));
    }

    #[test]
    fn namespace_label_changes_are_followed() {
        let pols = [np(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
        )];
        let (pods, mut nss) = world();
        let d = compute(&pols, &Cluster::new(&pods, &nss));
        assert!(!d.allows(ip("z", "a"), ip("x", "a"), Proto::Tcp, 80));
        nss.get_mut("z")
            .unwrap()
            .insert("team".into(), "blue".into());
        let d2 = compute(&pols, &Cluster::new(&pods, &nss));
        assert!(d2.allows(ip("z", "a"), ip("x", "a"), Proto::Tcp, 80));
        assert!(!d2.allows(ip("y", "a"), ip("x", "a"), Proto::Tcp, 80));
    }

    #[test]
    fn diff_is_empty_when_nothing_changed_and_removal_is_ordered() {
        let pols = [np("x", "deny", json!({"podSelector": {}}))];
        let d = build(&pols);
        assert!(diff(&d, &d).is_empty());
        let cmds = diff(&d, &Desired::default());
        let pos = |f: &dyn Fn(&serde_json::Value) -> bool| cmds.iter().position(f).unwrap();
        let map_del = pos(&|c| c["delete"]["element"]["name"] == "ingress-pods");
        let chain_del = pos(&|c| c["delete"].get("chain").is_some());
        let chain_flush = pos(&|c| c["flush"].get("chain").is_some());
        assert!(map_del < chain_flush && chain_flush < chain_del);
        // Applying everything to an empty state creates chains before rules jump to them.
        let cmds = diff(&Desired::default(), &d);
        let first_rule = cmds
            .iter()
            .position(|c| c["add"].get("rule").is_some())
            .unwrap();
        let last_chain = cmds
            .iter()
            .rposition(|c| c["add"].get("chain").is_some())
            .unwrap();
        assert!(last_chain < first_rule);
    }

    #[test]
    fn deterministic_names() {
        assert_eq!(policy_id("x", "p"), policy_id("x", "p"));
        assert_ne!(policy_id("x", "p"), policy_id("y", "p"));
        let pols = [np("x", "deny", json!({"podSelector": {}}))];
        assert_eq!(build(&pols), build(&pols));
    }
}
