//! The exec runner: the command runs inside the container (see [`crate::ns::enter`] for
//! exactly what is and is not applied).

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;
use tokio::time::Instant;

use super::output::Tail;
use super::{Error, Outcome, Target};
use crate::ns::enter::{self, Ended, Plan};
use crate::ns::pidfd::PidFd;
use crate::ns::sys::RealSys;

fn ns_failure(target: &Target, pidfd: &PidFd, source: crate::ns::Error) -> Outcome {
    if source.is_gone() || !pidfd.is_alive() {
        return Outcome::ContainerGone;
    }
    Outcome::Failed {
        reason: Error::Ns {
            container: target.container_id.clone(),
            source,
        }
        .to_string(),
    }
}

/// Reads output until the child has exited, then drains what is left without waiting for
/// processes that may still hold the pipe.
async fn pump(
    child: &mut tokio::process::Child,
    rx: &mut Receiver,
    tail: &mut Tail,
    deadline: Option<Instant>,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    let mut buf = [0u8; 4096];
    let mut eof = false;
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    // tokio waits for its children on a pidfd it gets when it spawns them: epoll readiness,
    // with no dependence on SIGCHLD delivery to the runtime.
    let exited = child.wait();
    tokio::pin!(exited);
    let status = loop {
        tokio::select! {
            status = &mut exited => break status,
            n = rx.read(&mut buf), if !eof => match n {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => tail.push(&buf[..n]),
            },
            _ = &mut sleep => return None,
        }
    };
    while !eof {
        match rx.try_read(&mut buf) {
            Ok(0) | Err(_) => eof = true,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
    Some(status)
}

pub(super) async fn run(
    argv: &[String],
    target: &Target,
    pidfd: &PidFd,
    deadline: Instant,
) -> Outcome {
    let plan = match Plan::gather(
        &RealSys,
        pidfd.pid(),
        target.process.as_ref(),
        target.bundle.as_deref(),
        argv,
    ) {
        Ok(p) => p,
        Err(e) => return ns_failure(target, pidfd, e),
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(source) => {
            return Outcome::Failed {
                reason: Error::Output {
                    container: target.container_id.clone(),
                    source,
                }
                .to_string(),
            }
        }
    };
    let mut rx = match Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(rx) => rx,
        Err(source) => {
            return Outcome::Failed {
                reason: Error::Output {
                    container: target.container_id.clone(),
                    source,
                }
                .to_string(),
            }
        }
    };
    let (pid, namespaces, source) = (plan.pid, plan.namespaces.clone(), plan.source);
    let mut running = match enter::spawn(pidfd, plan, OwnedFd::from(writer)) {
        Ok(r) => r,
        Err(e) => return ns_failure(target, pidfd, e),
    };
    tracing::debug!(
        container = %target.container_id,
        pid,
        ?namespaces,
        ?source,
        "exec hook started"
    );
    let mut tail = Tail::default();
    let timed_out = match pump(&mut running.child, &mut rx, &mut tail, Some(deadline)).await {
        Some(_) => false,
        None => {
            running.kill_tree();
            // The helper exits once the whole tree is gone.
            let _ = pump(&mut running.child, &mut rx, &mut tail, None).await;
            true
        }
    };
    let output = tail.render();
    let ended = running.ended();
    if timed_out {
        return Outcome::TimedOut { output };
    }
    let cmd = argv.join(" ");
    match ended {
        Ended::Exited(0) => Outcome::Succeeded { output },
        Ended::Exited(code) => Outcome::Failed {
            reason: format!("command '{cmd}' exited with {code}: {output}"),
        },
        Ended::Signaled(sig) => Outcome::Failed {
            reason: format!("command '{cmd}' was killed by signal {sig}: {output}"),
        },
        Ended::StepFailed { step, errno } => {
            if !pidfd.is_alive() {
                return Outcome::ContainerGone;
            }
            Outcome::Failed {
                reason: format!(
                    "command '{cmd}' in container {}: {step}: {}",
                    target.container_id,
                    std::io::Error::from_raw_os_error(errno)
                ),
            }
        }
        Ended::Killed | Ended::Vanished => {
            if !pidfd.is_alive() {
                return Outcome::ContainerGone;
            }
            Outcome::Failed {
                reason: format!("command '{cmd}': the hook's processes were killed: {output}"),
            }
        }
    }
}
