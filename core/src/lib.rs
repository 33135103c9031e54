//! skiff-core: what every skiff daemon and the CLI share.
//!
//! Kubernetes label and field selectors, object validation rules (names, labels, annotations),
//! server-side table columns as kubectl prints them, the cluster configuration and paths, and a
//! small HTTP client for the API server's Unix socket and HTTPS listener.

pub mod client;
pub mod config;
pub mod controller;
pub mod fields;
pub mod json;
pub mod kubeclient;
pub mod quantity;
pub mod selector;
pub mod table;
pub mod time;
pub mod validation;

pub use k8s_openapi;
