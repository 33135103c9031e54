//! Container init: started by the shim in the pod's network, UTS and IPC namespaces (see
//! [`crate::sandbox`]) as PID 1 of a fresh PID namespace — or in the pod's shared PID namespace
//! with `shareProcessNamespace`, whose PID 1 is the [`pause`] process — it makes a mount
//! namespace of its own.
//! It builds the container's root — a copy-on-write overlay over the host root (or the image
//! directory), fresh /proc, /dev, /sys (read-only) and /tmp, the pod's own /etc/hosts,
//! /etc/resolv.conf and /etc/hostname, the cluster's data directory masked — pivots into it,
//! sets the hostname and user, and execs the container's command.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub hostname: String,
    /// Lower layer: `/` for the host root, or an image directory.
    pub lower: String,
    /// Where the writable layer lives (a directory the init mounts a tmpfs on).
    pub scratch: String,
    pub hosts: String,
    pub resolv_conf: String,
    /// Paths hidden from the container (the cluster's data directory).
    pub masked: Vec<String>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// cgroup.procs files to join before anything else (resource limits).
    #[serde(default)]
    pub cgroup_procs: Vec<String>,
    /// Privileged containers keep every capability; others get the default set.
    #[serde(default)]
    pub privileged: bool,
    /// In the node's UTS namespace (`hostNetwork`): the hostname is the node's, not set here.
    #[serde(default)]
    pub host_uts: bool,
    /// Started ahead of the pod's network: once the root is built, wait on stdin for the final
    /// config (see `merge_final`) before running the command.
    #[serde(default)]
    pub wait_for_go: bool,
}

/// Takes from the final config what may have changed once the pod had its address: the
/// command, environment and user, and /etc/hosts (the root, hostname and mounts stay as
/// built). Also says whether /etc/hosts has to be written again.
fn merge_final(mut cfg: InitConfig, fin: InitConfig) -> (InitConfig, bool) {
    let hosts_changed = fin.hosts != cfg.hosts;
    cfg.hosts = fin.hosts;
    cfg.argv = fin.argv;
    cfg.env = fin.env;
    cfg.working_dir = fin.working_dir;
    cfg.uid = fin.uid;
    cfg.gid = fin.gid;
    cfg.privileged = fin.privileged;
    cfg.wait_for_go = false;
    (cfg, hosts_changed)
}

/// Waits for the shim's go: one line with the final config on stdin, which is then replaced by
/// /dev/null (the container's stdin). End of input without one: the shim gave the start up.
fn wait_for_go(cfg: InitConfig) -> Result<InitConfig> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("waiting for the pod's network")?;
    if line.trim().is_empty() {
        bail!("the container's start was called off");
    }
    let fin: InitConfig = serde_json::from_str(&line).context("the final container config")?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null).context("stdin")?;
    let (cfg, hosts_changed) = merge_final(cfg, fin);
    // After the pivot: this is the container's /etc/hosts (a bind of its own file).
    if hosts_changed {
        std::fs::write("/etc/hosts", &cfg.hosts).context("writing /etc/hosts")?;
    }
    Ok(cfg)
}

/// The capabilities a container gets by default, as containerd grants them.
pub const DEFAULT_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// Limits the process to the default capability set (bounding, inheritable, permitted,
/// effective), so what it execs can never regain more.
fn drop_capabilities() -> Result<()> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::set(None, CapSet::Inheritable, &keep).context("inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("permitted capabilities")?;
    Ok(())
}

fn none() -> Option<&'static str> {
    None
}

fn bind(src: &Path, dst: &Path, ro: bool) -> Result<()> {
    mount(Some(src), dst, none(), MsFlags::MS_BIND, none())
        .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    if ro {
        mount(
            none(),
            dst,
            none(),
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none(),
        )?;
    }
    Ok(())
}

fn ensure_file(p: &Path) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    if !p.exists() {
        std::fs::write(p, b"")?;
    }
    Ok(())
}

fn setup_dev(root: &Path) -> Result<()> {
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(d);
        std::fs::write(&target, b"")?;
        bind(&Path::new("/dev").join(d), &target, false)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir_all(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    std::fs::create_dir_all(&shm)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    Ok(())
}

/// Builds the root filesystem and returns its path.
fn build_root(cfg: &InitConfig) -> Result<PathBuf> {
    let scratch = Path::new(&cfg.scratch);
    std::fs::create_dir_all(scratch)?;
    // The writable layer is a tmpfs: discarded with the container, and valid as an overlay
    // upper layer whatever the host's own filesystem is.
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=755"),
    )?;
    let (upper, work, root) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("root"),
    );
    for d in [&upper, &work, &root] {
        std::fs::create_dir_all(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        cfg.lower,
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| format!("overlay over {}", cfg.lower))?;
    std::fs::create_dir_all(root.join("proc"))?;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none(),
    )?;
    std::fs::create_dir_all(root.join("sys"))?;
    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        none(),
    )?;
    setup_dev(&root)?;
    std::fs::create_dir_all(root.join("tmp"))?;
    mount(
        Some("tmpfs"),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (name, content) in [
        ("hosts", &cfg.hosts),
        ("resolv.conf", &cfg.resolv_conf),
        ("hostname", &format!("{}\n", cfg.hostname)),
    ] {
        let src = scratch.join(name);
        std::fs::write(&src, content)?;
        let dst = root.join("etc").join(name);
        ensure_file(&dst)?;
        bind(&src, &dst, false)?;
    }
    for m in &cfg.masked {
        let p = root.join(m.trim_start_matches('/'));
        if p.is_dir() {
            mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=4k,mode=000"),
            )?;
        }
    }
    Ok(root)
}

