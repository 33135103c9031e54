//! Links and addresses through rtnetlink: the pod bridge with its gateway address, and per pod
//! a veth pair whose host end joins the bridge and whose other end becomes `eth0` in the pod's
//! namespace with the pod's address and a default route via the gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{new_connection, Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use thiserror::Error;

use crate::netns;

#[derive(Debug, Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("link {0} not found")]
    Missing(String),
}

type Result<T> = std::result::Result<T, LinkError>;

/// What netd asks of the kernel. One real implementation ([`Kernel`]).
#[allow(async_fn_in_trait)]
pub trait PodLinks {
    /// The bridge exists, is up and holds `gateway/prefix`.
    async fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()>;
    /// The pod's namespace at `netns` has `eth0` with `ip/prefix` and a default route via
    /// `gateway`, linked to the bridge by the host-side veth `host_if`. `fresh`: the namespace
    /// was just made (nothing in it to check first).
    #[allow(clippy::too_many_arguments)]
    async fn attach(
        &self,
        bridge: &str,
        host_if: &str,
        netns: &Path,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        fresh: bool,
    ) -> Result<()>;
    /// Removes the host-side veth (its peer goes with it).
    async fn detach(&self, host_if: &str) -> Result<()>;
    /// Names of host links starting with `prefix`.
    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes a link by name (the bridge on shutdown); absent is fine.
    async fn delete_link(&self, name: &str) -> Result<()>;
}

fn connect() -> Result<Handle> {
    let (conn, handle, _) = new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers ENODEV for a name that does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn has_addr(h: &Handle, index: u32, ip: Ipv4Addr) -> Result<bool> {
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs.try_next().await? {
        for attr in a.attributes {
            if let rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(x)) = attr
            {
                if x == ip {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The real kernel, over rtnetlink.
/// A veth pair whose peer end is created directly in the namespace behind `ns_fd`.
fn veth_into(name: &str, peer: &str, ns_fd: i32) -> rtnetlink::packet_route::link::LinkMessage {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkInfo};
    let mut msg = LinkVeth::new(name, peer).build();
    for attr in msg.attributes.iter_mut() {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) = info {
                    p.attributes.push(LinkAttribute::NetNsFd(ns_fd));
                }
            }
        }
    }
    msg
}

pub struct Kernel;

impl PodLinks for Kernel {
    async fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
        let h = connect()?;
        let idx = match index_of(&h, name).await? {
            Some(i) => i,
            None => {
                h.link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await?;
                index_of(&h, name)
                    .await?
                    .ok_or_else(|| LinkError::Missing(name.into()))?
            }
        };
        if !has_addr(&h, idx, gateway).await? {
            h.address()
                .add(idx, IpAddr::V4(gateway), prefix)
                .execute()
                .await?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await?;
        Ok(())
    }

    async fn attach(
        &self,
        bridge: &str,
        host_if: &str,
        ns: &Path,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        fresh: bool,
    ) -> Result<()> {
        let h = connect()?;
        let br = index_of(&h, bridge)
            .await?
            .ok_or_else(|| LinkError::Missing(bridge.into()))?;
        // A fresh namespace has nothing yet, and its veth cannot exist (its name comes from the
        // pod UID): the checks an earlier, interrupted attach needs are skipped.
        if fresh || index_of(&h, host_if).await?.is_none() {
            // The peer is created inside the pod's namespace, already named eth0: moving a
            // link between namespaces afterwards costs tens of milliseconds (the kernel waits
            // for RCU grace periods), creating it there costs nothing extra.
            let nsfile = std::fs::File::open(ns)?;
            h.link()
                .add(veth_into(host_if, "eth0", nsfile.as_raw_fd()))
                .execute()
                .await?;
        }
        let host_idx = index_of(&h, host_if)
            .await?
            .ok_or_else(|| LinkError::Missing(host_if.into()))?;
        h.link()
            .set(
                LinkUnspec::new_with_index(host_idx)
                    .controller(br)
                    .up()
                    .build(),
            )
            .execute()
            .await?;
        // Inside the pod's namespace: eth0 (renamed, if an older netd made the pair), its
        // address, eth0 and lo up, the default route.
        let peer = format!("{host_if}p");
        let inside = netns::run_in(ns, move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let h = connect()?;
                if !fresh {
                    if let Some(p) = index_of(&h, &peer).await? {
                        h.link()
                            .set(LinkUnspec::new_with_index(p).name("eth0").build())
                            .execute()
                            .await?;
                    }
                }
                let eth0 = index_of(&h, "eth0")
                    .await?
                    .ok_or_else(|| LinkError::Missing("eth0".into()))?;
                if fresh || !has_addr(&h, eth0, ip).await? {
                    h.address()
                        .add(eth0, IpAddr::V4(ip), prefix)
                        .execute()
                        .await?;
                }
                h.link()
                    .set(LinkUnspec::new_with_index(eth0).up().build())
                    .execute()
                    .await?;
                // Loopback is always index 1 in a namespace.
                let lo = if fresh {
                    Some(1)
                } else {
                    index_of(&h, "lo").await?
                };
                if let Some(lo) = lo {
                    h.link()
                        .set(LinkUnspec::new_with_index(lo).up().build())
                        .execute()
                        .await?;
                }
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .build();
                match h.route().add(route).execute().await {
                    // EEXIST: the default route is already there.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(()),
                    other => other.map_err(LinkError::from),
                }
            })
        })?;
        inside
    }

    async fn detach(&self, host_if: &str) -> Result<()> {
        self.delete_link(host_if).await
    }

    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let h = connect()?;
        let mut out = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(l) = links.try_next().await? {
            for a in l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    if n.starts_with(prefix) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        let h = connect()?;
        if let Some(i) = index_of(&h, name).await? {
            h.link().del(i).execute().await?;
        }
        Ok(())
    }
}
