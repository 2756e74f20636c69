//! The NRI protocol edge: the socket to the container runtime, the ttrpc services on it, and
//! the conversion of everything the runtime says into our own [`crate::model`] types.
//!
//! # How NRI talks, as checked against containerd and NRI sources
//!
//! **Socket.** One stream socket per plugin: fd 3 for a plugin the runtime starts itself
//! (pre-installed; env `NRI_PLUGIN_SOCKET=3`, `NRI_PLUGIN_NAME`, `NRI_PLUGIN_IDX`), or a
//! connection to the runtime's NRI socket (`/var/run/nri/nri.sock` by default) for an external
//! plugin. Two ttrpc connections share it through a simple multiplexer ([`mux`]): each frame is
//! a 4-byte big-endian connection id, a 4-byte big-endian payload length and the payload.
//! Connection 1 carries the `Plugin` service (the runtime is the client, we serve); connection 2
//! carries the `Runtime` service (we are the client: `RegisterPlugin`, `UpdateContainers`).
//! Connection 0 is reserved. A frame's payload is at most the size of one maximal ttrpc message
//! (10-byte header plus 4 MiB); we refuse bigger ones. The runtime's reader hands each frame to a 4 KiB buffered reader and fails on larger
//! frames, so we cut what we send into frames of at most 4096 bytes.
//!
//! **Registration first.** The plugin speaks first: `RegisterPlugin` with its name and a
//! two-digit index. The runtime waits for it up to the registration timeout (5 s by default),
//! then calls `Configure`. containerd 1.7 gives up on its own start-up when a pre-installed
//! plugin fails to register, so we register before doing anything that could be slow or fail.
//!
//! **Configure.** Always carries the plugin config string and the runtime's name and version.
//! The request and registration timeouts (milliseconds) are sent since NRI v0.8 (containerd
//! 2.0); before that they are zero and the runtime uses 2 s and 5 s. The runtime's own NRI
//! version is sent since NRI v0.12 only. The reply's `events` is the subscription mask: event
//! number N (the `Event` enum) is bit N-1, and 0 means "every event". A runtime rejects bits
//! for events newer than itself, so we only ever set bits 0–10 (RunPodSandbox..RemoveContainer),
//! which every generation knows.
//!
//! **Synchronize.** Since NRI v0.8 the runtime may split the existing pods and containers into
//! pages: `more` is true on every page but the last. A plugin must echo `more` and ask for no
//! updates on the intermediate pages, or the runtime concludes it cannot page and drops it.
//! Older runtimes send one request with `more` false.
//!
//! **Two delivery generations.** containerd 1.7 (NRI v0.6), 2.0 and 2.1 (v0.8) and 2.2 (v0.10)
//! call dedicated RPCs only for `CreateContainer`, `UpdateContainer` and `StopContainer` (and,
//! from v0.10, `UpdatePodSandbox` and `ValidateContainerAdjustment`). Every other event
//! (RunPodSandbox, StopPodSandbox, RemovePodSandbox, PostCreateContainer, StartContainer,
//! PostStartContainer, PostUpdateContainer, RemoveContainer, and from v0.10
//! PostUpdatePodSandbox) arrives as `StateChange`: the event number, the pod, and the container
//! (absent for pod events). NRI v0.12 adds a dedicated RPC for each of those and falls back to
//! `StateChange` only for plugins that answer "unimplemented". Runtimes only send events the
//! plugin subscribed to. We serve both paths and turn both into one [`crate::model::Event`].
//!
//! **Answers.** Each call is synchronous: the runtime waits, under a node-wide lock, up to the
//! request timeout, and drops a plugin that exceeds it or whose connection fails. A ttrpc error
//! status fails the runtime operation with its message (a refused `CreateContainer` becomes the
//! user's create error). So handlers answer at once and do slow work elsewhere.
//!
//! # Layout
//!
//! - [`wire`]: the generated protobuf types and ttrpc stubs (from `protos/nri/api.proto`).
//! - [`mux`]: the framing that carries both ttrpc connections over one socket.
//! - `convert`: wire ↔ model conversion, done once here.
//! - `service`: the `Plugin` service; both generations feed [`Handler::event`].
//! - [`plugin`]: registration and the run loops ([`serve`], [`run_preinstalled`],
//!   [`run_external`]).
//!
//! The runtime side of the protocol, for tests and benchmarks, lives in the workspace's
//! test-support crate (`testsupport/`), not in the plugin. It is built from the plugin's own
//! pieces, which are public for it alone (the plugin's binary uses none of them from outside
//! this module): [`wire`], the part of [`mux`] it names ([`mux::Mux`], the connection ids and
//! [`mux::one_connection`]), [`event_mask`] and [`event_to_wire`]. Tests also use [`wire`] to
//! build runtime requests.

mod convert;
mod handler;
pub mod mux;
pub mod plugin;
mod service;

/// The NRI wire API generated from `protos/nri/api.proto`. Public for the test-support crate's
/// runtime side and for tests that build runtime requests.
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/nri/mod.rs"));
}

/// Public for the test-support crate's runtime side: it numbers events and checks
/// subscriptions exactly as the plugin does.
pub use convert::{event_mask, event_to_wire};
pub use handler::Handler;
pub use plugin::{run_external, run_preinstalled, serve, NriError, Registration};
pub use service::{
    ServiceError, DEFAULT_REGISTRATION_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS, MAX_SYNC_OBJECTS,
};
