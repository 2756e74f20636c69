//! The parts of `make bench` that need no node: samples and their statistics ([`stats`]),
//! typed quantities and verdicts ([`verdict`]), the bench's targets ([`targets`]) and
//! BENCHMARKS.md ([`report`]). The `bench` binary measures; these judge and write.

pub mod report;
pub mod stats;
pub mod targets;
pub mod verdict;
