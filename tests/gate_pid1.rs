//! The gate alone, as PID 1 of a fresh PID namespace (`unshare --fork --pid --mount-proc`),
//! with this test playing the plugin on a temporary unix socket. Needs root.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use common::write_gate;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nri_lifecycle::gate::{embedded_gate, protocol};

/// Upper bound for any single awaited event; reaching it fails the test.
const EVENT_BOUND: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    nri_harness::require_root("gate_pid1 (unshare --pid)")
}

struct Gate {
    dir: tempfile::TempDir,
    bin: PathBuf,
    socket: PathBuf,
}

fn gate() -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("gate");
    write_gate(&bin);
    let socket = dir.path().join("gate.sock");
    Gate { dir, bin, socket }
}

/// A running gate: the `unshare` process, the gate's host PID, its stdout lines and stderr.
struct Running {
    child: Child,
    gate_pid: Pid,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

fn lines_of<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn start(g: &Gate, gate_opts: &[&str], script: &str) -> Running {
        let mut cmd = Command::new("unshare");
        cmd.args(["--fork", "--pid", "--mount-proc"])
            .arg(&g.bin)
            .arg("--socket")
            .arg(&g.socket)
            .args(gate_opts)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let mut r = Running {
            gate_pid: Pid::from_raw(0),
            child,
            lines,
            stderr,
        };
        r.expect_line("ready");
        let pid = r.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        // Empty when the command already ended (the gate with it).
        let gate: i32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        r.gate_pid = Pid::from_raw(gate);
        r
    }

    fn expect_line(&self, want: &str) {
        let got = self
            .lines
            .recv_timeout(EVENT_BOUND)
            .unwrap_or_else(|e| panic!("waiting for {want:?} on stdout: {e}"));
        assert_eq!(got, want);
    }

    fn expect_stderr(&self, contains: &str) {
        let got = self
            .stderr
            .recv_timeout(EVENT_BOUND)
            .unwrap_or_else(|e| panic!("waiting for {contains:?} on stderr: {e}"));
        assert!(got.contains(contains), "stderr {got:?} lacks {contains:?}");
    }

    fn signal(&self, sig: Signal) {
        assert!(self.gate_pid.as_raw() > 0, "the gate is not running");
        kill(self.gate_pid, sig).unwrap();
    }

    fn exit_code(mut self) -> i32 {
        // Bounded by the events the callers awaited before; the gate exits right after.
        let status = self.child.wait().unwrap();
        status.code().expect("unshare exits normally")
    }
}

/// A child that reports USR1 and exits 0 on TERM, INT or QUIT.
const TRAPPING: &str = "trap 'echo usr1' USR1; trap 'echo term; exit 0' TERM; \
    trap 'echo int; exit 0' INT; trap 'echo quit; exit 0' QUIT; \
    echo ready; while :; do sleep 1 & wait $!; done";

/// Accepts the gate's connection and reads its STOP request; returns the stream and signal.
fn accept_stop(listener: &UnixListener) -> (UnixStream, u32) {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(EVENT_BOUND)).unwrap();
    let mut req = [0u8; protocol::STOP_LEN];
    s.read_exact(&mut req).unwrap();
    let mut head = [0u8; protocol::HEADER_LEN];
    head.copy_from_slice(&req[..protocol::HEADER_LEN]);
    let h = protocol::decode_header(&head).unwrap();
    assert_eq!(
        (h.version, h.kind, h.len),
        (protocol::VERSION, protocol::MSG_STOP, 4)
    );
    let sig = protocol::decode_stop(&req[protocol::HEADER_LEN..]).unwrap();
    (s, sig)
}

fn reply(s: &mut UnixStream, status: u8) {
    let mut out = [0u8; protocol::MAX_MESSAGE];
    let n = protocol::encode_reply(status, "", &mut out);
    s.write_all(&out[..n]).unwrap();
}

fn listen(p: &Path) -> UnixListener {
    UnixListener::bind(p).unwrap()
}

#[test]
fn exit_codes_are_the_childs() {
    if !is_root() {
        return;
    }
    let g = gate();
    let r = Running::start(&g, &[], "echo ready; exit 7");
    assert_eq!(r.exit_code(), 7);
    let r = Running::start(&g, &[], "echo ready; kill -KILL $$");
    assert_eq!(r.exit_code(), 128 + 9);
    let r = Running::start(&g, &[], "echo ready; exit 0");
    assert_eq!(r.exit_code(), 0);
}

