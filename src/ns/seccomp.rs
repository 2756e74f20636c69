//! A container's seccomp profile (the OCI spec's `linux.seccomp`) as the BPF program the
//! kernel runs, compiled with libseccomp the way runc compiles it.
//!
//! Two stages: [`Rules::from_profile`] is pure and decides everything (actions, errno values,
//! conditions, which names are skipped, the filter flags); [`Rules::compile`] hands the rules to
//! libseccomp and exports the program as `sock_filter` instructions. The program is compiled in
//! the plugin, before any fork; the hook process only loads it with one `seccomp(2)` call.
//! libseccomp itself is loaded at run time, the first time a profile is compiled (see
//! [`super::libseccomp`]): without it, compiling fails and so does the hook.
//!
//! What mirrors runc: `SCMP_ACT_KILL` is `KILL_THREAD`; `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE`
//! without `errnoRet` return `EPERM`; a rule whose action is the default action is skipped; a
//! syscall name libseccomp does not know for this machine is skipped; conditions on distinct
//! arguments form one rule (all must match) while several conditions on the same argument
//! become one rule each (any may match); an unknown architecture, action, operator or flag is
//! an error. What differs: `SCMP_ACT_NOTIFY` needs a seccomp agent listening on the
//! container's `listenerPath`, which only the runtime can serve: such a profile is refused
//! (the hook fails rather than run with less confinement). runc also patches the program so
//! that system calls newer than the profile fail with `ENOSYS`; this program gives them the
//! default action instead (stricter, never looser).

use std::ffi::CString;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::libseccomp::{self, ArgCmp, Context, Lib};
pub use crate::model::{SeccompArg as Arg, SeccompProfile as Profile};

/// The most instructions the kernel accepts in one filter (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;
/// System calls have at most six arguments.
const MAX_ARGS: u32 = 6;

/// What a rule (or the default) does, as libseccomp encodes it (`SCMP_ACT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KillThread,
    KillProcess,
    Trap,
    /// Fail the call with this errno.
    Errno(u16),
    /// Notify a tracer with this value.
    Trace(u16),
    Allow,
    Log,
}

impl Action {
    /// The `SCMP_ACT_*` value libseccomp takes.
    pub fn raw(self) -> u32 {
        match self {
            Action::KillThread => 0,
            Action::KillProcess => 0x8000_0000,
            Action::Trap => 0x0003_0000,
            Action::Errno(e) => 0x0005_0000 | u32::from(e),
            Action::Trace(v) => 0x7ff0_0000 | u32::from(v),
            Action::Log => 0x7ffc_0000,
            Action::Allow => 0x7fff_0000,
        }
    }
}

/// How an argument is compared (`enum scmp_compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    NotEqual,
    Less,
    LessOrEqual,
    Equal,
    GreaterEqual,
    Greater,
    /// `(arg & mask) == datum`, with the mask.
    MaskedEqual(u64),
}

/// One condition on an argument, as libseccomp takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub index: u32,
    pub op: CompareOp,
    pub datum: u64,
}

impl Cond {
    /// The `struct scmp_arg_cmp` of this condition.
    pub fn raw(self) -> ArgCmp {
        let (op, datum_a, datum_b) = match self.op {
            CompareOp::NotEqual => (1, self.datum, 0),
            CompareOp::Less => (2, self.datum, 0),
            CompareOp::LessOrEqual => (3, self.datum, 0),
            CompareOp::Equal => (4, self.datum, 0),
            CompareOp::GreaterEqual => (5, self.datum, 0),
            CompareOp::Greater => (6, self.datum, 0),
            CompareOp::MaskedEqual(mask) => (7, mask, self.datum),
        };
        ArgCmp {
            arg: self.index,
            op,
            datum_a,
            datum_b,
        }
    }
}

/// One rule for libseccomp: the system call, its action and the conditions that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub syscall: i32,
    pub action: Action,
    pub conds: Vec<Cond>,
}

/// A profile decided: what libseccomp is given, and the flags of `seccomp(2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub default: Action,
    /// Architectures by libseccomp's names (`x86_64`, `aarch64`, ...).
    pub arches: Vec<&'static str>,
    pub rules: Vec<Rule>,
    /// `SECCOMP_FILTER_FLAG_*` bits for the load.
    pub flags: libc::c_ulong,
    /// Names skipped because libseccomp does not know them on this machine.
    pub skipped: Vec<String>,
}

