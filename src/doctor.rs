//! `throttle doctor`: checks everything a run needs, one line per check,
//! each failure with the way to fix it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    kernel::{bpf, cgroup},
    limits::Limits,
    privilege::{capabilities, user_scope},
    registry::{rundir, sweep},
};

struct Report {
    failures: usize,
}

impl Report {
    fn check(&mut self, what: &str, result: Result<String>) {
        match result {
            Ok(detail) => println!("ok    {what}: {detail}"),
            Err(e) => {
                self.failures += 1;
                println!("FAIL  {what}: {e:#}");
            }
        }
    }
}

pub fn run() -> Result<ExitCode> {
    let mount = cgroup::find_mount();
    // Checked where a run would be: in a delegated scope if a run moves there.
    if let Ok(mount) = &mount {
        let own = cgroup::own_cgroup(mount)?;
        user_scope::enter(&cgroup::run_parent(mount, &own), &own)?;
    }
    let mut report = Report { failures: 0 };
    report.check("kernel", kernel());
    for requirement in capabilities::required() {
        let result = if capabilities::holds(requirement) {
            Ok(format!("held ({})", requirement.why))
        } else {
            Err(anyhow::anyhow!(
                "missing, needed {}; {}",
                requirement.why,
                capabilities::fix()
            ))
        };
        report.check(&format!("capability {}", requirement.cap), result);
    }
    report.check(
        "cgroup2",
        mount
            .as_ref()
            .map(|m| format!("mounted at {}", m.display()))
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    );
    if let Ok(mount) = &mount {
        report.check("run cgroups", run_parent(mount));
        report.check("cgroup.kill", cgroup_kill(mount));
        report.check("eBPF programs", load_and_attach(mount));
        report.check("stale runs", stale_runs());
    }
    report.check("runtime directory", runtime_dir());
    if report.failures == 0 {
        println!("throttle is ready to run");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} check(s) failed", report.failures);
        Ok(ExitCode::FAILURE)
    }
}

fn kernel() -> Result<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    let release = release.trim();
    capabilities::check_kernel()?;
    Ok(format!("Linux {release}"))
}

fn run_parent(mount: &Path) -> Result<String> {
    let own = cgroup::own_cgroup(mount)?;
    let parent = cgroup::run_parent(mount, &own);
    if !user_scope::writable(&parent) {
        bail!(
            "{} is not writable; {}",
            parent.display(),
            cgroup::NO_CGROUP
        );
    }
    Ok(if user_scope::entered(&own) {
        format!(
            "created under {}, a scope delegated by your systemd user manager",
            parent.display()
        )
    } else {
        format!("created under {}", parent.display())
    })
}

fn cgroup_kill(mount: &Path) -> Result<String> {
    // The root cgroup has no cgroup.kill; any child shows whether the kernel has it.
    let probe = fs::read_dir(mount)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir());
    match probe {
        Some(dir) if dir.join("cgroup.kill").exists() => Ok("available".into()),
        Some(_) => {
            Ok("not available (Linux < 5.14); leftovers are killed one pid at a time".into())
        }
        None => Ok("no child cgroup to probe yet".into()),
    }
}

/// Loads the programs and attaches them to a scratch cgroup, proving the
/// verifier, the attach and the detach all work here.
fn load_and_attach(mount: &Path) -> Result<String> {
    let parent = cgroup::runs_parent(mount)?;
    let path: PathBuf = parent.join(format!("doctor-{}", std::process::id()));
    let scratch = cgroup::RunCgroup::create(&path)?;
    let programs = bpf::Programs::attach(scratch.dir(), scratch.path(), &Limits::NONE)?;
    programs.detach(scratch.dir())?;
    scratch.remove()?;
    Ok("load, attach and detach work".into())
}

/// The run's runtime directory, and what other users planted under the
/// names of this user's directories in /tmp, which runs pass over.
fn runtime_dir() -> Result<String> {
    let owner = rundir::owner();
    let dir = rundir::RunDir::for_runs_of(owner)?;
    let planted: Vec<String> = rundir::planted_for(owner.0)
        .iter()
        .map(|(path, maker)| format!("{} (uid {maker})", path.display()))
        .collect();
    let mut detail = dir.path().display().to_string();
    if !planted.is_empty() {
        detail.push_str(&format!(
            "; passed over, made by other users under your names: {}; they stop no run of yours, and root can remove them",
            planted.join(", ")
        ));
    }
    Ok(detail)
}

fn stale_runs() -> Result<String> {
    let stale = sweep::stale(&rundir::sweepable());
    if let Some(warning) = stale.warnings.first() {
        bail!(
            "{warning}{}",
            match stale.warnings.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        );
    }
    if stale.runs.is_empty() {
        Ok("none".into())
    } else {
        bail!(
            "{} dead run(s) left files behind ({}); remove them with 'throttle cleanup'",
            stale.runs.len(),
            stale.runs.join(", ")
        )
    }
}
