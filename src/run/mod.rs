//! One run, in the order of docs/how-a-run-works.md: a [`Plan`] (step 1),
//! then [`Run::start`] (steps 2–6), [`Run::supervise`] (7–8) and
//! [`Run::finish`] (9).

mod attach;
mod guard;
mod plan;
mod spawn;
mod supervisor;
mod target;

pub(crate) use attach::{Attach, attach};
pub(crate) use plan::{Plan, PlanError};

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use nix::unistd::Uid;

use throttle_cli::SummaryFormat;

use crate::{
    control::{self, RunState},
    figures,
    kernel::{Maps as _, bpf::Programs, cgroup::RunCgroup},
    limits::Limits,
    privilege::capabilities,
    registry::{
        registration::Registration,
        rundir::{self, RunDir},
        sweep,
    },
};
use guard::{Cleanup, Guard};
use supervisor::Forwarding;

/// The most live runs one user may hold without root. Each holds about
/// 1.2 MiB of kernel memory that cannot be swapped (its programs and maps),
/// so without a cap any user with the installed capabilities could pin as
/// much as they like. Root's runs, sudo runs included, are root's decision.
const MAX_RUNS_PER_USER: usize = 64;

/// Refuses a run of an ordinary user who already holds
/// [`MAX_RUNS_PER_USER`] live runs (the sweep has just removed the dead).
fn check_run_count(dir: &RunDir) -> Result<()> {
    if Uid::effective().is_root() {
        return Ok(());
    }
    let live = dir.names(rundir::LOCK_SUFFIX)?.len();
    if live >= MAX_RUNS_PER_USER {
        anyhow::bail!(
            "uid {} already has {live} live runs, the most one user may hold \
             ({MAX_RUNS_PER_USER}: each pins about 1.2 MiB of kernel memory); \
             end some ('throttle list' shows them) or run this one as root",
            Uid::effective()
        );
    }
    Ok(())
}

/// A started run. Its fields are declared in teardown order, and Rust drops
/// fields in declaration order: on an error or a panic the run comes down
/// as step 9 takes it down — socket closed, programs detached (their links
/// close with them), cgroup removed, watchdog dismissed, lock released.
/// [`Run::finish`] takes the same steps one by one and proves each.
pub struct Run {
    server: control::Server,
    state: Served,
    cgroup: RunCgroup,
    guard: Guard,
    registration: Registration,
    socket: PathBuf,
    started: Instant,
}

/// Steps 2–4, shared by runs and attached runs: sweep what dead runs
/// left, register `name` (recording `cgroup`, the run's own, if it has
/// one), and fork the watchdog that cleans up after a kill -9.
fn register(
    runtime_dir: &RunDir,
    mount: &Path,
    name: &str,
    cgroup: Option<&Path>,
) -> Result<(Registration, Guard)> {
    for warning in sweep::sweep(&rundir::sweepable(), mount).warnings {
        eprintln!("throttle: warning: cleaning up after earlier runs: {warning}");
    }
    check_run_count(runtime_dir)?;
    let registration = Registration::claim(runtime_dir, name, cgroup)?;
    let guard = Guard::start(
        Cleanup::new(cgroup, runtime_dir, name)?,
        &[registration.lock_fd()],
    )?;
    Ok((registration, guard))
}

impl Run {
    /// Steps 2–6: sweep, register, watchdog, cgroup, programs; and the
    /// control socket. The forwarded signals are held from here until the
    /// command runs (see [`Forwarding`]).
    pub fn start(plan: &Plan) -> Result<(Run, Forwarding)> {
        let runtime_dir = RunDir::for_runs_of(plan.owner)?;
        let (registration, guard) =
            register(&runtime_dir, &plan.mount, &plan.name, Some(&plan.cgroup))?;
        // From here until the command runs, forwarded signals are held and
        // passed on to it, so none kills the wrapper between creating the
        // cgroup and starting the command in it. Before, they act as usual
        // and a `timeout` can stop a set-up that hangs.
        let forwarding = Forwarding::install(plan.identity.is_some())?;
        let cgroup = RunCgroup::create(&plan.cgroup)?;
        let programs = Programs::attach(cgroup.dir(), cgroup.path(), &plan.limits)?;
        let state = Served(Arc::new(RunState {
            name: plan.name.clone(),
            pid: std::process::id(),
            command: plan
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            started: SystemTime::now(),
            limits: Mutex::new(plan.limits.clone()),
            programs: Mutex::new(Some(programs)),
            attached: None,
            detach: AtomicBool::new(false),
        }));
        let server =
            control::Server::start(&runtime_dir, &plan.name, plan.owner, Arc::clone(&state.0))?;
        let socket = runtime_dir.path().join(rundir::socket_file(&plan.name));
        let run = Run {
            server,
            state,
            cgroup,
            guard,
            registration,
            socket,
            started: Instant::now(),
        };
        Ok((run, forwarding))
    }

