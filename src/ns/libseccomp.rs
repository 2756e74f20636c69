//! The few functions of libseccomp that compile a filter, bound by hand.
//!
//! libseccomp is the compiler runc and youki use, so a profile means here what it means to
//! the runtime. It is loaded at run time with `dlopen("libseccomp.so.2")` the first time a
//! container with a seccomp profile runs an exec hook: building the plugin needs nothing but
//! cargo, and a node without the library only loses exec hooks in containers that have a
//! profile (they fail closed, saying why). With the `static-seccomp` feature the same
//! functions are linked from `libseccomp.a` instead (the statically linked image binary,
//! which cannot `dlopen`).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

/// The soname looked up at run time (libseccomp 2.x; every 2.x has these functions).
pub const SONAME: &str = "libseccomp.so.2";

/// `scmp_filter_ctx`.
pub type Ctx = *mut c_void;

/// `struct scmp_arg_cmp`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCmp {
    pub arg: c_uint,
    /// `enum scmp_compare`.
    pub op: c_int,
    pub datum_a: u64,
    pub datum_b: u64,
}

/// `SCMP_FLTATR_CTL_OPTIMIZE` of `enum scmp_filter_attr`.
pub const ATTR_CTL_OPTIMIZE: c_int = 8;

/// The functions, as pointers (resolved with `dlsym`, or the linked symbols).
pub struct Lib {
    pub init: unsafe extern "C" fn(def_action: u32) -> Ctx,
    pub release: unsafe extern "C" fn(ctx: Ctx),
    pub arch_add: unsafe extern "C" fn(ctx: Ctx, arch_token: u32) -> c_int,
    pub attr_set: unsafe extern "C" fn(ctx: Ctx, attr: c_int, value: u32) -> c_int,
    pub rule_add_array: unsafe extern "C" fn(
        ctx: Ctx,
        action: u32,
        syscall: c_int,
        arg_cnt: c_uint,
        arg_array: *const ArgCmp,
    ) -> c_int,
    pub export_bpf: unsafe extern "C" fn(ctx: Ctx, fd: c_int) -> c_int,
    pub syscall_resolve_name: unsafe extern "C" fn(name: *const c_char) -> c_int,
    pub arch_resolve_name: unsafe extern "C" fn(name: *const c_char) -> u32,
}

impl std::fmt::Debug for Lib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("libseccomp")
    }
}

/// libseccomp, loaded (or linked) once, the first time it is asked for. The error says why
/// it cannot be had, in words meant for the operator.
pub fn library() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

#[cfg(feature = "static-seccomp")]
fn load() -> Result<Lib, String> {
    #[link(name = "seccomp", kind = "static")]
    extern "C" {
        fn seccomp_init(def_action: u32) -> Ctx;
        fn seccomp_release(ctx: Ctx);
        fn seccomp_arch_add(ctx: Ctx, arch_token: u32) -> c_int;
        fn seccomp_attr_set(ctx: Ctx, attr: c_int, value: u32) -> c_int;
        fn seccomp_rule_add_array(
            ctx: Ctx,
            action: u32,
            syscall: c_int,
            arg_cnt: c_uint,
            arg_array: *const ArgCmp,
        ) -> c_int;
        fn seccomp_export_bpf(ctx: Ctx, fd: c_int) -> c_int;
        fn seccomp_syscall_resolve_name(name: *const c_char) -> c_int;
        fn seccomp_arch_resolve_name(name: *const c_char) -> u32;
    }
    Ok(Lib {
        init: seccomp_init,
        release: seccomp_release,
        arch_add: seccomp_arch_add,
        attr_set: seccomp_attr_set,
        rule_add_array: seccomp_rule_add_array,
        export_bpf: seccomp_export_bpf,
        syscall_resolve_name: seccomp_syscall_resolve_name,
        arch_resolve_name: seccomp_arch_resolve_name,
    })
}

#[cfg(not(feature = "static-seccomp"))]
fn load() -> Result<Lib, String> {
    open(c"libseccomp.so.2")
}

