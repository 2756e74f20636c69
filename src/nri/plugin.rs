//! Registration and the run loops: one runtime connection ([`serve`]), the pre-installed launch
//! ([`run_preinstalled`]) and the external launch with reconnection ([`run_external`]).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::UnixStream;
use ttrpc::asynchronous::transport::Socket;

use crate::nri::handler::Handler;
use crate::nri::mux::{one_connection, Mux, MuxError, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use crate::nri::service::{PluginService, Session, DEFAULT_REGISTRATION_TIMEOUT_MS};
use crate::nri::wire::{api, api_ttrpc};

/// Env var holding the socket fd of a pre-installed plugin.
pub const ENV_SOCKET: &str = "NRI_PLUGIN_SOCKET";
/// Env var holding the name of a pre-installed plugin.
pub const ENV_NAME: &str = "NRI_PLUGIN_NAME";
/// Env var holding the index of a pre-installed plugin.
pub const ENV_INDEX: &str = "NRI_PLUGIN_IDX";

/// First wait before reconnecting to a runtime that went away.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts: a runtime back from a restart, or one that
/// dropped us after a stall, has us again within about a second.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Failed connection attempts in a row between two warnings (a minute at [`RECONNECT_MAX`]).
const FAILURES_PER_WARNING: u32 = 60;
/// After `Shutdown`, how long we wait for the runtime to close the connection itself.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Errors of the protocol edge.
#[derive(Debug, Error)]
pub enum NriError {
    #[error("invalid plugin name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid plugin index {index:?}: must be two digits")]
    InvalidIndex { index: String },
    #[error("env {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("nri socket fd {fd}: {reason}")]
    Socket { fd: RawFd, reason: String },
    #[error("connect to nri socket {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("mux: {0}")]
    Mux(#[from] MuxError),
    #[error("start ttrpc server: {0}")]
    Server(String),
    #[error("register plugin {name} (index {index}) with the runtime: {reason}")]
    Register {
        name: String,
        index: String,
        reason: String,
    },
}

/// How the plugin introduces itself to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Plugin name (letters, digits, `-`, `_`, `.`, `+`).
    pub name: String,
    /// Two decimal digits; the runtime calls plugins in ascending index order.
    pub index: String,
}

impl Registration {
    /// Checks name and index the way the runtime does, so a bad flag fails with a clear message.
    pub fn validate(&self) -> Result<(), NriError> {
        let name_err = |reason| NriError::InvalidName {
            name: self.name.clone(),
            reason,
        };
        if self.name.is_empty() {
            return Err(name_err("empty"));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        {
            return Err(name_err(
                "only letters, digits, '-', '_', '.' and '+' are allowed",
            ));
        }
        let b = self.index.as_bytes();
        if b.len() != 2 || !b.iter().all(u8::is_ascii_digit) {
            return Err(NriError::InvalidIndex {
                index: self.index.clone(),
            });
        }
        Ok(())
    }
}

/// Serves one runtime connection: registers at once, answers the runtime, and returns `Ok`
/// when the runtime closes the connection or sends `Shutdown`.
pub async fn serve(
    stream: UnixStream,
    reg: Registration,
    handler: Arc<dyn Handler>,
) -> Result<(), NriError> {
    let session = Arc::new(Session::default());
    let result = serve_session(stream, &reg, Arc::clone(&handler), &session, None).await;
    session.shut_down_handler(&*handler).await;
    result
}

/// One connection's life. `registered` is raised once the runtime accepted us.
async fn serve_session(
    stream: UnixStream,
    reg: &Registration,
    handler: Arc<dyn Handler>,
    session: &Arc<Session>,
    registered: Option<&AtomicBool>,
) -> Result<(), NriError> {
    reg.validate()?;
    if let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) {
        let pid = u32::try_from(pid).unwrap_or(0);
        session.runtime_pid.store(pid, Ordering::Relaxed);
    }
    let mut mux = Mux::new(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])?;
    let (Some(plugin_conn), Some(runtime_conn)) = (
        mux.take(PLUGIN_SERVICE_CONN),
        mux.take(RUNTIME_SERVICE_CONN),
    ) else {
        return Err(NriError::Server("mux connections missing".into()));
    };

    // Our service on connection 1: a listener that yields that one connection.
    let service = PluginService::new(Arc::clone(&handler), Arc::clone(session));
    let listener = one_connection(plugin_conn);
    let mut server = ttrpc::r#async::Server::new()
        .register_service(api_ttrpc::create_plugin(Arc::new(service)))
        .add_listener(listener);
    server
        .start()
        .await
        .map_err(|err| NriError::Server(err.to_string()))?;

    // The runtime's service on connection 2: register right away.
    let client =
        api_ttrpc::RuntimeClient::new(ttrpc::r#async::Client::new(Socket::new(runtime_conn)));
    let req = api::RegisterPluginRequest {
        plugin_name: reg.name.clone(),
        plugin_idx: reg.index.clone(),
        ..Default::default()
    };
    let ctx = ttrpc::context::with_duration(Duration::from_millis(DEFAULT_REGISTRATION_TIMEOUT_MS));
    let register_err = |reason: String| NriError::Register {
        name: reg.name.clone(),
        index: reg.index.clone(),
        reason,
    };
    tokio::select! {
        reply = client.register_plugin(ctx, &req) => {
            reply.map_err(|err| register_err(err.to_string()))?;
        }
        end = mux.closed() => {
            let reason = match end {
                Ok(()) => "runtime closed the connection".to_string(),
                Err(err) => err.to_string(),
            };
            return Err(register_err(reason));
        }
    }
    tracing::info!(plugin = %reg.name, index = %reg.index, "registered with the runtime");
    if let Some(flag) = registered {
        flag.store(true, Ordering::SeqCst);
    }
    // Connection 2 stays open while we serve, as the runtime expects, though we make no
    // further calls on it.
    let runtime_client = client;

    let end = tokio::select! {
        end = mux.closed() => end,
        _ = session.shutdown_requested.notified() => {
            // Let the reply reach the runtime; it closes the connection itself.
            tokio::time::timeout(SHUTDOWN_GRACE, mux.closed()).await.unwrap_or(Ok(()))
        }
    };
    drop(runtime_client);
    drop(mux);
    server.shutdown().await.ok();
    match &end {
        Ok(()) => tracing::info!(plugin = %reg.name, "runtime connection closed"),
        Err(err) => tracing::warn!(plugin = %reg.name, %err, "runtime connection failed"),
    }
    end.map_err(NriError::from)
}

static SOCKET_ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the pre-connected socket the runtime passed us.
fn adopt_socket(fd: RawFd) -> Result<UnixStream, NriError> {
    let bad = |reason: String| NriError::Socket { fd, reason };
    if fd < 0 {
        return Err(bad("negative".into()));
    }
    if SOCKET_ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(bad("already in use".into()));
    }
    // SAFETY: fd is non-negative and only borrowed for the fstat/fcntl calls below, which fail
    // cleanly (EBADF) if it is not open; nothing else in the process owns it (checked above).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(borrowed).map_err(|e| bad(e.to_string()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket".into()));
    }
    // Hooks we start must not inherit the runtime's socket.
    nix::fcntl::fcntl(
        borrowed,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| bad(e.to_string()))?;
    // SAFETY: fd is an open socket (fstat above) that the runtime handed to this process for
    // us alone; SOCKET_ADOPTED guarantees we wrap it in an owner only once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| bad(e.to_string()))?;
    let raw = std_stream.as_raw_fd();
    UnixStream::from_std(std_stream).map_err(|e| NriError::Socket {
        fd: raw,
        reason: e.to_string(),
    })
}