/// A compiled filter, ready to be loaded with `seccomp(SECCOMP_SET_MODE_FILTER, flags, ..)`.
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Filter {
    /// The instructions (never empty, at most `BPF_MAXINSNS`).
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

fn action(name: &str, errno_ret: Option<u32>) -> Result<Action, String> {
    let code = |what: &str| -> Result<u16, String> {
        match errno_ret {
            None => Ok(libc::EPERM as u16),
            Some(v) => u16::try_from(v).map_err(|_| format!("{what} value {v} is out of range")),
        }
    };
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_ERRNO" => Action::Errno(code("errnoRet")?),
        "SCMP_ACT_TRACE" => Action::Trace(code("trace")?),
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err("SCMP_ACT_NOTIFY needs the runtime's seccomp agent, \
                 which an exec hook cannot reach"
                .into())
        }
        other => return Err(format!("unknown action {other:?}")),
    })
}

/// The architectures of the OCI spec (`SCMP_ARCH_*`) by libseccomp's names for them.
const ARCHES: &[(&str, &str)] = &[
    ("SCMP_ARCH_X86", "x86"),
    ("SCMP_ARCH_X86_64", "x86_64"),
    ("SCMP_ARCH_X32", "x32"),
    ("SCMP_ARCH_ARM", "arm"),
    ("SCMP_ARCH_AARCH64", "aarch64"),
    ("SCMP_ARCH_LOONGARCH64", "loongarch64"),
    ("SCMP_ARCH_M68K", "m68k"),
    ("SCMP_ARCH_MIPS", "mips"),
    ("SCMP_ARCH_MIPS64", "mips64"),
    ("SCMP_ARCH_MIPS64N32", "mips64n32"),
    ("SCMP_ARCH_MIPSEL", "mipsel"),
    ("SCMP_ARCH_MIPSEL64", "mipsel64"),
    ("SCMP_ARCH_MIPSEL64N32", "mipsel64n32"),
    ("SCMP_ARCH_PPC", "ppc"),
    ("SCMP_ARCH_PPC64", "ppc64"),
    ("SCMP_ARCH_PPC64LE", "ppc64le"),
    ("SCMP_ARCH_S390", "s390"),
    ("SCMP_ARCH_S390X", "s390x"),
    ("SCMP_ARCH_PARISC", "parisc"),
    ("SCMP_ARCH_PARISC64", "parisc64"),
    ("SCMP_ARCH_RISCV64", "riscv64"),
    ("SCMP_ARCH_SH", "sh"),
    ("SCMP_ARCH_SHEB", "sheb"),
];

fn arch(name: &str) -> Result<&'static str, String> {
    ARCHES
        .iter()
        .find(|(spec, _)| *spec == name)
        .map(|(_, lib)| *lib)
        .ok_or_else(|| format!("unknown architecture {name:?}"))
}

fn operator(arg: &Arg) -> Result<Cond, String> {
    if arg.index >= MAX_ARGS {
        return Err(format!("argument index {} is out of range", arg.index));
    }
    let (op, datum) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (CompareOp::NotEqual, arg.value),
        "SCMP_CMP_LT" => (CompareOp::Less, arg.value),
        "SCMP_CMP_LE" => (CompareOp::LessOrEqual, arg.value),
        "SCMP_CMP_EQ" => (CompareOp::Equal, arg.value),
        "SCMP_CMP_GE" => (CompareOp::GreaterEqual, arg.value),
        "SCMP_CMP_GT" => (CompareOp::Greater, arg.value),
        // `value` is the mask, `valueTwo` what the masked argument must equal
        "SCMP_CMP_MASKED_EQ" => (CompareOp::MaskedEqual(arg.value), arg.value_two),
        other => return Err(format!("unknown operator {other:?}")),
    };
    Ok(Cond {
        index: arg.index,
        op,
        datum,
    })
}

fn flag(name: &str) -> Result<libc::c_ulong, String> {
    match name {
        "SECCOMP_FILTER_FLAG_TSYNC" => Ok(libc::SECCOMP_FILTER_FLAG_TSYNC),
        "SECCOMP_FILTER_FLAG_LOG" => Ok(libc::SECCOMP_FILTER_FLAG_LOG),
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => Ok(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW),
        other => Err(format!("unknown flag {other:?}")),
    }
}

