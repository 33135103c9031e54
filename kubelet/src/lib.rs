//! skiff-kubelet: runs pods as plain host processes in their own Linux namespaces.
//!
//! The Node object ([`node`]), the pod → runtime plan ([`plan`]), the per-pod supervisor that
//! holds the containers ([`shim`]), the pod's shared namespaces ([`sandbox`]), the container
//! init that builds each root filesystem ([`init`]), pod status computation ([`status`]) and
//! the controller ([`controller`]).

pub mod cgroup;
pub mod controller;
pub mod exec;
pub mod init;
pub mod logs;
pub mod node;
pub mod plan;
pub mod probe;
pub mod sandbox;
pub mod server;
pub mod shim;
pub mod status;
