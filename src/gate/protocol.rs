//! The wire protocol between the gate (PID 1 inside a container) and the plugin.
//!
//! This file is shared verbatim by both sides: the plugin compiles it as
//! `crate::gate::protocol`, the `no_std` gate includes it with `#[path]`. It must therefore use
//! nothing but `::core` and allocate nothing.
//!
//! # Transport
//!
//! One unix stream socket per gated container, on the host under the plugin's runtime directory,
//! bind-mounted read-only into the container at [`SOCKET_DIR`]. The gate connects when it
//! receives a stop signal, sends one request and waits for one reply; the plugin closes the
//! connection after replying.
//!
//! # Framing
//!
//! Every message is an 8-byte header followed by `length` payload bytes:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "NRLG"
//! 4       1     version (1)
//! 5       1     message type
//! 6       2     payload length, little endian, at most MAX_PAYLOAD
//! 8       n     payload
//! ```
//!
//! # Messages
//!
//! | type   | name         | direction      | payload                                      |
//! |--------|--------------|----------------|----------------------------------------------|
//! | `0x01` | `STOP`       | gate → plugin  | signal number, u32 little endian             |
//! | `0x02` | `HOLD_START` | gate → plugin  | reserved: "hold the entrypoint until the PreStart hook ran"; not sent yet |
//! | `0x81` | `REPLY`      | plugin → gate  | status (u8), then a UTF-8 reason of at most MAX_REASON bytes |
//!
//! Reply statuses: [`STATUS_DONE`], [`STATUS_FAILED`], [`STATUS_TIMED_OUT`] (the hook ran and
//! ended so; the gate forwards the signal in every case), [`STATUS_REFUSED`] (the peer is not
//! in this container, or the plugin does not know it), [`STATUS_UNSUPPORTED`] (unknown version
//! or message type). A plugin answers a request of a newer version with `UNSUPPORTED` in its own
//! version, so an older plugin never leaves a newer gate waiting.

/// First four bytes of every message.
pub const MAGIC: [u8; 4] = *b"NRLG";
/// Protocol version spoken by this build.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 8;
/// Largest payload either side accepts.
pub const MAX_PAYLOAD: usize = 256;
/// Largest reason carried by a reply.
pub const MAX_REASON: usize = 200;
/// Largest whole message.
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_PAYLOAD;

/// Gate → plugin: a stop signal arrived, run PreStop and answer.
pub const MSG_STOP: u8 = 0x01;
/// Gate → plugin, reserved for later: hold the entrypoint until a PreStart hook has run.
pub const MSG_HOLD_START: u8 = 0x02;
/// Plugin → gate: the answer to a request.
pub const MSG_REPLY: u8 = 0x81;

/// The hook ran to completion.
pub const STATUS_DONE: u8 = 0;
/// The hook ran and failed.
pub const STATUS_FAILED: u8 = 1;
/// The hook did not finish within its bound.
pub const STATUS_TIMED_OUT: u8 = 2;
/// The request was refused (peer not in this container, container unknown).
pub const STATUS_REFUSED: u8 = 3;
/// The request's version or type is not supported by this plugin.
pub const STATUS_UNSUPPORTED: u8 = 4;

/// Where the plugin mounts everything inside a gated container.
pub const CONTAINER_DIR: &str = "/.nri-lifecycle";
/// The gate binary inside a gated container.
pub const GATE_PATH: &str = "/.nri-lifecycle/gate";
/// The per-container socket directory inside a gated container.
pub const SOCKET_DIR: &str = "/.nri-lifecycle/run";
/// File name of the socket in [`SOCKET_DIR`] (and in its host directory).
pub const SOCKET_NAME: &str = "gate.sock";
/// [`SOCKET_DIR`] joined with [`SOCKET_NAME`].
pub const SOCKET_PATH: &str = "/.nri-lifecycle/run/gate.sock";

/// Gate option: the socket path (default [`SOCKET_PATH`]).
pub const OPT_SOCKET: &str = "--socket";
/// Gate option: how long to wait for the plugin's answer, in milliseconds.
pub const OPT_TIMEOUT_MS: &str = "--timeout-ms";
/// Gate option: one more signal number to treat as a stop signal.
pub const OPT_STOP_SIGNAL: &str = "--stop-signal";
/// Gate option: the container's termination-message file, where the gate writes why the
/// command could not be run. Given only when the container has one; never created by the gate.
pub const OPT_TERMINATION_MESSAGE: &str = "--termination-message";
/// Ends the gate's options; the original command follows.
pub const OPT_END: &str = "--";
/// How long the gate waits when no `--timeout-ms` is given.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: u8,
    pub len: u16,
}

