//! `throttle`: run one command with its network bandwidth limited in the
//! kernel, by eBPF programs attached to a cgroup that the run owns.

mod bpf;
mod cgroup;
mod cli;
mod client;
mod control;
mod doctor;
mod guard;
mod privileges;
mod rundir;
mod runs;
mod spawn;
mod stats;
mod supervisor;

use std::{
    ffi::OsStr,
    path::Path,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser as _, error::ErrorKind};
use throttle_common::{DOWN, UP};

use crate::{
    cli::{Action, Cli, RunArgs, SummaryFormat},
    guard::{Cleanup, Guard},
    rundir::RunDir,
    runs::Registration,
    supervisor::{Forwarding, Leftovers},
};

/// throttle itself failed (before, or while tearing down after, the command).
const EXIT_FAILURE: u8 = 125;
/// Invalid arguments, as clap and most tools report them.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = match cli.action {
        None => run(cli.run).map(|code| ExitCode::from(code as u8)),
        Some(Action::Doctor) => doctor::run(),
        Some(Action::Cleanup) => cleanup(),
        Some(Action::List { json }) => Ok(client::finish(client::list(json))),
        Some(Action::Set {
            target,
            down,
            up,
            burst,
        }) => Ok(client::finish(client::set(
            target.as_deref(),
            down,
            up,
            burst,
        ))),
        Some(Action::Stats {
            target,
            watch,
            json,
        }) => Ok(client::finish(client::stats(
            target.as_deref(),
            watch,
            json,
        ))),
        Some(Action::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "throttle",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("throttle: {e:#}");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// Help and version go to stdout as clap renders them; errors become one line.
fn usage_error(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("throttle: {message} (see 'throttle --help')");
    ExitCode::from(EXIT_USAGE)
}

fn run(args: RunArgs) -> Result<i32> {
    privileges::check()?;
    let mount = cgroup::find_mount()?;
    let parent = cgroup::runs_parent(&mount)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.command[0]));
    let owner = rundir::owner();
    cgroup::check_delegation(&mount, &parent, owner.0)?;
    let runtime_dir = RunDir::for_runs_of(owner)?;
    for warning in runs::sweep(&rundir::sweepable(), &mount).warnings {
        eprintln!("throttle: warning: cleaning up after earlier runs: {warning}");
    }

    let cgroup_path = parent.join(&name);
    let registration = Registration::claim(&runtime_dir, &name, &cgroup_path)?;
    let guard = Guard::start(
        Cleanup::new(&cgroup_path, &runtime_dir, &name)?,
        registration.lock_fd(),
    )?;
    // From here until the command runs, forwarded signals are held and
    // passed on to it, so none kills the wrapper between creating the
    // cgroup and starting the command in it. Before, they act as usual and
    // a `timeout` can stop a set-up that hangs.
    let forwarding = Forwarding::install()?;
    let cgroup = cgroup::RunCgroup::create(&cgroup_path)?;
    let limits = control::Limits {
        rates: [args.down.unwrap_or(0), args.up.unwrap_or(0)],
        burst: args.burst,
    };
    let programs = bpf::Programs::attach(
        cgroup.dir(),
        cgroup.path(),
        [limits.for_direction(DOWN), limits.for_direction(UP)],
    )?;
    let state = Arc::new(control::RunState {
        name: name.clone(),
        pid: std::process::id(),
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        started: SystemTime::now(),
        limits: Mutex::new(limits),
        programs: Mutex::new(Some(programs)),
    });
    let server = control::Server::start(&runtime_dir, &name, owner, Arc::clone(&state))?;
    let socket = runtime_dir.path().join(runs::socket_file(&name));

    let env = [
        ("THROTTLE_NAME", OsStr::new(&name)),
        ("THROTTLE_SOCKET", socket.as_os_str()),
    ];
    let leftovers = Leftovers {
        kill_after: args.kill_after,
        wait_all: args.wait_all,
    };
    let started = std::time::Instant::now();
    let code = supervisor::run(&args.command, &env, &cgroup, forwarding, &leftovers)?;
    drop(server);
    let programs = state
        .programs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .context("the run's programs were already taken")?;
    if let Some(format) = args.summary {
        let counters = programs.counters()?;
        let elapsed = started.elapsed();
        match format {
            SummaryFormat::Text => eprintln!("{}", stats::summary(&name, &counters, elapsed)),
            SummaryFormat::Json => eprintln!("{}", stats::summary_json(&name, &counters, elapsed)),
        }
    }
    programs.detach(cgroup.dir())?;
    cgroup.remove()?;
    guard.dismiss();
    drop(registration);
    Ok(code)
}

/// `<command>-<pid>`, with the command's name reduced to what a run name allows.
fn default_name(command: &OsStr) -> String {
    let base = Path::new(command)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(cli::MAX_NAME_LEN - 11)
        .collect();
    let base = if cleaned.is_empty() { "run" } else { &cleaned };
    format!("{base}-{}", std::process::id())
}

/// `throttle cleanup`: fails when something could not be cleaned up.
fn cleanup() -> Result<ExitCode> {
    privileges::check()?;
    let mount = cgroup::find_mount()?;
    let sweep = runs::sweep(&rundir::sweepable(), &mount);
    if sweep.runs.is_empty() && sweep.warnings.is_empty() {
        println!("nothing to clean up");
    }
    for name in &sweep.runs {
        println!("removed dead run {name}");
    }
    for warning in &sweep.warnings {
        eprintln!("throttle: warning: {warning}");
    }
    Ok(if sweep.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_run_names() {
        for command in [
            "wget",
            "/usr/bin/python3.12",
            "./my script",
            "-weird",
            "ü",
            "",
        ] {
            let name = default_name(OsStr::new(command));
            assert_eq!(cli::run_name(&name), Ok(name.clone()), "{command}");
        }
        let long = "x".repeat(200);
        assert!(cli::run_name(&default_name(OsStr::new(&long))).is_ok());
    }

    #[test]
    fn omitted_limits_are_unlimited_and_bursts_default_by_rate() {
        let limits = control::Limits {
            rates: [0, 1 << 20],
            burst: None,
        };
        assert_eq!(limits.for_direction(DOWN).rate, 0);
        assert_eq!(
            limits.for_direction(UP).burst,
            throttle_common::policer::default_burst(1 << 20)
        );
        let explicit = control::Limits {
            burst: Some(4096),
            ..limits
        };
        assert_eq!(explicit.for_direction(UP).burst, 4096);
    }
}