/// What the gate left behind when its command could not run.
#[derive(Debug)]
struct Failure {
    code: Option<i32>,
    stderr: String,
    /// The termination-message file's content afterwards (`None`: it does not exist).
    message: Option<String>,
}

/// Runs `gate --termination-message <dir>/termination-log -- command...` in `cwd` with `PATH`
/// set to `path` (unset when `None`). The file holds stale text before, when `file` is true.
fn run_failing(g: &Gate, command: &[&str], path: Option<&str>, cwd: &Path, file: bool) -> Failure {
    let log = g.dir.path().join("termination-log");
    let _ = std::fs::remove_file(&log);
    if file {
        std::fs::write(&log, "stale text from an earlier run").unwrap();
    }
    let mut cmd = Command::new(&g.bin);
    cmd.arg("--termination-message")
        .arg(&log)
        .arg("--")
        .args(command)
        .current_dir(cwd)
        .env_remove("PATH")
        .stdin(Stdio::null());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    Failure {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        message: std::fs::read_to_string(&log).ok(),
    }
}

/// Asserts that `f` reports `want` in runc's words on stderr and in the termination message,
/// with `code`.
fn assert_reported(f: &Failure, code: i32, want: &str) {
    assert_eq!(f.code, Some(code), "{f:?}");
    assert_eq!(f.stderr, format!("{want}\n"), "{f:?}");
    assert_eq!(f.message.as_deref(), Some(want), "{f:?}");
}

