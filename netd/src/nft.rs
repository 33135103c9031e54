//! Applying nftables batches: one `nft -j -f -` transaction per change (all or nothing).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft rejected the batch: {0}")]
    Rejected(String),
}

/// Where rulesets go. One real implementation ([`NftCommand`]).
pub trait Nft {
    fn apply(&self, batch: &Value) -> Result<(), NftError>;
    /// Whether `inet <table>` exists.
    fn table_exists(&self, table: &str) -> bool;
}

pub struct NftCommand;

impl Nft for NftCommand {
    fn apply(&self, batch: &Value) -> Result<(), NftError> {
        let mut child = Command::new("nft")
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(batch.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(NftError::Rejected(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    fn table_exists(&self, table: &str) -> bool {
        Command::new("nft")
            .args(["list", "table", "inet", table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}
