//! The `skiff-apiserver` daemon: serves the Kubernetes API for one skiff cluster.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use skiff_apiserver::server::{start, Options};
use skiff_core::config::{DEFAULT_API_PORT, DEFAULT_DATA_DIR};

#[derive(Parser)]
#[command(name = "skiff-apiserver", about = "The skiff Kubernetes API server")]
struct Args {
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = DEFAULT_API_PORT)]
    api_port: u16,
    /// Address of the HTTPS listener (token auth required).
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// The Service ClusterIP range.
    #[arg(long, default_value = skiff_core::config::DEFAULT_SERVICE_CIDR, value_parser = parse_cidr)]
    service_cidr: skiff_core::config::Cidr,
    /// The node name (defaults to the host name), put in the serving certificate.
    #[arg(long)]
    node_name: Option<String>,
}

fn parse_cidr(s: &str) -> Result<skiff_core::config::Cidr, String> {
    skiff_core::config::Cidr::parse(s)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let opts = Options {
        data_dir: args.data_dir,
        api_port: args.api_port,
        bind: args.bind_address,
        node_name: args.node_name.unwrap_or_else(hostname),
        service_cidr: args.service_cidr,
    };
    let running = start(&opts).await?;
    tracing::info!(
        "apiserver ready on {} and https://{}:{}",
        opts.data_dir.join("apiserver.sock").display(),
        opts.bind,
        opts.api_port
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown.notify_waiters();
    tracing::info!("apiserver stopping");
    Ok(())
}
