//! Test support for nri-lifecycle: what its tests and benchmarks need that the plugin itself
//! must not ship.
//!
//! # Layout
//!
//! - [`fake_runtime`]: the runtime side of NRI in both protocol generations, speaking to the
//!   plugin over a socket exactly as containerd does, built on the plugin's own generated wire
//!   types and multiplexer.

pub mod fake_runtime;