impl Rules {
    /// Decides the filter of `profile`. `resolve` maps a system call name to its number on
    /// this machine (`None`: unknown, the name is skipped); production passes libseccomp's.
    pub fn from_profile(
        profile: &Profile,
        resolve: impl Fn(&str) -> Option<i32>,
    ) -> Result<Rules, String> {
        let default = action(&profile.default_action, profile.default_errno_ret)
            .map_err(|e| format!("default action: {e}"))?;
        let arches = profile
            .architectures
            .iter()
            .flatten()
            .map(|a| arch(a))
            .collect::<Result<Vec<_>, _>>()?;
        let flags = profile
            .flags
            .iter()
            .flatten()
            .try_fold(0, |acc, f| flag(f).map(|bit| acc | bit))?;
        let mut rules = Vec::new();
        let mut skipped = Vec::new();
        for entry in profile.syscalls.iter().flatten() {
            let act = action(&entry.action, entry.errno_ret)
                .map_err(|e| format!("syscalls {:?}: {e}", entry.names))?;
            let conds = entry
                .args
                .iter()
                .flatten()
                .map(operator)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("syscalls {:?}: {e}", entry.names))?;
            if act == default {
                continue;
            }
            let mut per_index = [0usize; MAX_ARGS as usize];
            for c in &conds {
                per_index[c.index as usize] += 1;
            }
            // Several conditions on one argument cannot all be asked of libseccomp in one
            // rule: each becomes its own rule (any of them matches).
            let groups: Vec<Vec<Cond>> = if per_index.iter().any(|n| *n > 1) {
                conds.iter().map(|c| vec![*c]).collect()
            } else {
                vec![conds]
            };
            for name in &entry.names {
                if name.is_empty() {
                    return Err("an empty syscall name".into());
                }
                let Some(syscall) = resolve(name) else {
                    skipped.push(name.clone());
                    continue;
                };
                for conds in &groups {
                    rules.push(Rule {
                        name: name.clone(),
                        syscall,
                        action: act,
                        conds: conds.clone(),
                    });
                }
            }
        }
        Ok(Rules {
            default,
            arches,
            rules,
            flags,
            skipped,
        })
    }

    /// Compiles the rules with libseccomp `lib` and exports the program.
    pub fn compile(&self, lib: &Lib) -> Result<Filter, String> {
        let mut ctx = Context::new(lib, self.default.raw())?;
        for name in &self.arches {
            let c = CString::new(*name).map_err(|e| e.to_string())?;
            // SAFETY: a valid C string; returns the architecture's token or 0.
            let token = unsafe { (lib.arch_resolve_name)(c.as_ptr()) };
            if token == 0 {
                return Err(format!(
                    "libseccomp does not know the architecture {name:?}"
                ));
            }
            ctx.add_arch(token)?;
        }
        if self.rules.len() > 32 {
            // A binary tree of system call numbers; an error only means an older libseccomp.
            let _ = ctx.set_attr(libseccomp::ATTR_CTL_OPTIMIZE, 2);
        }
        for rule in &self.rules {
            let conds: Vec<ArgCmp> = rule.conds.iter().map(|c| c.raw()).collect();
            ctx.add_rule(
                &format!("rule for {}", rule.name),
                rule.action.raw(),
                rule.syscall,
                &conds,
            )?;
        }
        let bytes = export(&ctx)?;
        let size = std::mem::size_of::<libc::sock_filter>();
        if bytes.is_empty() || bytes.len() % size != 0 || bytes.len() / size > MAX_INSNS {
            return Err(format!(
                "the program has {} bytes: not 1 to {MAX_INSNS} instructions",
                bytes.len()
            ));
        }
        let program = bytes
            .chunks_exact(size)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Filter {
            program,
            flags: self.flags,
        })
    }
}

/// The number of `name` on this machine's architecture, `None` when libseccomp does not
/// know it.
pub fn resolve(lib: &Lib, name: &str) -> Option<i32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid C string; returns a number, negative when unknown.
    let n = unsafe { (lib.syscall_resolve_name)(c.as_ptr()) };
    (n >= 0).then_some(n)
}

/// Compiles `profile` for this machine with libseccomp, loading it the first time. Fails
/// (and so does the hook) when libseccomp cannot be loaded.
pub fn compile(profile: &Profile) -> Result<Filter, String> {
    compile_with(libseccomp::library(), profile)
}

/// Compiles `profile` with `lib`, or fails with why there is none.
pub fn compile_with(lib: Result<&Lib, String>, profile: &Profile) -> Result<Filter, String> {
    let lib = lib?;
    Rules::from_profile(profile, |name| resolve(lib, name))?.compile(lib)
}

