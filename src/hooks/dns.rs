//! Host names of httpGet and tcpSocket hooks, resolved as the pod itself resolves them.
//!
//! The container's own `/etc/hosts` and `/etc/resolv.conf` (read through its init process's
//! root, every path component resolved inside that root) say where to look: the hosts file
//! first, then DNS with the resolv.conf's nameservers, search list and `ndots`, as glibc and
//! musl do. The queries go out from sockets created inside the pod's network namespace, so a
//! Service name, the cluster's DNS server and the pod's NetworkPolicy are exactly what the
//! pod's own processes get. Only the DNS wire format comes from `hickory-proto`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ns::pidfd::PidFd;

/// At most this many nameservers are used (glibc's `MAXNS`).
const MAX_NAMESERVERS: usize = 3;
/// Largest `ndots` honoured (glibc caps it at 15).
const MAX_NDOTS: usize = 15;
/// The container files read, at most this many bytes each.
const FILE_LIMIT: u64 = 64 * 1024;
/// Largest DNS message accepted over UDP (EDNS-sized answers are refused with TC anyway).
const UDP_LIMIT: usize = 4096;

/// What `/etc/resolv.conf` says, with the C libraries' defaults for what it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    /// Search domains, without a trailing dot.
    pub search: Vec<String>,
    pub ndots: usize,
    /// Per query, per server.
    pub timeout: Duration,
    /// Rounds over the nameservers.
    pub attempts: u32,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    /// Parses resolv.conf text. Unknown lines and options are ignored, as the C libraries
    /// ignore them; with no nameserver line the pod's own loopback is asked (their default).
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (`fe80::1%eth0`) cannot be named without its
                    // interface index: skipped.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        if conf.nameservers.len() < MAX_NAMESERVERS {
                            conf.nameservers.push(ip);
                        }
                    }
                }
                // The last `domain` or `search` line wins.
                Some("domain") => conf.search = domains(words.take(1)),
                Some("search") => conf.search = domains(words),
                Some("options") => {
                    for option in words {
                        let (key, value) = option.split_once(':').unwrap_or((option, ""));
                        let n = value.parse::<u64>().ok();
                        match (key, n) {
                            ("ndots", Some(n)) => {
                                conf.ndots = usize::try_from(n).unwrap_or(MAX_NDOTS).min(MAX_NDOTS)
                            }
                            ("timeout", Some(n)) => {
                                conf.timeout = Duration::from_secs(n.clamp(1, 30))
                            }
                            ("attempts", Some(n)) => {
                                conf.attempts = u32::try_from(n.clamp(1, 5)).unwrap_or(2)
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        conf
    }

    /// The names asked for `name`, in order. A name ending with a dot is asked as it is.
    /// Otherwise, with at least `ndots` dots it is asked first as it is and then with each
    /// search domain appended; with fewer, the search domains come first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

fn domains<'a>(words: impl Iterator<Item = &'a str>) -> Vec<String> {
    words
        .map(|d| d.trim_end_matches('.'))
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// The addresses `/etc/hosts` text gives `name` (compared without case, without a trailing
/// dot), in file order.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| w.trim_end_matches('.').eq_ignore_ascii_case(name)) && !found.contains(&ip)
        {
            found.push(ip);
        }
    }
    found
}

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("resolving {name:?}: reading the container's {path}: {reason}")]
    Config {
        name: String,
        path: &'static str,
        reason: String,
    },
    #[error("resolving {name:?}: no address (asked {tried} of nameserver {servers}{last})")]
    NotFound {
        name: String,
        /// The names asked, comma separated.
        tried: String,
        servers: String,
        /// `; last error: ...` when a server failed on the way.
        last: String,
    },
}

/// Creates the sockets the queries go out from.
#[async_trait]
pub trait Sockets: Send + Sync {
    /// A non-blocking, unconnected UDP (`udp`) or TCP socket of the family of `v6`.
    async fn socket(&self, udp: bool, v6: bool) -> Result<OwnedFd, String>;
}

/// One server's answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Addrs(Vec<IpAddr>),
    /// NXDOMAIN: the name does not exist (no other record type will exist either).
    NoName,
    /// The name exists without a record of the asked type.
    NoData,
}

/// Resolves `name` with `conf` and the container's `hosts` text: the hosts file, then DNS.
/// IPv4 addresses are asked first, IPv6 when a name has none.
pub async fn resolve(
    name: &str,
    conf: &ResolvConf,
    hosts: &str,
    sockets: &dyn Sockets,
) -> Result<Vec<IpAddr>, DnsError> {
    resolve_at(name, conf, hosts, sockets, 53).await
}

