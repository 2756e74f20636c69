//! nri-lifecycle-gate: the PID 1 that makes a container's stop wait for its PreStop hook.
//!
//! Usage: `nri-lifecycle-gate [--socket PATH] [--timeout-ms N] [--stop-signal N]
//! [--termination-message PATH] -- CMD ARGS...`
//!
//! It starts `CMD` (looked up in `PATH` the way runc looks up an entrypoint), reaps every
//! zombie, forwards every signal to the command at once except the stop signals (SIGTERM,
//! SIGINT, SIGQUIT and the optional `--stop-signal`): for those it first asks the plugin over
//! the unix socket to run the container's PreStop hook and waits for its answer, at most
//! `--timeout-ms`. Whatever goes wrong, the signal is forwarded: the gate never prevents a stop.
//! It exits with the command's status (128 + signal when the command was killed).
//!
//! When `CMD` cannot be run, the gate fails the way runc fails a container it cannot start: the
//! same error text, on stderr and in the termination-message file when one is given (it must
//! exist; the gate never creates it), and exit status 128 where runc refuses to start the
//! container, or 1 when the final `execve` fails (runc's status then).
//!
//! Built without std (a static std binary is over 1 MiB): plain glibc calls, no allocation,
//! no threads.

#![no_std]
#![no_main]

#[path = "../src/gate/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use core::ffi::{c_char, c_int, c_void};

type PidT = c_int;

#[repr(C)]
struct SigSet([u64; 16]);

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

#[repr(C)]
struct TimeSpec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct SockAddrUn {
    family: u16,
    path: [u8; 108],
}

/// `struct signalfd_siginfo` (128 bytes); only the first fields are read.
#[repr(C)]
struct SignalFdInfo {
    signo: u32,
    errno: i32,
    code: i32,
    pid: u32,
    rest: [u32; 28],
}

