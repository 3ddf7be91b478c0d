//! Step 1 of a run, the preflight: the arguments go together, what the run
//! needs is here, and its name and cgroup are decided, before anything is
//! created.

use std::{ffi::OsString, path::PathBuf};

use nix::unistd::{Gid, Uid};
use throttle_cli::{LimitArgs, RunArgs, SummaryFormat};
use throttle_common::{PerDirection, units::Rate};

use super::supervisor::Leftovers;
use crate::{
    kernel::cgroup,
    limits::{Limits, Scope},
    privilege::{
        capabilities,
        identity::{self, Identity},
        user_scope,
    },
    registry::rundir,
};

/// What a run will be, decided before anything is created.
pub struct Plan {
    pub(super) name: String,
    pub(super) command: Vec<OsString>,
    pub(super) limits: Limits,
    pub(super) leftovers: Leftovers,
    pub(super) summary: Option<SummaryFormat>,
    pub(super) identity: Option<Identity>,
    pub(super) keep_env: Vec<String>,
    pub(super) owner: (Uid, Gid),
    pub(super) mount: PathBuf,
    pub(super) cgroup: PathBuf,
}

/// Why a run was not planned.
#[derive(Debug)]
pub enum PlanError {
    /// Arguments clap accepts one by one but that do not go together, or a
    /// `--user` with no such user: exits as any bad argument does.
    Usage(String),
    /// `throttle attach`: no such target, or it is not running.
    NoTarget(String),
    /// `throttle attach`: the caller may not limit the target.
    Forbidden(String),
    /// This machine cannot run it as asked (kernel, capabilities, cgroups).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for PlanError {
    fn from(error: anyhow::Error) -> Self {
        PlanError::Failed(error)
    }
}

impl Plan {
    pub fn from_args(args: RunArgs) -> Result<Plan, PlanError> {
        let identity = args
            .user
            .as_deref()
            .map(|user| {
                identity::lookup(user).map_err(|why| {
                    PlanError::Usage(format!("invalid value '{user}' for '--user <USER>': {why}"))
                })
            })
            .transpose()?;
        let limits = limits(args.limits)?;
        if identity.is_none() && !args.keep_env.is_empty() {
            return Err(PlanError::Usage(format!(
                "--keep-env {} applies only with --user: without it the command keeps the whole environment",
                args.keep_env.join(",")
            )));
        }
        if identity.is_some() && !capabilities::can_switch_user() {
            return Err(PlanError::Usage(
                "--user needs root (CAP_SETUID and CAP_SETGID): run throttle with sudo".into(),
            ));
        }
        capabilities::check_kernel()?;
        capabilities::check()?;
        let mount = cgroup::find_mount()?;
        let own = cgroup::own_cgroup(&mount)?;
        let parent = cgroup::run_parent(&mount, &own);
        user_scope::enter(&parent, &own)?;
        let name = args
            .name
            .unwrap_or_else(|| throttle_cli::default_name(&args.command[0], std::process::id()));
        let owner = rundir::owner();
        cgroup::check_delegation(&mount, &parent, owner.0)?;
        Ok(Plan {
            cgroup: parent.join(cgroup::leaf(&name, owner.0)),
            name,
            command: args.command,
            limits,
            leftovers: Leftovers {
                kill_after: args.kill_after,
                wait_all: args.wait_all,
            },
            summary: args.summary,
            identity,
            keep_env: args.keep_env,
            owner,
            mount,
        })
    }
}

/// The limits the options give, checked as a whole.
pub(super) fn limits(args: LimitArgs) -> Result<Limits, PlanError> {
    let scope = Scope {
        exclude: args.exclude,
        only: args.only,
    };
    scope.entries().map_err(PlanError::Usage)?;
    let limits = Limits {
        rates: PerDirection {
            down: args.down.unwrap_or(Rate::Unlimited),
            up: args.up.unwrap_or(Rate::Unlimited),
        },
        burst: args.burst,
        scope,
    };
    limits
        .check_burst()
        .map_err(|e| PlanError::Usage(format!("--{e}")))?;
    Ok(limits)
}