/// The last `dlerror()` text.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a valid C string owned by libc, read at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated, valid until the next dl* call on this thread.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Loads the library `soname` and resolves every function. The handle is never closed: the
/// functions are used for the life of the process.
pub fn open(soname: &CStr) -> Result<Lib, String> {
    let name = soname.to_string_lossy();
    // SAFETY: dlopen with a valid C string; returns a handle or NULL.
    let handle = unsafe { libc::dlopen(soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!(
            "{name} is not installed on this node: {} (exec hooks of containers with a \
             seccomp profile need it; install libseccomp 2)",
            dl_error()
        ));
    }
    let sym = |symbol: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: dlsym on the handle just opened, with a valid C string.
        let p = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
        if p.is_null() {
            Err(format!(
                "{name} has no {}: {}",
                symbol.to_string_lossy(),
                dl_error()
            ))
        } else {
            Ok(p)
        }
    };
    // SAFETY (every transmute): each symbol is the libseccomp 2 function of that name, whose
    // C prototype the field's type spells out.
    unsafe {
        Ok(Lib {
            init: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> Ctx>(sym(
                c"seccomp_init",
            )?),
            release: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx)>(sym(
                c"seccomp_release",
            )?),
            arch_add: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx, u32) -> c_int>(
                sym(c"seccomp_arch_add")?,
            ),
            attr_set: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx, c_int, u32) -> c_int,
            >(sym(c"seccomp_attr_set")?),
            rule_add_array: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx, u32, c_int, c_uint, *const ArgCmp) -> c_int,
            >(sym(c"seccomp_rule_add_array")?),
            export_bpf: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx, c_int) -> c_int>(
                sym(c"seccomp_export_bpf")?,
            ),
            syscall_resolve_name: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*const c_char) -> c_int,
            >(sym(c"seccomp_syscall_resolve_name")?),
            arch_resolve_name: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*const c_char) -> u32,
            >(sym(c"seccomp_arch_resolve_name")?),
        })
    }
}

/// A filter context, released when dropped.
pub struct Context<'a> {
    lib: &'a Lib,
    ctx: Ctx,
}

impl<'a> Context<'a> {
    /// `seccomp_init(default_action)`.
    pub fn new(lib: &'a Lib, default_action: u32) -> Result<Self, String> {
        // SAFETY: an integer argument; returns a context or NULL.
        let ctx = unsafe { (lib.init)(default_action) };
        if ctx.is_null() {
            return Err("libseccomp init: invalid default action".into());
        }
        Ok(Context { lib, ctx })
    }

    fn check(what: &str, rc: c_int) -> Result<(), String> {
        if rc < 0 {
            Err(format!(
                "libseccomp {what}: {}",
                std::io::Error::from_raw_os_error(-rc)
            ))
        } else {
            Ok(())
        }
    }

    /// `seccomp_arch_add`; an architecture already in the filter (the native one) is fine.
    pub fn add_arch(&mut self, token: u32) -> Result<(), String> {
        // SAFETY: our live context and an integer.
        let rc = unsafe { (self.lib.arch_add)(self.ctx, token) };
        if rc == -libc::EEXIST {
            return Ok(());
        }
        Self::check("add architecture", rc)
    }

    /// `seccomp_attr_set`.
    pub fn set_attr(&mut self, attr: c_int, value: u32) -> Result<(), String> {
        // SAFETY: our live context and integers.
        Self::check("set attribute", unsafe {
            (self.lib.attr_set)(self.ctx, attr, value)
        })
    }

    /// `seccomp_rule_add_array`.
    pub fn add_rule(
        &mut self,
        what: &str,
        action: u32,
        syscall: c_int,
        conds: &[ArgCmp],
    ) -> Result<(), String> {
        // At most six conditions per rule (checked when the rules were decided).
        let n = conds.len() as c_uint;
        // SAFETY: our live context, integers, and a pointer to `n` conditions that outlive
        // the call (libseccomp copies them).
        Self::check(what, unsafe {
            (self.lib.rule_add_array)(self.ctx, action, syscall, n, conds.as_ptr())
        })
    }

    /// `seccomp_export_bpf` into the open file `fd`.
    pub fn export_bpf(&self, fd: c_int) -> Result<(), String> {
        // SAFETY: our live context and a descriptor the caller owns.
        Self::check("export", unsafe { (self.lib.export_bpf)(self.ctx, fd) })
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: the context came from seccomp_init and is released once.
        unsafe { (self.lib.release)(self.ctx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_said_in_words() {
        let err = open(c"libseccomp-not-here.so.2").unwrap_err();
        assert!(
            err.starts_with("libseccomp-not-here.so.2 is not installed on this node: "),
            "{err}"
        );
        // a library without the functions
        let err = open(c"libc.so.6").unwrap_err();
        assert!(err.contains("has no seccomp_init"), "{err}");
    }

    #[test]
    fn the_library_loads_once() {
        let a = library().unwrap() as *const Lib;
        let b = library().unwrap() as *const Lib;
        assert_eq!(a, b);
    }
}
