//! Plugin side of the PreStop gate.
