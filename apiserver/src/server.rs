//! The API server's listeners: the root-only Unix socket (plain HTTP, full access, for local
//! tools) and HTTPS on TCP, where every request needs the admin bearer token.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use skiff_core::config::Paths;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;

use crate::handlers::{error_response, handle, App};
use crate::status::ApiError;
use crate::storage::Storage;
use crate::store::SledStore;
use crate::{nsctl, tls};

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub api_port: u16,
    pub bind: IpAddr,
    pub node_name: String,
    pub service_cidr: skiff_core::config::Cidr,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if !ok {
        return error_response(&ApiError::unauthorized());
    }
    next.run(req).await
}

/// A running API server.
pub struct Running {
    pub app: Arc<App>,
    pub shutdown: Arc<Notify>,
}

/// Opens the store and starts both listeners; returns once they accept connections.
pub async fn start(opts: &Options) -> Result<Running> {
    let paths = Paths::new(&opts.data_dir);
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = SledStore::open(&paths.db()).context("opening the store")?;
    let storage = Storage::start(Arc::new(store))?;
    let pki = tls::ensure_pki(&paths.pki(), &opts.node_name)?;
    let app = Arc::new(App {
        storage,
        ns_wake: Notify::new(),
        server_address: format!("127.0.0.1:{}", opts.api_port),
        ca_pem: pki.ca_pem.clone(),
        service_cidr: opts.service_cidr,
        kubelet_socket: paths.run().join("kubelet.sock"),
    });
    nsctl::bootstrap(&app)
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {}", e.message))?;
    tokio::spawn(nsctl::run(app.clone()));

    let token = tls::ensure_token(&paths.pki().join("admin.token"))?;
    tls::write_kubeconfig(&paths.kubeconfig(), opts.api_port, &pki.ca_pem, &token)?;
    let tls_cfg = tls::server_config(&pki)?;

    let router = Router::new().fallback(handle).with_state(app.clone());
    let shutdown = Arc::new(Notify::new());

    let sock = paths.socket();
    let _ = std::fs::remove_file(&sock);
    let unix = UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    {
        let router = router.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(unix, router)
                .with_graceful_shutdown(async move { sd.notified().await })
                .await;
        });
    }

    let tcp = TcpListener::bind((opts.bind, opts.api_port))
        .await
        .with_context(|| format!("binding {}:{}", opts.bind, opts.api_port))?;
    let secured = router.layer(middleware::from_fn_with_state(
        Arc::new(token),
        require_token,
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_cfg);
    let sd = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!("accept: {e}"); continue; }
                },
                _ = sd.notified() => return,
            };
            let acceptor = acceptor.clone();
            let svc = TowerToHyperService::new(secured.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(Running { app, shutdown })
}
