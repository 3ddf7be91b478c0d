//! What the integration tests and the soak read about runs from outside,
//! through /proc: whether a process still runs, a wrapper's watchdog, and
//! where cgroup v2 is mounted.

use std::{fs, path::PathBuf};

/// Whether `pid` still runs: a zombie has ended, whoever reaps it.
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// The watchdog (`throttle-guard`) the wrapper `wrapper` forked, if any yet.
pub fn guard_of(wrapper: u32) -> Option<i32> {
    let children = fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|pid: &i32| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "throttle-guard")
        })
}

/// Where cgroup v2 is mounted, from /proc/self/mountinfo.
pub fn cgroup_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        let mount = head.split_whitespace().nth(4)?;
        tail.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
    })
}
