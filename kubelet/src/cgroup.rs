//! Container resource limits with cgroups: v2 where the host has it (`memory.max`,
//! `cpu.max`), v1 otherwise (`memory.limit_in_bytes`, `cpu.cfs_quota_us`). Each run of a
//! container with limits gets its own cgroup under `skiff/<cluster>/<pod uid>/`; the container
//! init joins it before exec, so every process of the container is accounted; an OOM kill is
//! read back from the kernel's counters to report `OOMKilled`. Containers without limits have
//! nothing to enforce and stay out of cgroups.

use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
pub const PARENT: &str = "skiff";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub fn detect() -> Option<Version> {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Some(Version::V2)
    } else if Path::new(ROOT).join("memory").is_dir() {
        Some(Version::V1)
    } else {
        None
    }
}

/// Makes the cgroup hierarchies visible at /sys/fs/cgroup when they are not (a fresh /sys, as
/// `ip netns exec` mounts): mounts the ones this process belongs to, per /proc/self/cgroup.
/// Mounts made here stay in the kubelet's mount namespace.
pub fn ensure_mounted() -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    if detect().is_some() {
        return Ok(());
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let v1: Vec<String> = own
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|c| !c.is_empty() && !c.starts_with("name="))
        .map(String::from)
        .collect();
    let none: Option<&str> = None;
    if v1.is_empty() {
        mount(
            Some("cgroup2"),
            ROOT,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        )
        .map_err(io::Error::from)?;
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(io::Error::from)?;
    for ctrls in v1
        .iter()
        .filter(|c| c.split(',').any(|x| x == "memory" || x == "cpu"))
    {
        let dir = Path::new(ROOT).join(ctrls);
        std::fs::create_dir_all(&dir)?;
        mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(ctrls.as_str()),
        )
        .map_err(io::Error::from)?;
        for member in ctrls.split(',') {
            if member != ctrls {
                let _ = std::os::unix::fs::symlink(ctrls, Path::new(ROOT).join(member));
            }
        }
    }
    Ok(())
}

/// Moves this process into the cgroup it is already in (a no-op for accounting). A cgroup move
/// takes the kernel's threadgroup lock for writing, whose first taker waits for an RCU grace
/// period (10-16 ms); takers within about one grace period of the last one do not. A container
/// init that joins its cgroup shortly after this finishes therefore does not wait.
pub fn warm_up() {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let target = match detect() {
        Some(Version::V2) => own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| Path::new(ROOT).join(p.trim_start_matches('/'))),
        Some(Version::V1) => own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls.split(',').any(|c| c == "memory").then(|| {
                Path::new(ROOT)
                    .join("memory")
                    .join(path.trim_start_matches('/'))
            })
        }),
        None => None,
    };
    if let Some(dir) = target {
        let _ = std::fs::write(dir.join("cgroup.procs"), "0");
    }
}

/// Makes the cgroups of a pod's first container runs, then (with `warm`) a [`warm_up`] move.
pub fn prepare(pod: &str, leaves: &[crate::plan::CgroupLeaf], warm: bool) {
    for l in leaves {
        let _ = Cgroup::create(pod, &l.leaf, l.memory, l.cpu_millis);
    }
    if warm {
        warm_up();
    }
}

/// Makes cgroup moves cheap on this host: mounts an empty named v1 hierarchy (`name=skiff`, no
/// controllers) with the kernel's `favordynmods` option at `dir`. While any hierarchy has it,
/// the kernel keeps its threadgroup lock in the mode that lets a task join a cgroup without
/// waiting for an RCU grace period (10-16 ms each otherwise), at a small cost to fork and exit
/// (Documentation/admin-guide/cgroup-v2.rst, "favordynmods"). Nothing else changes; unmounting
/// it ([`release_dynmods`]) undoes it.
pub fn favor_dynmods(dir: &Path) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir)?;
    if nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC)
    {
        return Ok(());
    }
    mount(
        Some("cgroup"),
        dir,
        Some("cgroup"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("none,name=skiff,favordynmods"),
    )
    .map_err(io::Error::from)
}

/// Undoes [`favor_dynmods`].
pub fn release_dynmods(dir: &Path) {
    while nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    let _ = std::fs::remove_dir(dir);
}

/// CPU quota per 100 ms period for a limit in millicores (as the kubelet computes it).
pub fn cpu_quota(millicores: i64) -> i64 {
    (millicores * 100).max(1000)
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    pub version: Version,
    /// The leaf directory per controller (v1: memory, cpu; v2: one).
    pub dirs: Vec<PathBuf>,
}

