//! A throwaway cluster for the end-to-end benchmarks: a release `skiff up` in a network
//! namespace of its own, stopped and cleaned up however the benchmark ends (drop).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub exe: PathBuf,
    pub ns: String,
    pub dir: PathBuf,
    pub data: PathBuf,
    up: Child,
    /// From `skiff up` to its `ready` line.
    pub startup: Duration,
}

impl Cluster {
    /// Starts `skiff up` (with `args`) in a new network namespace named `<prefix>-<pid>`.
    pub fn start(prefix: &str, args: &[&str]) -> Cluster {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
        for b in [
            "skiff-apiserver",
            "skiff-kubelet",
            "skiff-netd",
            "skiff-pod",
        ] {
            assert!(
                exe.with_file_name(b).exists(),
                "{b} is not built: run `cargo build --release --workspace` first"
            );
        }
        let ns = format!("{prefix}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        Command::new("ip")
            .args(["-n", &ns, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        let log = std::fs::File::create(dir.join("up.log")).unwrap();
        let up = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .arg("--data-dir")
            .arg(&data)
            .arg("up")
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Cluster {
            exe,
            ns,
            dir,
            data,
            up,
            startup: Duration::ZERO,
        };
        let t0 = Instant::now();
        while !std::fs::read_to_string(c.dir.join("up.log"))
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "cluster did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c.startup = t0.elapsed();
        c
    }
}

impl Drop for Cluster {
    /// Stops the cluster (the kubelet stops every pod) and removes its namespace and files.
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.up.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = Instant::now();
        while self.up.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
        if std::env::var("SKIFF_BENCH_TRACE").is_ok() {
            // The daemons' logs outlive the run, for a look at where time went.
            let keep = std::env::temp_dir().join("skiff-bench-logs");
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::rename(self.data.join("logs"), &keep);
            eprintln!("daemon logs kept in {}", keep.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
