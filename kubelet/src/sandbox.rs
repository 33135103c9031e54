//! The pod sandbox: the Linux namespaces a pod's containers share. The network namespace is
//! netd's; the UTS namespace (hostname = pod name) and the IPC namespace are made here and
//! kept alive by bind mounts in the pod's directory (as `ip netns` keeps network namespaces),
//! so no process has to hold them. Only a shared PID namespace (`shareProcessNamespace`) needs
//! a process: its PID 1, the pause process.
//!
//! Containers are started from a short-lived thread that has entered the pod's namespaces and
//! unshared a PID namespace for its children: the process it spawns is the container's PID 1
//! in the pod's namespaces, with no `nsenter`/`unshare` in between.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where the pod's UTS and IPC namespaces are bind-mounted.
pub fn ns_path(pod_dir: &Path, ns: &str) -> PathBuf {
    pod_dir.join("ns").join(ns)
}

/// The namespaces a container joins: the pod's network, UTS and IPC namespaces, and either a
/// new PID namespace or the pod's shared one (the pause process's).
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// `None`: the host's (`hostNetwork`), with its UTS namespace too.
    pub net: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub ipc: PathBuf,
    /// `/proc/<pause>/ns/pid` with shareProcessNamespace; `None` for a PID namespace of its own.
    pub pid: Option<PathBuf>,
}

/// Creates the pod's IPC namespace and, given a hostname, its UTS namespace with that hostname
/// (without one the pod keeps the node's), bind-mounted under `pod_dir/ns/`. Idempotent:
/// namespaces already mounted are kept.
pub fn create(pod_dir: &Path, hostname: Option<&str>) -> Result<()> {
    let dir = pod_dir.join("ns");
    std::fs::create_dir_all(&dir)?;
    // (name, flag) of each namespace the pod gets of its own.
    let wanted: &'static [(&str, CloneFlags)] = if hostname.is_some() {
        &[
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("ipc", CloneFlags::CLONE_NEWIPC),
        ]
    } else {
        &[("ipc", CloneFlags::CLONE_NEWIPC)]
    };
    if wanted
        .iter()
        .all(|(ns, _)| is_mounted(&ns_path(pod_dir, ns)))
    {
        return Ok(());
    }
    release(pod_dir);
    let (pod_dir, hostname) = (pod_dir.to_path_buf(), hostname.map(String::from));
    // Namespaces belong to threads: a fresh thread unshares them and ends, the mounts keep them.
    std::thread::spawn(move || -> Result<()> {
        let flags = wanted
            .iter()
            .fold(CloneFlags::empty(), |all, (_, f)| all | *f);
        unshare(flags).context("creating the pod's UTS and IPC namespaces")?;
        if let Some(h) = &hostname {
            nix::unistd::sethostname(h).context("setting the pod's hostname")?;
        }
        let tid = nix::unistd::gettid();
        for (ns, _) in wanted {
            let target = ns_path(&pod_dir, ns);
            File::create(&target)?;
            mount(
                Some(&PathBuf::from(format!("/proc/self/task/{tid}/ns/{ns}"))),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("keeping the pod's {ns} namespace"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sandbox thread panicked"))?
}

/// Unmounts the pod's namespaces (they go away with their last process).
pub fn release(pod_dir: &Path) {
    for ns in ["uts", "ipc"] {
        let p = ns_path(pod_dir, ns);
        while umount2(&p, MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_file(&p);
    }
}

/// Whether a namespace is pinned at `path` (a file on nsfs: a statfs, where scanning the mount
/// table would cost more with every pod).
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Spawns `cmd` as a process in `ns`: from a thread of its own that enters the namespaces and
/// (without a shared PID namespace) unshares a new one, so the child is its PID 1. The thread
/// ends right after, so no other work ever runs in the pod's namespaces.
pub fn spawn_in(
    ns: &Namespaces,
    mut cmd: tokio::process::Command,
) -> Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::current();
    let ns = ns.clone();
    std::thread::spawn(move || -> Result<tokio::process::Child> {
        let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
        if let Some(net) = &ns.net {
            setns(&open(net)?, CloneFlags::CLONE_NEWNET)
                .context("joining the pod's network namespace")?;
        }
        if let Some(uts) = &ns.uts {
            setns(&open(uts)?, CloneFlags::CLONE_NEWUTS)
                .context("joining the pod's UTS namespace")?;
        }
        setns(&open(&ns.ipc)?, CloneFlags::CLONE_NEWIPC)
            .context("joining the pod's IPC namespace")?;
        match &ns.pid {
            Some(p) => setns(&open(p)?, CloneFlags::CLONE_NEWPID)
                .context("joining the pod's PID namespace")?,
            None => unshare(CloneFlags::CLONE_NEWPID).context("creating a PID namespace")?,
        }
        // The child's pipes and exit belong to the shim's runtime.
        let _guard = handle.enter();
        Ok(cmd.spawn()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the spawning thread panicked"))?
}

/// Puts the kubelet's per-pod state directory (plans, states, PID files, the sandbox's
/// namespace mounts) on a tmpfs of its own, as containerd keeps its shims' state under /run:
/// it is volatile by nature (pods are recreated after a node restart) and is written on every
/// pod's start path, where files on a disk filesystem wait behind journal commits of the API
/// server's synchronous writes. Kept while the kubelet restarts (pods outlive it); already a
/// tmpfs: nothing to do.
pub fn mount_state_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let is_tmpfs = nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !is_tmpfs {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0700"),
        )
        .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    }
    Ok(())
}

/// Removes the state directory's tmpfs (once every pod is gone).
pub fn unmount_state_dir(dir: &Path) {
    while umount2(dir, MntFlags::MNT_DETACH).is_ok() {}
}
