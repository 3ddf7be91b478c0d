//! What the end-to-end tests of xtask's commands share.

use std::path::PathBuf;

/// The workspace's debug `throttle`, built by the same `cargo test`, or
/// None (test skipped) when not root. Under CI a missing root is a
/// failure, never a silent skip.
pub fn debug_throttle(test: &str, what: &str) -> Option<PathBuf> {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} needs root (cgroups, BPF, network namespaces); CI must run it as root"
        );
        eprintln!("SKIPPED {test}: needs root; run: sudo -E cargo test");
        return None;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let throttle = root.parent().unwrap().join("target/debug/throttle");
    assert!(
        throttle.exists(),
        "{} is missing: run the workspace's `cargo test`, which builds it",
        throttle.display()
    );
    Some(throttle)
}