/// The program as bytes, through an anonymous memory file.
fn export(ctx: &Context<'_>) -> Result<Vec<u8>, String> {
    let io = |e: std::io::Error| format!("exporting the program: {e}");
    // SAFETY: memfd_create with a static C string; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"nri-lifecycle-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: freshly created for us and owned by nobody else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(file.as_raw_fd())?;
    file.rewind().map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::enter::syscalls::{Errno, Raw, Syscalls};

    fn profile(json: &str) -> Profile {
        serde_json::from_str(json).unwrap()
    }

    /// Resolves a few names to made-up numbers; anything else is unknown.
    fn fake_resolve(name: &str) -> Option<i32> {
        [
            "read",
            "write",
            "personality",
            "clone",
            "clone3",
            "socket",
            "mkdir",
            "exit_group",
        ]
        .iter()
        .position(|n| *n == name)
        .map(|i| i as i32 + 100)
    }

    /// The shape of containerd's default profile: errno default, three x86 architectures,
    /// plain allow lists with names this machine may not know, masked equality on clone's
    /// flags, several conditions on one argument of personality, an errnoRet for clone3.
    const CONTAINERD_SHAPE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write", "exit_group", "not_a_syscall_anywhere"],
                "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 40, "op": "SCMP_CMP_NE"},
                {"index": 2, "value": 3, "op": "SCMP_CMP_LT"}]},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    }"#;

    #[test]
    fn containerd_default_shape_translates_as_runc_would() {
        let rules = Rules::from_profile(&profile(CONTAINERD_SHAPE), fake_resolve).unwrap();
        assert_eq!(rules.default, Action::Errno(1));
        assert_eq!(rules.arches, vec!["x86_64", "x86", "x32"]);
        assert_eq!(rules.flags, 0);
        assert_eq!(rules.skipped, vec!["not_a_syscall_anywhere".to_string()]);
        let cond = |index, op, datum| Cond { index, op, datum };
        let of =
            |name: &str| -> Vec<&Rule> { rules.rules.iter().filter(|r| r.name == name).collect() };
        assert_eq!(of("read")[0].conds, vec![]);
        assert_eq!(of("read")[0].syscall, 100);
        // three conditions on argument 0: three rules, any of which allows
        let personality: Vec<Vec<Cond>> =
            of("personality").iter().map(|r| r.conds.clone()).collect();
        assert_eq!(
            personality,
            vec![
                vec![cond(0, CompareOp::Equal, 0)],
                vec![cond(0, CompareOp::Equal, 8)],
                vec![cond(0, CompareOp::Equal, 0xffff_ffff)],
            ]
        );
        // masked equality: value is the mask, valueTwo the expected bits
        assert_eq!(
            of("clone")[0].conds,
            vec![cond(0, CompareOp::MaskedEqual(2114060288), 0)]
        );
        assert_eq!(of("clone3")[0].action, Action::Errno(libc::ENOSYS as u16));
        // conditions on distinct arguments: one rule, all must hold
        assert_eq!(
            of("socket")[0].conds,
            vec![
                cond(0, CompareOp::NotEqual, 40),
                cond(2, CompareOp::Less, 3)
            ]
        );
        assert_eq!(of("socket").len(), 1);
        // the same action as the default: skipped, as libseccomp would refuse it
        assert!(of("mkdir").is_empty());
        // and it compiles for this machine
        let filter = compile(&profile(CONTAINERD_SHAPE)).unwrap();
        assert!(filter.program().len() > 10);
    }

    #[test]
    fn without_libseccomp_a_profile_fails_with_the_reason() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
        let missing = "libseccomp.so.2 is not installed on this node: gone".to_string();
        let err = compile_with(Err(missing.clone()), &p).unwrap_err();
        assert_eq!(err, missing);
        assert!(compile_with(libseccomp::library(), &p).is_ok());
    }

    #[test]
    fn conditions_take_libseccomp_layout() {
        let c = Cond {
            index: 2,
            op: CompareOp::MaskedEqual(0xf0),
            datum: 0x20,
        };
        assert_eq!(
            c.raw(),
            ArgCmp {
                arg: 2,
                op: 7,
                datum_a: 0xf0,
                datum_b: 0x20
            }
        );
        assert_eq!(std::mem::size_of::<ArgCmp>(), 24);
        assert_eq!(Action::Errno(38).raw(), 0x0005_0026);
        assert_eq!(Action::Trace(9).raw(), 0x7ff0_0009);
    }

    #[test]
    fn actions_operators_and_flags_map_one_to_one() {
        let with_action = |action: &str, errno: &str| {
            let p = profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {{"names":["read"],"action":"{action}"{errno}}}]}}"#
            ));
            Rules::from_profile(&p, fake_resolve).map(|r| r.rules[0].action)
        };
        for (name, errno, want) in [
            ("SCMP_ACT_KILL", "", Action::KillThread),
            ("SCMP_ACT_KILL_THREAD", "", Action::KillThread),
            ("SCMP_ACT_KILL_PROCESS", "", Action::KillProcess),
            ("SCMP_ACT_TRAP", "", Action::Trap),
            ("SCMP_ACT_ERRNO", "", Action::Errno(libc::EPERM as u16)),
            ("SCMP_ACT_ERRNO", r#","errnoRet":5"#, Action::Errno(5)),
            ("SCMP_ACT_TRACE", "", Action::Trace(libc::EPERM as u16)),
            ("SCMP_ACT_TRACE", r#","errnoRet":9"#, Action::Trace(9)),
            ("SCMP_ACT_LOG", "", Action::Log),
        ] {
            assert_eq!(with_action(name, errno), Ok(want), "{name}{errno}");
        }
        assert!(with_action("SCMP_ACT_NOTIFY", "")
            .unwrap_err()
            .contains("SCMP_ACT_NOTIFY needs the runtime's seccomp agent"));
        assert!(with_action("SCMP_ACT_ERRNO", r#","errnoRet":70000"#)
            .unwrap_err()
            .contains("out of range"));
        assert!(with_action("SCMP_ACT_BOGUS", "")
            .unwrap_err()
            .contains("unknown action"));

        for (op, value_two, want) in [
            ("SCMP_CMP_NE", 0, CompareOp::NotEqual),
            ("SCMP_CMP_LT", 0, CompareOp::Less),
            ("SCMP_CMP_LE", 0, CompareOp::LessOrEqual),
            ("SCMP_CMP_EQ", 0, CompareOp::Equal),
            ("SCMP_CMP_GE", 0, CompareOp::GreaterEqual),
            ("SCMP_CMP_GT", 0, CompareOp::Greater),
            ("SCMP_CMP_MASKED_EQ", 6, CompareOp::MaskedEqual(7)),
        ] {
            let p = profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["read"],
                    "action":"SCMP_ACT_ERRNO","args":[
                    {{"index":1,"value":7,"valueTwo":{value_two},"op":"{op}"}}]}}]}}"#
            ));
            let rules = Rules::from_profile(&p, fake_resolve).unwrap();
            let datum = if value_two == 0 { 7 } else { value_two };
            assert_eq!(
                rules.rules[0].conds,
                vec![Cond {
                    index: 1,
                    op: want,
                    datum
                }],
                "{op}"
            );
        }
        let bad = |args: &str| {
            let p = profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["read"],
                    "action":"SCMP_ACT_ERRNO","args":[{args}]}}]}}"#
            ));
            Rules::from_profile(&p, fake_resolve).unwrap_err()
        };
        assert!(bad(r#"{"index":6,"value":1,"op":"SCMP_CMP_EQ"}"#).contains("index 6"));
        assert!(bad(r#"{"index":0,"value":1,"op":"SCMP_CMP_XX"}"#).contains("unknown operator"));

        let flags = |list: &str| {
            let p = profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","flags":[{list}]}}"#
            ));
            Rules::from_profile(&p, fake_resolve).map(|r| r.flags)
        };
        assert_eq!(
            flags(
                r#""SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW""#
            ),
            Ok(libc::SECCOMP_FILTER_FLAG_TSYNC
                | libc::SECCOMP_FILTER_FLAG_LOG
                | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW)
        );
        assert!(flags(r#""SECCOMP_FILTER_FLAG_NEW_LISTENER""#)
            .unwrap_err()
            .contains("unknown flag"));

        let p = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#);
        assert!(Rules::from_profile(&p, fake_resolve)
            .unwrap_err()
            .contains("unknown architecture"));
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(Rules::from_profile(&p, fake_resolve)
            .unwrap_err()
            .starts_with("default action: SCMP_ACT_NOTIFY"));
        assert!(
            serde_json::from_str::<Profile>(r#"{"defaultAction":"SCMP_ACT_ALLOW","extra":1}"#)
                .is_err()
        );
    }

    /// Runs `probe` in a forked child with no_new_privs and `filter` loaded through the real
    /// system call; returns the child's wait status (exit 100: loading failed).
    fn under(filter: &Filter, probe: impl Fn() -> i32) -> i32 {
        // SAFETY: the child makes raw system calls only, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl and _exit with integers.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if Raw.seccomp(filter).is_err() {
                    libc::_exit(100);
                }
                libc::_exit(probe());
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// `getpgid(arg)` in the child: 1 when it failed with errno 77 (the rule matched).
    fn getpgid_matches(arg: u64) -> impl Fn() -> i32 {
        move || {
            // SAFETY: a raw system call with an integer.
            let rc = unsafe { libc::syscall(libc::SYS_getpgid, arg) };
            i32::from(rc < 0 && Errno::last().0 == 77)
        }
    }

    fn exit_code(status: i32) -> i32 {
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn matching(args: &str) -> Filter {
        compile(&profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["getpgid"],
                "action":"SCMP_ACT_ERRNO","errnoRet":77,"args":[{args}]}}]}}"#
        )))
        .unwrap()
    }

    #[test]
    fn every_operator_matches_in_the_kernel() {
        let arg = |op: &str, value: u64, two: u64| {
            format!(r#"{{"index":0,"value":{value},"valueTwo":{two},"op":"{op}"}}"#)
        };
        for (op, value, two, hit, miss) in [
            ("SCMP_CMP_EQ", 5, 0, 5, 6),
            ("SCMP_CMP_NE", 5, 0, 6, 5),
            ("SCMP_CMP_LT", 5, 0, 4, 5),
            ("SCMP_CMP_LE", 5, 0, 5, 6),
            ("SCMP_CMP_GE", 5, 0, 5, 4),
            ("SCMP_CMP_GT", 5, 0, 6, 5),
            ("SCMP_CMP_MASKED_EQ", 0xf0, 0x20, 0x2f, 0x1f),
        ] {
            let filter = matching(&arg(op, value, two));
            assert_eq!(
                exit_code(under(&filter, getpgid_matches(hit))),
                1,
                "{op} {hit}"
            );
            assert_eq!(
                exit_code(under(&filter, getpgid_matches(miss))),
                0,
                "{op} {miss}"
            );
        }
        // two conditions on one argument: either matches
        let filter = matching(&format!(
            "{},{}",
            arg("SCMP_CMP_EQ", 5, 0),
            arg("SCMP_CMP_EQ", 7, 0)
        ));
        for (value, want) in [(5, 1), (7, 1), (6, 0)] {
            assert_eq!(
                exit_code(under(&filter, getpgid_matches(value))),
                want,
                "{value}"
            );
        }
    }

    #[test]
    fn actions_and_defaults_take_effect_in_the_kernel() {
        let mkdir = || {
            // SAFETY: a raw system call with a static C string; the directory does not
            // exist, so nothing is created either way.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_mkdir,
                    c"/nonexistent-nri-lifecycle/x".as_ptr(),
                    0o700,
                )
            };
            if rc < 0 {
                Errno::last().0
            } else {
                0
            }
        };
        let unfiltered = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)).unwrap();
        assert_eq!(exit_code(under(&unfiltered, mkdir)), libc::ENOENT);
        let forbid = |action: &str| {
            compile(&profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],
                    "syscalls":[{{"names":["mkdir"],"action":{action}}}]}}"#
            )))
            .unwrap()
        };
        assert_eq!(
            exit_code(under(&forbid(r#""SCMP_ACT_ERRNO""#), mkdir)),
            libc::EPERM
        );
        assert_eq!(
            exit_code(under(&forbid(r#""SCMP_ACT_ERRNO","errnoRet":38"#), mkdir)),
            libc::ENOSYS
        );
        assert_eq!(
            exit_code(under(&forbid(r#""SCMP_ACT_LOG""#), mkdir)),
            libc::ENOENT
        );
        for action in [
            r#""SCMP_ACT_KILL_PROCESS""#,
            r#""SCMP_ACT_TRAP""#,
            r#""SCMP_ACT_KILL""#,
        ] {
            let status = under(&forbid(action), mkdir);
            assert!(libc::WIFSIGNALED(status), "{action}: {status:#x}");
            assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{action}");
        }
        // the default action with its errno; what the child itself needs is allowed
        let deny_all = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":77,
                "syscalls":[{"names":["exit","exit_group"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(exit_code(under(&deny_all, mkdir)), 77);
        // containerd's shape loads and keeps denying what it does not list
        let shape = compile(&profile(CONTAINERD_SHAPE)).unwrap();
        assert_eq!(exit_code(under(&shape, mkdir)), libc::EPERM);
    }
}
