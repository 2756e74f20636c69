//! Root integration tests of the hook runners, without containerd.
//!
//! Each test builds a "container": a busybox root filesystem in a temporary directory, a
//! cgroup in every v1 hierarchy (and the unified one), new mount/pid/net/ipc/uts/cgroup
//! namespaces (util-linux `unshare`, chroot with `--root`), a non-root user with extra groups,
//! reduced capability sets and no_new_privs (util-linux `setpriv`). The hooks then report what
//! they see from inside, and that is compared with the container's init as seen from here.
//! HTTP and TCP traffic only goes to a server inside the network namespace the test created.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nri_lifecycle::annotations::{Action, HookSpec, HttpGet, Phase, Scheme};
use nri_lifecycle::hooks::{run_hook, Limits, Outcome, Target};
use nri_lifecycle::model::ProcessSpec;
use nri_lifecycle::ns::pidfd::PidFd;

const POD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// A second address inside the container's network namespace that is not the pod's.
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "ls", "pwd", "env", "yes", "head", "mount", "hostname", "ip",
    "true", "false", "touch", "id", "setsid", "mkdir",
];

/// The bundle's `config.json` of a container without seccomp or OOM score: the hook needs the
/// spec to know that.
const PLAIN_CONFIG: &str = r#"{"ociVersion":"1.0.2","linux":{}}"#;

