//! Keeping exactly one plugin connected to a runtime: the per-runtime lock, and the backoff
//! used between reconnections and restarts.
//!
//! The process that serves NRI (the daemon) holds an exclusive `flock` on a file named after
//! the runtime's NRI socket, in the plugin's runtime directory, for as long as it lives, and
//! writes its PID into it. A second daemon for the same runtime (a drop-in plugin and a
//! systemd unit both installed, or a launcher restarted with its daemon still alive) waits
//! for the lock instead of registering, so hooks never run twice. The kernel drops the lock
//! when its holder dies, however it dies.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock file of the daemon serving the runtime whose NRI socket is `socket`, in
/// `runtime_dir`: `daemon-` and the socket path with every character but letters, digits,
/// `.` and `-` turned into `_`.
pub fn lock_path(runtime_dir: &Path, socket: &Path) -> PathBuf {
    let name: String = socket
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    runtime_dir.join(format!("daemon-{}.lock", name.trim_start_matches('_')))
}

/// The lock, held: dropping it (or dying) releases it.
#[derive(Debug)]
pub struct DaemonLock {
    _file: nix::fcntl::Flock<File>,
    path: PathBuf,
}

impl DaemonLock {
    /// Takes the lock at `path` if nobody holds it and writes our PID into it; `Ok(None)`
    /// when another process holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<DaemonLock>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Root's alone: anyone who can open the file can flock it, and so keep every daemon
        // waiting.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut file =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(std::io::Error::from(e)),
            };
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(Some(DaemonLock {
            _file: file,
            path: path.to_path_buf(),
        }))
    }

    /// Waits until the lock is ours, polling every `poll`; `on_held` is called once with the
    /// holder's PID (if it can be read) the first time it is found held.
    pub async fn acquire(
        path: &Path,
        poll: Duration,
        on_held: impl FnOnce(Option<u32>),
    ) -> std::io::Result<DaemonLock> {
        let mut on_held = Some(on_held);
        loop {
            if let Some(lock) = DaemonLock::try_acquire(path)? {
                return Ok(lock);
            }
            if let Some(f) = on_held.take() {
                f(holder(path));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID of the process holding the lock at `path`; `None` when nobody holds it (or its
/// holder has not written its PID yet).
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    // Held? A shared non-blocking lock fails exactly while someone holds the exclusive one.
    let probe = file.try_clone().ok()?;
    match nix::fcntl::Flock::lock(probe, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(free) => {
            drop(free);
            return None;
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
        Err(_) => return None,
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|&pid: &u32| pid > 0)
}

/// Exponential backoff: `initial`, doubled after each failure up to `max`; back to `initial`
/// after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; the one after it is twice as long (at most `max`).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a success: the next wait is `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..7).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }

    #[test]
    fn lock_names_follow_the_socket() {
        let dir = Path::new("/run/nri-lifecycle");
        assert_eq!(
            lock_path(dir, Path::new("/var/run/nri/nri.sock")),
            dir.join("daemon-var_run_nri_nri.sock.lock")
        );
        assert_ne!(
            lock_path(dir, Path::new("/run/a/nri.sock")),
            lock_path(dir, Path::new("/run/b/nri.sock"))
        );
    }

    /// Locks are per open file description, so a second open in this process stands for a
    /// second process; a child process checks the real thing.
    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), Path::new("/run/x/nri.sock"));
        assert_eq!(holder(&path), None);
        let lock = DaemonLock::try_acquire(&path).unwrap().expect("free");
        assert_eq!(lock.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only root may open the lock");
        assert_eq!(holder(&path), Some(std::process::id()));
        assert!(DaemonLock::try_acquire(&path).unwrap().is_none());
        // Another process sees it held too.
        let status = std::process::Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "7"])
            .arg(&path)
            .arg("true")
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(7));
        drop(lock);
        assert_eq!(holder(&path), None);
        assert!(DaemonLock::try_acquire(&path).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_waiting_daemon_gets_the_lock_when_the_holder_dies() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), Path::new("/run/x/nri.sock"));
        std::fs::write(&path, "").unwrap();
        // Another process holds it, as a first daemon would, then dies.
        let mut holder_process = std::process::Command::new("flock")
            .arg(&path)
            .args(["sleep", "1"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while DaemonLock::try_acquire(&path).unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "flock never took it");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut told = false;
        let lock = DaemonLock::acquire(&path, Duration::from_millis(20), |_| told = true)
            .await
            .unwrap();
        assert!(told, "the wait was reported");
        assert!(holder_process.try_wait().unwrap().is_some(), "holder gone");
        assert_eq!(holder(&path), Some(std::process::id()));
        drop(lock);
    }
}
