//! NRI's connection multiplexer: several logical byte streams over one socket.
//!
//! Every frame on the trunk is a 4-byte big-endian connection id, a 4-byte big-endian payload
//! length, then the payload. A logical connection is a plain byte stream: frame boundaries carry
//! no meaning, so one ttrpc message may span frames and one frame may hold parts of two.
//! Connection 0 is reserved; NRI uses 1 for the plugin's service (the runtime calls the
//! plugin) and 2 for the runtime's service (the plugin calls the runtime).
//!
//! Each opened connection is handed out as a [`DuplexStream`], which is what ttrpc reads from
//! and writes to. Behind it:
//! - one reader task takes frames off the trunk and queues each payload for its connection
//!   (bounded in bytes; a connection that falls that far behind ends the whole mux, as upstream
//!   does, rather than stalling the other connection);
//! - per connection, an inbound pump moves queued payloads into the duplex and an outbound pump
//!   cuts what ttrpc writes into frames of at most 4 KiB (`MAX_WRITE_PAYLOAD`).
//!
//! Frames for connections nobody opened are dropped. The mux ends when the trunk reaches EOF,
//! on the first I/O or protocol error, or when the [`Mux`] is dropped.
//!
//! The plugin needs none of this outside `nri`; what is public here ([`Mux`], its errors, the
//! two service connection ids and [`one_connection`]) is public because the runtime side in
//! the test-support crate runs the same mux on its end of the socket.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::sync::{mpsc, watch, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use ttrpc::asynchronous::transport::Listener;

/// A logical connection id.
pub type ConnId = u32;

/// Reserved by the protocol; never opened.
const RESERVED_CONN: ConnId = 0;
/// The plugin's ttrpc service (runtime → plugin calls).
pub const PLUGIN_SERVICE_CONN: ConnId = 1;
/// The runtime's ttrpc service (plugin → runtime calls).
pub const RUNTIME_SERVICE_CONN: ConnId = 2;

/// Frame header: connection id and payload length.
const HEADER_LEN: usize = 8;
/// Largest payload we accept: one maximal ttrpc message (10-byte header + 4 MiB body).
const MAX_PAYLOAD: usize = 10 + (4 << 20);
/// Largest payload we send. The Go side reads each frame into a buffered reader's 4 KiB
/// buffer and fails on a frame that does not fit, so we never send bigger ones.
const MAX_WRITE_PAYLOAD: usize = 4096;
/// Bytes that may wait, per connection, between the trunk and its reader.
const QUEUE_BYTES: usize = 2 * MAX_PAYLOAD;
/// What each queued frame costs on top of its payload, so that a flood of empty frames is
/// bounded too.
const FRAME_COST: usize = 64;
/// Size of each in-memory pipe between a pump and ttrpc.
const PIPE_BYTES: usize = 64 * 1024;

/// Why a mux ended.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MuxError {
    #[error("connection id 0 is reserved")]
    ReservedConn,
    #[error("connection {conn} opened twice")]
    DuplicateConn { conn: ConnId },
    #[error("frame for connection {conn} has {len} bytes, more than the limit of {max}")]
    Oversize {
        conn: ConnId,
        len: usize,
        max: usize,
    },
    #[error("connection {conn} fell behind by more than {max} bytes")]
    QueueFull { conn: ConnId, max: usize },
    #[error("trunk ended inside a frame")]
    Truncated,
    #[error("trunk i/o failed: {0}")]
    Io(String),
}

/// How the mux ended: the peer closed the trunk cleanly, or an error.
pub type MuxEnd = Result<(), MuxError>;

/// A running multiplexer. Dropping it stops every task and closes the trunk.
pub struct Mux {
    conns: HashMap<ConnId, DuplexStream>,
    end: watch::Receiver<Option<MuxEnd>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Mux {
    /// Starts multiplexing `trunk` and opens the given connections.
    pub fn new<T>(trunk: T, ids: &[ConnId]) -> Result<Mux, MuxError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut seen = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == RESERVED_CONN {
                return Err(MuxError::ReservedConn);
            }
            if seen.contains(&id) {
                return Err(MuxError::DuplicateConn { conn: id });
            }
            seen.push(id);
        }