/// These tests build their containers with namespaces and cgroups: without root they fail
/// (loudly) rather than pass.
fn require_root() {
    assert!(
        nri_harness::require_root("hooks_runners"),
        "hooks_runners needs root"
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

struct Container {
    unshare: Child,
    init: u32,
    /// The init process, held from the moment it said it is ready.
    init_fd: Arc<PidFd>,
    _root: tempfile::TempDir,
    root_path: PathBuf,
    /// The OCI bundle directory: only its `config.json`.
    bundle: tempfile::TempDir,
    cgroups: Vec<PathBuf>,
}

impl Container {
    fn start() -> Container {
        Container::start_with(PLAIN_CONFIG)
    }

    /// A container whose bundle's `config.json` is `config`.
    fn start_with(config: &str) -> Container {
        require_root();
        let bundle = tempfile::Builder::new()
            .prefix("nrilc-bundle")
            .tempdir()
            .unwrap();
        std::fs::write(bundle.path().join("config.json"), config).unwrap();
        let root = tempfile::Builder::new()
            .prefix("nrilc-root")
            .tempdir()
            .unwrap();
        let r = root.path().to_path_buf();
        for d in [
            "bin",
            "proc",
            "tmp",
            "home/app",
            "usr/bin",
            "lib/x86_64-linux-gnu",
            "lib64",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        // writable for the container's non-root user, as a real /tmp
        std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        // util-linux setpriv (and what it links to) so the container can drop privileges
        // after the chroot.
        std::fs::copy("/usr/bin/setpriv", r.join("usr/bin/setpriv")).unwrap();
        for lib in [
            "/lib/x86_64-linux-gnu/libcap-ng.so.0",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            let name = Path::new(lib).file_name().unwrap();
            std::fs::copy(lib, r.join("lib/x86_64-linux-gnu").join(name)).unwrap();
        }
        std::fs::copy(
            "/lib64/ld-linux-x86-64.so.2",
            r.join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();

        let name = format!(
            "nrilc-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut cgroups = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
            let h = h.unwrap().path();
            if !h.join("cgroup.procs").exists() {
                continue;
            }
            let dir = h.join(&name);
            std::fs::create_dir(&dir).unwrap();
            if h.ends_with("cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(h.join(f)).unwrap();
                    std::fs::write(dir.join(f), v.trim()).unwrap();
                }
            }
            cgroups.push(dir);
        }
        let join: String = cgroups
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display()))
            .collect();
        let inner = "mount -t proc proc /proc && hostname box && ip link set lo up && \
            ip addr add 192.0.2.10/32 dev lo && ip addr add 192.0.2.20/32 dev lo && \
            exec env -i PATH=/usr/local/bin:/bin FOO=bar HOME=/home/app \
            /usr/bin/setpriv --reuid 1000 --regid 1000 --groups 1000,2000 \
            --bounding-set -all,+kill,+net_bind_service,+chown \
            --inh-caps -all,+net_bind_service --ambient-caps +net_bind_service --nnp \
            /bin/sh -c 'echo ready; exec sleep 100000'";
        let script = format!(
            "{join}exec unshare --mount --pid --net --ipc --uts --cgroup --fork \
             --propagation private --root {} --wd /home/app /bin/sh -c \"{inner}\"",
            r.display()
        );
        let mut unshare = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(unshare.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "container did not start");
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
        let init: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        // init is a child of `unshare`, which waits for it: it cannot have been reaped (and
        // its PID reused) before this pidfd is open.
        let init_fd = Arc::new(PidFd::open(init).unwrap());
        Container {
            unshare,
            init,
            init_fd,
            root_path: r,
            _root: root,
            bundle,
            cgroups,
        }
    }

    fn target(&self) -> Target {
        Target {
            container_id: "c1".into(),
            init: Some(Arc::clone(&self.init_fd)),
            pod_ips: vec![IpAddr::V4(POD_IP)],
            bundle: Some(self.bundle.path().to_path_buf()),
            ..Default::default()
        }
    }

    fn kill(&mut self) {
        // Through the pidfd: once init is gone its PID may belong to anyone.
        let _ = self.init_fd.send_signal(libc::SIGKILL);
        let _ = self.unshare.wait();
    }

    /// PIDs (host view) of the processes in the container's PID namespace.
    fn processes(&self) -> Vec<u32> {
        let ns = std::fs::metadata(format!("/proc/{}/ns/pid", self.init))
            .map(|m| m.ino())
            .unwrap_or(0);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::metadata(format!("/proc/{p}/ns/pid"))
                    .map(|m| m.ino() == ns)
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
        for d in &self.cgroups {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn exec(cmd: &[&str]) -> HookSpec {
    HookSpec {
        phase: Phase::PostStart,
        key: "test".into(),
        action: Action::Exec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
        },
        timeout: Some(Duration::from_secs(20)),
        stop_signal: None,
    }
}

async fn ok_output(spec: &HookSpec, target: &Target) -> String {
    match run_hook(spec, target, &Limits::default()).await {
        Outcome::Succeeded { output } => output,
        other => panic!("hook {:?} did not succeed: {other:?}", spec.action),
    }
}

fn status_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| ["Uid", "Gid", "Groups", "NoNewPrivs"].contains(k) || k.starts_with("Cap"))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn exec_hook_sees_the_container() {
    let c = Container::start();
    let t = c.target();

    let status = ok_output(&exec(&["cat", "/proc/self/status"]), &t).await;
    let want = std::fs::read_to_string(format!("/proc/{}/status", c.init)).unwrap();
    let (got, want) = (status_fields(&status), status_fields(&want));
    assert_eq!(got, want);
    assert_eq!(got["Uid"], "1000\t1000\t1000\t1000");
    assert_eq!(got["Groups"], "1000 2000");
    assert_eq!(got["NoNewPrivs"], "1");
    assert_ne!(got["CapAmb"], "0000000000000000");

    let env = ok_output(&exec(&["cat", "/proc/self/environ"]), &t).await;
    let want = std::fs::read_to_string(format!("/proc/{}/environ", c.init)).unwrap();
    assert_eq!(env, want);
    assert!(env.contains("FOO=bar"));

    assert_eq!(ok_output(&exec(&["pwd"]), &t).await.trim(), "/home/app");
    assert_eq!(ok_output(&exec(&["hostname"]), &t).await.trim(), "box");

    let cg = ok_output(&exec(&["cat", "/proc/self/cgroup"]), &t).await;
    let want_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", c.init)).unwrap();
    assert_eq!(cg.lines().count(), want_cg.lines().count());
    for line in cg.lines() {
        // inside the container's cgroup namespace its own cgroup is the root
        assert!(
            line.ends_with(":/"),
            "hook not in the container's cgroup: {cg}"
        );
    }

    let ls = ok_output(&exec(&["ls", "-l", "/proc/self/ns/"]), &t).await;
    for kind in ["mnt", "pid", "net", "ipc", "uts", "cgroup", "user"] {
        let ino = std::fs::metadata(format!("/proc/{}/ns/{kind}", c.init))
            .unwrap()
            .ino();
        assert!(
            ls.contains(&format!("{kind}:[{ino}]")),
            "{kind} namespace differs: {ls}"
        );
    }
}

#[tokio::test]
async fn exec_hook_output_failure_and_path() {
    let c = Container::start();
    let t = c.target();
    let out = ok_output(&exec(&["sh", "-c", "yes | head -c 20000; echo END"]), &t).await;
    assert!(
        out.starts_with("[output truncated: 20004 bytes"),
        "{out:.80}"
    );
    assert!(out.ends_with("y\nEND\n"));

    match run_hook(
        &exec(&["sh", "-c", "echo oops >&2; exit 3"]),
        &t,
        &Limits::default(),
    )
    .await
    {
        Outcome::Failed { reason } => {
            assert!(reason.contains("exited with 3"), "{reason}");
            assert!(reason.contains("oops"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // a binary of the host that the container does not have is not found
    match run_hook(&exec(&["hyperfine", "--version"]), &t, &Limits::default()).await {
        Outcome::Failed { reason } => assert!(reason.contains("exec"), "{reason}"),
        other => panic!("host binary ran: {other:?}"),
    }
}

#[tokio::test]
async fn entering_failure_runs_nothing() {
    let c = Container::start();
    let mut t = c.target();
    let marker = format!("/nrilc-marker-{}", std::process::id());
    t.process = Some(ProcessSpec {
        cwd: "/does/not/exist".into(),
        ..Default::default()
    });
    match run_hook(&exec(&["touch", &marker]), &t, &Limits::default()).await {
        Outcome::Failed { reason } => assert!(reason.contains("chdir"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!Path::new(&marker).exists());
    assert!(!c.root_path.join(marker.trim_start_matches('/')).exists());

    // a process that is gone cannot be entered: the container is reported gone
    let mut gone = Command::new("/bin/true").spawn().unwrap();
    let dead = Arc::new(PidFd::open(gone.id()).unwrap());
    gone.wait().unwrap();
    let t = Target {
        init: Some(dead),
        ..c.target()
    };
    assert_eq!(
        run_hook(&exec(&["touch", &marker]), &t, &Limits::default()).await,
        Outcome::ContainerGone
    );
    assert!(!Path::new(&marker).exists());
}

/// A seccomp profile that lets everything through but `mkdir` (both system calls), in the
/// shape containerd writes into the bundle.
const NO_MKDIR: &str = r#"{"ociVersion":"1.0.2",
    "process":{"oomScoreAdj":321},
    "linux":{"seccomp":{
        "defaultAction":"SCMP_ACT_ALLOW",
        "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
        "syscalls":[{"names":["mkdir","mkdirat","no_such_syscall"],"action":"SCMP_ACT_ERRNO"}]}}}"#;

#[tokio::test]
async fn exec_hook_gets_the_container_seccomp_filter_and_oom_score() {
    let c = Container::start_with(NO_MKDIR);
    let t = c.target();
    let out = ok_output(
        &exec(&[
            "sh",
            "-c",
            "mkdir /tmp/made 2>&1; echo rc=$?; cat /proc/self/status /proc/self/oom_score_adj",
        ]),
        &t,
    )
    .await;
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(!c.root_path.join("tmp/made").exists());
    let fields: BTreeMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    assert_eq!(fields.get("Seccomp"), Some(&"2"), "{out}");
    assert_eq!(fields.get("Seccomp_filters"), Some(&"1"), "{out}");
    assert_eq!(out.lines().last(), Some("321"), "{out}");
    // the container's own init is not affected by any of this
    let init = std::fs::read_to_string(format!("/proc/{}/status", c.init)).unwrap();
    assert!(init.contains("Seccomp:\t0"), "{init}");

    // the same container without the profile: mkdir works (the filter above made the
    // difference)
    let plain = Container::start();
    let out = ok_output(
        &exec(&["sh", "-c", "mkdir /tmp/made && echo made"]),
        &plain.target(),
    )
    .await;
    assert_eq!(out.trim(), "made");
}

#[tokio::test]
async fn a_profile_we_cannot_serve_or_no_spec_runs_nothing() {
    let notify = r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW",
        "listenerPath":"/run/agent.sock",
        "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}}}"#;
    let c = Container::start_with(notify);
    let marker = "tmp/ran";
    let touch = exec(&["touch", &format!("/{marker}")]);
    match run_hook(&touch, &c.target(), &Limits::default()).await {
        Outcome::Failed { reason } => {
            assert!(reason.contains("SCMP_ACT_NOTIFY"), "{reason}");
            assert!(reason.contains("seccomp"), "{reason}");
        }
        other => panic!("ran despite an unservable profile: {other:?}"),
    }
    assert!(!c.root_path.join(marker).exists());

    // no bundle known, or none on disk: the filter cannot be known, nothing runs
    let mut t = c.target();
    t.bundle = None;
    match run_hook(&touch, &t, &Limits::default()).await {
        Outcome::Failed { reason } => assert!(reason.contains("bundle is not known"), "{reason}"),
        other => panic!("ran without a spec: {other:?}"),
    }
    t.bundle = Some(c.bundle.path().join("gone"));
    match run_hook(&touch, &t, &Limits::default()).await {
        Outcome::Failed { reason } => {
            assert!(reason.contains("cannot be read"), "{reason}");
            assert!(reason.contains("config.json"), "{reason}");
        }
        other => panic!("ran without a spec: {other:?}"),
    }
    assert!(!c.root_path.join(marker).exists());
}

#[tokio::test]
async fn exec_hook_rlimits_and_umask_are_the_container_s() {
    let c = Container::start();
    let t = c.target();
    let limits = ok_output(&exec(&["cat", "/proc/self/limits"]), &t).await;
    let want = std::fs::read_to_string(format!("/proc/{}/limits", c.init)).unwrap();
    assert_eq!(limits, want);
    let umask = |status: &str| {
        status
            .lines()
            .find(|l| l.starts_with("Umask:"))
            .map(str::to_string)
    };
    let status = ok_output(&exec(&["cat", "/proc/self/status"]), &t).await;
    let want = std::fs::read_to_string(format!("/proc/{}/status", c.init)).unwrap();
    assert!(umask(&status).is_some(), "{status}");
    assert_eq!(umask(&status), umask(&want));
}

/// A host process (`sleep`) started with exactly PID `pid` (clone3 with `set_tid`, which
/// needs root), held by a pidfd. Returns its pidfd and PID.
fn sleep_with_pid(pid: u32) -> (std::os::fd::OwnedFd, libc::pid_t) {
    use std::os::fd::FromRawFd;
    /// `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
    }
    let tid = [pid as libc::pid_t];
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let argv = [c"sleep".as_ptr(), c"1000".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: clone3 with a valid, correctly sized clone_args; the child only calls execve
    // and _exit on data prepared before the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc == 0 {
        // SAFETY: in the child: exec or leave at once.
        unsafe {
            libc::execve(c"/bin/sleep".as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    assert!(
        rc > 0,
        "clone3 with PID {pid}: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(rc, pid as i64);
    // SAFETY: CLONE_PIDFD stored a new pidfd that nobody else owns.
    (
        unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) },
        rc as libc::pid_t,
    )
}

#[tokio::test]
async fn exec_hook_never_enters_a_process_that_reused_the_pid() {
    let mut c = Container::start();
    let t = c.target();
    let pid = c.init;
    c.kill();
    // The container's init is gone and reaped; another process now has its PID.
    let (newcomer, newcomer_pid) = sleep_with_pid(pid);
    let marker = format!("/nrilc-reused-{}", std::process::id());
    let outcome = run_hook(&exec(&["touch", &marker]), &t, &Limits::default()).await;
    let ran = Path::new(&marker).exists();
    let _ = std::fs::remove_file(&marker);
    // SAFETY: pidfd_send_signal on our own pidfd; then reap our own child.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            newcomer.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
        libc::waitpid(newcomer_pid, std::ptr::null_mut(), 0);
    }
    assert!(!ran, "the hook ran in the process that reused PID {pid}");
    assert_eq!(outcome, Outcome::ContainerGone);
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let c = Container::start();
    let t = c.target();
    let mut spec = exec(&[
        "sh",
        "-c",
        "sleep 1000 & setsid sleep 1001 & (setsid sh -c 'sleep 1002 &'); echo started; sleep 1003",
    ]);
    spec.timeout = Some(Duration::from_secs(1));
    match run_hook(&spec, &t, &Limits::default()).await {
        Outcome::TimedOut { output } => assert!(output.contains("started"), "{output}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.processes(), vec![c.init], "hook processes left behind");
}

#[tokio::test]
async fn container_exit_during_hook_is_reported() {
    let mut c = Container::start();
    let t = c.target();
    // Held before the exit, as the core holds a container's init from its first sight.
    let held = c.target();
    let hook = tokio::spawn(async move {
        let mut spec = exec(&["sleep", "1000"]);
        spec.timeout = Some(Duration::from_secs(100));
        run_hook(&spec, &t, &Limits::default()).await
    });
    c.kill();
    assert_eq!(hook.await.unwrap(), Outcome::ContainerGone);

    let sleep = HookSpec {
        action: Action::Sleep { seconds: 1000 },
        ..exec(&[])
    };
    assert_eq!(
        run_hook(&sleep, &held, &Limits::default()).await,
        Outcome::ContainerGone
    );
}

#[tokio::test]
async fn sleep_zero_succeeds() {
    let c = Container::start();
    let sleep = HookSpec {
        action: Action::Sleep { seconds: 0 },
        ..exec(&[])
    };
    assert!(run_hook(&sleep, &c.target(), &Limits::default())
        .await
        .is_success());
}

/// A tiny HTTP server listening on the pod's address inside the container's network
/// namespace. Answers `count` connections; records the request heads.
fn serve_in(netns_pid: u32, port: u16, count: usize) -> Arc<Mutex<Vec<String>>> {
    serve_on(netns_pid, POD_IP, port, count)
}

/// [`serve_in`] on another address of the namespace.
fn serve_on(netns_pid: u32, addr: Ipv4Addr, port: u16, count: usize) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{netns_pid}/ns/net")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: this dedicated test thread enters the test's own namespace and ends
        // after serving.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let listener = TcpListener::bind((addr, port)).unwrap();
        tx.send(()).unwrap();
        for _ in 0..count {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            record.lock().unwrap().push(head);
            let resp = match path.as_str() {
                "/ok" => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                    .to_string(),
                "/redir" => "HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                "/loop" => "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                _ => "HTTP/1.1 500 Boom\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom"
                    .to_string(),
            };
            let _ = s.write_all(resp.as_bytes());
        }
    });
    rx.recv().unwrap();
    seen
}

fn get(path: &str, headers: &[(&str, &str)], host: Option<&str>) -> HookSpec {
    HookSpec {
        action: Action::HttpGet(HttpGet {
            path: path.into(),
            port: 8080,
            host: host.map(str::to_string),
            scheme: Scheme::Http,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        ..exec(&[])
    }
}

#[tokio::test]
async fn http_get_from_inside_the_pod() {
    let c = Container::start();
    // /ok, Host-override /ok, /fail, /redir + /ok, /loop x 11, /ok (address read from netns)
    let seen = serve_in(c.init, 8080, 1 + 1 + 1 + 2 + 11 + 1);
    let t = c.target();
    let l = Limits::default();

    assert_eq!(
        run_hook(&get("/ok", &[], None), &t, &l).await,
        Outcome::Succeeded {
            output: "hello".into()
        }
    );
    assert!(run_hook(
        &get("/ok", &[("Host", "example.test"), ("X-A", "b")], None),
        &t,
        &l
    )
    .await
    .is_success());
    match run_hook(&get("/fail", &[], None), &t, &l).await {
        Outcome::Failed { reason } => assert!(reason.contains("500"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(run_hook(&get("/redir", &[], None), &t, &l)
        .await
        .is_success());
    match run_hook(&get("/loop", &[], None), &t, &l).await {
        Outcome::Failed { reason } => assert!(reason.contains("redirects"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let no_ips = Target {
        pod_ips: vec![],
        ..c.target()
    };
    assert!(run_hook(&get("/ok", &[], None), &no_ips, &l)
        .await
        .is_success());

    let heads = seen.lock().unwrap().clone();
    let ua = format!("user-agent: nri-lifecycle/{}", env!("CARGO_PKG_VERSION"));
    assert!(heads[0].to_lowercase().contains(&ua), "{}", heads[0]);
    assert!(
        heads[0].to_lowercase().contains("host: 192.0.2.10:8080"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].to_lowercase().contains("host: example.test"),
        "{}",
        heads[1]
    );
    assert!(heads[1].to_lowercase().contains("x-a: b"), "{}", heads[1]);
    assert!(heads[4].starts_with("GET /ok "), "{}", heads[4]);
    assert_eq!(heads.len(), 17);

    // an address the policy denies is refused without connecting anywhere
    let denied = Limits {
        policy: policy("[[policy.network]]\ndeny = [\"198.51.100.0/24\"]"),
        ..Limits::default()
    };
    match run_hook(&get("/ok", &[], Some("198.51.100.7")), &t, &denied).await {
        Outcome::Failed { reason } => assert_eq!(
            reason,
            "host \"198.51.100.7\": 198.51.100.7 is refused by the plugin's policy (policy.network rule 1: deny [\"198.51.100.0/24\"])"
        ),
        other => panic!("{other:?}"),
    }
}

/// The compiled policy of a plugin config.
fn policy(config: &str) -> Arc<nri_lifecycle::policy::Policy> {
    nri_lifecycle::config::Config::from_toml(config)
        .unwrap()
        .policy
}

#[tokio::test]
async fn tcp_socket_from_inside_the_pod() {
    let c = Container::start();
    let _seen = serve_in(c.init, 8081, 1);
    let t = c.target();
    let tcp = |port| HookSpec {
        action: Action::TcpSocket { host: None, port },
        ..exec(&[])
    };
    assert!(run_hook(&tcp(8081), &t, &Limits::default())
        .await
        .is_success());
    // nothing listens on 8082 inside the pod (whatever the host has there)
    assert!(matches!(
        run_hook(&tcp(8082), &t, &Limits::default()).await,
        Outcome::Failed { .. }
    ));
    // loopback of the pod, not of the host
    let lo = HookSpec {
        action: Action::TcpSocket {
            host: Some("127.0.0.1".into()),
            port: 8081,
        },
        ..exec(&[])
    };
    assert!(matches!(
        run_hook(&lo, &t, &Limits::default()).await,
        Outcome::Failed { .. }
    ));
    // an address that is not the pod's: reached by default, refused by a policy that does
    // not allow it, reached again under one that does (and the pod's own address stays
    // reachable under a policy that allows nothing)
    let _other = serve_on(c.init, OTHER_IP, 8083, 2);
    let other = HookSpec {
        action: Action::TcpSocket {
            host: Some(OTHER_IP.to_string()),
            port: 8083,
        },
        ..exec(&[])
    };
    assert!(run_hook(&other, &t, &Limits::default()).await.is_success());
    let nothing = Limits {
        policy: policy("[[policy.network]]\nallow = []"),
        ..Limits::default()
    };
    match run_hook(&other, &t, &nothing).await {
        Outcome::Failed { reason } => assert_eq!(
            reason,
            "tcpSocket: host \"192.0.2.20\": 192.0.2.20 is refused by the plugin's policy (policy.network rule 1: only [])"
        ),
        other => panic!("{other:?}"),
    }
    let _own = serve_in(c.init, 8084, 1);
    assert!(run_hook(&tcp(8084), &t, &nothing).await.is_success());
    let allowed = Limits {
        policy: policy("[[policy.network]]\nallow = [\"192.0.2.16/28\"]"),
        ..Limits::default()
    };
    assert!(run_hook(&other, &t, &allowed).await.is_success());
}

/// A DNS server on `addr`:53 (UDP) inside the container's network namespace, answering A
/// questions from `zone` (NXDOMAIN for other names) and recording each question.
fn dns_in(netns_pid: u32, addr: Ipv4Addr, zone: &[(&str, Ipv4Addr)]) -> Arc<Mutex<Vec<String>>> {
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    let zone: BTreeMap<String, Ipv4Addr> =
        zone.iter().map(|(n, ip)| (format!("{n}."), *ip)).collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{netns_pid}/ns/net")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: this dedicated test thread enters the test's own namespace and stays there.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let socket = std::net::UdpSocket::bind((addr, 53)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let query = Message::from_vec(&buf[..n]).unwrap();
            let q = query.queries[0].clone();
            let name = q.name().to_ascii();
            record
                .lock()
                .unwrap()
                .push(format!("{name} {} from {}", q.query_type(), from.ip()));
            let mut reply = Message::response(query.metadata.id, OpCode::Query);
            reply.add_query(q.clone());
            match zone.get(&name) {
                Some(ip) if q.query_type() == RecordType::A => {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 5, RData::A(A(*ip))));
                }
                Some(_) => {}
                None => reply.metadata.response_code = ResponseCode::NXDomain,
            }
            socket.send_to(&reply.to_vec().unwrap(), from).unwrap();
        }
    });
    rx.recv().unwrap();
    seen
}

#[tokio::test]
async fn host_names_are_resolved_with_the_pods_own_resolver_from_the_pod() {
    let c = Container::start();
    let etc = c.root_path.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    // The kubelet's shape of a pod's resolv.conf and hosts file, pointing at a DNS server
    // that exists only inside the pod's network namespace.
    std::fs::write(
        etc.join("resolv.conf"),
        "search team-a.svc.cluster.local svc.cluster.local cluster.local
\
         nameserver 192.0.2.20
options ndots:5
",
    )
    .unwrap();
    std::fs::write(
        etc.join("hosts"),
        "127.0.0.1	localhost
192.0.2.20	pinned.example
",
    )
    .unwrap();
    let asked = dns_in(
        c.init,
        OTHER_IP,
        &[
            ("web.team-a.svc.cluster.local", OTHER_IP),
            (
                "metadata.team-a.svc.cluster.local",
                Ipv4Addr::new(169, 254, 169, 254),
            ),
        ],
    );
    let seen = serve_on(c.init, OTHER_IP, 8085, 2);
    let t = c.target();
    let get_on = |host: &str| HookSpec {
        action: Action::HttpGet(HttpGet {
            path: "/ok".into(),
            port: 8085,
            host: Some(host.into()),
            scheme: Scheme::Http,
            headers: vec![],
        }),
        ..exec(&[])
    };
    // A short name through the search list, asked from inside the pod.
    assert_eq!(
        run_hook(&get_on("web"), &t, &Limits::default()).await,
        Outcome::Succeeded {
            output: "hello".into()
        }
    );
    assert_eq!(
        asked.lock().unwrap().clone(),
        ["web.team-a.svc.cluster.local. A from 192.0.2.20"]
    );
    // The Host header names the host as given, as the kubelet's does.
    assert!(
        seen.lock().unwrap()[0]
            .to_lowercase()
            .contains("host: web:8085"),
        "{:?}",
        seen.lock().unwrap()
    );
    // The container's hosts file comes first: no question asked.
    assert!(run_hook(&get_on("pinned.example"), &t, &Limits::default())
        .await
        .is_success());
    assert_eq!(asked.lock().unwrap().len(), 1);
    // A name that resolves to an address the policy denies fails with the reason.
    let denied = Limits {
        policy: policy("[[policy.network]]\ndeny = [\"169.254.0.0/16\"]"),
        ..Limits::default()
    };
    match run_hook(&get_on("metadata"), &t, &denied).await {
        Outcome::Failed { reason } => assert_eq!(
            reason,
            "host \"metadata\": 169.254.169.254 is refused by the plugin's policy (policy.network rule 1: deny [\"169.254.0.0/16\"])"
        ),
        other => panic!("{other:?}"),
    }
    // A name nobody knows fails with what was asked.
    match run_hook(&get_on("nowhere"), &t, &Limits::default()).await {
        Outcome::Failed { reason } => assert_eq!(
            reason,
            "resolving \"nowhere\": no address (asked nowhere.team-a.svc.cluster.local, \
             nowhere.svc.cluster.local, nowhere.cluster.local, nowhere of nameserver 192.0.2.20)"
        ),
        other => panic!("{other:?}"),
    }
}

/// An HTTPS server with a self-signed certificate inside the container's network namespace:
/// answers one connection with 200 and records the request head.
fn serve_tls_in(netns_pid: u32, port: u16) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let cert = rcgen::generate_simple_self_signed(vec!["pod.test".to_string()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let config = Arc::new(config);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{netns_pid}/ns/net")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: this dedicated test thread enters the test's own namespace and ends
        // after serving.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let listener = TcpListener::bind((POD_IP, port)).unwrap();
        tx.send(()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && tls.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        record
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        let _ = tls
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure");
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    rx.recv().unwrap();
    seen
}

#[tokio::test]
async fn https_get_without_certificate_verification() {
    let c = Container::start();
    let seen = serve_tls_in(c.init, 8443);
    let spec = HookSpec {
        action: Action::HttpGet(HttpGet {
            path: "/secure".into(),
            port: 8443,
            host: None,
            scheme: Scheme::Https,
            headers: vec![],
        }),
        ..exec(&[])
    };
    assert_eq!(
        run_hook(&spec, &c.target(), &Limits::default()).await,
        Outcome::Succeeded {
            output: "secure".into()
        }
    );
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with("GET /secure HTTP/1.1"), "{}", heads[0]);
}
