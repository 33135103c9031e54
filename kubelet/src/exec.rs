//! `exec` into a running container over WebSocket, as kubectl speaks it: the
//! `v5.channel.k8s.io` (or v4) sub-protocol, where each binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close a stream). The command
//! runs inside the container's namespaces and root with the container's environment; its exit
//! code comes back as a `Status` on channel 3. With `tty=true` the command gets a terminal from
//! the container's own devpts (as runc allocates it), as its controlling terminal; channel 4
//! carries the client's window size.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::plan::PodPlan;
use crate::shim;

/// The PATH commands run with inside containers.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command run inside a running container (its namespaces, root and working directory) with
/// the container's environment, as CRI's exec does. Used by exec, exec probes and preStop.
pub fn in_container(
    pid: u32,
    argv: &[String],
    env: &[(String, String)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.args([
        "-t",
        &pid.to_string(),
        "-m",
        "-u",
        "-i",
        "-n",
        "-p",
        "-r",
        "-w",
        "--",
    ])
    .args(argv);
    container_env(&mut cmd, env);
    cmd
}

/// The environment commands run with inside a container: its own, and the default PATH.
fn container_env(cmd: &mut tokio::process::Command, env: &[(String, String)]) {
    cmd.env_clear().env("PATH", DEFAULT_PATH);
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// A process's exit code as a shell reports it (128 + the signal that ended it).
pub fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Picks the sub-protocol from the client's offer (`Sec-WebSocket-Protocol`).
pub fn choose_protocol(offer: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p))
}

/// The status sent on channel 3 when the command ends.
pub fn exit_status(code: i32, argv: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn failure(msg: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": msg, "reason": "InternalError"})
}

/// What to run: the container's host PID and environment.
pub fn target(pod_dir: &Path, container: &str) -> Result<(u32, Vec<(String, String)>), String> {
    let st = shim::read_state(pod_dir).ok_or("the pod is not running on this node")?;
    let cs = st
        .containers
        .iter()
        .chain(st.init_containers.iter())
        .find(|c| c.name == container)
        .ok_or_else(|| format!("container {container} not found"))?;
    if cs.state != "running" {
        return Err(format!("container {container} is not running"));
    }
    if cs.pid == 0 {
        return Err(format!("container {container} has no process"));
    }
    let pid = cs.pid;
    let plan: PodPlan = serde_json::from_slice(
        &std::fs::read(shim::plan_path(pod_dir)).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let env = plan
        .containers
        .iter()
        .chain(plan.init_containers.iter())
        .find(|c| c.name == container)
        .map(|c| c.env.clone())
        .unwrap_or_default();
    Ok((pid, env))
}

/// One exec request: what to run and which streams the client asked for.
pub struct Request {
    pub argv: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

/// The window size a resize message (channel 4) carries: `{"Width":80,"Height":24}`.
pub fn parse_resize(b: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(b).ok()?;
    let w = u16::try_from(v["Width"].as_u64()?).ok()?;
    let h = u16::try_from(v["Height"].as_u64()?).ok()?;
    Some((w, h))
}

/// A pseudo-terminal pair from the container's own devpts (so the command sees a terminal
/// named inside the container), or from the host's when the container has none.
fn container_pty(pid: u32) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let master = rustix::fs::open(
        format!("/proc/{pid}/root/dev/pts/ptmx").as_str(),
        flags,
        Mode::empty(),
    )
    .or_else(|_| {
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .and_then(|m| {
                rustix::fs::fcntl_setfl(&m, OFlags::NONBLOCK)?;
                Ok(m)
            })
    })?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    Ok((master, slave))
}

/// Writes all of `b` to the non-blocking terminal master (input is small: a busy terminal is
/// retried shortly).
async fn write_pty(fd: &std::os::fd::OwnedFd, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        match rustix::io::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(rustix::io::Errno::AGAIN) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the terminal master on a thread of its own until the command's side is closed (or
/// `stop` is set), sending what it reads.
fn read_pty(
    fd: std::os::fd::OwnedFd,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    stop: Arc<AtomicBool>,
) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut buf = vec![0u8; 32 * 1024];
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        if poll(&mut fds, Some(&tick)).is_err() {
            return;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if out.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            // EIO: every copy of the command's side is closed.
            Err(_) => return,
        }
    }
}

/// Runs one exec session on an upgraded connection.
pub async fn session<S>(io: S, pid_env: Result<(u32, Vec<(String, String)>), String>, req: Request)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    let argv = req.argv.clone();
    let status = match pid_env {
        Err(e) => failure(&e),
        Ok(_) if argv.is_empty() => {
            failure("you must specify at least one command for the container")
        }
        Ok((pid, env)) if req.tty => match tty_session(pid, &env, &req, &mut tx, &mut rx).await {
            Ok(code) => exit_status(code, &argv),
            Err(e) => failure(&format!("starting the command: {e}")),
        },
        Ok((pid, env)) => {
            let mut cmd = crate::exec::in_container(pid, &argv, &env);
            cmd.stdin(if req.stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            });
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            match cmd.spawn() {
                Err(e) => failure(&format!("starting the command: {e}")),
                Ok(mut child) => {
                    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
                    for (chan, pipe) in [
                        (
                            1u8,
                            child.stdout.take().map(|p| {
                                Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>
                            }),
                        ),
                        (
                            2u8,
                            child.stderr.take().map(|p| {
                                Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>
                            }),
                        ),
                    ] {
                        if let Some(mut p) = pipe {
                            let out_tx = out_tx.clone();
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 32 * 1024];
                                loop {
                                    match p.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => {
                                            let mut m = Vec::with_capacity(n + 1);
                                            m.push(chan);
                                            m.extend_from_slice(&buf[..n]);
                                            if out_tx.send(m).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            });
                        }
                    }
                    drop(out_tx);
                    let mut stdin = child.stdin.take();
                    let mut client_open = true;
                    // Until both output pipes are drained: forward output, feed stdin.
                    loop {
                        tokio::select! {
                            m = out_rx.recv() => match m {
                                Some(m) => if tx.send(Message::Binary(m.into())).await.is_err() { break },
                                None => break,
                            },
                            msg = rx.next(), if client_open => match msg {
                                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                                    0 => if let Some(s) = stdin.as_mut() { if s.write_all(&b[1..]).await.is_err() { stdin = None; } },
                                    255 if b.get(1) == Some(&0) => { stdin = None; }
                                    _ => {}
                                },
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { client_open = false; stdin = None; }
                                _ => {}
                            },
                        }
                    }
                    drop(stdin);
                    let code = child.wait().await.map_or(1, exit_code);
                    exit_status(code, &argv)
                }
            }
        }
    };
    let mut m = vec![3u8];
    m.extend_from_slice(status.to_string().as_bytes());
    let _ = tx.send(Message::Binary(m.into())).await;
    // A normal close (1000): clients read it as the end of every stream.
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
}

