//! Hook runners.

use std::time::Duration;

use crate::annotations::HookSpec;
use crate::core::{HookOutcome, Target};

/// Runs one hook (placeholder until the runners land).
pub async fn run(_spec: &HookSpec, _target: &Target, _timeout: Duration) -> HookOutcome {
    HookOutcome::Failed {
        reason: "hook runners are not available in this build".into(),
    }
}