fn pivot(root: &Path) -> Result<()> {
    std::env::set_current_dir(root)?;
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// The first line an init writes to stdout right before it execs the container's command;
/// the shim consumes it (it never reaches the log).
pub const STARTED_MARKER: &str = "\u{1}skiff:started";

/// Runs the init; returns only on failure (success execs the command).
/// The pod sandbox's holder (a pause process): sets the pod's hostname in the pod's UTS
/// namespace, says `ready`, then only reaps orphans — it is PID 1 of the pod's PID namespace
/// when the containers share one (`shareProcessNamespace`).
pub fn pause(hostname: &str) -> ! {
    use std::io::Write;
    // Empty: the pod is in the node's UTS namespace, whose hostname is not ours to set.
    if !hostname.is_empty() {
        if let Err(e) = nix::unistd::sethostname(hostname) {
            eprintln!("skiff pause: setting the hostname: {e}");
        }
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    loop {
        if let Err(nix::errno::Errno::ECHILD) = nix::sys::wait::waitpid(None, None) {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// The `init` command: reads the config and execs the container's command; returns only when
/// that failed (exit code 127, as a shell reports a command that cannot run).
pub fn main(config: &Path) -> std::process::ExitCode {
    let res = std::fs::read(config)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice(&b)?))
        .and_then(|cfg| run(&cfg));
    if let Err(e) = res {
        eprintln!("skiff init: {e:#}");
    }
    std::process::ExitCode::from(127)
}

pub fn run(cfg: &InitConfig) -> Result<()> {
    for f in &cfg.cgroup_procs {
        std::fs::write(f, "0").with_context(|| format!("joining {f}"))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("creating the container's mount namespace")?;
    // Nothing we mount may leak back to the host.
    mount(
        none(),
        "/",
        none(),
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none(),
    )?;
    let root = build_root(cfg)?;
    if !cfg.host_uts {
        nix::unistd::sethostname(&cfg.hostname)?;
    }
    pivot(&root)?;
    // An early start learns its command now.
    let fin;
    let cfg = if cfg.wait_for_go {
        fin = wait_for_go(cfg.clone())?;
        &fin
    } else {
        cfg
    };
    if cfg.argv.is_empty() {
        bail!(
            "the container has no command (skiff runs `command`/`args`; images have no entrypoint)"
        );
    }
    let wd = if cfg.working_dir.is_empty() {
        "/".to_string()
    } else {
        cfg.working_dir.clone()
    };
    std::fs::create_dir_all(&wd).ok();
    std::env::set_current_dir(&wd).with_context(|| format!("workingDir {wd}"))?;
    let mut cmd = std::process::Command::new(&cfg.argv[0]);
    cmd.args(&cfg.argv[1..]).env_clear();
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    cmd.env("HOSTNAME", &cfg.hostname);
    cmd.env(
        "HOME",
        if cfg.uid.unwrap_or(0) == 0 {
            "/root"
        } else {
            "/"
        },
    );
    for (k, v) in &cfg.env {
        cmd.env(k, v);
    }
    if let Some(g) = cfg.gid {
        nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(g)])?;
        cmd.gid(g);
    }
    if let Some(u) = cfg.uid {
        if cfg.gid.is_none() {
            nix::unistd::setgroups(&[])?;
        }
        cmd.uid(u);
    }
    if !cfg.privileged {
        drop_capabilities()?;
    }
    // Tell the shim that setup is done and the command is about to run (as runc's exec
    // fifo does): it reports the container running from here, not before.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        out.write_all(STARTED_MARKER.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    let err = cmd.exec();
    // exec only returns on failure; 127/126 as shells report "not found"/"not executable".
    let _ = CString::new("");
    bail!("exec {:?}: {err}", cfg.argv[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hosts: &str, argv: &[&str]) -> InitConfig {
        InitConfig {
            hostname: "p".into(),
            lower: "/".into(),
            scratch: "/s".into(),
            hosts: hosts.into(),
            resolv_conf: "nameserver 10.96.0.10\n".into(),
            masked: vec!["/data".into()],
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            working_dir: String::new(),
            uid: None,
            gid: None,
            cgroup_procs: vec![],
            privileged: false,
            host_uts: false,
            wait_for_go: true,
        }
    }

    #[test]
    fn final_config_brings_address_dependent_parts_only() {
        let early = cfg("127.0.0.1 localhost\n", &["sleep", "1"]);
        let mut fin = cfg(
            "127.0.0.1 localhost\n10.244.0.5 p\n",
            &["sh", "-c", "echo $IP"],
        );
        fin.env = vec![("IP".into(), "10.244.0.5".into())];
        fin.uid = Some(1000);
        fin.lower = "/elsewhere".into();
        let (got, hosts_changed) = merge_final(early, fin);
        assert!(hosts_changed);
        assert_eq!(got.argv, ["sh", "-c", "echo $IP"]);
        assert_eq!(got.env, [("IP".to_string(), "10.244.0.5".to_string())]);
        assert_eq!(got.uid, Some(1000));
        assert!(got.hosts.contains("10.244.0.5 p"));
        // The root was built from the early config and stays.
        assert_eq!(got.lower, "/");
        assert!(!got.wait_for_go);
        let (_, again) = merge_final(got.clone(), got);
        assert!(!again);
    }
}
