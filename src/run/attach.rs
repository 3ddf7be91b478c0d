//! `throttle attach`: a run whose programs go on a cgroup that already
//! holds what is to be limited (a unit's, a container's, one the caller
//! made), so every socket of every process in it, open now or later, is
//! held as one aggregate and nothing is moved. It is a run like any other
//! (registered, listed, changed by `set`, read by `stats`), with two
//! differences: it ends when its target does, on Ctrl-C or SIGTERM, or on
//! `throttle detach`; and it never kills or removes what it did not start,
//! on any path: its record names no cgroup for the sweep, its watchdog
//! removes only its files, and the programs leave with the links.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use nix::unistd::Uid;
use throttle_cli::{AttachArgs, SummaryFormat, Target};

use super::{PlanError, Served, plan, register, target};
use crate::{
    control::{self, RunState},
    exit,
    kernel::{
        bpf::Programs,
        cgroup,
        existing::{ExistingCgroup, Refusal},
    },
    limits::Limits,
    privilege::capabilities,
    registry::rundir::{self, RunDir},
};

/// How often the attached run looks for its end.
const POLL: Duration = Duration::from_millis(100);
/// The signals that end an attached run, lifting its limits.
const ENDING: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// An attach, decided before anything is created.
pub struct Attach {
    name: String,
    limits: Limits,
    summary: Option<SummaryFormat>,
    /// The target as `list` shows it.
    described: String,
    cgroup: ExistingCgroup,
    owner: (Uid, nix::unistd::Gid),
    mount: std::path::PathBuf,
}

impl Attach {
    pub fn from_args(args: AttachArgs) -> Result<Attach, PlanError> {
        let target = args.target();
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| target::default_name(target, std::process::id()));
        capabilities::check_kernel()?;
        capabilities::check()?;
        let mount = cgroup::find_mount()?;
        let cgroup =
            target::open(&mount, target, Uid::effective()).map_err(|refusal| match refusal {
                Refusal::Missing(why) => PlanError::NoTarget(why),
                Refusal::Forbidden(why) => PlanError::Forbidden(why),
            })?;
        let described = match target {
            Target::Cgroup(_) => format!("cgroup {}", cgroup.path().display()),
            named => target::describe(named),
        };
        Ok(Attach {
            limits: plan::limits(args.limits)?,
            summary: args.summary,
            name,
            described,
            cgroup,
            owner: rundir::owner(),
            mount,
        })
    }
}

/// How an attached run ended.
enum End {
    /// Its cgroup was removed: what it held has ended.
    Gone,
    /// `throttle detach`.
    Detached,
    /// A signal, by number.
    Signal(i32),
}

/// Attaches, holds the target until its end, and detaches: the exit
/// status is 0 when the target ended or `throttle detach` lifted the
/// limit, 128+N after signal N.
pub fn attach(plan: &Attach) -> Result<i32> {
    let runtime_dir = RunDir::for_runs_of(plan.owner)?;
    let (registration, guard) = register(&runtime_dir, &plan.mount, &plan.name, None)?;
    let signal = Arc::new(AtomicUsize::new(0));
    for number in ENDING {
        signal_hook::flag::register_usize(number, Arc::clone(&signal), number as usize)?;
    }
    let programs = Programs::attach(plan.cgroup.dir(), plan.cgroup.path(), &plan.limits)?;
    let state = Served(Arc::new(RunState {
        name: plan.name.clone(),
        pid: std::process::id(),
        command: Vec::new(),
        started: SystemTime::now(),
        limits: Mutex::new(plan.limits.clone()),
        programs: Mutex::new(Some(programs)),
        attached: Some(plan.described.clone()),
        detach: AtomicBool::new(false),
    }));
    let server =
        control::Server::start(&runtime_dir, &plan.name, plan.owner, Arc::clone(&state.0))?;
    let keep = capabilities::kept_after_start();
    capabilities::keep_only(&keep)?;
    server.serve(&keep);
    let started = Instant::now();
    eprintln!(
        "throttle: holding {} as '{}'; Ctrl-C or 'throttle detach {}' lifts the limit",
        plan.described, plan.name, plan.name
    );
    let end = wait(&plan.cgroup, &state.0, &signal);
    drop(server);
    let programs = state.close(&plan.name, plan.summary, &plan.limits, started)?;
    match end {
        // A removed cgroup takes its programs with it; the links close
        // with the programs here, and there is no cgroup left to ask.
        End::Gone => drop(programs),
        End::Detached | End::Signal(_) => programs.detach(plan.cgroup.dir())?,
    }
    guard.dismiss();
    drop(registration);
    Ok(match end {
        End::Gone | End::Detached => 0,
        End::Signal(number) => exit::signalled(number),
    })
}

/// Waits for the attached run's end, looking every [`POLL`].
fn wait(cgroup: &ExistingCgroup, state: &RunState, signal: &AtomicUsize) -> End {
    loop {
        match signal.load(Ordering::Relaxed) {
            0 => {}
            number => return End::Signal(number as i32),
        }
        if state.detach.load(Ordering::Relaxed) {
            return End::Detached;
        }
        if cgroup.is_gone() {
            return End::Gone;
        }
        thread::sleep(POLL);
    }
}
