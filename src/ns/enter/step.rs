//! The steps of entering a container and starting a hook, as reported over the report pipe.
//!
//! One list gives every step its variant, its code (its position) and its name, so a code
//! and the name shown for it cannot drift apart.

macro_rules! steps {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// A step of entering a container or starting the hook; its code is its position.
        #[repr(u32)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Step {
            $($(#[$doc])* $variant,)*
        }

        impl Step {
            /// Every step, in code order.
            pub const ALL: &'static [Step] = &[$(Step::$variant,)*];

            /// What the step does, as shown in a failure message.
            pub fn name(self) -> &'static str {
                match self {
                    $(Step::$variant => $name,)*
                }
            }
        }
    };
}

steps! {
    /// Writing ourselves into a `cgroup.procs` file of the container.
    JoinCgroup => "join cgroup",
    /// `setns(pidfd, flags)` into the container's namespaces.
    Setns => "setns",
    /// `fchdir` + `chroot` into the container's root directory.
    EnterRoot => "enter root directory",
    /// The fork that puts the helper into the container's PID namespace.
    ForkPid => "fork into pid namespace",
    /// `PR_SET_CHILD_SUBREAPER` in the helper.
    Subreaper => "become subreaper",
    /// The helper's `signalfd` for `SIGCHLD`.
    Signalfd => "signalfd",
    /// The fork of the hook process.
    ForkHook => "fork hook process",
    /// `PR_CAPBSET_DROP` of a capability the container does not have.
    DropBounding => "drop bounding capabilities",
    Setgroups => "setgroups",
    Setresgid => "setresgid",
    Setresuid => "setresuid",
    Capset => "capset",
    /// Clearing and raising the ambient set.
    Ambient => "ambient capabilities",
    NoNewPrivs => "no_new_privs",
    Chdir => "chdir to working directory",
    /// `execve` of every candidate from the container's `PATH`.
    Exec => "exec (not found or not executable in the container's PATH)",
    /// `PR_SET_KEEPCAPS` on or off around the uid change.
    KeepCaps => "keepcaps",
    /// `PR_SET_DUMPABLE` off.
    Dumpable => "dumpable",
    Setsid => "setsid",
    /// Writing the container's OOM score adjustment to `/proc/self/oom_score_adj`.
    OomScoreAdj => "set oom_score_adj",
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` with the container's filter.
    Seccomp => "install seccomp filter",
    /// Writing the container's SELinux label to `attr/exec`.
    SelinuxLabel => "set SELinux exec label",
    /// Writing `exec <profile>` to `attr/apparmor/exec` (or `attr/exec`).
    AppArmorProfile => "set AppArmor exec profile",
}

impl Step {
    /// The code sent over the report pipe.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The step with this code (`None` for a code no step has).
    pub fn from_code(code: u32) -> Option<Step> {
        Step::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names_are_distinct() {
        for (i, step) in Step::ALL.iter().enumerate() {
            assert_eq!(step.code() as usize, i);
            assert_eq!(Step::from_code(step.code()), Some(*step));
        }
        assert_eq!(Step::from_code(Step::ALL.len() as u32), None);
        assert_eq!(Step::from_code(u32::MAX), None);
        let mut names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Step::ALL.len());
        assert_eq!(Step::Setns.to_string(), "setns");
        assert_eq!(Step::Setsid.name(), "setsid");
    }
}
