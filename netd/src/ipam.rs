//! IP address management for the pod CIDR (what CNI's host-local plugin does): the gateway is
//! the first address; pods get the lowest free address. Allocations are keyed by pod UID and
//! persisted atomically, so a restart never hands out an address still in use.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_core::config::Cidr;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IpamError {
    #[error("the pod CIDR {0} has no free address")]
    Exhausted(Cidr),
    #[error("IPAM state {path}: {msg}")]
    State { path: PathBuf, msg: String },
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    /// address → pod UID
    allocations: BTreeMap<Ipv4Addr, String>,
}

#[derive(Debug)]
pub struct Ipam {
    cidr: Cidr,
    state: State,
    path: Option<PathBuf>,
}

impl Ipam {
    /// An allocator with no persistence (tests).
    pub fn in_memory(cidr: Cidr) -> Self {
        Self {
            cidr,
            state: State::default(),
            path: None,
        }
    }

    /// Loads the allocator state from `path` (empty if the file does not exist).
    pub fn load(cidr: Cidr, path: &Path) -> Result<Self, IpamError> {
        let err = |msg: String| IpamError::State {
            path: path.to_path_buf(),
            msg,
        };
        let state = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            cidr,
            state,
            path: Some(path.to_path_buf()),
        })
    }

    fn save(&self) -> Result<(), IpamError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |msg: String| IpamError::State {
            path: path.clone(),
            msg,
        };
        let tmp = path.with_extension("tmp");
        let data = serde_json::to_vec_pretty(&self.state).map_err(|e| err(e.to_string()))?;
        // Write and rename: a crash of netd leaves the old or the new state, never half of
        // one. No fsync (it cost milliseconds per pod): what the state guards, addresses in
        // use by live namespaces, does not survive a host crash either, and after one the
        // start-up GC releases whatever no pod explains.
        std::fs::write(&tmp, data).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.cidr.nth(1).unwrap_or(self.cidr.addr)
    }

    pub fn prefix(&self) -> u8 {
        self.cidr.prefix
    }

    /// The address held by `owner`, if any.
    pub fn get(&self, owner: &str) -> Option<Ipv4Addr> {
        self.state
            .allocations
            .iter()
            .find(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
    }

    /// The owner's address, allocating the lowest free one if it has none.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.get(owner) {
            return Ok(ip);
        }
        let last = self.cidr.size().saturating_sub(1);
        let mut n = 2u64;
        while n < last {
            if let Some(ip) = self.cidr.nth(n as u32) {
                if let std::collections::btree_map::Entry::Vacant(e) =
                    self.state.allocations.entry(ip)
                {
                    e.insert(owner.to_string());
                    self.save()?;
                    return Ok(ip);
                }
            }
            n += 1;
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Releases whatever `owner` holds.
    pub fn release(&mut self, owner: &str) -> Result<(), IpamError> {
        let before = self.state.allocations.len();
        self.state.allocations.retain(|_, o| o != owner);
        if self.state.allocations.len() != before {
            self.save()?;
        }
        Ok(())
    }

    pub fn owners(&self) -> Vec<String> {
        self.state.allocations.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_gateway_and_idempotence() {
        let mut ipam = Ipam::in_memory(Cidr::parse("10.244.0.0/16").unwrap());
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 0, 1));
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3))
        );
        assert_eq!(ipam.allocate("a").unwrap(), a);
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("c").unwrap(), a);
        assert_eq!(ipam.get("b"), Some(b));
    }

    #[test]
    fn exhaustion_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let cidr = Cidr::parse("10.0.0.0/29").unwrap();
        let mut ipam = Ipam::load(cidr, &path).unwrap();
        // .0 network, .1 gateway, .7 broadcast: five usable addresses.
        for i in 0..5 {
            ipam.allocate(&format!("p{i}")).unwrap();
        }
        assert!(matches!(ipam.allocate("p5"), Err(IpamError::Exhausted(_))));
        let reloaded = Ipam::load(cidr, &path).unwrap();
        assert_eq!(reloaded.get("p4"), Some(Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(reloaded.owners().len(), 5);
    }
}