        let (trunk_rd, trunk_wr) = tokio::io::split(trunk);
        let writer = Arc::new(Mutex::new(trunk_wr));
        let (end_tx, end_rx) = watch::channel(None);
        let end_tx = Arc::new(end_tx);

        let mut conns = HashMap::new();
        let mut routes = HashMap::new();
        let mut tasks = Vec::new();
        for &id in ids {
            let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
            let (pipe_rd, pipe_wr) = tokio::io::split(ours);
            let (queue_tx, queue_rx) = mpsc::unbounded_channel();
            let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
            routes.insert(
                id,
                Route {
                    queue: queue_tx,
                    budget,
                },
            );
            tasks.push(tokio::spawn(inbound_pump(queue_rx, pipe_wr)));
            tasks.push(tokio::spawn(outbound_pump(
                id,
                pipe_rd,
                Arc::clone(&writer),
                Arc::clone(&end_tx),
            )));
            conns.insert(id, theirs);
        }
        tasks.push(tokio::spawn(async move {
            let end = read_trunk(trunk_rd, routes).await;
            finish(&end_tx, end);
        }));

        Ok(Mux {
            conns,
            end: end_rx,
            tasks,
        })
    }

    /// Takes the stream of an opened connection (once).
    pub fn take(&mut self, id: ConnId) -> Option<DuplexStream> {
        self.conns.remove(&id)
    }

    /// Resolves when the mux has ended, with the reason.
    pub async fn closed(&self) -> MuxEnd {
        let mut end = self.end.clone();
        let result = match end.wait_for(Option::is_some).await {
            Ok(state) => state.clone().unwrap_or(Ok(())),
            // The sender lives in the tasks; if they are all gone the mux is over.
            Err(_) => Ok(()),
        };
        result
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A ttrpc listener that yields one multiplexed connection and then stays open (ttrpc's
/// server expects its listener to outlive the connection until it is shut down).
pub fn one_connection(conn: DuplexStream) -> Listener {
    use futures::StreamExt as _;
    let first = futures::stream::once(async move { Ok::<_, io::Error>(conn) });
    Listener::new(first.chain(futures::stream::pending()))
}

/// Records the first way the mux ended.
fn finish(end: &watch::Sender<Option<MuxEnd>>, result: MuxEnd) {
    end.send_if_modified(|state| {
        if state.is_none() {
            *state = Some(result);
            true
        } else {
            false
        }
    });
}

struct Route {
    queue: mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

/// Reads frames until EOF or error. Returning drops every route, which ends the inbound
/// pumps, which close the write side of each pipe: ttrpc then sees EOF.
async fn read_trunk<R>(mut trunk: R, routes: HashMap<ConnId, Route>) -> MuxEnd
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    loop {
        match read_header(&mut trunk, &mut header).await? {
            HeaderRead::Eof => return Ok(()),
            HeaderRead::Full => {}
        }
        let (conn, len) = parse_header(&header)?;
        let mut payload = vec![0u8; len];
        trunk.read_exact(&mut payload).await.map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                MuxError::Truncated
            } else {
                MuxError::Io(err.to_string())
            }
        })?;
        let Some(route) = routes.get(&conn) else {
            tracing::debug!(conn, len, "dropping frame for a connection nobody opened");
            continue;
        };
        if len == 0 {
            continue;
        }
        let cost = u32::try_from(len + FRAME_COST).map_err(|_| MuxError::Oversize {
            conn,
            len,
            max: MAX_PAYLOAD,
        })?;
        let permit = Arc::clone(&route.budget)
            .try_acquire_many_owned(cost)
            .map_err(|_| MuxError::QueueFull {
                conn,
                max: QUEUE_BYTES,
            })?;
        if route.queue.send((payload, permit)).is_err() {
            // The pump is gone (its ttrpc side hung up): nobody will read this connection.
            tracing::debug!(conn, len, "dropping frame for a closed connection");
        }
    }
}

enum HeaderRead {
    Full,
    Eof,
}

