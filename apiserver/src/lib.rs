//! skiff-apiserver: the Kubernetes REST API over a sled store.
//!
//! Generic storage for every resource ([`storage`]), per-kind rules ([`registry`]), the HTTP
//! surface ([`handlers`], [`discovery`]), patches ([`patch`]), `Status` errors ([`status`]),
//! credentials ([`tls`]), built-in controllers ([`nsctl`]) and listeners ([`server`]).

pub mod discovery;
pub mod handlers;
pub mod ipalloc;
pub mod nsctl;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod server;
pub mod status;
pub mod storage;
pub mod store;
pub mod tls;
