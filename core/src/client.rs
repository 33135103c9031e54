//! A minimal HTTP/1.1 client for the skiff API: plain HTTP over the root-only Unix socket, or
//! HTTPS with a bearer token as an admin kubeconfig describes. Used by the CLI and by daemons
//! that need raw access (the typed controllers use kube-rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to the API server at {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("kubeconfig {path}: {msg}")]
    Kubeconfig { path: PathBuf, msg: String },
}

/// A bidirectional byte stream (Unix socket or TLS).
pub trait RawIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawIo for T {}

#[derive(Clone)]
enum Transport {
    Unix(PathBuf),
    Https {
        host: String,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        token: Option<String>,
    },
}

/// A client for one API server.
#[derive(Clone)]
pub struct ApiClient {
    transport: Transport,
    /// The default namespace (from the kubeconfig context, else `default`).
    pub namespace: String,
}

/// A response whose body has been read in full.
pub struct FullResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

impl FullResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<Named<KCluster>>,
    #[serde(default)]
    users: Vec<Named<KUser>>,
    #[serde(default)]
    contexts: Vec<Named<KContext>>,
}
#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}
#[derive(Deserialize)]
struct KCluster {
    server: String,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: String,
    #[serde(rename = "certificate-authority", default)]
    ca_file: String,
}
#[derive(Deserialize, Default)]
struct KUser {
    #[serde(default)]
    token: String,
}
#[derive(Deserialize)]
struct KContext {
    cluster: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    namespace: String,
}

fn tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = ca_pem;
    for cert in rustls_pemfile::certs(&mut rd) {
        let cert = cert.map_err(|e| ClientError::Tls(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl ApiClient {
    /// Plain HTTP over the API server's Unix socket.
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self {
            transport: Transport::Unix(path.as_ref().to_path_buf()),
            namespace: "default".into(),
        }
    }

    /// HTTPS as the kubeconfig's current context says (token auth, embedded or file CA).
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ClientError> {
        let err = |msg: String| ClientError::Kubeconfig {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let kc: Kubeconfig = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == kc.current_context)
            .or(kc.contexts.first())
            .ok_or_else(|| err("no context".into()))?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.value.cluster)
            .ok_or_else(|| err(format!("no cluster {:?}", ctx.value.cluster)))?;
        let user = kc.users.iter().find(|u| u.name == ctx.value.user);
        let ca = if !cluster.value.ca_data.is_empty() {
            base64::engine::general_purpose::STANDARD
                .decode(cluster.value.ca_data.trim())
                .map_err(|e| err(format!("bad certificate-authority-data: {e}")))?
        } else if !cluster.value.ca_file.is_empty() {
            std::fs::read(&cluster.value.ca_file).map_err(|e| err(e.to_string()))?
        } else {
            return Err(err("no certificate authority".into()));
        };
        let server = &cluster.value.server;
        let rest = server
            .strip_prefix("https://")
            .ok_or_else(|| err(format!("server {server:?} is not https")))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse()
                    .map_err(|_| err(format!("bad port in {server:?}")))?,
            ),
            None => (rest.to_string(), 443),
        };
        let token = user
            .map(|u| u.value.token.clone())
            .filter(|t| !t.is_empty());
        let ns = if ctx.value.namespace.is_empty() {
            "default".to_string()
        } else {
            ctx.value.namespace.clone()
        };
        Ok(Self {
            transport: Transport::Https {
                host,
                port,
                tls: Arc::new(tls_config(&ca)?),
                token,
            },
            namespace: ns,
        })
    }

    /// A raw connection to the API server (TLS done), plus the bearer token to send, for
    /// protocols that upgrade the connection (exec).
    pub async fn connect_raw(&self) -> Result<(Box<dyn RawIo>, Option<String>), ClientError> {
        match &self.transport {
            Transport::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|source| {
                    ClientError::Connect {
                        target: p.display().to_string(),
                        source,
                    }
                })?;
                Ok((Box::new(s), None))
            }
            Transport::Https {
                host,
                port,
                tls,
                token,
            } => {
                let target = format!("{host}:{port}");
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| ClientError::Connect {
                        target: target.clone(),
                        source,
                    })?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let s = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| ClientError::Connect { target, source })?;
                Ok((Box::new(s), token.clone()))
            }
        }
    }

    async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        let (io, token) = self.connect_raw().await?;
        if let Some(t) = token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
            }
        }
        send_on(io, req).await
    }

    fn build(
        method: &str,
        path: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if let Some(ct) = content_type {
            b = b.header(hyper::header::CONTENT_TYPE, ct);
        }
        b = b.header(hyper::header::ACCEPT, accept.unwrap_or("application/json"));
        Ok(b.body(Full::new(Bytes::from(body)))?)
    }

    /// One request, body read in full.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<FullResponse, ClientError> {
        self.request_accept(method, path, content_type, None, body)
            .await
    }

    pub async fn request_accept(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: Vec<u8>,
    ) -> Result<FullResponse, ClientError> {
        let resp = self
            .send(Self::build(method, path, content_type, accept, body)?)
            .await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(FullResponse {
            status,
            content_type,
            body,
        })
    }

    pub async fn get_json(&self, path: &str) -> Result<FullResponse, ClientError> {
        self.request("GET", path, None, Vec::new()).await
    }

    /// A streaming GET (watch, log follow): returns the status and a line reader.
    pub async fn stream(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(u16, LineStream), ClientError> {
        let resp = self
            .send(Self::build("GET", path, None, accept, Vec::new())?)
            .await?;
        let status = resp.status().as_u16();
        Ok((
            status,
            LineStream {
                body: resp.into_body(),
                buf: Vec::new(),
            },
        ))
    }
}

async fn send_on<S>(io: S, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// Newline-delimited chunks of a streaming response body.
pub struct LineStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl LineStream {
    /// The next line (without its newline), or `None` at the end of the stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(line[..line.len() - 1].to_vec()));
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
            }
        }
    }

    /// The next raw chunk of the body, for byte streams such as logs.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        if !self.buf.is_empty() {
            return Ok(Some(Bytes::from(std::mem::take(&mut self.buf))));
        }
        loop {
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        return Ok(Some(data));
                    }
                }
                None => return Ok(None),
            }
        }
    }
}
