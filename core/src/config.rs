//! The cluster's configuration (`skiff up` flags) and the layout of its data directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_API_PORT: u16 = 6443;
pub const DEFAULT_BRIDGE: &str = "skiff0";
/// The Kubernetes version skiff's API reports (the API types it serves are this version's).
pub const KUBERNETES_VERSION: &str = "v1.33.0";

/// Where each file of a cluster lives inside its data directory.
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
}

impl Paths {
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        Self {
            data_dir: data_dir.as_ref().to_path_buf(),
        }
    }
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("apiserver.sock")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }
    pub fn db(&self) -> PathBuf {
        self.data_dir.join("db")
    }
    pub fn pki(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    /// The PID file `skiff up` writes, so `skiff down` and `skiff status` can find it.
    pub fn up_pid(&self) -> PathBuf {
        self.run().join("up.pid")
    }
    /// Daemon health as `skiff up` last saw it (one line per daemon).
    pub fn health(&self) -> PathBuf {
        self.run().join("health")
    }
}

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        if prefix > 32 {
            return Err(format!("prefix length {prefix} is over 32"));
        }
        let mask = Self::mask_of(prefix);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & Self::mask_of(self.prefix)) == u32::from(self.addr)
    }
    /// The n-th address of the block (0 = network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        if u64::from(n) >= size {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) + n))
    }
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.nth(10), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(c.contains(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 112, 0, 0)));
        assert_eq!(
            Cidr::parse("10.244.3.4/16").unwrap().to_string(),
            "10.244.0.0/16"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
