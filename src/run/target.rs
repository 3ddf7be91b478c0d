//! What `throttle attach` names, found as the cgroup that holds it: a path
//! as given, a systemd unit's `ControlGroup`, a container's first process's
//! cgroup. The tools asked (systemctl, podman, docker) run without any of
//! throttle's capabilities (an exec drops them), and what they answer is
//! only a path: the cgroup it names still has to pass
//! [`ExistingCgroup::check_caller`].

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use throttle_cli::Target;

use crate::kernel::{
    cgroup,
    existing::{ExistingCgroup, Refusal},
};

/// The cgroup `target` names, opened and checked for `caller`.
pub fn open(
    mount: &Path,
    target: Target<'_>,
    caller: nix::unistd::Uid,
) -> Result<ExistingCgroup, Refusal> {
    let path = match target {
        Target::Cgroup(path) => path.to_path_buf(),
        Target::Unit(unit) => unit_cgroup(mount, unit, false)?,
        Target::UserUnit(unit) => unit_cgroup(mount, unit, true)?,
        Target::Container(name) => container_cgroup(mount, name)?,
    };
    let cgroup = ExistingCgroup::open(mount, &path)?;
    cgroup.check_caller(caller)?;
    Ok(cgroup)
}

/// How `list` and `info` show a named target: `unit NAME`, `user unit
/// NAME` or `container NAME` (a cgroup is shown by the path opened).
pub fn describe(target: Target<'_>) -> String {
    match target {
        Target::Cgroup(path) => format!("cgroup {}", path.display()),
        Target::Unit(unit) => format!("unit {unit}"),
        Target::UserUnit(unit) => format!("user unit {unit}"),
        Target::Container(name) => format!("container {name}"),
    }
}

/// The name a target gives an attached run without `--name`: its last
/// word, as a run name allows it.
pub fn default_name(target: Target<'_>, pid: u32) -> String {
    let word = match target {
        Target::Cgroup(path) => path
            .file_name()
            .map_or_else(|| "cgroup".into(), |n| n.to_string_lossy().into_owned()),
        Target::Unit(unit) | Target::UserUnit(unit) => unit.to_string(),
        Target::Container(name) => name.to_string(),
    };
    throttle_cli::default_name(word.as_ref(), pid)
}

/// A unit's cgroup, as its manager reports it (`ControlGroup`, relative to
/// the cgroup2 mount; empty while the unit is not running).
fn unit_cgroup(mount: &Path, unit: &str, user: bool) -> Result<PathBuf, Refusal> {
    let mut systemctl = Command::new("systemctl");
    if user {
        systemctl.arg("--user");
    }
    systemctl.args(["show", "--property=ControlGroup", "--value", "--", unit]);
    let manager = if user { "your user manager" } else { "systemd" };
    let path = answer(&mut systemctl, "systemctl")
        .map_err(|why| Refusal::Missing(format!("asking {manager} for unit {unit}: {why}")))?;
    if path.is_empty() {
        return Err(Refusal::Missing(format!(
            "unit {unit} has no cgroup: {manager} says it is not running (see 'systemctl{} status {unit}')",
            if user { " --user" } else { "" }
        )));
    }
    Ok(mount.join(path.trim_start_matches('/')))
}

/// A container's cgroup: that of its first process, which podman or docker
/// (the first of them installed) reports.
fn container_cgroup(mount: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let runtime = ["podman", "docker"]
        .into_iter()
        .find(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| {
            Refusal::Missing(format!(
                "container {name}: neither podman nor docker is installed"
            ))
        })?;
    let mut inspect = Command::new(runtime);
    inspect.args(["inspect", "--format", "{{.State.Pid}}", "--", name]);
    let pid = answer(&mut inspect, runtime)
        .map_err(|why| Refusal::Missing(format!("container {name}: {why}")))?;
    match pid.parse::<u32>() {
        Ok(0) | Err(_) => Err(Refusal::Missing(format!(
            "container {name} is not running ({runtime} reports pid '{pid}')"
        ))),
        Ok(pid) => cgroup::cgroup_of(mount, &pid.to_string())
            .map_err(|e| Refusal::Missing(format!("container {name}: {e:#}"))),
    }
}

/// The first line `command` prints, or what it said on failing.
fn answer(command: &mut Command, tool: &str) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {tool}: {e}"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{tool} failed: {}",
            said.lines().next().unwrap_or("").trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_its_run_and_its_row() {
        let unit = Target::Unit("nginx.service");
        assert_eq!(default_name(unit, 42), "nginx.service-42");
        assert_eq!(describe(unit), "unit nginx.service");
        let cgroup = Target::Cgroup(Path::new("/sys/fs/cgroup/system.slice/cron.service"));
        assert_eq!(default_name(cgroup, 7), "cron.service-7");
        let odd = Target::Container("@weird name");
        let name = default_name(odd, 1);
        assert!(throttle_cli::run_name(&name).is_ok(), "{name}");
        assert_eq!(
            describe(Target::UserUnit("app.scope")),
            "user unit app.scope"
        );
    }
}