/// Why a header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic,
    TooLong(u16),
}

/// Encodes a header for a payload of `len` bytes.
pub fn encode_header(kind: u8, len: u16) -> [u8; HEADER_LEN] {
    let l = len.to_le_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind, l[0], l[1],
    ]
}

/// Decodes a header. The version is returned, not checked: the caller decides what an unknown
/// version means (the plugin answers `UNSUPPORTED`, the gate fails open).
pub fn decode_header(buf: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
    if buf[0] != MAGIC[0] || buf[1] != MAGIC[1] || buf[2] != MAGIC[2] || buf[3] != MAGIC[3] {
        return Err(HeaderError::BadMagic);
    }
    let len = u16::from_le_bytes([buf[6], buf[7]]);
    if len as usize > MAX_PAYLOAD {
        return Err(HeaderError::TooLong(len));
    }
    Ok(Header {
        version: buf[4],
        kind: buf[5],
        len,
    })
}

/// Length of an encoded `STOP` request.
pub const STOP_LEN: usize = HEADER_LEN + 4;

/// Encodes a `STOP` request for `signal`.
pub fn encode_stop(signal: u32) -> [u8; STOP_LEN] {
    let h = encode_header(MSG_STOP, 4);
    let s = signal.to_le_bytes();
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], s[0], s[1], s[2], s[3],
    ]
}

/// Decodes the payload of a `STOP` request: the signal number.
pub fn decode_stop(payload: &[u8]) -> Option<u32> {
    if payload.len() != 4 {
        return None;
    }
    Some(u32::from_le_bytes([
        payload[0], payload[1], payload[2], payload[3],
    ]))
}

/// Encodes a `REPLY` into `out`, truncating `reason` to [`MAX_REASON`] bytes (on a UTF-8
/// boundary); returns the number of bytes written.
pub fn encode_reply(status: u8, reason: &str, out: &mut [u8; MAX_MESSAGE]) -> usize {
    let mut end = if reason.len() > MAX_REASON {
        MAX_REASON
    } else {
        reason.len()
    };
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let len = 1 + reason.len();
    out[..HEADER_LEN].copy_from_slice(&encode_header(MSG_REPLY, len as u16));
    out[HEADER_LEN] = status;
    out[HEADER_LEN + 1..HEADER_LEN + len].copy_from_slice(reason);
    HEADER_LEN + len
}

/// Decodes the payload of a `REPLY`: the status and the reason bytes.
pub fn decode_reply(payload: &[u8]) -> Option<(u8, &[u8])> {
    match payload.split_first() {
        Some((status, reason)) if reason.len() <= MAX_REASON => Some((*status, reason)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_round_trips() {
        let msg = encode_stop(15);
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&msg[..HEADER_LEN]);
        let header = decode_header(&h).unwrap();
        assert_eq!(
            header,
            Header {
                version: VERSION,
                kind: MSG_STOP,
                len: 4
            }
        );
        assert_eq!(decode_stop(&msg[HEADER_LEN..]), Some(15));
    }

    #[test]
    fn reply_round_trips_and_truncates_on_char_boundary() {
        let mut out = [0u8; MAX_MESSAGE];
        let n = encode_reply(STATUS_FAILED, "exit status 3", &mut out);
        let (status, reason) = decode_reply(&out[HEADER_LEN..n]).unwrap();
        assert_eq!(status, STATUS_FAILED);
        assert_eq!(reason, b"exit status 3");

        let long = "é".repeat(150);
        let n = encode_reply(STATUS_DONE, &long, &mut out);
        let (_, reason) = decode_reply(&out[HEADER_LEN..n]).unwrap();
        assert!(reason.len() <= MAX_REASON);
        assert!(::core::str::from_utf8(reason).is_ok());
    }

    #[test]
    fn bad_headers_are_rejected() {
        assert_eq!(
            decode_header(b"XXXX\x01\x01\x04\x00"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            decode_header(b"NRLG\x01\x01\xff\xff"),
            Err(HeaderError::TooLong(0xffff))
        );
    }

    #[test]
    fn socket_path_is_dir_and_name() {
        assert_eq!(SOCKET_PATH.len(), SOCKET_DIR.len() + 1 + SOCKET_NAME.len());
        assert!(SOCKET_PATH.starts_with(SOCKET_DIR));
        assert!(SOCKET_PATH.ends_with(SOCKET_NAME));
        assert!(GATE_PATH.starts_with(CONTAINER_DIR));
    }
}