/// Makes files in `dir` through a shell (see `write_gate` for why not from this process):
/// `plain` (no execute bit), `garbage` (executable, but no program), `bin/hello` (a script).
fn make_files(dir: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && printf 'text' > plain && chmod 644 plain && \
             printf '\\001\\002\\003 not a program' > garbage && chmod 755 garbage && \
             mkdir -p bin notexec && printf '#!/bin/sh\\necho hello from $0\\n' > bin/hello && \
             chmod 755 bin/hello && printf 'text' > notexec/hello && chmod 644 notexec/hello",
        )
        .arg("sh")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn command_that_cannot_start_fails_as_runc_reports_it() {
    let g = gate();
    let files = tempfile::tempdir().unwrap();
    let d = files.path();
    make_files(d);
    let ds = d.to_str().unwrap();
    let sys_path = Some("/usr/sbin:/usr/bin:/sbin:/bin");

    // Not found: a path is stat'ed as given, a bare name searched in PATH.
    let f = run_failing(&g, &["/no/such/binary", "arg"], sys_path, d, true);
    assert_reported(
        &f,
        128,
        r#"exec: "/no/such/binary": stat /no/such/binary: no such file or directory"#,
    );
    let f = run_failing(&g, &["no-such-command"], sys_path, d, true);
    assert_reported(
        &f,
        128,
        r#"exec: "no-such-command": executable file not found in $PATH"#,
    );
    // Without PATH nothing is searched (no default list, unlike execvp).
    let f = run_failing(&g, &["sh", "-c", "exit 0"], None, d, true);
    assert_reported(&f, 128, r#"exec: "sh": executable file not found in $PATH"#);
    let f = run_failing(&g, &["sh", "-c", "exit 0"], Some(""), d, true);
    assert_reported(&f, 128, r#"exec: "sh": executable file not found in $PATH"#);

    // Not executable: no execute bit, or a directory.
    let plain = format!("{ds}/plain");
    let f = run_failing(&g, &[&plain], sys_path, d, true);
    assert_reported(&f, 128, &format!(r#"exec: "{plain}": permission denied"#));
    let f = run_failing(&g, &["./plain"], sys_path, d, true);
    assert_reported(&f, 128, r#"exec: "./plain": permission denied"#);
    let f = run_failing(&g, &[ds], sys_path, d, true);
    assert_reported(&f, 128, &format!(r#"exec: "{ds}": permission denied"#));

    // Found only through a relative PATH entry (an empty one means the current directory).
    let f = run_failing(&g, &["garbage"], Some(":/usr/bin"), d, true);
    assert_reported(
        &f,
        128,
        r#"exec: "garbage": cannot run executable found relative to current directory"#,
    );

    // Accepted, but the kernel refuses the file: runc's message from its final exec, and its
    // status for that, 1. The PATH entry is cleaned the way Go joins paths.
    let f = run_failing(
        &g,
        &["garbage"],
        Some(&format!("/no/dir:{ds}//bin/..")),
        d,
        true,
    );
    assert_reported(&f, 1, &format!("exec {ds}/garbage: exec format error"));

    // Quoted as Go quotes.
    let f = run_failing(&g, &["bad\tname \"x\"\u{1}"], sys_path, d, true);
    assert_reported(
        &f,
        128,
        r#"exec: "bad\tname \"x\"\x01": executable file not found in $PATH"#,
    );

    // Without the file, stderr alone: the gate never creates it.
    let f = run_failing(&g, &["/no/such/binary"], sys_path, d, false);
    assert_eq!(f.code, Some(128), "{f:?}");
    assert!(f.stderr.contains("stat /no/such/binary"), "{f:?}");
    assert_eq!(f.message, None, "the termination-message file was created");
}

#[test]
fn command_is_found_as_runc_finds_it() {
    let g = gate();
    let files = tempfile::tempdir().unwrap();
    let d = files.path();
    make_files(d);
    let ds = d.to_str().unwrap();
    // The first PATH entry holding an executable file wins: a non-executable one is passed
    // over. The script's $0 is the file the kernel was given: the entry joined with the name.
    let out = Command::new(&g.bin)
        .args(["--", "hello"])
        .env(
            "PATH",
            format!("/no/dir:{ds}/notexec:{ds}/bin:/usr/bin:/bin"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello from {ds}/bin/hello\n")
    );
    // A relative name with a slash is taken from the working directory, PATH unused.
    let out = Command::new(&g.bin)
        .args(["--", "bin/hello"])
        .current_dir(d)
        .env_remove("PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from bin/hello\n"
    );
}

#[test]
fn noexec_mount_is_permission_denied() {
    if !is_root() {
        return;
    }
    let g = gate();
    let mnt = tempfile::tempdir().unwrap();
    let log = g.dir.path().join("termination-log");
    std::fs::write(&log, "").unwrap();
    // An executable on a noexec mount passes the mode check and fails the access check.
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o noexec,mode=755 none \"$1\" && cp /bin/true \"$1/t\" && \
             exec \"$2\" --termination-message \"$3\" -- \"$1/t\"",
        )
        .arg("sh")
        .arg(mnt.path())
        .arg(&g.bin)
        .arg(&log)
        .output()
        .unwrap();
    let want = format!("exec {}/t: permission denied", mnt.path().display());
    assert_eq!(out.status.code(), Some(128), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), format!("{want}\n"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), want);
}

#[test]
fn path_lookup_and_stdin_pass_through() {
    let g = gate();
    let mut child = Command::new(&g.bin)
        .args(["--", "cat"])
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello through the gate\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello through the gate\n");
}

#[test]
fn other_signals_are_forwarded_at_once() {
    if !is_root() {
        return;
    }
    let g = gate();
    let r = Running::start(&g, &[], TRAPPING);
    r.signal(Signal::SIGUSR1);
    r.expect_line("usr1");
    r.signal(Signal::SIGHUP);
    assert_eq!(r.exit_code(), 128 + 1);
}

#[test]
fn zombies_are_reaped() {
    if !is_root() {
        return;
    }
    let g = gate();
    // The inner sh is orphaned (its parent subshell exits at once) and becomes the gate's
    // child; if the gate did not reap it, /proc/$p would stay forever.
    let script = "echo ready; p=$( (sh -c 'echo $$; exec sleep 0' &) ); \
        while [ -e /proc/$p ]; do sleep 0.01; done; echo reaped $p";
    let r = Running::start(&g, &[], script);
    let line = r
        .lines
        .recv_timeout(EVENT_BOUND)
        .expect("the orphan was never reaped");
    assert!(line.starts_with("reaped "), "{line}");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn unreachable_plugin_fails_open() {
    if !is_root() {
        return;
    }
    let g = gate();
    let r = Running::start(&g, &[], TRAPPING);
    r.signal(Signal::SIGTERM);
    r.expect_line("term");
    r.expect_stderr("cannot reach the plugin");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn stop_waits_for_the_plugin_answer() {
    if !is_root() {
        return;
    }
    let g = gate();
    let listener = listen(&g.socket);
    let r = Running::start(&g, &[], TRAPPING);
    r.signal(Signal::SIGTERM);
    let (mut conn, sig) = accept_stop(&listener);
    assert_eq!(sig, 15);
    // While the hook "runs", other signals still go through, and the stop is held back:
    // if SIGTERM had been forwarded, "term" would come before "usr1".
    r.signal(Signal::SIGUSR1);
    r.expect_line("usr1");
    reply(&mut conn, protocol::STATUS_DONE);
    r.expect_line("term");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn failed_hook_still_forwards_and_extra_stop_signal_is_held() {
    if !is_root() {
        return;
    }
    let g = gate();
    let listener = listen(&g.socket);
    let script = "trap 'echo usr2; exit 0' USR2; trap 'echo usr1' USR1; echo ready; \
        while :; do sleep 1 & wait $!; done";
    let r = Running::start(&g, &["--stop-signal", "12"], script);
    r.signal(Signal::SIGUSR2);
    let (mut conn, sig) = accept_stop(&listener);
    assert_eq!(sig, 12);
    r.signal(Signal::SIGUSR1);
    r.expect_line("usr1");
    reply(&mut conn, protocol::STATUS_FAILED);
    r.expect_line("usr2");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn second_stop_signal_forwards_immediately() {
    if !is_root() {
        return;
    }
    let g = gate();
    let listener = listen(&g.socket);
    let r = Running::start(&g, &[], TRAPPING);
    r.signal(Signal::SIGTERM);
    let (_conn, _) = accept_stop(&listener);
    r.signal(Signal::SIGTERM);
    r.expect_line("term");
    r.expect_stderr("second stop signal");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn silent_plugin_is_given_up_on_at_the_deadline() {
    if !is_root() {
        return;
    }
    let g = gate();
    let listener = listen(&g.socket);
    let r = Running::start(&g, &["--timeout-ms", "200"], TRAPPING);
    r.signal(Signal::SIGINT);
    let (_conn, sig) = accept_stop(&listener);
    assert_eq!(sig, 2);
    r.expect_line("int");
    r.expect_stderr("did not answer within 200 ms");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn plugin_closing_without_answer_fails_open() {
    if !is_root() {
        return;
    }
    let g = gate();
    let listener = listen(&g.socket);
    let r = Running::start(&g, &[], TRAPPING);
    r.signal(Signal::SIGQUIT);
    let (conn, sig) = accept_stop(&listener);
    assert_eq!(sig, 3);
    drop(conn);
    r.expect_line("quit");
    r.expect_stderr("without an answer");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn child_ignoring_sigterm_keeps_running_until_killed() {
    if !is_root() {
        return;
    }
    let g = gate();
    let listener = listen(&g.socket);
    let script = "trap '' TERM; trap 'echo usr1' USR1; echo ready; \
        while :; do sleep 1 & wait $!; done";
    let r = Running::start(&g, &[], script);
    r.signal(Signal::SIGTERM);
    let (mut conn, _) = accept_stop(&listener);
    reply(&mut conn, protocol::STATUS_DONE);
    // The answer was read, SIGTERM forwarded and ignored: the child still answers USR1.
    drop(conn);
    r.signal(Signal::SIGUSR1);
    r.expect_line("usr1");
    // A later stop signal is forwarded at once (one PreStop per stop): no new connection.
    r.signal(Signal::SIGTERM);
    r.signal(Signal::SIGUSR1);
    r.expect_line("usr1");
    // What the runtime does at the end of the grace period.
    r.signal(Signal::SIGKILL);
    let mut child = r.child;
    let status = child.wait().unwrap();
    assert!(!status.success());
    // Checked once the gate is gone, so a late second request would be queued by now.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the gate asked twice");
}

#[test]
fn terminal_foreground_group_is_the_childs() {
    if !is_root() {
        return;
    }
    use nix::pty::openpty;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let g = gate();
    let pty = openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let slave_fd = slave.as_raw_fd();
    let mut cmd = Command::new("unshare");
    // Fields 5 and 8 of /proc/self/stat: process group and the terminal's foreground group.
    cmd.args(["--fork", "--pid", "--mount-proc"])
        .arg(&g.bin)
        .args(["--", "sh", "-c", "cut -d' ' -f5,8 /proc/self/stat"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe syscalls on an fd opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    drop(cmd);
    let lines = lines_of(std::fs::File::from(pty.master));
    let line = lines
        .recv_timeout(EVENT_BOUND)
        .expect("no output on the tty");
    let fields: Vec<&str> = line.trim().split(' ').collect();
    assert_eq!(fields.len(), 2, "{line:?}");
    assert_eq!(
        fields[0], fields[1],
        "child is not the foreground group: {line:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn gate_size_and_rss_are_under_one_mib() {
    if !is_root() {
        return;
    }
    let g = gate();
    let size = embedded_gate().len();
    let r = Running::start(&g, &[], TRAPPING);
    let status = std::fs::read_to_string(format!("/proc/{}/status", r.gate_pid)).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("gate binary {size} bytes, RSS {rss_kib} KiB");
    assert!(size < 1024 * 1024);
    assert!(rss_kib < 1024);
    r.signal(Signal::SIGUSR2);
    assert_eq!(r.exit_code(), 128 + 12);
}
