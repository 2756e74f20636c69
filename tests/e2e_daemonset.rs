//! The image `make image` builds, on containerd 1.7 and 2.1 with nothing installed on the
//! node: imported with containerd's own `ctr`, it is known to CRI under the name a pod spec
//! uses.

use std::path::{Path, PathBuf};

use nri_harness::node::NodeOptions;
use nri_harness::{Node, PluginMode, Version};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The archive `make image` writes (a dependency of `make test`).
fn image_tar() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target"));
    let tar = target.join("image").join("nri-lifecycle.tar");
    assert!(
        tar.is_file(),
        "{} is missing: run `make image` (make test does)",
        tar.display()
    );
    tar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_imports_with_ctr() {
    if !nri_harness::require_root("image_imports_with_ctr") {
        return;
    }
    let tar = image_tar();
    for v in Version::ALL {
        let opts = NodeOptions {
            plugin_config: None,
            ..NodeOptions::default()
        };
        let node = Node::start_with(v, PluginMode::None, opts)
            .await
            .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"));
        node.import_tar(&tar)
            .unwrap_or_else(|e| panic!("{v}: ctr images import: {e}"));
        let mut cri = node.cri().await.expect("cri");
        let name = format!(
            "docker.io/library/nri-lifecycle:{}",
            env!("CARGO_PKG_VERSION")
        );
        let images = cri.list_images().await.expect("list images");
        assert!(
            images.contains(&name),
            "{v}: CRI does not list {name}: {images:?}"
        );
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
