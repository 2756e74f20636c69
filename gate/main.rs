//! nri-lifecycle-gate: placeholder until the gate lands.
fn main() {}
