//! The reads of `/proc` the namespace layer makes, behind a small trait so the parsing and
//! decision logic is unit-testable without root or real containers.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the namespace layer asks of the operating system when it gathers facts.
pub trait Sys {
    /// The whole content of a (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The target of a symbolic link.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// `(device, inode)` of a file, following symbolic links (namespace identity).
    fn inode(&self, path: &Path) -> io::Result<(u64, u64)>;
}

/// The real operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

impl Sys for RealSys {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }
    fn inode(&self, path: &Path) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
}

/// A fake OS for unit tests: files, links and inodes from maps; every path asked is recorded.
#[derive(Debug, Default)]
pub struct FakeSys {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub links: BTreeMap<PathBuf, PathBuf>,
    pub inodes: BTreeMap<PathBuf, (u64, u64)>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeSys {
    pub fn file(mut self, path: &str, content: &str) -> Self {
        self.files.insert(path.into(), content.as_bytes().to_vec());
        self
    }
    pub fn link(mut self, path: &str, target: &str) -> Self {
        self.links.insert(path.into(), target.into());
        self
    }
    pub fn inode(mut self, path: &str, dev: u64, ino: u64) -> Self {
        self.inodes.insert(path.into(), (dev, ino));
        self
    }
    fn record(&self, what: &str, path: &Path) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("{what} {}", path.display()));
        }
    }
    /// The calls made so far, as `"read /proc/1/status"` lines.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn missing(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not in fake", path.display()),
    )
}

impl Sys for FakeSys {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.record("read", path);
        self.files.get(path).cloned().ok_or_else(|| missing(path))
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.record("readlink", path);
        self.links.get(path).cloned().ok_or_else(|| missing(path))
    }
    fn inode(&self, path: &Path) -> io::Result<(u64, u64)> {
        self.record("stat", path);
        self.inodes.get(path).copied().ok_or_else(|| missing(path))
    }
}