fn env_var(var: &'static str) -> Result<String, NriError> {
    std::env::var(var).map_err(|err| NriError::Env {
        var,
        reason: err.to_string(),
    })
}

/// The pre-installed launch: the runtime started us with the socket on an fd named by
/// `NRI_PLUGIN_SOCKET`, our name in `NRI_PLUGIN_NAME` and index in `NRI_PLUGIN_IDX`. Returns
/// `Ok` when the runtime closes the connection or shuts us down.
pub async fn run_preinstalled(handler: Arc<dyn Handler>) -> Result<(), NriError> {
    let fd_text = env_var(ENV_SOCKET)?;
    let fd: RawFd = fd_text.trim().parse().map_err(|_| NriError::Env {
        var: ENV_SOCKET,
        reason: format!("{fd_text:?} is not a file descriptor number"),
    })?;
    let reg = Registration {
        name: env_var(ENV_NAME)?,
        index: env_var(ENV_INDEX)?,
    };
    let stream = adopt_socket(fd)?;
    serve(stream, reg, handler).await
}

/// The external launch: connect to the runtime's socket, register, serve; when the runtime
/// goes away, reconnect with backoff (100 ms doubling to 1 s, reset after each successful
/// registration) and register again. Returns `Ok` once `shutdown` resolves; fails early only
/// for a registration the runtime could never accept (bad name or index).
pub async fn run_external(
    socket_path: &Path,
    reg: Registration,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NriError> {
    reg.validate()?;
    let mut shutdown = pin!(shutdown);
    let mut backoff = crate::supervise::Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    let mut failures: u32 = 0;
    loop {
        let session = Arc::new(Session::default());
        let registered = AtomicBool::new(false);
        let attempt = async {
            let stream =
                UnixStream::connect(socket_path)
                    .await
                    .map_err(|source| NriError::Connect {
                        path: socket_path.display().to_string(),
                        source,
                    })?;
            serve_session(
                stream,
                &reg,
                Arc::clone(&handler),
                &session,
                Some(&registered),
            )
            .await
        };
        let mut attempt = pin!(attempt);
        let result = tokio::select! {
            result = &mut attempt => Some(result),
            () = &mut shutdown => {
                // End the session the orderly way (its ttrpc server must finish shutting
                // down, or its accept task panics when dropped midway), but not forever.
                session.shutdown_requested.notify_one();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, &mut attempt).await;
                None
            }
        };
        if registered.load(Ordering::SeqCst) {
            session.shut_down_handler(&*handler).await;
            backoff.reset();
            failures = 0;
        }
        let wait = backoff.next_wait();
        match result {
            None => return Ok(()),
            Some(Ok(())) => {
                tracing::info!(path = %socket_path.display(), "runtime went away; reconnecting")
            }
            Some(Err(err)) => {
                // Once a second while the runtime is away: say it at the first failure and
                // then once a minute, not every time.
                if failures.is_multiple_of(FAILURES_PER_WARNING) {
                    tracing::warn!(path = %socket_path.display(), %err, ?wait, failures, "runtime connection failed; retrying");
                } else {
                    tracing::debug!(path = %socket_path.display(), %err, ?wait, "runtime connection failed; retrying");
                }
                failures += 1;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, index: &str) -> Registration {
        Registration {
            name: name.into(),
            index: index.into(),
        }
    }

    #[test]
    fn registration_is_checked_like_the_runtime_does() {
        assert!(reg("lifecycle", "10").validate().is_ok());
        assert!(reg("nri-life_cycle.v1+x", "00").validate().is_ok());
        assert!(matches!(
            reg("", "10").validate(),
            Err(NriError::InvalidName { .. })
        ));
        assert!(matches!(
            reg("a b", "10").validate(),
            Err(NriError::InvalidName { .. })
        ));
        for bad in ["1", "100", "ab", ""] {
            assert!(matches!(
                reg("x", bad).validate(),
                Err(NriError::InvalidIndex { .. })
            ));
        }
    }

    #[test]
    fn adopting_a_non_socket_fd_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let err = adopt_socket_for_test(file.as_raw_fd());
        assert!(err.contains("not a socket"), "{err}");
    }

    fn adopt_socket_for_test(fd: RawFd) -> String {
        SOCKET_ADOPTED.store(false, Ordering::SeqCst);
        match adopt_socket(fd) {
            Ok(_) => "adopted".into(),
            Err(err) => err.to_string(),
        }
    }
}
