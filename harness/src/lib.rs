//! The private-node harness.
