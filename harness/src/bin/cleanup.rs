//! Removes what interrupted harness runs left behind: containerd and shim processes,
//! container processes and cgroups, mounts, netns, bridges, routes; restores ip_forward.
//! Slots still in use by a running test are left alone.

fn main() -> anyhow::Result<()> {
    if !nri_harness::require_root("cleanup") {
        std::process::exit(1);
    }
    let install = nri_harness::Install::locate();
    let cleaned = nri_harness::node::cleanup_all(&install)?;
    if cleaned.is_empty() {
        println!("nothing to clean in {}", install.run_dir().display());
    } else {
        println!(
            "cleaned node slots {cleaned:?} in {}",
            install.run_dir().display()
        );
    }
    Ok(())
}
