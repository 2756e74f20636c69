//! What a gated container gets at `CreateContainer`, and how to tell afterwards whether it
//! took effect.

use std::path::Path;
use std::time::Duration;

use super::protocol;
use crate::model::{Adjustment, Container, Mount};

/// Annotation added to every gated container. Its value is the gate protocol version, so a
/// restarted plugin knows which containers wait for it.
pub const GATED_ANNOTATION: &str = "gate.lifecycle.nri.io/protocol";

/// The kubelet's annotation naming the container's termination-message file.
pub const TERMINATION_MESSAGE_PATH_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePath";

/// How a container's gate behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateParams {
    /// How long the gate waits for the plugin's answer before it forwards the stop signal.
    /// Make it slightly longer than the hook's own bound, so the plugin answers first.
    pub timeout: Duration,
    /// A signal, besides SIGTERM, SIGINT and SIGQUIT, that the gate treats as a stop signal.
    pub stop_signal: Option<i32>,
    /// The container's termination-message file, where the gate says why the command could not
    /// be run; `None` when the container has none.
    pub termination_message: Option<String>,
}

impl GateParams {
    /// Margin the gate waits beyond the hook's bound, for the plugin's answer to arrive. Small,
    /// because it comes out of the time the app keeps for its own shutdown.
    pub const MARGIN: Duration = Duration::from_millis(500);

    /// Parameters for `container`'s PreStop hook bounded by `hook_bound` (its timeout, already
    /// capped by the pod's grace period by the caller).
    pub fn new(
        hook_bound: Duration,
        stop_signal: Option<i32>,
        container: &Container,
    ) -> GateParams {
        GateParams {
            timeout: hook_bound.saturating_add(Self::MARGIN),
            stop_signal,
            termination_message: termination_message_path(container),
        }
    }
}

/// The container's termination-message file as the container sees it: the path the kubelet
/// annotated (`/dev/termination-log` when it did not), when something is mounted there. The
/// kubelet bind-mounts the file; without a mount there is nobody to read it.
pub fn termination_message_path(container: &Container) -> Option<String> {
    let path = container
        .annotations
        .get(TERMINATION_MESSAGE_PATH_ANNOTATION)
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .unwrap_or(crate::core::TERMINATION_LOG);
    container
        .mounts
        .iter()
        .any(|m| m.destination == path)
        .then(|| path.to_string())
}

/// The container's new `process.args`: the gate, its options, `--`, then the original args.
pub fn gate_args(original: &[String], params: &GateParams) -> Vec<String> {
    let mut args = Vec::with_capacity(original.len() + 8);
    args.push(protocol::GATE_PATH.to_string());
    args.push(protocol::OPT_SOCKET.to_string());
    args.push(protocol::SOCKET_PATH.to_string());
    args.push(protocol::OPT_TIMEOUT_MS.to_string());
    args.push(params.timeout.as_millis().min(u64::MAX as u128).to_string());
    if let Some(sig) = params.stop_signal {
        args.push(protocol::OPT_STOP_SIGNAL.to_string());
        args.push(sig.to_string());
    }
    if let Some(path) = &params.termination_message {
        args.push(protocol::OPT_TERMINATION_MESSAGE.to_string());
        args.push(path.clone());
    }
    args.push(protocol::OPT_END.to_string());
    args.extend(original.iter().cloned());
    args
}

/// Whether `args` already start with the gate (the NRI args adjustment took effect, or the
/// stored spec was already rewritten). Checked in `PostCreateContainer`, whose container
/// carries the final args: on NRI ≥ 0.10 runtimes this is true and no rewrite is needed.
pub fn args_are_gated(args: &[String]) -> bool {
    args.first().map(String::as_str) == Some(protocol::GATE_PATH)
        && args.iter().any(|a| a == protocol::OPT_END)
}

/// Whether the container was marked as gated at create (by this plugin, any instance).
pub fn is_gated(container: &Container) -> bool {
    container.annotations.contains_key(GATED_ANNOTATION)
}

