//! `cargo xtask bench`: throttle, trickle and no limiter side by side, on a
//! veth pair into a network namespace and on loopback, with iperf3 and curl.
//!
//! Every contender runs the same command with the same limit; the figures
//! come from the receiver (iperf3's receiving side, curl's stdout), from the
//! sender's TcpRetransSegs, and from throttle's own drop counters. Sections
//! measured apart: `costs` (each program's ns per run), `scale` (10 000
//! connections, 500 runs), `startup` (start-up by step), `rtt` (real round
//! trips, in the kernel lab).

mod attach;
mod costs;
mod lab;
mod measure;
mod plan;
mod plot;
mod report;
pub mod rtt;
mod scale;
mod startup;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};

use lab::{Lab, check_tools};
use measure::{Bench, picture};
use plan::{Plan, full_plan, quick_plan};
use report::{Case, Contender, Link, Measurement, Row, Traffic};

pub struct Options {
    pub quick: bool,
    /// Whether the full benchmark ends with the round-trip section.
    pub rtt: bool,
    /// Runs per row of the round-trip section.
    pub reps: usize,
    /// Only the cases whose label contains this.
    pub filter: Option<String>,
    /// Only throttle's rows.
    pub throttle_only: bool,
    /// Only the picture of a 1 MiB/s download.
    pub picture: bool,
    /// Only what each program costs per run.
    pub costs: bool,
    /// Only 10 000 connections in one run and 500 runs at once.
    pub scale: bool,
    /// Only the overhead of programs attached without a limit.
    pub overhead: bool,
    /// Only a running download held by `throttle attach`, beside a run.
    pub attach: bool,
    /// An older binary whose programs' costs are measured beside these.
    pub before: Option<PathBuf>,
    pub throttle: PathBuf,
    pub out: PathBuf,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark creates network namespaces and cgroups: run it as root"
    );
    check_tools(&[
        "iperf3", "trickle", "curl", "aria2c", "ping", "bpftool", "strace",
    ])?;
    let plan = plan_for(options)?;
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let lab = Lab::new()?;
    let bench = Bench {
        lab: &lab,
        throttle: &options.throttle,
        plan: &plan,
    };
    if options.picture {
        let path = picture(&bench, &options.out)?;
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let (text, file) = match section_alone(&bench, options)? {
        Some(alone) => alone,
        None => (whole_report(root, &bench, options)?, "report.md"),
    };
    print!("{text}");
    eprintln!("wrote {}", options.out.join(file).display());
    Ok(())
}

/// A partial run, while working on the limiter: its rows alone, without
/// the overhead table, the plots and the sections measured apart.
fn partial(options: &Options) -> bool {
    options.filter.is_some() || options.throttle_only
}

fn plan_for(options: &Options) -> Result<Plan> {
    let mut plan = if options.quick {
        quick_plan()
    } else {
        full_plan()
    };
    if let Some(filter) = &options.filter {
        plan.cases.retain(|c| c.label().contains(filter.as_str()));
        ensure!(
            !plan.cases.is_empty(),
            "no case's label contains {filter:?}"
        );
    }
    if partial(options) {
        plan.plot = false;
        plan.overhead_runs = 0;
    }
    Ok(plan)
}

/// The binaries whose programs' costs are measured, this one first.
fn binaries(options: &Options) -> Vec<(&'static str, &Path)> {
    let mut binaries = vec![("this", options.throttle.as_path())];
    if let Some(before) = &options.before {
        binaries.push(("before", before.as_path()));
    }
    binaries
}

/// A section asked for alone, written as its own report.
fn section_alone(bench: &Bench, options: &Options) -> Result<Option<(String, &'static str)>> {
    let alone = if options.scale {
        (scale::section(bench.lab, &options.throttle)?, "scale.md")
    } else if options.overhead {
        (bench.overhead()?.markdown(), "overhead.md")
    } else if options.costs {
        (measured_apart(bench, options)?, "costs.md")
    } else if options.attach {
        (attach::section(bench)?, "attach.md")
    } else {
        return Ok(None);
    };
    write(&options.out.join(alone.1), &alone.0)?;
    Ok(Some(alone))
}

