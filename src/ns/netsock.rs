//! Sockets created inside a network namespace.
//!
//! A dedicated, short-lived `std::thread` enters the namespace, creates the socket (and, when
//! asked, lists the namespace's addresses) and exits; the socket keeps belonging to that
//! namespace wherever it is used afterwards, so it can be connected from tokio. No tokio
//! thread ever changes namespace.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::namespace::{NsHandle, NsKind};
use super::Error;

/// What the namespace thread hands back.
#[derive(Debug)]
pub struct NetnsSocket {
    /// A non-blocking, unconnected TCP socket of the requested family.
    pub socket: OwnedFd,
}

fn netns_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Netns {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn in_netns<T: Send + 'static>(
    netns: NsHandle,
    path: PathBuf,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<Result<T, Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    let spawned = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: setns on a namespace fd we own, on this dedicated thread only; the
            // thread ends right after, so its namespace is never reused.
            let rc = unsafe { libc::setns(netns.fd.as_raw_fd(), libc::CLONE_NEWNET) };
            let result = if rc != 0 {
                Err(netns_err(
                    &thread_path,
                    format!("setns: {}", std::io::Error::last_os_error()),
                ))
            } else {
                work().map_err(|r| netns_err(&thread_path, r))
            };
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        let (tx, rx2) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(netns_err(&path, format!("spawning thread: {e}"))));
        return rx2;
    }
    rx
}

async fn recv<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, Error>>,
    path: &Path,
) -> Result<T, Error> {
    rx.await
        .map_err(|_| netns_err(path, "namespace thread ended without an answer"))?
}

/// Creates a TCP socket for `family` inside the network namespace at `path`.
pub async fn tcp_socket(path: &Path, v6: bool) -> Result<NetnsSocket, Error> {
    let handle = NsHandle::open(NsKind::Net, path)?;
    let rx = in_netns(handle, path.to_owned(), move || {
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: socket() returns a new fd or -1.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: freshly created, owned by nobody else.
        Ok(NetnsSocket {
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    });
    recv(rx, path).await
}

/// The non-loopback addresses of the network namespace at `path` (IPv4 first).
pub async fn addresses(path: &Path) -> Result<Vec<IpAddr>, Error> {
    let handle = NsHandle::open(NsKind::Net, path)?;
    let rx = in_netns(handle, path.to_owned(), || {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills a list we free below.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return Err(format!("getifaddrs: {}", std::io::Error::last_os_error()));
        }
        let mut out = Vec::new();
        let mut cur = list;
        while !cur.is_null() {
            // SAFETY: cur is a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*cur };
            if !ifa.ifa_addr.is_null() {
                // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
                let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
                if family == libc::AF_INET {
                    // SAFETY: family is AF_INET, so this is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                } else if family == libc::AF_INET6 {
                    // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
            }
            cur = ifa.ifa_next;
        }
        // SAFETY: the list came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(list) };
        Ok(out)
    });
    let mut addrs: Vec<IpAddr> = recv(rx, path)
        .await?
        .into_iter()
        .filter(|a| !a.is_loopback() && !is_link_local(a))
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    Ok(addrs)
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}
