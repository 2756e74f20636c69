//! nri-lifecycle: a containerd NRI plugin that gives every container Kubernetes-style
//! lifecycle hooks (PostStart and PreStop; exec, httpGet, sleep and tcpSocket handlers)
//! declared in annotations.
//!
//! # Layout
//!
//! An event flows down this list: protocol edge → one event input → a state machine per
//! container → effects → runners and gate.
//!
//! - [`nri`]: the protocol edge. Generated NRI code, the multiplexed socket, the `Plugin`
//!   service (both protocol generations feed one [`model::Event`]), registration, and the
//!   one mapping from our errors to ttrpc status codes.
//! - [`core`]: the event core. One input channel (`core::Input`) carries the runtime's
//!   requests, the gate's stop requests and the core's own reports to one task, which hands
//!   each to the per-container state machine; the outside world is behind [`core::Effects`].
//! - [`node`]: the real [`core::Effects`] of a node.
//! - [`hooks`]: the hook runners (exec, httpGet, sleep, tcpSocket) and their outcome.
//! - [`ns`]: processes and namespaces: pidfds, entering a container, its identity and its
//!   confinement (seccomp, OOM score).
//! - [`gate`]: the plugin side of the PreStop gate: injection and per-container sockets.
//! - [`containerd`]: containerd's own API and state directory (stored-spec rewrite, bundles).
//! - [`annotations`]: hook annotations → validated [`annotations::HookSpec`].
//! - [`config`]: the plugin config, raw → validated.
//! - [`policy`]: the operator's policy (handler kinds by namespace, addresses hooks may
//!   reach), compiled with the config and evaluated as pure functions.
//! - [`model`]: our own plain types for pods, containers, events and adjustments.
//! - [`ops`]: metrics, liveness and readiness, and the HTTP listener that serves them.
//! - [`daemon`]: the wiring of all of the above, for both launch modes.
//! - [`launcher`]: what the runtime starts in drop-in mode: registers at once and keeps one
//!   daemon (an external plugin) connected, restarting it when it dies.
//! - [`supervise`]: one daemon per runtime (a lock named after its NRI socket) and backoff.
//! - [`logging`]: log lines buffered until the runtime tells us where they go; JSON or text,
//!   a size-bounded rotated file in drop-in mode.
//! - [`lock`]: the one (poison-tolerant) way to take a lock.

pub mod annotations;
pub mod config;
pub mod containerd;
pub mod core;
pub mod daemon;
pub mod gate;
pub mod hooks;
pub mod launcher;
pub mod lock;
pub mod logging;
pub mod model;
pub mod node;
pub mod nri;
pub mod ns;
pub mod ops;
pub mod policy;
pub mod supervise;
