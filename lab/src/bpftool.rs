//! What the kernel holds now, as bpftool lists it: the bench reads program
//! statistics and map memory from here rather than from throttle, so it
//! measures what the kernel says, not what throttle reports of itself.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The BPF objects of `kind` ("prog" or "map") loaded now, one JSON object
/// each as `bpftool KIND show --json` prints them.
pub fn show(kind: &str) -> Result<Vec<Value>> {
    let output = Command::new("bpftool")
        .args([kind, "show", "--json"])
        .output()
        .with_context(|| format!("running bpftool {kind} show"))?;
    if !output.status.success() {
        bail!(
            "bpftool {kind} show failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    match serde_json::from_slice(&output.stdout).context("bpftool's JSON")? {
        Value::Array(objects) => Ok(objects),
        other => bail!("bpftool {kind} show printed {other} where a list was expected"),
    }
}

/// Ids of the loaded programs that are throttle's, by the names its object
/// gives them (the kernel keeps the first 15 bytes of a name, which all
/// three fit).
pub fn throttle_programs() -> Result<Vec<u64>> {
    let names = [
        throttle_common::PROG_DOWN,
        throttle_common::PROG_UP,
        throttle_common::PROG_TUNING,
    ];
    Ok(show("prog")?
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| names.contains(&n)))
        .filter_map(|p| p["id"].as_u64())
        .collect())
}