/// [`resolve`], with the nameservers listening on `port`.
async fn resolve_at(
    name: &str,
    conf: &ResolvConf,
    hosts: &str,
    sockets: &dyn Sockets,
    port: u16,
) -> Result<Vec<IpAddr>, DnsError> {
    let listed = hosts_lookup(hosts, name);
    if !listed.is_empty() {
        return Ok(listed);
    }
    let candidates = conf.candidates(name);
    let mut last = None;
    for candidate in &candidates {
        let Ok(qname) = Name::from_ascii(format!("{candidate}.")) else {
            continue;
        };
        for rtype in [RecordType::A, RecordType::AAAA] {
            match ask_servers(&qname, rtype, conf, sockets, port).await {
                Ok(Answer::Addrs(addrs)) if !addrs.is_empty() => return Ok(addrs),
                Ok(Answer::NoName) => break,
                Ok(_) => continue,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    Err(DnsError::NotFound {
        name: name.to_string(),
        tried: candidates.join(", "),
        servers: conf
            .nameservers
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        last: last
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default(),
    })
}

/// Asks the nameservers in turn, `attempts` rounds, until one answers.
async fn ask_servers(
    qname: &Name,
    rtype: RecordType,
    conf: &ResolvConf,
    sockets: &dyn Sockets,
    port: u16,
) -> Result<Answer, String> {
    let mut last = String::from("no nameserver");
    for _ in 0..conf.attempts {
        for server in &conf.nameservers {
            let addr = SocketAddr::new(*server, port);
            match ask(addr, qname, rtype, conf.timeout, sockets).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = format!("nameserver {server}: {e}"),
            }
        }
    }
    Err(last)
}

/// One question to one server over UDP, again over TCP when the answer was truncated.
async fn ask(
    server: SocketAddr,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
    sockets: &dyn Sockets,
) -> Result<Answer, String> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname.clone(), rtype));
    let id = query.metadata.id;
    let wire = query
        .to_vec()
        .map_err(|e| format!("encoding the query: {e}"))?;
    let exchange = async {
        let fd = sockets.socket(true, server.is_ipv6()).await?;
        let udp = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
            .map_err(|e| format!("udp socket: {e}"))?;
        // A connected socket only receives datagrams from the server itself.
        udp.connect(server).await.map_err(|e| e.to_string())?;
        udp.send(&wire).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; UDP_LIMIT];
        loop {
            let n = udp.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything that is not the answer to this question is ignored, as resolvers do.
            let Some(reply) = decode(&buf[..n], id, qname, rtype) else {
                continue;
            };
            if !reply.metadata.truncation {
                return answer(&reply);
            }
            return ask_tcp(server, &wire, id, qname, rtype, sockets).await;
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn ask_tcp(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    qname: &Name,
    rtype: RecordType,
    sockets: &dyn Sockets,
) -> Result<Answer, String> {
    let fd = sockets.socket(false, server.is_ipv6()).await?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let mut stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let len = u16::try_from(wire.len()).map_err(|_| "query too long".to_string())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let reply = decode(&buf, id, qname, rtype).ok_or("tcp: not an answer to the query")?;
    answer(&reply)
}

/// The reply, when `bytes` is the answer to our question.
fn decode(bytes: &[u8], id: u16, qname: &Name, rtype: RecordType) -> Option<Message> {
    let reply = Message::from_vec(bytes).ok()?;
    let ours = reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == 1
        && reply.queries[0].query_type() == rtype
        && reply.queries[0]
            .name()
            .to_ascii()
            .eq_ignore_ascii_case(&qname.to_ascii());
    ours.then_some(reply)
}

fn answer(reply: &Message) -> Result<Answer, String> {
    match reply.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Answer::NoName),
        other => return Err(format!("answered {other}")),
    }
    let addrs: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        Ok(Answer::NoData)
    } else {
        Ok(Answer::Addrs(addrs))
    }
}

