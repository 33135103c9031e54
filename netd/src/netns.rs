//! Persistent network namespaces: a fresh namespace bind-mounted on a file under the data
//! directory (as `ip netns add` does under /run/netns), so it outlives any process in it.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Whether `path` is a mount point (a live bind-mounted namespace).
pub fn is_mounted(path: &Path) -> bool {
    // A pinned namespace is a file on nsfs (a statfs, where scanning the mount table would
    // cost more with every pod).
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates a new network namespace and pins it at `path`; true if it was made now (false:
/// it was there).
pub fn create(path: &Path) -> io::Result<bool> {
    if is_mounted(path) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::create(path)?;
    let target = path.to_path_buf();
    // unshare(CLONE_NEWNET) changes only the calling thread: do it on a throwaway thread.
    let res = std::thread::spawn(move || -> nix::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        let src = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(src.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    res.map_err(io::Error::from)?;
    Ok(true)
}

/// Unpins and removes a namespace created by [`create`]; absent is fine.
pub fn delete(path: &Path) -> io::Result<()> {
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Namespace files in `dir` (by file name).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Runs `f` on a thread that has entered the namespace at `path`.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(path)?;
    std::thread::spawn(move || -> io::Result<T> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}
