//! Container probes as the kubelet runs them: `exec` (inside the container's namespaces, with
//! its environment), `httpGet` over HTTP or HTTPS (2xx/3xx is success; as the kubelet, HTTPS
//! does not check the server's certificate), `tcpSocket` (a connection is success) and `grpc`
//! (the gRPC health checking protocol over plaintext HTTP/2; SERVING is success), each bounded
//! by `timeoutSeconds`; and the per-probe bookkeeping of thresholds and delays.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a probe needs to know about its container.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub pod_ip: String,
    /// Named container ports.
    pub ports: Vec<(String, i32)>,
    /// Host PID of the container's PID 1 (for exec probes).
    pub pid: Option<u32>,
    pub env: Vec<(String, String)>,
}

fn port(p: &IntOrString, t: &Target) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => t
            .ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| format!("port {name:?} is not a named container port"))?,
    };
    u16::try_from(n).map_err(|_| format!("invalid port {n}"))
}

/// Accepts any server certificate: the kubelet's HTTPS probes do not verify (a probe asks
/// whether the server answers, not who it is). Signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A TLS session over `tcp` for an HTTPS probe of `host`.
async fn tls(tcp: tokio::net::TcpStream, host: &str) -> Result<Box<dyn Stream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("server name {host:?}: {e}"))?;
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(s))
}

/// Runs a lifecycle hook (`postStart`, `preStop`): a command in the container, an HTTP GET
/// (as a probe makes it) or a pause. Ok(()) on success, Err(reason) on failure.
pub async fn run_hook(
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    t: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    let p = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        timeout_seconds: Some(i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX)),
        ..Default::default()
    };
    run(&p, t).await
}

/// Runs a probe once: Ok(()) on success, Err(reason) on failure.
pub async fn run(p: &Probe, t: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(e) = &p.exec {
            let argv = e.command.clone().unwrap_or_default();
            let pid = t.pid.ok_or("the container is not running")?;
            let mut cmd = crate::exec::in_container(pid, &argv, &t.env);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let st = cmd.status().await.map_err(|e| e.to_string())?;
            return if st.success() {
                Ok(())
            } else {
                Err(format!(
                    "command {argv:?} exited with {}",
                    st.code().unwrap_or(-1)
                ))
            };
        }
        if let Some(h) = &p.http_get {
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| t.pod_ip.clone());
            let port = port(&h.port, t)?;
            let https = h.scheme.as_deref() == Some("HTTPS");
            let url_scheme = if https { "https" } else { "http" };
            let failed = |e: String| {
                format!(
                    "Get \"{url_scheme}://{host}:{port}{}\": {e}",
                    h.path.clone().unwrap_or_default()
                )
            };
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| failed(e.to_string()))?;
            let mut s: Box<dyn Stream> = if https {
                tls(tcp, &host).await.map_err(failed)?
            } else {
                Box::new(tcp)
            };
            let path = h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
            for hd in h.http_headers.iter().flatten() {
                req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 64];
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("malformed HTTP response {line:?}"))?;
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            };
        }
        if let Some(tcp) = &p.tcp_socket {
            let host = tcp
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| t.pod_ip.clone());
            let port = port(&tcp.port, t)?;
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
            return Ok(());
        }
        if let Some(g) = &p.grpc {
            let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
            return grpc_health(&t.pod_ip, port, g.service.as_deref().unwrap_or(""), timeout).await;
        }
        Err("the probe has no handler (exec, httpGet, tcpSocket or grpc)".into())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

/// The gRPC health checking protocol's request (`grpc.health.v1.HealthCheckRequest`, field 1
/// `service`) in a gRPC message frame (uncompressed flag, big-endian length).
pub fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// The serving status in a `grpc.health.v1.HealthCheckResponse` frame (field 1, an enum; absent
/// means 0, UNKNOWN), by name.
pub fn grpc_health_status(frame: &[u8]) -> Result<&'static str, String> {
    let msg = frame
        .get(5..)
        .filter(|_| frame.first() == Some(&0))
        .ok_or("malformed health response")?;
    let mut status = 0u64;
    let mut i = 0;
    let varint = |i: &mut usize| -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*i).ok_or("malformed health response")?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("malformed health response".into())
    };
    while i < msg.len() {
        let key = varint(&mut i)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut i)?,
            (_, 0) => {
                varint(&mut i)?;
            }
            (_, 2) => {
                let len = varint(&mut i)? as usize;
                i = i.checked_add(len).ok_or("malformed health response")?;
            }
            _ => return Err("malformed health response".into()),
        }
    }
    Ok(match status {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    })
}

