//! Sockets created inside a network namespace.
//!
//! A dedicated `std::thread` enters the namespace, creates the socket (and, when asked, lists
//! the namespace's addresses) and returns to the plugin's own namespace; the socket keeps
//! belonging to the pod's namespace wherever it is used afterwards, so it can be connected
//! from tokio. No tokio thread ever changes namespace.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use super::namespace::{NsHandle, NsKind};
use super::pidfd::PidFd;
use super::Error;

/// What the namespace thread hands back.
#[derive(Debug)]
pub struct NetnsSocket {
    /// A non-blocking, unconnected TCP (or UDP) socket of the requested family.
    pub socket: OwnedFd,
}

/// A network namespace, held open: either a namespace file or a process's pidfd (`setns`
/// takes both; through a pidfd it enters that very process's namespace, or fails with
/// `ESRCH` once the process has exited, never a namespace of a process that reused its PID).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// How it was named, for messages.
    name: String,
}

impl Netns {
    /// A namespace file: a bind mount such as `/var/run/netns/<name>`, or `/proc/<pid>/ns/net`.
    pub fn open(path: &Path) -> Result<Netns, Error> {
        let handle = NsHandle::open(NsKind::Net, path)?;
        Ok(Netns {
            fd: handle.fd,
            name: path.display().to_string(),
        })
    }

    /// The network namespace of the process held by `process`.
    pub fn of(process: &PidFd) -> Result<Netns, Error> {
        let fd = process.try_clone_fd().map_err(|source| Error::Sys {
            what: "dup pidfd",
            source,
        })?;
        Ok(Netns {
            fd,
            name: format!("of process {}", process.pid()),
        })
    }

    /// How it was named (a path, or `of process <pid>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn netns_err(netns: &str, reason: impl Into<String>) -> Error {
    Error::Netns {
        netns: netns.to_string(),
        reason: reason.into(),
    }
}

/// A job for the namespace worker: given the worker's home namespace, it enters a network
/// namespace, does its work, returns home, and says whether the worker may go on.
type Job = Box<dyn FnOnce(&OwnedFd) -> bool + Send>;

/// The queue of the namespace worker thread, started on first use.
static WORKER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// Runs `job` on the namespace worker: one dedicated `std::thread` (never a tokio thread)
/// that enters a pod's network namespace only for the duration of one job and always
/// returns to the plugin's own afterwards. A worker that cannot return ends, and the next
/// job starts a fresh one, so no job ever runs in a namespace left over from another.
/// Reusing the thread saves creating one per hook (most of an httpGet hook's overhead).
fn submit(job: Job) -> Result<(), String> {
    let mut worker = crate::lock::lock(&WORKER);
    let job = match worker.as_ref() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            // The worker ended: start another with the same job.
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let home = NsHandle::open(NsKind::Net, Path::new("/proc/thread-self/ns/net"))
        .map_err(|e| format!("opening our own network namespace: {e}"))?;
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            for job in rx {
                if !job(&home.fd) {
                    break;
                }
            }
        })
        .map_err(|e| format!("spawning the namespace thread: {e}"))?;
    tx.send(job)
        .map_err(|_| "the namespace thread ended at once".to_string())?;
    *worker = Some(tx);
    Ok(())
}

fn in_netns<T: Send + 'static>(
    netns: Netns,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<Result<T, Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = netns.name.clone();
    let job: Job = Box::new(move |home: &OwnedFd| {
        // SAFETY: setns on a namespace fd or pidfd we own, on the dedicated worker thread only.
        let rc = unsafe { libc::setns(netns.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        let result = if rc != 0 {
            Err(netns_err(
                &netns.name,
                format!("setns: {}", std::io::Error::last_os_error()),
            ))
        } else {
            work().map_err(|r| netns_err(&netns.name, r))
        };
        // SAFETY: as above; `home` is the namespace this thread started in.
        let back = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
        let _ = tx.send(result);
        back
    });
    if let Err(reason) = submit(job) {
        let (tx, rx2) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(netns_err(&name, reason)));
        return rx2;
    }
    rx
}

async fn recv<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, Error>>,
    netns: &str,
) -> Result<T, Error> {
    rx.await
        .map_err(|_| netns_err(netns, "namespace thread ended without an answer"))?
}

/// Creates a TCP socket (IPv6 when `v6`, else IPv4) inside `netns`.
pub async fn tcp_socket(netns: Netns, v6: bool) -> Result<NetnsSocket, Error> {
    socket(netns, v6, libc::SOCK_STREAM).await
}

/// Creates a UDP socket (IPv6 when `v6`, else IPv4) inside `netns`.
pub async fn udp_socket(netns: Netns, v6: bool) -> Result<NetnsSocket, Error> {
    socket(netns, v6, libc::SOCK_DGRAM).await
}

async fn socket(netns: Netns, v6: bool, kind: libc::c_int) -> Result<NetnsSocket, Error> {
    let name = netns.name.clone();
    let rx = in_netns(netns, move || {
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: socket() returns a new fd or -1.
        let fd =
            unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: freshly created, owned by nobody else.
        Ok(NetnsSocket {
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    });
    recv(rx, &name).await
}

/// The non-loopback addresses of `netns` (IPv4 first).
pub async fn addresses(netns: Netns) -> Result<Vec<IpAddr>, Error> {
    let name = netns.name.clone();
    let rx = in_netns(netns, || {
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
    let mut addrs: Vec<IpAddr> = recv(rx, &name)
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
