//! `throttle`: run one command with its network bandwidth limited in the
//! kernel, by eBPF programs attached to a cgroup that the run owns.

mod connect;
mod control;
mod doctor;
mod exit;
mod figures;
mod kernel;
mod limits;
mod privilege;
mod registry;
mod run;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, Parser as _, error::ErrorKind};

use throttle_cli::{Action, AttachArgs, Cli, RunArgs};

use crate::{
    control::{client, protocol::Changes},
    kernel::cgroup,
    privilege::capabilities,
    registry::{rundir, sweep},
    run::{Attach, Plan, PlanError, Run},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if cli.action.is_some() {
        end_quietly_when_the_reader_goes();
    }
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
            exclude,
            only,
        }) => {
            let changes = Changes {
                rates: throttle_common::PerDirection { down, up },
                burst,
                exclude: throttle_cli::new_list(&exclude),
                only: throttle_cli::new_list(&only),
            };
            Ok(client::finish(client::set(target.as_deref(), &changes)))
        }
        Some(Action::Stats {
            target,
            watch,
            json,
        }) => Ok(client::finish(client::stats(
            target.as_deref(),
            watch,
            json,
        ))),
        Some(Action::Attach(args)) => attach(args).map(|code| ExitCode::from(code as u8)),
        Some(Action::Detach { target }) => Ok(client::finish(client::detach(&target))),
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
        ExitCode::from(exit::FAILURE)
    })
}

/// The subcommands' reports are often piped into `head` or `grep -q`; like
/// other Unix tools they then end at the next write, by SIGPIPE, instead of
/// Rust's panic on the failed write. They hold nothing that needs undoing
/// when they print (doctor removes its scratch cgroup before it reports on
/// it). Never for a run: its wrapper must always come down through step 9.
fn end_quietly_when_the_reader_goes() {
    // SAFETY: main calls this before any thread exists, and SIG_DFL runs no
    // handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
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
    ExitCode::from(exit::USAGE)
}

/// A throttled run: the command's exit status, or why throttle failed.
fn run(args: RunArgs) -> Result<i32> {
    let plan = match Plan::from_args(args) {
        Ok(plan) => plan,
        Err(refused) => return refusal(refused),
    };
    let (run, forwarding) = Run::start(&plan)?;
    let code = run.supervise(&plan, forwarding)?;
    run.finish(&plan)?;
    Ok(code)
}

/// `throttle attach`: the exit status, or why throttle failed.
fn attach(args: AttachArgs) -> Result<i32> {
    match Attach::from_args(args) {
        Ok(plan) => run::attach(&plan),
        Err(refused) => refusal(refused),
    }
}

/// A run or attach not planned: one line, and the status that says why.
fn refusal(refused: PlanError) -> Result<i32> {
    let (code, why) = match refused {
        PlanError::Usage(why) => (exit::USAGE, format!("{why} (see 'throttle --help')")),
        PlanError::NoTarget(why) => (exit::NO_SUCH_TARGET, why),
        PlanError::Forbidden(why) => (exit::FORBIDDEN, why),
        PlanError::Failed(e) => return Err(e),
    };
    eprintln!("throttle: {why}");
    Ok(code.into())
}

/// `throttle cleanup`: fails when something could not be cleaned up.
fn cleanup() -> Result<ExitCode> {
    capabilities::check()?;
    let mount = cgroup::find_mount()?;
    let sweep = sweep::sweep(&rundir::sweepable(), &mount);
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
        ExitCode::from(exit::FAILURE)
    })
}
