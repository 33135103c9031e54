//! skiff-netd: pod networking on one host.
//!
//! The bridge and its gateway address, IPAM for the pod CIDR, a network namespace and veth pair
//! per pod ([`link`], [`netns`]), the nftables safety rules ([`rules`], [`nft`]), and the
//! controller that keeps them in line with the Pods in the API ([`controller`]).

pub mod controller;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;
pub mod rules;
