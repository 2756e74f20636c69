//! Build script: generates the NRI ttrpc/protobuf code into `OUT_DIR` and builds the static
//! in-container gate binary that the plugin embeds.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    generate_nri(&out);
    build_gate(&out);
}

/// protos/nri/api.proto → `$OUT_DIR/nri/{api.rs, api_ttrpc.rs}` (pure Rust codegen, no protoc).
fn generate_nri(out: &Path) {
    let dir = out.join("nri");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/nri");
    println!("cargo:rerun-if-changed=protos");
    ttrpc_codegen::Codegen::new()
        .out_dir(&dir)
        .inputs(["protos/nri/api.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate NRI ttrpc code from protos/nri/api.proto");
}

/// gate/main.rs → `$OUT_DIR/nri-lifecycle-gate`: a dependency-free, statically linked,
/// size-optimised binary (it becomes PID 1 inside containers, whatever their image holds).
fn build_gate(out: &Path) {
    println!("cargo:rerun-if-changed=gate");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let bin = out.join("nri-lifecycle-gate");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "nri_lifecycle_gate",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "lto=fat",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "strip=symbols", "-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(&bin)
        .arg("gate/main.rs")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run rustc for the gate");
    assert!(status.success(), "building gate/main.rs failed");
    println!("cargo:rustc-env=NRI_LIFECYCLE_GATE_BIN={}", bin.display());
}