/// Reads a whole header; EOF before its first byte is a clean end, EOF inside it is not.
async fn read_header<R>(
    trunk: &mut R,
    header: &mut [u8; HEADER_LEN],
) -> Result<HeaderRead, MuxError>
where
    R: AsyncRead + Unpin,
{
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = trunk
            .read(&mut header[filled..])
            .await
            .map_err(|err| MuxError::Io(err.to_string()))?;
        if n == 0 {
            return if filled == 0 {
                Ok(HeaderRead::Eof)
            } else {
                Err(MuxError::Truncated)
            };
        }
        filled += n;
    }
    Ok(HeaderRead::Full)
}

/// Splits a frame header into connection id and payload length, refusing oversize frames.
fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(ConnId, usize), MuxError> {
    let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Err(MuxError::Oversize {
            conn,
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok((conn, len))
}

/// Appends one frame (header and payload) to `out`.
fn encode_frame(conn: ConnId, payload: &[u8], out: &mut Vec<u8>) {
    // Payloads come from our own pumps, at most MAX_WRITE_PAYLOAD bytes.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&conn.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Moves queued payloads of one connection into its pipe, releasing budget as it goes.
async fn inbound_pump(
    mut queue: mpsc::UnboundedReceiver<(Vec<u8>, OwnedSemaphorePermit)>,
    mut pipe: WriteHalf<DuplexStream>,
) {
    while let Some((payload, permit)) = queue.recv().await {
        if pipe.write_all(&payload).await.is_err() {
            // ttrpc dropped its end; keep draining so the budget is released.
            drop(permit);
            continue;
        }
        drop(permit);
    }
    // The trunk is finished: tell ttrpc.
    let _ = pipe.shutdown().await;
}

/// Frames whatever ttrpc writes on one connection and puts it on the trunk.
async fn outbound_pump<W>(
    conn: ConnId,
    mut pipe: ReadHalf<DuplexStream>,
    trunk: Arc<Mutex<W>>,
    end: Arc<watch::Sender<Option<MuxEnd>>>,
) where
    W: AsyncWrite + Unpin,
{
    let mut chunk = vec![0u8; MAX_WRITE_PAYLOAD];
    let mut frame = Vec::with_capacity(HEADER_LEN + MAX_WRITE_PAYLOAD);
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        frame.clear();
        encode_frame(conn, &chunk[..n], &mut frame);
        let mut trunk = trunk.lock().await;
        let written = match trunk.write_all(&frame).await {
            Ok(()) => trunk.flush().await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            finish(&end, Err(MuxError::Io(err.to_string())));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn frame(conn: ConnId, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(conn, payload, &mut out);
        out
    }

    #[test]
    fn header_round_trip() {
        let f = frame(2, b"abc");
        assert_eq!(&f[..8], &[0, 0, 0, 2, 0, 0, 0, 3]);
        let header: [u8; 8] = f[..8].try_into().unwrap();
        assert_eq!(parse_header(&header), Ok((2, 3)));
    }

    #[test]
    fn oversize_header_is_refused() {
        let mut header = [0u8; 8];
        header[3] = 1;
        header[4..].copy_from_slice(&u32::try_from(MAX_PAYLOAD + 1).unwrap().to_be_bytes());
        assert_eq!(
            parse_header(&header),
            Err(MuxError::Oversize {
                conn: 1,
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        header[4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_header(&header),
            Err(MuxError::Oversize { .. })
        ));
    }

    #[test]
    fn reserved_and_duplicate_ids_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = duplex(64);
            assert_eq!(Mux::new(a, &[0]).err(), Some(MuxError::ReservedConn));
            let (a, _b) = duplex(64);
            assert_eq!(
                Mux::new(a, &[1, 1]).err(),
                Some(MuxError::DuplicateConn { conn: 1 })
            );
        });
    }

    #[tokio::test]
    async fn frames_split_across_writes_are_reassembled_per_connection() {
        let (plugin_side, mut peer) = duplex(1 << 16);
        let mut mux = Mux::new(plugin_side, &[1, 2]).unwrap();
        let mut c1 = mux.take(1).unwrap();
        let mut c2 = mux.take(2).unwrap();

        let mut bytes = frame(1, b"hello ");
        bytes.extend(frame(2, b"other"));
        bytes.extend(frame(1, b"world"));
        // Deliver in awkward pieces: inside a header, inside a payload.
        for piece in bytes.chunks(3) {
            peer.write_all(piece).await.unwrap();
        }
        let mut got = [0u8; 11];
        c1.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        let mut got = [0u8; 5];
        c2.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"other");
    }

    #[tokio::test]
    async fn writes_are_framed_and_cut_to_the_write_limit() {
        let (plugin_side, mut peer) = duplex(1 << 16);
        let mut mux = Mux::new(plugin_side, &[1, 2]).unwrap();
        let mut c2 = mux.take(2).unwrap();
        let data: Vec<u8> = (0..(MAX_WRITE_PAYLOAD * 2 + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        c2.write_all(&data).await.unwrap();

        let mut received = Vec::new();
        while received.len() < data.len() {
            let mut header = [0u8; 8];
            peer.read_exact(&mut header).await.unwrap();
            let (conn, len) = parse_header(&header).unwrap();
            assert_eq!(conn, 2);
            assert!(len > 0 && len <= MAX_WRITE_PAYLOAD, "frame of {len} bytes");
            let mut payload = vec![0u8; len];
            peer.read_exact(&mut payload).await.unwrap();
            received.extend(payload);
        }
        assert_eq!(received, data);
    }

    #[tokio::test]
    async fn unknown_and_reserved_connections_are_dropped() {
        let (plugin_side, mut peer) = duplex(1 << 16);
        let mut mux = Mux::new(plugin_side, &[1]).unwrap();
        let mut c1 = mux.take(1).unwrap();
        let mut bytes = frame(7, b"nobody");
        bytes.extend(frame(0, b"reserved"));
        bytes.extend(frame(1, b"ok"));
        peer.write_all(&bytes).await.unwrap();
        let mut got = [0u8; 2];
        c1.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ok");
    }

    #[tokio::test]
    async fn oversize_frame_ends_the_mux_with_an_error() {
        let (plugin_side, mut peer) = duplex(1 << 16);
        let mut mux = Mux::new(plugin_side, &[1]).unwrap();
        let mut c1 = mux.take(1).unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&1u32.to_be_bytes());
        header.extend_from_slice(&u32::try_from(MAX_PAYLOAD + 1).unwrap().to_be_bytes());
        peer.write_all(&header).await.unwrap();
        assert_eq!(
            mux.closed().await,
            Err(MuxError::Oversize {
                conn: 1,
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        // The logical connection sees EOF.
        let mut rest = Vec::new();
        assert_eq!(c1.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn clean_eof_ends_the_mux_and_every_connection() {
        let (plugin_side, mut peer) = duplex(1 << 16);
        let mut mux = Mux::new(plugin_side, &[1, 2]).unwrap();
        let mut c1 = mux.take(1).unwrap();
        let mut c2 = mux.take(2).unwrap();
        peer.write_all(&frame(1, b"last")).await.unwrap();
        drop(peer);
        assert_eq!(mux.closed().await, Ok(()));
        let mut rest = Vec::new();
        c1.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
        rest.clear();
        assert_eq!(c2.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let (plugin_side, mut peer) = duplex(1 << 16);
        let mux = Mux::new(plugin_side, &[1]).unwrap();
        let f = frame(1, b"cut short");
        peer.write_all(&f[..f.len() - 2]).await.unwrap();
        drop(peer);
        assert_eq!(mux.closed().await, Err(MuxError::Truncated));

        let (plugin_side, mut peer) = duplex(1 << 16);
        let mux = Mux::new(plugin_side, &[1]).unwrap();
        peer.write_all(&[0, 0, 0]).await.unwrap();
        drop(peer);
        assert_eq!(mux.closed().await, Err(MuxError::Truncated));
    }

    #[tokio::test]
    async fn a_connection_that_falls_behind_ends_the_mux() {
        let (plugin_side, mut peer) = duplex(1 << 20);
        // Nobody reads connection 1.
        let mut mux = Mux::new(plugin_side, &[1]).unwrap();
        let _c1 = mux.take(1).unwrap();
        let big = vec![7u8; MAX_PAYLOAD];
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                if peer.write_all(&frame(1, &big)).await.is_err() {
                    break;
                }
            }
            peer
        });
        assert_eq!(
            mux.closed().await,
            Err(MuxError::QueueFull {
                conn: 1,
                max: QUEUE_BYTES
            })
        );
        drop(mux);
        let _ = writer.await;
    }
}
