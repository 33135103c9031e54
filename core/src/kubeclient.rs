//! kube-rs clients for the daemons: built from the admin kubeconfig the API server writes,
//! waiting (bounded) for the API server to answer, since all daemons start together.

use std::time::Duration;

use thiserror::Error;

use crate::config::Paths;

#[derive(Debug, Error)]
#[error("the API server did not answer at {0} within {1:?}")]
pub struct NotReady(String, Duration);

pub async fn connect(paths: &Paths, wait: Duration) -> Result<kube::Client, NotReady> {
    let kc_path = paths.kubeconfig();
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if let Ok(kc) = kube::config::Kubeconfig::read_from(&kc_path) {
            if let Ok(cfg) = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            {
                if let Ok(c) = kube::Client::try_from(cfg) {
                    if c.apiserver_version().await.is_ok() {
                        return Ok(c);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(NotReady(kc_path.display().to_string(), wait))
}