/// The `CreateContainer` adjustment for a container with a PreStop hook: the gate binary
/// mounted read-only at [`protocol::GATE_PATH`], the container's socket directory mounted
/// read-only at [`protocol::SOCKET_DIR`], the gated annotation, and the args with the gate in
/// front (honoured by NRI ≥ 0.10 runtimes; older ones need the stored-spec rewrite).
pub fn adjustment(
    gate_binary: &Path,
    socket_dir: &Path,
    container: &Container,
    params: &GateParams,
) -> Adjustment {
    let mut adj = Adjustment::default();
    adj.annotations
        .insert(GATED_ANNOTATION.to_string(), protocol::VERSION.to_string());
    let ro = |src: &Path, dst: &str| Mount {
        destination: dst.to_string(),
        kind: "bind".to_string(),
        source: src.to_string_lossy().into_owned(),
        options: vec![
            "rbind".to_string(),
            "ro".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
        ],
    };
    adj.mounts.push(ro(gate_binary, protocol::GATE_PATH));
    adj.mounts.push(ro(socket_dir, protocol::SOCKET_DIR));
    if !args_are_gated(&container.process.args) {
        adj.args = Some(gate_args(&container.process.args, params));
    }
    adj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(args: &[&str]) -> Container {
        let mut c = Container {
            id: "c1".into(),
            ..Default::default()
        };
        c.process.args = args.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn args_put_the_gate_in_front() {
        let p = GateParams::new(Duration::from_secs(5), Some(10), &container(&[]));
        let args = gate_args(&["nginx".into(), "-g".into(), "daemon off;".into()], &p);
        assert_eq!(
            args,
            [
                "/.nri-lifecycle/gate",
                "--socket",
                "/.nri-lifecycle/run/gate.sock",
                "--timeout-ms",
                "5500",
                "--stop-signal",
                "10",
                "--",
                "nginx",
                "-g",
                "daemon off;"
            ]
        );
        assert!(args_are_gated(&args));
        assert!(!args_are_gated(&["nginx".to_string()]));
        assert!(!args_are_gated(&[]));
    }

    #[test]
    fn adjustment_mounts_annotates_and_rewrites_args() {
        let c = container(&["/app", "--serve"]);
        let p = GateParams::new(Duration::from_secs(1), None, &c);
        let adj = adjustment(Path::new("/run/x/gate-bin"), Path::new("/run/x/c1"), &c, &p);
        assert_eq!(
            adj.annotations.get(GATED_ANNOTATION).map(String::as_str),
            Some("1")
        );
        assert_eq!(adj.mounts.len(), 2);
        assert_eq!(adj.mounts[0].destination, protocol::GATE_PATH);
        assert_eq!(adj.mounts[0].source, "/run/x/gate-bin");
        assert!(adj
            .mounts
            .iter()
            .all(|m| m.options.contains(&"ro".to_string())));
        assert_eq!(adj.mounts[1].destination, protocol::SOCKET_DIR);
        let args = adj.args.unwrap();
        assert_eq!(&args[args.len() - 2..], ["/app", "--serve"]);

        let mut gated = c.clone();
        gated
            .annotations
            .insert(GATED_ANNOTATION.into(), "1".into());
        assert!(is_gated(&gated));
        assert!(!is_gated(&c));
    }

    #[test]
    fn already_gated_args_are_not_wrapped_twice() {
        let p = GateParams::new(Duration::from_secs(1), None, &container(&[]));
        let c = container(
            &gate_args(&["/app".into()], &p)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let adj = adjustment(Path::new("/g"), Path::new("/d"), &c, &p);
        assert!(adj.args.is_none());
    }

    fn mount(destination: &str) -> Mount {
        Mount {
            destination: destination.into(),
            kind: "bind".into(),
            source: "/var/lib/kubelet/pods/p/containers/app/0a1b2c".into(),
            options: vec!["rbind".into(), "rw".into()],
        }
    }

    #[test]
    fn termination_message_path_is_passed_only_when_mounted() {
        let bound = Duration::from_secs(1);
        // The kubelet's default: annotated and mounted at /dev/termination-log.
        let mut c = container(&["/app"]);
        c.annotations.insert(
            TERMINATION_MESSAGE_PATH_ANNOTATION.into(),
            "/dev/termination-log".into(),
        );
        c.mounts.push(mount("/dev/termination-log"));
        let p = GateParams::new(bound, None, &c);
        assert_eq!(
            p.termination_message.as_deref(),
            Some("/dev/termination-log")
        );
        let args = gate_args(&c.process.args, &p);
        let end = args.iter().position(|a| a == protocol::OPT_END).unwrap();
        assert_eq!(
            &args[end - 2..],
            [
                "--termination-message",
                "/dev/termination-log",
                "--",
                "/app"
            ]
        );

        // A custom path is taken from the annotation, and must be the one mounted.
        c.annotations.insert(
            TERMINATION_MESSAGE_PATH_ANNOTATION.into(),
            "/run/app/why-it-ended".into(),
        );
        assert_eq!(GateParams::new(bound, None, &c).termination_message, None);
        c.mounts.push(mount("/run/app/why-it-ended"));
        assert_eq!(
            GateParams::new(bound, None, &c)
                .termination_message
                .as_deref(),
            Some("/run/app/why-it-ended")
        );

        // No annotation: the kubelet's default path, if mounted.
        let mut c = container(&["/app"]);
        c.mounts.push(mount("/dev/termination-log"));
        assert_eq!(
            termination_message_path(&c).as_deref(),
            Some("/dev/termination-log")
        );

        // Nothing mounted: no option at all.
        let c = container(&["/app"]);
        let p = GateParams::new(bound, None, &c);
        assert_eq!(p.termination_message, None);
        assert!(!gate_args(&c.process.args, &p)
            .iter()
            .any(|a| a == protocol::OPT_TERMINATION_MESSAGE));
    }
}
