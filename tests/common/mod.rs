//! End-to-end test harness: a real `skiff up` inside a throwaway network namespace (a test
//! "host" with only loopback) with its own data directory. Everything it made is removed at
//! the end, by PID and by deleting the namespace, and checked for leaks.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_core::client::ApiClient;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The daemons `skiff up` runs.
pub const DAEMONS: &[&str] = &["apiserver", "netd", "kubelet"];

/// Whether end-to-end tests can run here; prints a loud SKIP line when they cannot.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: end-to-end tests need root (network namespaces)");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED {test}: iproute2 (`ip`) is not installed");
        return false;
    }
    true
}

pub fn have_kubectl(test: &str) -> bool {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    eprintln!("SKIPPED {test}: kubectl is not installed");
    false
}

pub fn bin(name: &str) -> PathBuf {
    let skiff = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
    if name == "skiff" {
        return skiff;
    }
    let p = skiff.parent().map(|d| d.join(name)).unwrap_or_default();
    assert!(
        p.exists(),
        "{} is missing: build the whole workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

fn pid_alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

pub struct Cluster {
    pub netns: String,
    pub dir: PathBuf,
    pub data: PathBuf,
    up: Option<Child>,
    stopped: bool,
}

impl Cluster {
    /// Starts a cluster and waits until it reports ready.
    pub fn start(tag: &str) -> Cluster {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let netns = format!(
            "skiff-t{}-{}-{n}",
            std::process::id(),
            &tag[..tag.len().min(8)]
        );
        let dir = std::env::temp_dir().join(format!("skiff-e2e-{netns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let data = dir.join("data");
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        let mut c = Cluster {
            netns: netns.clone(),
            dir: dir.clone(),
            data: data.clone(),
            up: None,
            stopped: false,
        };
        run_ok(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        c.spawn_up();
        c
    }

    fn spawn_up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("up.log"))
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(bin("skiff"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("up")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn skiff up");
        self.up = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    /// `skiff down`, then `skiff up` again on the same data (as a host reboot would).
    pub fn restart(&mut self) {
        let out = self.skiff(&["down"]);
        assert!(
            out.status.success(),
            "skiff down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut up) = self.up.take() {
            let _ = up.wait();
        }
        let _ = std::fs::write(self.dir.join("up.log"), "");
        self.spawn_up();
    }

    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    /// Waits for the `ready` line and a healthy API.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.up_log().contains("ready") && self.api_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not become ready:\n{}\napiserver log:\n{}",
                self.up_log(),
                self.daemon_log("apiserver")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub fn api_ok(&self) -> bool {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(self.data.join("apiserver.sock"))
            .arg("http://localhost/readyz")
            .output();
        out.is_ok_and(|o| o.stdout == b"200")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    pub fn socket(&self) -> PathBuf {
        self.data.join("apiserver.sock")
    }

    pub fn client(&self) -> ApiClient {
        ApiClient::unix(self.socket())
    }

    /// Runs a command inside the cluster's network namespace.
    pub fn netns_cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    /// The machine's kubectl, unmodified, with the cluster's admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut c = self.netns_cmd("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"))
            .args(args);
        run_with_input(c, input)
    }

    /// The skiff CLI over the Unix socket.
    pub fn skiff(&self, args: &[&str]) -> Output {
        self.skiff_stdin(args, None)
    }

    pub fn skiff_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut c = Command::new(bin("skiff"));
        c.arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("KUBECONFIG");
        run_with_input(c, input)
    }

    /// curl over the Unix socket: (HTTP status, body).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, serde_json::Value) {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--unix-socket",
        ])
        .arg(self.socket())
        .arg(format!("http://localhost{path}"));
        if let Some(b) = body {
            c.args(["--data-binary", b]);
        }
        let out = c.output().expect("curl");
        parse_curl(&out.stdout)
    }

    /// The PID of `skiff up` (whose mount namespace holds the pod namespace mounts).
    pub fn up_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("run/up.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A pod's kubelet state directory, as the cluster sees it: the kubelet keeps it on a tmpfs
    /// mounted in the cluster's mount namespace, so it is read through `skiff up`'s root.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        let data = self.data.join("kubelet/pods").join(uid);
        match self.up_pid() {
            Some(up) => PathBuf::from(format!("/proc/{up}/root"))
                .join(data.strip_prefix("/").unwrap_or(&data)),
            None => data,
        }
    }

    /// A command run inside a pod's network namespace (as a container of it would be).
    pub fn in_pod_netns(&self, pod_uid: &str, program: &str) -> Command {
        let up = self.up_pid().expect("skiff up pid");
        let mut c = Command::new("nsenter");
        c.args(["-t", &up.to_string(), "-m", "--", "nsenter"])
            .arg(format!(
                "--net={}",
                self.data.join("run/netns").join(pod_uid).display()
            ))
            .args(["--", program]);
        c
    }

    pub fn pid_of(&self, daemon: &str) -> Option<i32> {
        std::fs::read_to_string(self.data.join("run").join(format!("{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `f` on a thread inside the cluster's network namespace (for in-process clients
    /// such as kube-rs, which connect to 127.0.0.1 of the test host).
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// Stops the cluster and removes everything it made, then checks nothing was left.
    pub fn stop(mut self) {
        self.teardown();
        let leaks = self.leaks();
        assert!(leaks.is_empty(), "leaked after teardown: {leaks:?}");
    }

    fn teardown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let daemons: Vec<i32> = DAEMONS.iter().filter_map(|d| self.pid_of(d)).collect();
        if let Some(mut up) = self.up.take() {
            let pid = up.id() as i32;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = up.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = up.kill();
                    let _ = up.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for pid in daemons {
            if pid_alive(pid) && proc_is_ours(pid, &self.data) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        // Pod supervisors left by a failed run: kill each with its whole process group (the pod).
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                if proc_is_ours(pid, &self.data) {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// What this cluster left behind: its namespace, or processes still using its data dir.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        if Path::new(&format!("/run/netns/{}", self.netns)).exists() {
            out.push(format!("netns {}", self.netns));
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                if proc_is_ours(pid, &self.data) {
                    out.push(format!("process {pid}"));
                }
            }
        }
        out
    }

    /// The HTTP status curl gets for `url` from the cluster's host (its network namespace), or
    /// curl's `000` when nothing answers within `secs`.
    pub fn http_code(&self, url: &str, secs: u32) -> String {
        let out = self
            .netns_cmd("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
            .arg(secs.to_string())
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deletes a pod in `default` and waits (at most `secs`) until it is gone.
    pub fn delete_pod(&self, name: &str, secs: u64) {
        let path = format!("/api/v1/namespaces/default/pods/{name}");
        assert_eq!(self.curl("DELETE", &path, None, "application/json").0, 200);
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.curl("GET", &path, None, "application/json").0 != 404 {
            assert!(Instant::now() < deadline, "{name} was not deleted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many pod supervisors (shims) of this cluster are running.
    pub fn shim_count(&self) -> usize {
        let needle = format!("shim --dir {}", self.data.display());
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
            })
            .count()
    }

    /// Kills the apiserver with SIGKILL and waits for the supervisor to bring it back.
    pub fn kill9(&self, daemon: &str) -> i32 {
        let pid = self.pid_of(daemon).expect("daemon pid");
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = if daemon == "apiserver" {
                self.api_ok()
            } else {
                self.data
                    .join("run")
                    .join(format!("{daemon}.ready"))
                    .exists()
            };
            if self.pid_of(daemon).is_some_and(|p| p != pid) && ready {
                return pid;
            }
            assert!(Instant::now() < deadline, "{daemon} was not restarted");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid`'s command line names this cluster's data directory.
fn proc_is_ours(pid: i32, data: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    cmd.contains(&*data.to_string_lossy())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            self.teardown();
        }
    }
}

fn run_ok(c: &mut Command) {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_with_input(mut c: Command, input: Option<&str>) -> Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(i) = input {
            let _ = stdin.write_all(i.as_bytes());
        }
    }
    child.wait_with_output().expect("wait")
}

pub fn parse_curl(stdout: &[u8]) -> (u16, serde_json::Value) {
    let s = String::from_utf8_lossy(stdout);
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a command succeeded, showing its output when it did not.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}
