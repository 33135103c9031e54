//! `exec` into a running container over WebSocket, as kubectl speaks it: the
//! `v5.channel.k8s.io` (or v4) sub-protocol, where each binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close a stream). The command
//! runs inside the container's namespaces and root with the container's environment; its exit
//! code comes back as a `Status` on channel 3.

use std::path::Path;

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
    .args(argv)
    .env_clear();
    cmd.env("PATH", DEFAULT_PATH);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
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

/// Runs one exec session on an upgraded connection.
pub async fn session<S>(
    io: S,
    pid_env: Result<(u32, Vec<(String, String)>), String>,
    argv: Vec<String>,
    want_stdin: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    let status = match pid_env {
        Err(e) => failure(&e),
        Ok(_) if argv.is_empty() => {
            failure("you must specify at least one command for the container")
        }
        Ok((pid, env)) => {
            let mut cmd = crate::exec::in_container(pid, &argv, &env);
            cmd.stdin(if want_stdin {
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
                    let code = match child.wait().await {
                        Ok(s) => {
                            use std::os::unix::process::ExitStatusExt;
                            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
                        }
                        Err(_) => 1,
                    };
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
    }
}