// Static glibc pulls in a few unwinding symbols from libgcc_eh/libgcc.
#[link(name = "c")]
#[link(name = "gcc_eh")]
#[link(name = "gcc")]
#[link(name = "c")]
extern "C" {
    static environ: *const *const c_char;
    fn fork() -> PidT;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
        -> c_int;
    fn getenv(name: *const c_char) -> *const c_char;
    fn stat(path: *const c_char, buf: *mut StatBuf) -> c_int;
    fn access(path: *const c_char, mode: c_int) -> c_int;
    fn syscall(number: i64, ...) -> i64;
    fn getuid() -> u32;
    fn geteuid() -> u32;
    fn getgid() -> u32;
    fn getegid() -> u32;
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    fn _exit(code: c_int) -> !;
    fn abort() -> !;
    fn waitpid(pid: PidT, status: *mut c_int, options: c_int) -> PidT;
    fn kill(pid: PidT, sig: c_int) -> c_int;
    fn getpid() -> PidT;
    fn setpgid(pid: PidT, pgid: PidT) -> c_int;
    fn tcsetpgrp(fd: c_int, pgrp: PidT) -> c_int;
    fn isatty(fd: c_int) -> c_int;
    fn prctl(option: c_int, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> c_int;
    fn sigfillset(set: *mut SigSet) -> c_int;
    fn sigdelset(set: *mut SigSet, sig: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn signalfd(fd: c_int, mask: *const SigSet, flags: c_int) -> c_int;
    fn poll(fds: *mut PollFd, n: u64, timeout: c_int) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize;
    fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    fn close(fd: c_int) -> c_int;
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const SockAddrUn, len: u32) -> c_int;
    fn send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> isize;
    fn clock_gettime(clock: c_int, ts: *mut TimeSpec) -> c_int;
    fn strerror(errnum: c_int) -> *const c_char;
    fn strlen(s: *const c_char) -> usize;
    fn __errno_location() -> *mut c_int;
}

const SIGINT: c_int = 2;
const SIGQUIT: c_int = 3;
const SIGILL: c_int = 4;
const SIGTRAP: c_int = 5;
const SIGABRT: c_int = 6;
const SIGBUS: c_int = 7;
const SIGFPE: c_int = 8;
const SIGSEGV: c_int = 11;
const SIGPIPE: c_int = 13;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const SIGTTIN: c_int = 21;
const SIGTTOU: c_int = 22;
const SIGSYS: c_int = 31;
const SIG_SETMASK: c_int = 2;
const SFD_NONBLOCK: c_int = 0o4000;
const SFD_CLOEXEC: c_int = 0o2000000;
const AF_UNIX: c_int = 1;
const SOCK_STREAM: c_int = 1;
const SOCK_NONBLOCK: c_int = 0o4000;
const SOCK_CLOEXEC: c_int = 0o2000000;
const MSG_NOSIGNAL: c_int = 0x4000;
const POLLIN: i16 = 1;
const WNOHANG: c_int = 1;
const CLOCK_MONOTONIC: c_int = 1;
const PR_SET_CHILD_SUBREAPER: c_int = 36;
const SI_USER: i32 = 0;
const EINTR: c_int = 4;
const EAGAIN: c_int = 11;
const ENOENT: c_int = 2;
const EPERM: c_int = 1;
const ENOSYS: c_int = 38;
const O_WRONLY: c_int = 0o1;
const O_TRUNC: c_int = 0o1000;
const O_NOFOLLOW: c_int = 0o400000;
const O_CLOEXEC: c_int = 0o2000000;
const AT_FDCWD: c_int = -100;
const AT_EACCESS: c_int = 0x200;
const X_OK: c_int = 1;
const SYS_FACCESSAT2: i64 = 439;
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
/// The status of a container whose entrypoint runc refused to start (containerd reports the
/// same for a task that could not be created).
const EXIT_CANNOT_START: c_int = 128;
/// runc's status when the final `execve` of an entrypoint it had accepted fails.
const EXIT_EXEC_FAILED: c_int = 1;
/// `PATH_MAX`, with room for the terminating NUL.
const PATH_BUF: usize = 4097;

/// `struct stat`, read only for `st_mode`: at byte 24 on x86_64, at byte 16 in the generic
/// layout of the other 64-bit architectures (aarch64, riscv64).
#[repr(C, align(8))]
struct StatBuf([u8; 256]);

impl StatBuf {
    fn mode(&self) -> u32 {
        let at = if cfg!(target_arch = "x86_64") { 24 } else { 16 };
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { abort() }
}

fn errno() -> c_int {
    // SAFETY: glibc returns a valid pointer to this thread's errno.
    unsafe { *__errno_location() }
}

/// The bytes of a NUL-terminated C string.
///
/// # Safety
/// `s` must point to a valid NUL-terminated string that outlives the returned slice.
unsafe fn cstr<'a>(s: *const c_char) -> &'a [u8] {
    // SAFETY: the caller guarantees a valid NUL-terminated string.
    unsafe { core::slice::from_raw_parts(s as *const u8, strlen(s)) }
}

/// Writes all of `bytes` to `fd`, giving up on the first error other than EINTR.
fn write_all(fd: c_int, bytes: &[u8]) {
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: the pointer and length stay within `bytes`.
        let n = unsafe {
            write(
                fd,
                bytes[off..].as_ptr() as *const c_void,
                bytes.len() - off,
            )
        };
        if n <= 0 {
            if n < 0 && errno() == EINTR {
                continue;
            }
            return;
        }
        off += n as usize;
    }
}

/// A fixed buffer for one stderr line (no allocation). Large enough for an error that names a
/// path twice; the kubelet keeps at most 4 KiB of a termination message anyway.
struct Line {
    buf: [u8; 4096],
    len: usize,
}

impl Line {
    fn new() -> Line {
        let mut l = Line::bare();
        l.s(b"nri-lifecycle-gate: ");
        l
    }

    /// A line without the gate's name in front, for the errors that stand in for runc's.
    fn bare() -> Line {
        Line {
            buf: [0; 4096],
            len: 0,
        }
    }

    fn s(&mut self, bytes: &[u8]) -> &mut Line {
        for &b in bytes {
            if self.len < self.buf.len() - 1 {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn n(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let tmp = digits;
        self.s(&tmp[i..])
    }

    fn err(&mut self, e: c_int) -> &mut Line {
        // SAFETY: strerror returns a valid NUL-terminated string for any errno value, and we
        // copy it before any other libc call.
        let msg = unsafe { cstr(strerror(e)) };
        self.s(msg)
    }

    /// An errno as Go prints it (runc's messages come from Go): the C library's text with a
    /// lower-case first letter ("no such file or directory"), "errno N" for an unknown one.
    fn go_err(&mut self, e: c_int) -> &mut Line {
        // SAFETY: as in `err`.
        let msg = unsafe { cstr(strerror(e)) };
        if msg.starts_with(b"Unknown error") {
            return self.s(b"errno ").n(e as u64);
        }
        match msg.split_first() {
            Some((first, rest)) => self.s(&[first.to_ascii_lowercase()]).s(rest),
            None => self,
        }
    }

    /// `bytes` in double quotes as Go's `strconv.Quote` writes them: backslash escapes for
    /// quotes, backslashes and control characters, `\xNN` for bytes that are not UTF-8, `\u00NN`
    /// for the non-printable Latin-1 characters. Every other character is kept as is (Go would
    /// also escape the rare non-printable ones beyond Latin-1).
    fn quoted(&mut self, mut bytes: &[u8]) -> &mut Line {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.s(b"\"");
        while !bytes.is_empty() {
            let (valid, bad) = match core::str::from_utf8(bytes) {
                Ok(all) => (all, 0),
                Err(e) => {
                    // SAFETY: `valid_up_to` bytes were just checked to be UTF-8.
                    let v = unsafe { core::str::from_utf8_unchecked(&bytes[..e.valid_up_to()]) };
                    (v, e.error_len().unwrap_or(bytes.len() - e.valid_up_to()))
                }
            };
            for c in valid.chars() {
                let mut utf8 = [0u8; 4];
                match c {
                    '"' => self.s(b"\\\""),
                    '\\' => self.s(b"\\\\"),
                    '\x07' => self.s(b"\\a"),
                    '\x08' => self.s(b"\\b"),
                    '\x0c' => self.s(b"\\f"),
                    '\n' => self.s(b"\\n"),
                    '\r' => self.s(b"\\r"),
                    '\t' => self.s(b"\\t"),
                    '\x0b' => self.s(b"\\v"),
                    '\0'..='\x1f' | '\x7f' => {
                        let b = c as u8;
                        self.s(b"\\x")
                            .s(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
                    }
                    '\u{80}'..='\u{a0}' | '\u{ad}' => {
                        let b = c as u32 as u8;
                        self.s(b"\\u00")
                            .s(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
                    }
                    _ => self.s(c.encode_utf8(&mut utf8).as_bytes()),
                };
            }
            let rest = &bytes[valid.len()..];
            for &b in &rest[..bad] {
                self.s(b"\\x")
                    .s(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            bytes = &rest[bad..];
        }
        self.s(b"\"")
    }

    fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn emit(&mut self) {
        self.buf[self.len] = b'\n';
        self.len += 1;
        write_all(2, &self.buf[..self.len]);
    }
}

fn now_ms() -> u64 {
    let mut ts = TimeSpec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    Some(v)
}

struct Options {
    socket: *const c_char,
    socket_len: usize,
    timeout_ms: u64,
    extra_stop: c_int,
    /// The container's termination-message file, or null.
    termination: *const c_char,
    /// Index in argv of the command.
    command: usize,
}

const DEFAULT_SOCKET: &[u8] = b"/.nri-lifecycle/run/gate.sock\0";

/// # Safety
/// `argv` must hold `argc` valid C strings.
unsafe fn parse_options(argc: usize, argv: *const *const c_char) -> Option<Options> {
    let mut o = Options {
        socket: DEFAULT_SOCKET.as_ptr() as *const c_char,
        socket_len: DEFAULT_SOCKET.len() - 1,
        timeout_ms: protocol::DEFAULT_TIMEOUT_MS,
        extra_stop: 0,
        termination: core::ptr::null(),
        command: 0,
    };
    let mut i = 1;
    while i < argc {
        // SAFETY: i < argc.
        let arg = unsafe { cstr(*argv.add(i)) };
        if arg == protocol::OPT_END.as_bytes() {
            if i + 1 >= argc {
                return None;
            }
            o.command = i + 1;
            return Some(o);
        }
        let value = if i + 1 < argc {
            // SAFETY: i + 1 < argc.
            Some(unsafe { *argv.add(i + 1) })
        } else {
            None
        };
        let known = arg == protocol::OPT_SOCKET.as_bytes()
            || arg == protocol::OPT_TIMEOUT_MS.as_bytes()
            || arg == protocol::OPT_STOP_SIGNAL.as_bytes()
            || arg == protocol::OPT_TERMINATION_MESSAGE.as_bytes();
        match value {
            Some(v) if known => {
                // SAFETY: argv entries are valid C strings.
                let vb = unsafe { cstr(v) };
                if arg == protocol::OPT_SOCKET.as_bytes() {
                    o.socket = v;
                    o.socket_len = vb.len();
                } else if arg == protocol::OPT_TERMINATION_MESSAGE.as_bytes() {
                    o.termination = v;
                } else {
                    let parsed = parse_u64(vb);
                    match parsed {
                        Some(n) if arg == protocol::OPT_TIMEOUT_MS.as_bytes() => o.timeout_ms = n,
                        Some(n) if (1..=64).contains(&n) => o.extra_stop = n as c_int,
                        _ => {
                            Line::new()
                                .s(b"ignoring bad value for ")
                                .s(arg)
                                .s(b": ")
                                .s(vb)
                                .emit();
                        }
                    }
                }
                i += 2;
            }
            _ => {
                Line::new().s(b"ignoring unknown option ").s(arg).emit();
                i += 1;
            }
        }
    }
    None
}

/// What the gate does while a PreStop request is outstanding.
struct Pending {
    fd: c_int,
    signal: c_int,
    deadline_ms: u64,
    buf: [u8; protocol::MAX_MESSAGE],
    got: usize,
}

/// Connects to the plugin and sends `STOP`; the socket is non-blocking.
fn send_stop(path: *const c_char, path_len: usize, signal: c_int) -> Result<c_int, c_int> {
    let mut addr = SockAddrUn {
        family: AF_UNIX as u16,
        path: [0; 108],
    };
    if path_len >= addr.path.len() {
        return Err(ENOENT);
    }
    // SAFETY: `path` is a valid C string of `path_len` bytes (checked above to fit).
    let p = unsafe { core::slice::from_raw_parts(path as *const u8, path_len) };
    addr.path[..path_len].copy_from_slice(p);
    // SAFETY: plain socket creation.
    let fd = unsafe { socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    let len = (2 + path_len + 1) as u32;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    if unsafe { connect(fd, &addr, len) } != 0 {
        let e = errno();
        // SAFETY: fd is ours.
        unsafe { close(fd) };
        return Err(e);
    }
    let msg = protocol::encode_stop(signal as u32);
    // SAFETY: `msg` is a valid buffer; a fresh unix stream socket takes 12 bytes at once.
    let n = unsafe { send(fd, msg.as_ptr() as *const c_void, msg.len(), MSG_NOSIGNAL) };
    if n != msg.len() as isize {
        let e = if n < 0 { errno() } else { EAGAIN };
        // SAFETY: fd is ours.
        unsafe { close(fd) };
        return Err(e);
    }
    Ok(fd)
}

fn signal_name(sig: c_int) -> &'static [u8] {
    match sig {
        SIGINT => b"SIGINT",
        SIGQUIT => b"SIGQUIT",
        SIGTERM => b"SIGTERM",
        _ => b"signal",
    }
}

fn forward(child: PidT, sig: c_int) {
    // SAFETY: kill has no memory preconditions; ESRCH (child gone) is fine to ignore.
    unsafe { kill(child, sig) };
}

/// Reads what the plugin sent; returns `Some(message)` when the exchange is over (`None` in the
/// message means an ordinary completion that is not worth a line on stderr).
fn read_reply(p: &mut Pending) -> Option<Option<(&'static [u8], &'static [u8])>> {
    const CLOSED: Option<Option<(&[u8], &[u8])>> = Some(Some((
        b"plugin closed the connection without an answer",
        b"",
    )));
    let mut closed = false;
    loop {
        if p.got == p.buf.len() {
            return Some(Some((b"plugin sent an oversized answer", b"")));
        }
        // SAFETY: reading into the unused tail of `p.buf`.
        let n = unsafe {
            read(
                p.fd,
                p.buf[p.got..].as_mut_ptr() as *mut c_void,
                p.buf.len() - p.got,
            )
        };
        if n == 0 {
            closed = true;
            break;
        }
        if n < 0 {
            let e = errno();
            if e == EINTR {
                continue;
            }
            if e == EAGAIN {
                break;
            }
            return Some(Some((b"lost the connection to the plugin", b"")));
        }
        p.got += n as usize;
    }
    if p.got < protocol::HEADER_LEN {
        return if closed { CLOSED } else { None };
    }
    let mut h = [0u8; protocol::HEADER_LEN];
    h.copy_from_slice(&p.buf[..protocol::HEADER_LEN]);
    let header = match protocol::decode_header(&h) {
        Ok(h) if h.kind == protocol::MSG_REPLY => h,
        _ => return Some(Some((b"plugin sent an unreadable answer", b""))),
    };
    let end = protocol::HEADER_LEN + header.len as usize;
    if p.got < end {
        return if closed { CLOSED } else { None };
    }
    match protocol::decode_reply(&p.buf[protocol::HEADER_LEN..end]) {
        Some((protocol::STATUS_DONE, _))
        | Some((protocol::STATUS_FAILED, _))
        | Some((protocol::STATUS_TIMED_OUT, _)) => Some(None),
        Some((protocol::STATUS_REFUSED, _)) => Some(Some((b"plugin refused the request", b""))),
        Some((protocol::STATUS_UNSUPPORTED, _)) => {
            Some(Some((b"plugin does not support this gate's protocol", b"")))
        }
        _ => Some(Some((b"plugin sent an unknown status", b""))),
    }
}

fn exit_code(status: c_int) -> c_int {
    let sig = status & 0x7f;
    if sig == 0 {
        (status >> 8) & 0xff
    } else {
        128 + sig
    }
}

/// Why the command cannot be run, each in the words runc 1.1 uses for it.
#[derive(Clone, Copy)]
enum ExecError {
    /// A name with a slash that cannot be stat'ed: `exec: "NAME": stat NAME: ERR`.
    Stat(c_int),
    /// A name with a slash naming a directory or a file without execute bits:
    /// `exec: "NAME": permission denied`.
    NoExecBits,
    /// A name without a slash found in no `PATH` entry:
    /// `exec: "NAME": executable file not found in $PATH`.
    NotInPath,
    /// A name without a slash found only through a relative `PATH` entry:
    /// `exec: "NAME": cannot run executable found relative to current directory`.
    RelativePath,
    /// The file found cannot be executed (no permission, noexec mount) or its `execve` failed:
    /// `exec FILE: ERR`.
    Exec(c_int),
}

/// The file to execute for the command `name`: `name` itself or a `PATH` entry joined with it.
struct Exe {
    buf: [u8; PATH_BUF],
    /// Null until the lookup succeeded; then `name` or `buf`, NUL-terminated.
    path: *const c_char,
}

/// `stat(2)`'s verdict on a candidate, as Go's `exec.LookPath` of Go 1.19 (which runc 1.1 is
/// built with) judges it: usable when it is not a directory and has an execute bit.
fn executable(path: *const c_char) -> Result<(), ExecError> {
    let mut st = StatBuf([0; 256]);
    loop {
        // SAFETY: `path` is a valid C string and `st` is larger than any `struct stat`.
        if unsafe { stat(path, &mut st) } == 0 {
            break;
        }
        let e = errno();
        if e != EINTR {
            return Err(ExecError::Stat(e));
        }
    }
    let mode = st.mode();
    if mode & S_IFMT != S_IFDIR && mode & 0o111 != 0 {
        Ok(())
    } else {
        Err(ExecError::NoExecBits)
    }
}

/// Writes `dir` joined with `file` into `out` as Go's `filepath.Join` does: lexically cleaned
/// (repeated slashes, `.` and resolvable `..` elements removed, no trailing slash), NUL-terminated.
/// `None` when it does not fit.
fn join_clean(dir: &[u8], file: &[u8], out: &mut [u8; PATH_BUF]) -> Option<usize> {
    let total = dir.len() + 1 + file.len();
    let byte = |i: usize| {
        if i < dir.len() {
            dir[i]
        } else if i == dir.len() {
            b'/'
        } else {
            file[i - dir.len() - 1]
        }
    };
    let rooted = byte(0) == b'/';
    let (mut r, mut w, mut floor) = (0, 0, 0);
    if rooted {
        out[0] = b'/';
        (r, w, floor) = (1, 1, 1);
    }
    let end_at = |i: usize| i == total || byte(i) == b'/';
    while r < total {
        if byte(r) == b'/' || (byte(r) == b'.' && end_at(r + 1)) {
            r += 1;
        } else if byte(r) == b'.' && r + 1 < total && byte(r + 1) == b'.' && end_at(r + 2) {
            r += 2;
            if w > floor {
                // Drop the last element written.
                w -= 1;
                while w > floor && out[w] != b'/' {
                    w -= 1;
                }
            } else if !rooted {
                // A leading `..` of a relative path stays.
                if w > 0 {
                    out[w] = b'/';
                    w += 1;
                }
                if w + 2 >= PATH_BUF {
                    return None;
                }
                out[w] = b'.';
                out[w + 1] = b'.';
                w += 2;
                floor = w;
            }
        } else {
            if w != usize::from(rooted) {
                out[w] = b'/';
                w += 1;
            }
            while r < total && byte(r) != b'/' {
                if w + 1 >= PATH_BUF {
                    return None;
                }
                out[w] = byte(r);
                w += 1;
                r += 1;
            }
        }
        if w + 1 >= PATH_BUF {
            return None;
        }
    }
    if w == 0 {
        out[0] = b'.';
        w = 1;
    }
    out[w] = 0;
    Some(w)
}

/// Finds the file runc would execute for `name`: `name` itself when it holds a slash, else the
/// first `PATH` entry (an empty one meaning `.`) holding an executable `name`; then checks that
/// the caller may execute it (`faccessat2` with `AT_EACCESS`, which also sees noexec mounts),
/// as runc does before it reports the container created.
///
/// # Safety
/// `name` must be a valid C string that outlives `exe`.
unsafe fn look_path(name: *const c_char, exe: &mut Exe) -> Result<(), ExecError> {
    // SAFETY: the caller guarantees a valid C string.
    let file = unsafe { cstr(name) };
    if file.contains(&b'/') {
        executable(name)?;
        exe.path = name;
    } else {
        // SAFETY: a NUL-terminated name; getenv returns null or a valid C string.
        let path = unsafe { getenv(c"PATH".as_ptr()) };
        if path.is_null() {
            return Err(ExecError::NotInPath);
        }
        // SAFETY: non-null, from getenv.
        let path = unsafe { cstr(path) };
        let mut found = false;
        if !path.is_empty() {
            for dir in path.split(|&b| b == b':') {
                let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
                if join_clean(dir, file, &mut exe.buf).is_none() {
                    continue;
                }
                if executable(exe.buf.as_ptr() as *const c_char).is_ok() {
                    found = true;
                    break;
                }
            }
        }
        if !found {
            return Err(ExecError::NotInPath);
        }
        if exe.buf[0] != b'/' {
            return Err(ExecError::RelativePath);
        }
        exe.path = exe.buf.as_ptr() as *const c_char;
    }
    eaccess(exe.path).map_err(ExecError::Exec)
}

/// Whether the caller may execute `path`, as runc's check before the container is created.
fn eaccess(path: *const c_char) -> Result<(), c_int> {
    // SAFETY: `path` is a valid C string; faccessat2 takes no other pointers.
    let r = unsafe {
        syscall(
            SYS_FACCESSAT2,
            i64::from(AT_FDCWD),
            path,
            i64::from(X_OK),
            i64::from(AT_EACCESS),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = errno();
    if e != ENOSYS && e != EPERM {
        return Err(e);
    }
    // No faccessat2 (old kernel, or a seccomp filter refusing it): access(2) answers for the
    // real ids, the same ones unless the gate runs set-id.
    // SAFETY: plain id queries.
    let same_ids = unsafe { getuid() == geteuid() && getgid() == getegid() };
    if !same_ids {
        return Ok(());
    }
    // SAFETY: `path` is a valid C string.
    if unsafe { access(path, X_OK) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// Reports that the command cannot be run, in runc's words, on stderr and in the container's
/// termination-message file (only when it exists), then exits with `code`.
///
/// # Safety
/// `name` and `exe` (when not null) must be valid C strings, `termination` null or one.
unsafe fn cannot_run(
    err: ExecError,
    name: *const c_char,
    exe: *const c_char,
    termination: *const c_char,
    code: c_int,
) -> ! {
    // SAFETY: the caller guarantees valid C strings.
    let (name, exe) = unsafe { (cstr(name), if exe.is_null() { &[][..] } else { cstr(exe) }) };
    let mut line = Line::bare();
    match err {
        ExecError::Exec(e) => {
            line.s(b"exec ").s(exe).s(b": ").go_err(e);
        }
        ExecError::Stat(e) => {
            line.s(b"exec: ")
                .quoted(name)
                .s(b": stat ")
                .s(name)
                .s(b": ")
                .go_err(e);
        }
        ExecError::NoExecBits => {
            line.s(b"exec: ").quoted(name).s(b": permission denied");
        }
        ExecError::NotInPath => {
            line.s(b"exec: ")
                .quoted(name)
                .s(b": executable file not found in $PATH");
        }
        ExecError::RelativePath => {
            line.s(b"exec: ")
                .quoted(name)
                .s(b": cannot run executable found relative to current directory");
        }
    }
    if !termination.is_null() {
        // Never created: the kubelet bind-mounts the file, and without it there is no reader.
        // SAFETY: a valid C string; open takes no other pointers.
        let fd = unsafe { open(termination, O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC) };
        if fd >= 0 {
            write_all(fd, line.text());
            // SAFETY: the fd is ours.
            unsafe { close(fd) };
        }
    }
    line.emit();
    // SAFETY: exiting.
    unsafe { _exit(code) }
}

/// Replaces the process with the command (`exe` found by [`look_path`]), as runc's final
/// `execve`; when that fails, reports it like runc and exits with runc's status for it.
///
/// # Safety
/// `argv` must be a NULL-terminated array of valid C strings, `exe` and `termination` valid C
/// strings (`termination` may be null).
unsafe fn exec_command(
    exe: *const c_char,
    argv: *const *const c_char,
    termination: *const c_char,
) -> ! {
    // SAFETY: the caller guarantees valid pointers; `environ` is the process's environment.
    unsafe {
        loop {
            execve(exe, argv, environ);
            if errno() != EINTR {
                break;
            }
        }
        let e = errno();
        cannot_run(
            ExecError::Exec(e),
            *argv,
            exe,
            termination,
            EXIT_EXEC_FAILED,
        )
    }
}

#[no_mangle]
pub extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: the C runtime hands us argc valid strings in argv.
    let opts = match unsafe { parse_options(argc.max(0) as usize, argv) } {
        Some(o) => o,
        None => {
            Line::new()
                .s(b"usage: nri-lifecycle-gate [--socket PATH] [--timeout-ms N] [--stop-signal N] [--termination-message PATH] -- COMMAND [ARGS...]")
                .emit();
            return 127;
        }
    };
    // SAFETY: opts.command < argc, and argv is NULL-terminated.
    let cmd = unsafe { argv.add(opts.command) };
    let mut found = Exe {
        buf: [0; PATH_BUF],
        path: core::ptr::null(),
    };
    // The command is looked up before anything else, as runc looks up an entrypoint before
    // it reports the container created: a command that cannot run ends the gate at once.
    // SAFETY: `*cmd` is a valid C string living as long as the process.
    if let Err(e) = unsafe { look_path(*cmd, &mut found) } {
        // SAFETY: valid C strings (or null) from argv and `found`.
        unsafe { cannot_run(e, *cmd, found.path, opts.termination, EXIT_CANNOT_START) }
    }
    // Points into `found` (or argv), both alive until the process execs or exits.
    let exe = found.path;

    // Block every asynchronous signal before the fork so none is lost; the synchronous ones
    // keep their default action.
    let mut set = SigSet([0; 16]);
    let mut old = SigSet([0; 16]);
    // SAFETY: `set` and `old` are valid sigset_t buffers (glibc's sigset_t is 128 bytes).
    let sfd = unsafe {
        sigfillset(&mut set);
        for s in [SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS] {
            sigdelset(&mut set, s);
        }
        sigprocmask(SIG_SETMASK, &set, &mut old);
        signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)
    };
    if sfd < 0 {
        let e = errno();
        Line::new()
            .s(b"cannot create a signalfd (")
            .err(e)
            .s(b"), running the command without a gate")
            .emit();
        // SAFETY: restore the mask we found, then exec with a valid argv.
        unsafe {
            sigprocmask(SIG_SETMASK, &old, core::ptr::null_mut());
            exec_command(exe, cmd, opts.termination)
        }
    }
    // SAFETY: plain syscalls.
    let me = unsafe { getpid() };
    if me != 1 {
        // Not PID 1 (e.g. under another init): still collect orphans.
        // SAFETY: plain prctl.
        unsafe { prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }

    // SAFETY: after fork the child only makes async-signal-safe calls before exec.
    let child = unsafe { fork() };
    if child < 0 {
        let e = errno();
        Line::new()
            .s(b"cannot fork (")
            .err(e)
            .s(b"), running the command without a gate")
            .emit();
        // SAFETY: as above.
        unsafe {
            close(sfd);
            sigprocmask(SIG_SETMASK, &old, core::ptr::null_mut());
            exec_command(exe, cmd, opts.termination)
        }
    }
    if child == 0 {
        // SAFETY: the child: its own process group, the terminal's foreground group when
        // stdin is a terminal (SIGTTOU is still blocked here, so tcsetpgrp cannot stop us),
        // the original signal mask, then exec.
        unsafe {
            setpgid(0, 0);
            if isatty(0) == 1 {
                tcsetpgrp(0, getpid());
            }
            sigprocmask(SIG_SETMASK, &old, core::ptr::null_mut());
            exec_command(exe, cmd, opts.termination)
        }
    }

    let mut pending: Option<Pending> = None;
    let mut prestop_asked = false;
    loop {
        let mut fds = [
            PollFd {
                fd: sfd,
                events: POLLIN,
                revents: 0,
            },
            PollFd {
                fd: -1,
                events: POLLIN,
                revents: 0,
            },
        ];
        let mut timeout: c_int = -1;
        if let Some(p) = &pending {
            fds[1].fd = p.fd;
            let now = now_ms();
            timeout = if p.deadline_ms > now {
                (p.deadline_ms - now).min(c_int::MAX as u64) as c_int
            } else {
                0
            };
        }
        // SAFETY: `fds` is a valid array of two pollfds.
        let n = unsafe { poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            if errno() == EINTR {
                continue;
            }
            // Nothing sensible is left to do but keep reaping; avoid spinning.
            timeout = 100;
            // SAFETY: an empty poll used as a sleep.
            unsafe { poll(core::ptr::null_mut(), 0, timeout) };
            continue;
        }

        // Signals first: a second stop signal or the child's exit beats the plugin's answer.
        loop {
            let mut info = SignalFdInfo {
                signo: 0,
                errno: 0,
                code: 0,
                pid: 0,
                rest: [0; 28],
            };
            // SAFETY: reading one signalfd_siginfo (128 bytes) into `info`.
            let r = unsafe {
                read(
                    sfd,
                    &mut info as *mut SignalFdInfo as *mut c_void,
                    core::mem::size_of::<SignalFdInfo>(),
                )
            };
            if r != core::mem::size_of::<SignalFdInfo>() as isize {
                break;
            }
            let sig = info.signo as c_int;
            if sig == SIGCHLD {
                let mut status: c_int = 0;
                loop {
                    // SAFETY: `status` is a valid out pointer.
                    let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
                    if pid <= 0 {
                        break;
                    }
                    if pid == child {
                        // SAFETY: exiting; the kernel reclaims everything.
                        unsafe { _exit(exit_code(status)) };
                    }
                }
                continue;
            }
            if sig == SIGTTIN || sig == SIGTTOU {
                continue;
            }
            if sig == SIGPIPE && info.code == SI_USER && info.pid == me as u32 {
                // Raised by our own write to a closed stderr: not meant for the command.
                continue;
            }
            let is_stop = sig == SIGTERM
                || sig == SIGINT
                || sig == SIGQUIT
                || (opts.extra_stop != 0 && sig == opts.extra_stop);
            if !is_stop {
                forward(child, sig);
                continue;
            }
            if let Some(p) = pending.take() {
                // SAFETY: the fd is ours.
                unsafe { close(p.fd) };
                Line::new()
                    .s(b"second stop signal, forwarding ")
                    .s(signal_name(p.signal))
                    .s(b" without waiting for the prestop hook")
                    .emit();
                forward(child, p.signal);
                if sig != p.signal {
                    forward(child, sig);
                }
                continue;
            }
            if prestop_asked {
                forward(child, sig);
                continue;
            }
            prestop_asked = true;
            match send_stop(opts.socket, opts.socket_len, sig) {
                Ok(fd) => {
                    pending = Some(Pending {
                        fd,
                        signal: sig,
                        deadline_ms: now_ms().saturating_add(opts.timeout_ms),
                        buf: [0; protocol::MAX_MESSAGE],
                        got: 0,
                    });
                }
                Err(e) => {
                    // SAFETY: the socket path is a valid C string of socket_len bytes.
                    let path = unsafe {
                        core::slice::from_raw_parts(opts.socket as *const u8, opts.socket_len)
                    };
                    Line::new()
                        .s(b"cannot reach the plugin at ")
                        .s(path)
                        .s(b" (")
                        .err(e)
                        .s(b"), forwarding ")
                        .s(signal_name(sig))
                        .s(b" without prestop")
                        .emit();
                    forward(child, sig);
                }
            }
        }

        let mut finished: Option<Option<(&'static [u8], &'static [u8])>> = None;
        if let Some(p) = pending.as_mut() {
            if fds[1].fd == p.fd && fds[1].revents != 0 {
                finished = read_reply(p);
            }
            if finished.is_none() && now_ms() >= p.deadline_ms {
                Line::new()
                    .s(b"plugin did not answer within ")
                    .n(opts.timeout_ms)
                    .s(b" ms")
                    .emit();
                finished = Some(Some((b"gave up waiting for the prestop hook", b"")));
            }
        }
        if let Some(msg) = finished {
            if let Some(p) = pending.take() {
                // SAFETY: the fd is ours.
                unsafe { close(p.fd) };
                if let Some((text, _)) = msg {
                    Line::new()
                        .s(text)
                        .s(b", forwarding ")
                        .s(signal_name(p.signal))
                        .emit();
                }
                forward(child, p.signal);
            }
        }
    }
}
