//! `cargo xtask soak` at a tenth of its default size, end to end, against
//! the workspace's debug `throttle`: 100 runs with faults injected, 50 at
//! once, and hostile clients; it fails on any wrong exit status, any process
//! that outlived its wrapper, and anything left after the sweep.

use std::{path::Path, process::Command};

#[test]
fn a_hundred_faulty_runs_leave_nothing_behind() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the soak needs root (cgroups, BPF, network namespaces); CI must run it as root"
        );
        eprintln!(
            "SKIPPED a_hundred_faulty_runs_leave_nothing_behind: needs root; run: sudo -E cargo test"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let throttle = root.join("target/debug/throttle");
    assert!(
        throttle.exists(),
        "{} is missing: run the workspace's `cargo test`, which builds it",
        throttle.display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["soak", "--runs", "100", "--concurrent", "50", "--throttle"])
        .arg(&throttle)
        .output()
        .expect("running cargo xtask soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the soak failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("| **all faults** | 100 | 0 | 0 |"),
        "{stdout}"
    );
}