/// A gRPC probe: `grpc.health.v1.Health/Check` over plaintext HTTP/2, as the kubelet does;
/// healthy only when the answer is SERVING. Messages as the kubelet words them.
async fn grpc_health(
    host: &str,
    port: u16,
    service: &str,
    timeout: Duration,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    let target = format!("{host}:{port}");
    let connect_failed = |e: String| {
        format!(
            "timeout: failed to connect service {target:?} within {}s: {e}",
            timeout.as_secs()
        )
    };
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| connect_failed(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| connect_failed(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            grpc_health_request(service),
        )))
        .map_err(|e| e.to_string())?;
    let rpc_failed = |e: String| format!("error: health rpc probe failed: {e}");
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| rpc_failed(e.to_string()))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(rpc_failed(format!("HTTP status {}", resp.status())));
        }
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| rpc_failed(e.to_string()))?;
        // grpc-status comes in the trailers, or in the headers of a trailers-only answer.
        let trailers = body.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match field("grpc-status").as_deref() {
            Some("0") => {}
            Some("12") => {
                return Err(format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    field("grpc-message").unwrap_or_default()
                ))
            }
            Some(code) => {
                return Err(rpc_failed(format!(
                    "rpc error: code = {code} desc = {}",
                    field("grpc-message").unwrap_or_default()
                )))
            }
            None => return Err(rpc_failed("no grpc-status in the answer".into())),
        }
        match grpc_health_status(&body.to_bytes())? {
            "SERVING" => Ok(()),
            other => Err(format!("service unhealthy (responded with {other:?})")),
        }
    }
    .await;
    conn.abort();
    result
}

/// Thresholds and schedule of one probe.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub initial_delay: Duration,
    pub period: Duration,
    pub success_threshold: i32,
    pub failure_threshold: i32,
    successes: i32,
    failures: i32,
}

/// What a result means for the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Enough consecutive successes.
    Passing,
    /// Enough consecutive failures.
    Failing,
    /// Not decided yet.
    Unchanged,
}

impl Tracker {
    pub fn new(p: &Probe) -> Self {
        Self {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            period: Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64),
            success_threshold: p.success_threshold.unwrap_or(1).max(1),
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1),
            successes: 0,
            failures: 0,
        }
    }

    pub fn record(&mut self, ok: bool) -> Verdict {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.success_threshold {
                return Verdict::Passing;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure_threshold {
                return Verdict::Failing;
            }
        }
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grpc_health_messages() {
        // No service: an empty message; a service: field 1, length-delimited.
        assert_eq!(grpc_health_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("db"),
            [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        let long = "s".repeat(200);
        let req = grpc_health_request(&long);
        assert_eq!(&req[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok("SERVING"));
        assert_eq!(
            grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 2]),
            Ok("NOT_SERVING")
        );
        // An empty message is the default status, UNKNOWN; unknown fields are skipped.
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 0]), Ok("UNKNOWN"));
        assert_eq!(
            grpc_health_status(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 1]),
            Ok("SERVING")
        );
        assert!(grpc_health_status(&[0, 0]).is_err());
        assert!(grpc_health_status(&[0, 0, 0, 0, 1, 0x08]).is_err());
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn http_and_tcp_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let code = if n == 0 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                n += 1;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let t = Target {
            pod_ip: "127.0.0.1".into(),
            ports: vec![("http".into(), port as i32)],
            ..Default::default()
        };
        let p = probe(json!({"httpGet": {"path": "/healthz", "port": "http"}}));
        assert_eq!(run(&p, &t).await, Ok(()));
        assert!(run(&p, &t).await.unwrap_err().contains("503"));
        assert_eq!(
            run(&probe(json!({"tcpSocket": {"port": port}})), &t).await,
            Ok(())
        );
        // A closed port fails; an unknown named port fails.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(run(&probe(json!({"tcpSocket": {"port": closed}})), &t)
            .await
            .is_err());
        assert!(run(&probe(json!({"tcpSocket": {"port": "nope"}})), &t)
            .await
            .is_err());
        assert!(
            run(&probe(json!({"exec": {"command": ["true"]}})), &t)
                .await
                .is_err(),
            "no container pid"
        );
    }

    #[test]
    fn thresholds() {
        let mut tr = Tracker::new(&probe(
            json!({"exec": {"command": ["true"]}, "successThreshold": 2, "failureThreshold": 2}),
        ));
        assert_eq!(tr.record(true), Verdict::Unchanged);
        assert_eq!(tr.record(true), Verdict::Passing);
        assert_eq!(tr.record(false), Verdict::Unchanged);
        assert_eq!(tr.record(true), Verdict::Unchanged);
        assert_eq!(tr.record(false), Verdict::Unchanged);
        assert_eq!(tr.record(false), Verdict::Failing);
        let d = Tracker::new(&probe(json!({})));
        assert_eq!(
            (d.period, d.failure_threshold, d.success_threshold),
            (Duration::from_secs(10), 3, 1)
        );
    }
}