fn write(p: &Path, v: &str) -> io::Result<()> {
    std::fs::write(p, v).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

impl Cgroup {
    /// Creates `skiff/<pod>/<leaf>` with the given limits.
    pub fn create(
        pod: &str,
        leaf: &str,
        memory: Option<i64>,
        cpu_millis: Option<i64>,
    ) -> io::Result<Self> {
        let version =
            detect().ok_or_else(|| io::Error::other("no cgroup filesystem at /sys/fs/cgroup"))?;
        let rel = Path::new(PARENT).join(pod).join(leaf);
        match version {
            Version::V2 => {
                // Delegate memory and cpu down to the leaf.
                let mut dir = PathBuf::from(ROOT);
                for part in Path::new(PARENT).join(pod).components() {
                    let _ = write(&dir.join("cgroup.subtree_control"), "+memory +cpu");
                    dir.push(part);
                    std::fs::create_dir_all(&dir)?;
                }
                let _ = write(&dir.join("cgroup.subtree_control"), "+memory +cpu");
                let leaf_dir = Path::new(ROOT).join(&rel);
                std::fs::create_dir_all(&leaf_dir)?;
                if let Some(m) = memory {
                    write(&leaf_dir.join("memory.max"), &m.to_string())?;
                    let _ = write(&leaf_dir.join("memory.swap.max"), "0");
                }
                if let Some(c) = cpu_millis {
                    write(
                        &leaf_dir.join("cpu.max"),
                        &format!("{} 100000", cpu_quota(c)),
                    )?;
                }
                Ok(Self {
                    version,
                    dirs: vec![leaf_dir],
                })
            }
            Version::V1 => {
                let mut dirs = Vec::new();
                let mem = Path::new(ROOT).join("memory").join(&rel);
                std::fs::create_dir_all(&mem)?;
                if let Some(m) = memory {
                    write(&mem.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Count swap too where the kernel accounts it, so the limit is real.
                    let _ = write(&mem.join("memory.memsw.limit_in_bytes"), &m.to_string());
                }
                dirs.push(mem);
                let cpu_root = Path::new(ROOT).join("cpu");
                if cpu_root.is_dir() {
                    let cpu = cpu_root.join(&rel);
                    std::fs::create_dir_all(&cpu)?;
                    if let Some(c) = cpu_millis {
                        write(&cpu.join("cpu.cfs_period_us"), "100000")?;
                        write(&cpu.join("cpu.cfs_quota_us"), &cpu_quota(c).to_string())?;
                    }
                    dirs.push(cpu);
                }
                Ok(Self { version, dirs })
            }
        }
    }

    /// The files the container init writes its PID to.
    pub fn procs_files(&self) -> Vec<String> {
        self.dirs
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect()
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        self.dirs.iter().any(|d| {
            std::fs::read_to_string(d.join(file)).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
        })
    }

    /// Removes the leaf (and the pod's directory once empty).
    pub fn remove(&self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

fn bases(rel: &Path) -> Vec<PathBuf> {
    match detect() {
        Some(Version::V2) => vec![Path::new(ROOT).join(PARENT).join(rel)],
        Some(Version::V1) => ["memory", "cpu"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join(PARENT).join(rel))
            .collect(),
        None => vec![],
    }
}

/// Removes an empty cgroup, retrying while its last processes finish exiting.
fn rmdir_retry(d: &Path) {
    for _ in 0..150 {
        if !d.exists() || std::fs::remove_dir(d).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes whatever is left of a pod's cgroups (`pod` is `<cluster>/<uid>`), once its shim is
/// gone.
pub fn remove_pod(pod: &str) {
    for b in bases(Path::new(pod)) {
        for e in std::fs::read_dir(&b).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                rmdir_retry(&e.path());
            }
        }
        rmdir_retry(&b);
    }
}

/// Removes every empty cgroup this cluster left (node start and shutdown): pods' leaves, pods,
/// the cluster's directory, and the shared `skiff` parent when nothing else is in it. A cgroup
/// that still holds processes cannot be removed, so running pods are never touched.
pub fn sweep(cluster: &str) {
    for b in bases(Path::new(cluster)) {
        for pod in std::fs::read_dir(&b)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
        {
            // Only empty cgroups go: a pod that still has processes keeps its leaf (busy), so
            // retrying waits out processes that are exiting, not running ones.
            for leaf in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
            {
                let busy = std::fs::read_to_string(leaf.path().join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty());
                if !busy {
                    rmdir_retry(&leaf.path());
                }
            }
            let _ = std::fs::remove_dir(pod.path());
        }
        let _ = std::fs::remove_dir(&b);
        if let Some(parent) = b.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A stable identifier of this cluster (its data directory) for its cgroups' parent.
pub fn cluster_id(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("c{:08x}", h as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota() {
        assert_eq!(cpu_quota(500), 50_000);
        assert_eq!(cpu_quota(2000), 200_000);
        assert_eq!(cpu_quota(1), 1000);
    }
}
