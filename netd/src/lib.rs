//! skiff-netd: pod networking on one host.
//!
//! The bridge and its gateway address, IPAM for the pod CIDR, a network namespace and veth pair
//! per pod ([`link`], [`netns`]), the nftables safety rules ([`rules`], [`nft`]), the
//! controller that keeps them in line with the Pods in the API ([`controller`]), and
//! NetworkPolicy compiled to nftables ([`policy`], [`policy_nft`], [`policyctl`]).

pub mod controller;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;
pub mod policy;
pub mod policy_nft;
pub mod policyctl;
pub mod rules;
