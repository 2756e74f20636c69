//! nri-lifecycle: a containerd NRI plugin that gives every container Kubernetes-style
//! lifecycle hooks (PostStart and PreStop; exec, httpGet, sleep and tcpSocket handlers)
//! declared in annotations.
//!
//! # Layout
//!
//! - [`nri`]: the protocol edge. Generated NRI code, the multiplexed socket, the `Plugin`
//!   service (both protocol generations feed one [`model::Event`]) and the `Runtime` client.
//! - [`model`]: our own plain types for pods, containers, events and adjustments.
//! - [`annotations`]: hook annotations → validated [`annotations::HookSpec`].
//! - [`config`]: the plugin config, raw → validated.
//! - [`core`]: the event core: container table, what happens on each event.
//! - [`hooks`]: the hook runners (exec, httpGet, sleep, tcpSocket) and their outcome.
//! - [`ns`]: processes and namespaces: pidfds, entering a container, its identity.
//! - [`gate`]: the plugin side of the PreStop gate: injection and per-container sockets.
//! - [`logging`]: log lines buffered until the runtime tells us where they go.
//! - [`containerd`]: containerd's own API, for the stored-spec rewrite on older runtimes.

pub mod annotations;
pub mod config;
pub mod containerd;
pub mod core;
pub mod daemon;
pub mod gate;
pub mod hooks;
pub mod lock;
pub mod logging;
pub mod model;
pub mod node;
pub mod nri;
pub mod ns;
