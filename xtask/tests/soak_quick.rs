//! `cargo xtask soak` at a tenth of its default size, end to end, against
//! the workspace's debug `throttle`: 100 runs with faults injected, 50 at
//! once, and hostile clients; it fails on any wrong exit status, any process
//! that outlived its wrapper, and anything left after the sweep.

mod common;

use std::process::Command;

#[test]
fn a_hundred_faulty_runs_leave_nothing_behind() {
    let Some(throttle) =
        common::debug_throttle("a_hundred_faulty_runs_leave_nothing_behind", "the soak")
    else {
        return;
    };
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