/// Reads `path` (absolute, e.g. `/etc/resolv.conf`) from the root of the process held by
/// `process`, resolving every component and symlink inside that root (never on the host).
/// `Ok(None)` when the file does not exist.
pub fn read_container_file(process: &PidFd, path: &str) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let root_path = format!("/proc/{}/root", process.pid());
    let root = std::fs::File::open(&root_path).map_err(|e| format!("{root_path}: {e}"))?;
    // The root was opened through the PID: it is the held process's while that lives on.
    if !process.is_alive() {
        return Err("the container's process has exited".into());
    }
    let file = match crate::ns::open_in_root(root.as_fd(), path.trim_start_matches('/')) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(FILE_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The container's resolver configuration and hosts file, through its init process.
pub fn container_config(process: &PidFd, name: &str) -> Result<(ResolvConf, String), DnsError> {
    let read = |path: &'static str| {
        read_container_file(process, path).map_err(|reason| DnsError::Config {
            name: name.to_string(),
            path,
            reason,
        })
    };
    let conf = ResolvConf::parse(&read("/etc/resolv.conf")?.unwrap_or_default());
    let hosts = read("/etc/hosts")?.unwrap_or_default();
    Ok((conf, hosts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::Record;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    const KUBE: &str = "nameserver 10.96.0.10\n\
        search team-a.svc.cluster.local svc.cluster.local cluster.local\n\
        options ndots:5\n";

    #[test]
    fn resolv_conf_parsing() {
        let c = ResolvConf::parse(KUBE);
        assert_eq!(c.nameservers, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            c.search,
            [
                "team-a.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!((c.ndots, c.attempts), (5, 2));
        assert_eq!(c.timeout, Duration::from_secs(5));

        let c = ResolvConf::parse(
            "# comment\nnameserver 192.0.2.1 # trailing\nnameserver fd00::53\n\
             nameserver fe80::1%eth0\nnameserver not-an-ip\nnameserver 192.0.2.2\n\
             nameserver 192.0.2.3\nsearch a.example. b.example\ndomain only.example\n\
             options ndots:99 timeout:0 attempts:9 rotate edns0\n; other comment\nsortlist x\n",
        );
        assert_eq!(
            c.nameservers,
            ["192.0.2.1", "fd00::53", "192.0.2.2"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        // the last of domain/search wins
        assert_eq!(c.search, ["only.example"]);
        assert_eq!(c.ndots, 15);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, 5);

        let c = ResolvConf::parse("");
        assert_eq!(c.nameservers, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert!(c.search.is_empty());
        assert_eq!(c.ndots, 1);
        assert_eq!(ResolvConf::parse("search x.\n").search, ["x"]);
    }

    #[test]
    fn search_and_ndots_expansion() {
        let c = ResolvConf::parse(KUBE);
        assert_eq!(
            c.candidates("web"),
            [
                "web.team-a.svc.cluster.local",
                "web.svc.cluster.local",
                "web.cluster.local",
                "web"
            ]
        );
        // 4 dots < ndots 5: search first
        assert_eq!(
            c.candidates("web.team-b.svc.cluster.local")[0],
            "web.team-b.svc.cluster.local.team-a.svc.cluster.local"
        );
        assert_eq!(
            c.candidates("web.team-b.svc.cluster.local").last().unwrap(),
            "web.team-b.svc.cluster.local"
        );
        // absolute: as it is, only
        assert_eq!(
            c.candidates("web.team-b.svc.cluster.local."),
            ["web.team-b.svc.cluster.local"]
        );
        let one = ResolvConf::parse("search corp.example\n");
        assert_eq!(one.candidates("db"), ["db.corp.example", "db"]);
        assert_eq!(one.candidates("db.eu"), ["db.eu", "db.eu.corp.example"]);
        assert_eq!(ResolvConf::parse("").candidates("db"), ["db"]);
    }

    #[test]
    fn hosts_file() {
        let hosts = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n\
                     10.244.1.7\tweb-0.web.team-a.svc.cluster.local\tweb-0\n\
                     192.0.2.5 alias.example Alias2 # host alias\n192.0.2.6 alias.example\nbad line\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(hosts_lookup(hosts, "web-0"), [ip("10.244.1.7")]);
        assert_eq!(
            hosts_lookup(hosts, "ALIAS.example."),
            [ip("192.0.2.5"), ip("192.0.2.6")]
        );
        assert_eq!(hosts_lookup(hosts, "alias2"), [ip("192.0.2.5")]);
        assert_eq!(
            hosts_lookup(hosts, "localhost"),
            [ip("127.0.0.1"), ip("::1")]
        );
        assert!(hosts_lookup(hosts, "host").is_empty());
        assert!(hosts_lookup(hosts, "line").is_empty());
    }

    use std::os::fd::FromRawFd;

    /// Sockets of the test process itself (the responders listen on its loopback).
    struct HostSockets;

    #[async_trait]
    impl Sockets for HostSockets {
        async fn socket(&self, udp: bool, v6: bool) -> Result<OwnedFd, String> {
            let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
            let kind = if udp {
                libc::SOCK_DGRAM
            } else {
                libc::SOCK_STREAM
            };
            // SAFETY: socket() returns a new fd or -1.
            let fd =
                unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
            assert!(fd >= 0);
            // SAFETY: freshly created, owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    }

    /// How the responder answers one name.
    #[derive(Clone)]
    enum Zone {
        A(Vec<Ipv4Addr>),
        Aaaa(std::net::Ipv6Addr),
        Cname(&'static str, Ipv4Addr),
        ServFail,
        /// Answers UDP with the truncation bit; TCP with the address.
        Truncated(Ipv4Addr),
        /// Never answers.
        Silent,
    }

    fn reply(query: &Message, zone: &HashMap<String, Zone>, tcp: bool) -> Option<Message> {
        let q = query.queries.first()?.clone();
        let name = q.name().to_ascii().trim_end_matches('.').to_string();
        let mut m = Message::response(query.metadata.id, OpCode::Query);
        m.add_query(q.clone());
        match zone.get(&name) {
            None => m.metadata.response_code = ResponseCode::NXDomain,
            Some(Zone::A(ips)) if q.query_type() == RecordType::A => {
                for ip in ips {
                    m.add_answer(Record::from_rdata(q.name().clone(), 5, RData::A(A(*ip))));
                }
            }
            Some(Zone::Aaaa(ip)) if q.query_type() == RecordType::AAAA => {
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    5,
                    RData::AAAA(AAAA(*ip)),
                ));
            }
            Some(Zone::Cname(target, ip)) if q.query_type() == RecordType::A => {
                let t = Name::from_ascii(format!("{target}.")).unwrap();
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    5,
                    RData::CNAME(CNAME(t.clone())),
                ));
                m.add_answer(Record::from_rdata(t, 5, RData::A(A(*ip))));
            }
            Some(Zone::ServFail) => m.metadata.response_code = ResponseCode::ServFail,
            Some(Zone::Truncated(ip)) if q.query_type() == RecordType::A => {
                if tcp {
                    m.add_answer(Record::from_rdata(q.name().clone(), 5, RData::A(A(*ip))));
                } else {
                    m.metadata.truncation = true;
                }
            }
            Some(Zone::Silent) => return None,
            Some(_) => {}
        }
        Some(m)
    }

    /// A real DNS server on the test process's loopback, UDP and TCP on one port, answering
    /// from `zone` and recording each question (`name type`).
    struct Responder {
        addr: SocketAddr,
        asked: Arc<Mutex<Vec<String>>>,
    }

    async fn responder(ip: &str, port: u16, zone: HashMap<String, Zone>) -> Responder {
        let udp = tokio::net::UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), port))
            .await
            .unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let zone = Arc::new(zone);
        let (log, z) = (Arc::clone(&asked), Arc::clone(&zone));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let query = Message::from_vec(&buf[..n]).unwrap();
                let q = &query.queries[0];
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", q.name(), q.query_type()));
                // a stray datagram with another id first: the resolver must skip it
                let mut stray = Message::response(query.metadata.id.wrapping_add(1), OpCode::Query);
                stray.add_query(q.clone());
                let _ = udp.send_to(&stray.to_vec().unwrap(), from).await;
                if let Some(m) = reply(&query, &z, false) {
                    let _ = udp.send_to(&m.to_vec().unwrap(), from).await;
                }
            }
        });
        let (log, z) = (Arc::clone(&asked), zone);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf).unwrap();
                let q = &query.queries[0];
                log.lock()
                    .unwrap()
                    .push(format!("tcp {} {}", q.name(), q.query_type()));
                if let Some(m) = reply(&query, &z, true) {
                    let wire = m.to_vec().unwrap();
                    let mut out = u16::try_from(wire.len()).unwrap().to_be_bytes().to_vec();
                    out.extend(wire);
                    s.write_all(&out).await.unwrap();
                }
            }
        });
        Responder { addr, asked }
    }

    /// [`resolve`] with the responder's port (nameservers of a resolv.conf are on 53).
    async fn resolve_via(
        name: &str,
        conf: &ResolvConf,
        hosts: &str,
        server: SocketAddr,
    ) -> Result<Vec<IpAddr>, DnsError> {
        resolve_at(name, conf, hosts, &HostSockets, server.port()).await
    }

    fn conf(servers: &[SocketAddr], search: &[&str], ndots: usize) -> ResolvConf {
        ResolvConf {
            nameservers: servers.iter().map(|s| s.ip()).collect(),
            search: search.iter().map(|s| s.to_string()).collect(),
            ndots,
            timeout: Duration::from_millis(300),
            attempts: 1,
        }
    }

    fn zone(entries: &[(&str, Zone)]) -> HashMap<String, Zone> {
        entries
            .iter()
            .map(|(n, z)| (n.to_string(), z.clone()))
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn resolves_against_a_real_responder() {
        let web = Ipv4Addr::new(192, 0, 2, 7);
        let r = responder(
            "127.0.0.1",
            0,
            zone(&[
                (
                    "web.team-a.svc.cluster.local",
                    Zone::A(vec![web, Ipv4Addr::new(192, 0, 2, 8)]),
                ),
                ("v6only.example", Zone::Aaaa("fd00::7".parse().unwrap())),
                ("alias.example", Zone::Cname("real.example", web)),
                ("big.example", Zone::Truncated(web)),
                ("broken.svc.cluster.local", Zone::ServFail),
                ("broken", Zone::A(vec![web])),
            ]),
        )
        .await;
        let c = conf(
            &[r.addr],
            &["team-a.svc.cluster.local", "svc.cluster.local"],
            5,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();

        // the search list, in order, each name asked for A then (no A) AAAA
        assert_eq!(
            resolve_via("web", &c, "", r.addr).await.unwrap(),
            [ip("192.0.2.7"), ip("192.0.2.8")]
        );
        assert_eq!(
            r.asked.lock().unwrap().drain(..).collect::<Vec<_>>(),
            ["web.team-a.svc.cluster.local. A"]
        );
        // NXDOMAIN moves on to the next candidate without asking AAAA
        assert_eq!(
            resolve_via("v6only.example", &c, "", r.addr).await.unwrap(),
            [ip("fd00::7")]
        );
        assert_eq!(
            r.asked.lock().unwrap().drain(..).collect::<Vec<_>>(),
            [
                "v6only.example.team-a.svc.cluster.local. A",
                "v6only.example.svc.cluster.local. A",
                "v6only.example. A",
                "v6only.example. AAAA"
            ]
        );
        assert_eq!(
            resolve_via("alias.example.", &c, "", r.addr).await.unwrap(),
            [ip("192.0.2.7")]
        );
        // truncated over UDP: asked again over TCP
        assert_eq!(
            resolve_via("big.example.", &c, "", r.addr).await.unwrap(),
            [ip("192.0.2.7")]
        );
        assert!(r
            .asked
            .lock()
            .unwrap()
            .contains(&"tcp big.example. A".to_string()));
        // a server failure on one candidate does not stop the search
        let c2 = conf(&[r.addr], &["svc.cluster.local"], 1);
        assert_eq!(
            resolve_via("broken", &c2, "", r.addr).await.unwrap(),
            [ip("192.0.2.7")]
        );
        // the hosts file first, without asking
        r.asked.lock().unwrap().clear();
        assert_eq!(
            resolve_via("web", &c, "192.0.2.99 web\n", r.addr)
                .await
                .unwrap(),
            [ip("192.0.2.99")]
        );
        assert!(r.asked.lock().unwrap().is_empty());
        // nothing anywhere
        let e = resolve_via("nowhere", &c2, "", r.addr).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "resolving \"nowhere\": no address (asked nowhere.svc.cluster.local, nowhere of nameserver 127.0.0.1)"
        );
        let e = resolve_via("broken.svc.cluster.local.", &c2, "", r.addr)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("last error: nameserver 127.0.0.1: answered Server Failure)"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_server_times_out_and_the_next_one_answers() {
        let web = Ipv4Addr::new(192, 0, 2, 7);
        let silent = responder("127.0.0.2", 0, zone(&[("web", Zone::Silent)])).await;
        // every nameserver is asked on the same port: the second one on another address
        let good = responder(
            "127.0.0.3",
            silent.addr.port(),
            zone(&[("web", Zone::A(vec![web]))]),
        )
        .await;
        let c = conf(&[silent.addr, good.addr], &[], 1);
        let started = std::time::Instant::now();
        assert_eq!(
            resolve_via("web", &c, "", silent.addr).await.unwrap(),
            [IpAddr::V4(web)]
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(silent.asked.lock().unwrap().len(), 1);
        let only_silent = conf(&[silent.addr], &[], 1);
        let e = resolve_via("web", &only_silent, "", silent.addr)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nameserver 127.0.0.2: no answer within 300ms"),
            "{e}"
        );
        assert_eq!(good.asked.lock().unwrap().len(), 1);
    }
}