/// The programs' costs and the start-up by step.
fn measured_apart(bench: &Bench, options: &Options) -> Result<String> {
    let costs = costs::section(bench.lab, &binaries(options))?;
    let startup = startup::section(&options.throttle)?;
    Ok(format!("{costs}\n{startup}"))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Every case's row, the overhead, the plots and the sections measured
/// apart; the full benchmark ends with the round trips, measured in the
/// kernel lab, as a section of the same report.
fn whole_report(root: &Path, bench: &Bench, options: &Options) -> Result<String> {
    let plan = bench.plan;
    let veth_ping = bench.lab.ping();
    let rows = rows(
        bench,
        options,
        report::Bars::Veth {
            ping_ms: veth_ping.as_ref().ok().copied(),
        },
    );
    let overhead = if partial(options) {
        None
    } else {
        Some(bench.overhead()?)
    };
    let mut plot_file = None;
    if plan.plot {
        plot_file = Some(picture(bench, &options.out)?);
        let contenders = [Contender::Throttle, Contender::Trickle];
        plot::cases(&options.out.join("cases.png"), &rows, &contenders)?;
    }
    let mut text = report::markdown(
        &rows,
        overhead.as_ref(),
        plot_file.as_deref(),
        plan.secs,
        plan.warmup,
        plan.reps,
        &veth_ping,
    );
    if !partial(options) && !options.quick {
        let attached = attach::section(bench)?;
        text = format!("{text}\n{}\n{attached}", measured_apart(bench, options)?);
    }
    let path = options.out.join("report.md");
    write(&path, &text)?;
    if options.quick || !options.rtt || partial(options) {
        return Ok(text);
    }
    let text = format!("{text}\n{}", rtt_section(root, options)?);
    write(&path, &text)?;
    Ok(text)
}

/// Each case's row for every contender. Without a limiter a TCP or curl
/// run does not depend on the limit, so it is measured once per kind of
/// case and shown in each limit's rows.
fn rows(bench: &Bench, options: &Options, veth_bars: report::Bars) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut unlimited: Vec<(Case, Vec<Result<Measurement, String>>)> = Vec::new();
    for case in &bench.plan.cases {
        for contender in Contender::ALL {
            if options.throttle_only && contender != Contender::Throttle {
                continue;
            }
            let shared = contender == Contender::Bare && case.traffic != Traffic::Udp;
            let cached = unlimited
                .iter()
                .find(|(c, _)| {
                    shared && c.link == case.link && c.traffic == case.traffic && c.dir == case.dir
                })
                .map(|(_, runs)| runs.clone());
            let runs = cached.unwrap_or_else(|| {
                // A failed run is reported in the table, not fatal: trickle's
                // select() wrapper sometimes makes iperf3 fail with EINVAL.
                let runs: Vec<_> = (0..bench.plan.reps)
                    .map(|_| bench.measure(case, contender).map_err(|e| format!("{e:#}")))
                    .collect();
                if shared {
                    unlimited.push((*case, runs.clone()));
                }
                runs
            });
            let mut row = Row::new(*case, contender, &runs);
            if case.link == Link::Veth {
                row = row.held_to(veth_bars);
            }
            eprintln!("{}", row.progress_line());
            rows.push(row);
        }
    }
    rows
}

/// The round-trip benchmark's report, its headings one level down.
fn rtt_section(root: &Path, options: &Options) -> Result<String> {
    let rtt = rtt::run(
        root,
        &rtt::Options {
            quick: false,
            filter: None,
            throttle_only: false,
            reps: options.reps,
            throttle: options.throttle.clone(),
            out: options.out.clone(),
        },
    )?;
    Ok(rtt
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("#{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect())
}
