//! The report pipe: fixed-size records the forked processes write (a failed step, the hook's
//! wait status, "killed on request") and the plugin reads once they have exited.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::step::Step;

/// How a hook process ended, as reported by the processes inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The command ran and exited with this code.
    Exited(i32),
    /// The command ran and was killed by this signal.
    Signaled(i32),
    /// Entering the container or starting the command failed at `step`; nothing ran.
    StepFailed { step: Step, errno: i32 },
    /// The tree was killed on request (timeout or cancellation).
    Killed,
    /// No report: the hook's helpers were killed from outside (e.g. the container's PID
    /// namespace went away).
    Vanished,
}

/// One record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    StepFailed {
        step: Step,
        errno: i32,
    },
    /// The hook's wait status.
    Exited(libc::c_int),
    Killed,
}

const LEN: usize = 12;
const K_STEP_FAILED: u32 = 1;
const K_EXITED: u32 = 2;
const K_KILLED: u32 = 3;

impl Record {
    /// Three native-endian words: kind, then two arguments.
    fn encode(self) -> [u8; LEN] {
        let (kind, a, b) = match self {
            Record::StepFailed { step, errno } => (K_STEP_FAILED, step.code(), errno as u32),
            Record::Exited(status) => (K_EXITED, status as u32, 0),
            Record::Killed => (K_KILLED, 0, 0),
        };
        let mut rec = [0u8; LEN];
        rec[0..4].copy_from_slice(&kind.to_ne_bytes());
        rec[4..8].copy_from_slice(&a.to_ne_bytes());
        rec[8..12].copy_from_slice(&b.to_ne_bytes());
        rec
    }

    /// `None` for a record no process of ours writes.
    fn decode(rec: &[u8; LEN]) -> Option<Record> {
        let word = |i: usize| u32::from_ne_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        match word(0) {
            K_STEP_FAILED => Some(Record::StepFailed {
                step: Step::from_code(word(4))?,
                errno: word(8) as i32,
            }),
            K_EXITED => Some(Record::Exited(word(4) as libc::c_int)),
            K_KILLED => Some(Record::Killed),
            _ => None,
        }
    }
}

/// Writes one record (in a forked process: one `write`, no allocation; a failure cannot be
/// reported anywhere else).
pub fn send(fd: RawFd, record: Record) {
    let rec = record.encode();
    // SAFETY: a write of a local buffer.
    unsafe {
        libc::write(fd, rec.as_ptr().cast(), rec.len());
    }
}

/// What the records say, in the order they were written: a step failure is the most telling
/// record and is kept once seen; otherwise the last record wins.
pub fn summarize(records: impl IntoIterator<Item = Record>) -> Ended {
    let mut ended = Ended::Vanished;
    for record in records {
        if matches!(ended, Ended::StepFailed { .. }) {
            break;
        }
        ended = match record {
            Record::StepFailed { step, errno } => Ended::StepFailed { step, errno },
            Record::Exited(status) if libc::WIFSIGNALED(status) => {
                Ended::Signaled(libc::WTERMSIG(status))
            }
            Record::Exited(status) => Ended::Exited(libc::WEXITSTATUS(status)),
            Record::Killed => Ended::Killed,
        };
    }
    ended
}

/// Reads every record waiting in the (non-blocking) report pipe and summarizes them.
pub fn read(fd: &OwnedFd) -> Ended {
    let mut records = Vec::new();
    let mut rec = [0u8; LEN];
    loop {
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe { libc::read(fd.as_raw_fd(), rec.as_mut_ptr().cast(), rec.len()) };
        if n != LEN as isize {
            break;
        }
        records.extend(Record::decode(&rec));
    }
    summarize(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [
            Record::StepFailed {
                step: Step::Chdir,
                errno: libc::ENOENT,
            },
            Record::Exited(3 << 8),
            Record::Exited(libc::SIGKILL),
            Record::Killed,
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        let mut unknown = Record::Killed.encode();
        unknown[0] = 9;
        assert_eq!(Record::decode(&unknown), None);
    }

    #[test]
    fn a_step_failure_is_kept_else_the_last_record_wins() {
        assert_eq!(summarize([]), Ended::Vanished);
        assert_eq!(summarize([Record::Exited(3 << 8)]), Ended::Exited(3));
        assert_eq!(
            summarize([Record::Exited(libc::SIGKILL)]),
            Ended::Signaled(libc::SIGKILL)
        );
        let failed = Record::StepFailed {
            step: Step::Exec,
            errno: libc::EACCES,
        };
        // the hook process reports its failure, then its helper the exit status
        assert_eq!(
            summarize([failed, Record::Exited(127 << 8)]),
            Ended::StepFailed {
                step: Step::Exec,
                errno: libc::EACCES
            }
        );
        assert_eq!(
            summarize([Record::Exited(0), Record::Killed]),
            Ended::Killed
        );
    }

    #[test]
    fn read_from_a_pipe() {
        let (r, w) = std::io::pipe().unwrap();
        let (r, w) = (OwnedFd::from(r), OwnedFd::from(w));
        send(w.as_raw_fd(), Record::Exited(0));
        send(
            w.as_raw_fd(),
            Record::StepFailed {
                step: Step::Setns,
                errno: libc::EPERM,
            },
        );
        drop(w);
        assert_eq!(
            read(&r),
            Ended::StepFailed {
                step: Step::Setns,
                errno: libc::EPERM
            }
        );
    }
}
