//! The kubelet's API, on a root-only Unix socket the API server proxies to (as the Kubernetes
//! API server proxies to the kubelet's port): `GET /containerLogs/{ns}/{pod}/{container}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::logs::{self, Options};
use crate::shim;

type Body = BoxBody<Bytes, Infallible>;

pub struct Server {
    pub logs_root: PathBuf,
    pub pods_dir: PathBuf,
}

fn text(code: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(s)).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Decodes a query component (`+` is a space, `%XX` a byte).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All query pairs, decoded, in order (repeated keys such as `command` kept).
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

fn running(pods_dir: &Path, uid: &str, container: &str) -> bool {
    shim::read_state(&pods_dir.join(uid)).is_some_and(|st| {
        st.containers
            .iter()
            .chain(st.init_containers.iter())
            .any(|c| c.name == container && c.state == "running")
    })
}

impl Server {
    async fn container_logs(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        q: &HashMap<String, String>,
    ) -> Response<Body> {
        let uid = q.get("uid").map(String::as_str);
        let Some(dir) = logs::container_dir(&self.logs_root, ns, pod, uid, container) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod:?} is waiting to start: no logs yet"),
            );
        };
        let previous = q.get("previous").is_some_and(|v| v == "true");
        let is_running = running(&self.pods_dir, uid.unwrap_or(""), container);
        if previous && is_running && logs::log_file(&dir, true, true).is_none() {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod:?} not found"),
            );
        }
        let Some(file) = logs::log_file(&dir, previous, is_running) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod:?} not found"),
            );
        };
        let opts = Options {
            tail_lines: q.get("tailLines").and_then(|v| v.parse().ok()),
            since_seconds: q.get("sinceSeconds").and_then(|v| v.parse().ok()),
            timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
            limit_bytes: q.get("limitBytes").and_then(|v| v.parse().ok()),
        };
        let now = jiff::Timestamp::now().as_second();
        let Ok(content) = tokio::fs::read_to_string(&file).await else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}", file.display()),
            );
        };
        let first = logs::render(&content, &opts, now);
        let follow = q.get("follow").is_some_and(|v| v == "true") && !previous;
        if !follow {
            return text(StatusCode::OK, first);
        }
        // Follow: send what is there, then whatever is appended while the container runs.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let (uid, container, pods_dir) = (
            uid.map(String::from).unwrap_or_default(),
            container.to_string(),
            self.pods_dir.clone(),
        );
        let mut offset = content.len() as u64;
        let render_opts = Options {
            timestamps: opts.timestamps,
            ..Default::default()
        };
        tokio::spawn(async move {
            if tx.send(Bytes::from(first)).await.is_err() {
                return;
            }
            let mut partial = String::new();
            let mut idle_after_stop = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tx.closed() => return,
                }
                let mut buf = String::new();
                if let Ok(mut f) = tokio::fs::File::open(&file).await {
                    if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                        let _ = f.read_to_string(&mut buf).await;
                    }
                }
                offset += buf.len() as u64;
                partial.push_str(&buf);
                if let Some(pos) = partial.rfind('\n') {
                    let complete: String = partial.drain(..=pos).collect();
                    let out = logs::render(&complete, &render_opts, 0);
                    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                        return;
                    }
                }
                if buf.is_empty() && !running(&pods_dir, &uid, &container) {
                    idle_after_stop += 1;
                    if idle_after_stop > 2 {
                        return;
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(StreamBody::new(stream).boxed());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        r
    }

    fn exec(&self, mut req: Request<Incoming>, container: &str) -> Response<Body> {
        let h = req.headers();
        let key = h
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let offer = h
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(key) = key else {
            return text(
                StatusCode::BAD_REQUEST,
                "exec needs a WebSocket upgrade (v5.channel.k8s.io)".into(),
            );
        };
        let Some(proto) = crate::exec::choose_protocol(&offer) else {
            return text(StatusCode::BAD_REQUEST, format!("unsupported WebSocket sub-protocols {offer:?}; supported: v5.channel.k8s.io, v4.channel.k8s.io"));
        };
        let pairs = query_pairs(req.uri().query().unwrap_or(""));
        let argv: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        let flag = |name: &str| {
            pairs
                .iter()
                .any(|(k, v)| k == name && (v == "true" || v == "1"))
        };
        let (stdin, tty) = (flag("stdin"), flag("tty"));
        let uid = pairs
            .iter()
            .find(|(k, _)| k == "uid")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let target = crate::exec::target(&self.pods_dir.join(&uid), container);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let req = crate::exec::Request { argv, stdin, tty };
                crate::exec::session(TokioIo::new(up), target, req).await;
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let hs = r.headers_mut();
        hs.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        hs.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
            hs.insert("sec-websocket-accept", v);
        }
        hs.insert(
            "sec-websocket-protocol",
            hyper::header::HeaderValue::from_static(proto),
        );
        r
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let q = query(&req);
        if let ["exec", _ns, _pod, container] = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .as_slice()
        {
            let container = container.to_string();
            return Ok(self.exec(req, &container));
        }
        let segs: Vec<String> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let resp = match segs
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["containerLogs", ns, pod, container] => {
                self.container_logs(ns, pod, container, &q).await
            }
            ["healthz"] => text(StatusCode::OK, "ok".into()),
            _ => text(StatusCode::NOT_FOUND, "not found".into()),
        };
        Ok(resp)
    }
}

/// Serves the kubelet API on `sock` (mode 0600) until the task is dropped.
pub async fn serve(sock: PathBuf, server: Server) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    let server = Arc::new(server);
    loop {
        let (stream, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| server.clone().handle(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q =
            query_pairs("command=sh&command=-c&command=echo+hi%3B+exit%203&stdin=true&container=c");
        let argv: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(argv, vec!["sh", "-c", "echo hi; exit 3"]);
        assert_eq!(decode("a%2"), "a%2");
        assert_eq!(decode("100%25"), "100%");
    }
}