    /// Steps 7–8: runs the command in the cgroup, forwards signals, deals
    /// with its leftovers, and returns its exit status.
    pub fn supervise(&self, plan: &Plan, forwarding: Forwarding) -> Result<i32> {
        let inherited = std::env::vars_os();
        let mut env = match &plan.identity {
            Some(identity) => identity.environment(inherited, &plan.keep_env),
            None => inherited.collect(),
        };
        for (key, value) in [
            ("THROTTLE_NAME", OsStr::new(&plan.name)),
            ("THROTTLE_SOCKET", self.socket.as_os_str()),
        ] {
            env.retain(|(k, _)| k != key);
            env.push((key.into(), value.into()));
        }
        supervisor::run(
            &plan.command,
            &env,
            plan.identity.as_ref(),
            &self.cgroup,
            forwarding,
            &plan.leftovers,
            || {
                // The programs are attached and the command runs: what
                // remains is serving clients and the teardown. This thread
                // (the forwarder and the client threads start from it, or
                // from the control thread, which drops its own) gives up
                // the rest first.
                let keep = capabilities::kept_after_start();
                capabilities::keep_only(&keep)?;
                self.server.serve(&keep);
                Ok(())
            },
        )
    }

    /// Step 9: stops serving, prints the summary, detaches the programs
    /// (proving it with the kernel's list), removes the cgroup, dismisses
    /// the watchdog and releases the name.
    pub fn finish(self, plan: &Plan) -> Result<()> {
        let Run {
            server,
            state,
            cgroup,
            guard,
            registration,
            started,
            ..
        } = self;
        drop(server);
        let programs = state.close(&plan.name, plan.summary, &plan.limits, started)?;
        programs.detach(cgroup.dir())?;
        cgroup.remove()?;
        guard.dismiss();
        drop(registration);
        Ok(())
    }
}

/// The `--summary` line, on stderr: the run's totals, and those of the
/// traffic its lists left unlimited if it has (or had) lists.
fn print_summary(
    format: SummaryFormat,
    name: &str,
    programs: &Programs,
    scoped: bool,
    elapsed: Duration,
) -> Result<()> {
    let totals = figures::Totals {
        limited: programs.counters()?,
        excluded: if scoped {
            Some(programs.excluded()?)
        } else {
            None
        },
    };
    eprintln!(
        "{}",
        match format {
            SummaryFormat::Text => figures::summary(name, &totals, elapsed),
            SummaryFormat::Json => figures::summary_json(name, &totals, elapsed),
        }
    );
    Ok(())
}

/// The run's state as the control socket shares it. A client thread may
/// still hold it when the run comes down on an error path; dropping this
/// takes the programs out (closing their links detaches them) so that,
/// whoever holds the rest, they never outlive the cgroup's removal.
struct Served(Arc<RunState>);

impl Served {
    /// Takes the programs back once the socket has stopped serving, and
    /// prints the `--summary` line if one was asked for (with the totals
    /// its lists left unlimited if the run has or had lists: `limits` are
    /// those it started with).
    fn close(
        &self,
        name: &str,
        summary: Option<SummaryFormat>,
        limits: &Limits,
        started: Instant,
    ) -> Result<Programs> {
        let programs = self
            .take_programs()
            .context("the run's programs were already taken")?;
        if let Some(format) = summary {
            let scoped = self.0.scoped() || !limits.scope.is_empty();
            print_summary(format, name, &programs, scoped, started.elapsed())?;
        }
        Ok(programs)
    }

    fn take_programs(&self) -> Option<Programs> {
        self.0
            .programs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.take_programs());
    }
}