type WsTx<S> = futures::stream::SplitSink<WebSocketStream<S>, Message>;
type WsRx<S> = futures::stream::SplitStream<WebSocketStream<S>>;

/// The command on a terminal: its output (one stream) goes to channel 1, stdin and window
/// sizes come from the client; ends when the command has exited and the terminal is drained.
async fn tty_session<S>(
    pid: u32,
    env: &[(String, String)],
    req: &Request,
    tx: &mut WsTx<S>,
    rx: &mut WsRx<S>,
) -> std::io::Result<i32>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::process::Stdio;
    let (master, slave) = container_pty(pid)?;
    // The command leads a session of its own inside the container's PID namespace with the
    // terminal as its controlling terminal (job control, Ctrl-C), as under a container
    // runtime: nsenter joins the PID namespace (forking), the host's `setsid --ctty` makes the
    // session there, and a second nsenter enters the rest of the container and execs.
    let pid_s = pid.to_string();
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.args([
        "-t", &pid_s, "-p", "--", "setsid", "--ctty", "nsenter", "-t", &pid_s,
    ])
    .args(["-m", "-u", "-i", "-n", "-r", "-w", "--"])
    .args(&req.argv);
    container_env(&mut cmd, env);
    // As a container runtime sets it for a terminal.
    cmd.env("TERM", "xterm");
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // The command's copies of the terminal are the only ones left: reads end when it exits.
    drop(cmd);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (fd, stop) = (master.try_clone()?, stop.clone());
        std::thread::spawn(move || read_pty(fd, out_tx, stop))
    };
    loop {
        tokio::select! {
            m = out_rx.recv() => match m {
                Some(data) => {
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push(1u8);
                    m.extend_from_slice(&data);
                    if tx.send(Message::Binary(m.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 if req.stdin => { let _ = write_pty(&master, &b[1..]).await; }
                    4 => if let Some((w, h)) = parse_resize(&b[1..]) {
                        let size = rustix::termios::Winsize { ws_row: h, ws_col: w, ws_xpixel: 0, ws_ypixel: 0 };
                        let _ = rustix::termios::tcsetwinsize(&master, size);
                    },
                    // End of input on a terminal is its EOF character.
                    255 if b.get(1) == Some(&0) => { let _ = write_pty(&master, &[4]).await; }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client is gone: the terminal hangs up (below), the command ends.
                    if let Some(p) = child.id() {
                        let _ = kill(Pid::from_raw(-(p as i32)), Signal::SIGHUP);
                    }
                    break;
                }
                _ => {}
            },
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(master);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    // A command that ignores the hangup is not waited for forever.
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    Ok(status.map_or(1, exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_and_status() {
        assert_eq!(
            choose_protocol("v5.channel.k8s.io, v4.channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            choose_protocol("v4.channel.k8s.io,channel.k8s.io"),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(choose_protocol("base64.channel.k8s.io"), None);
        let s = exit_status(3, &["sh".into()]);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(0, &[])["status"], "Success");
        assert_eq!(
            parse_resize(br#"{"Width":120,"Height":40}"#),
            Some((120, 40))
        );
        assert_eq!(parse_resize(b"{}"), None);
    }
}
