//! Plugin side of the PreStop gate.

pub mod protocol;
