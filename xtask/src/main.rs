//! Build chores: `cargo xtask completions`, `cargo xtask man`,
//! `cargo xtask demo` (the README's first command), `cargo xtask dist`, `cargo xtask bench` and
//! `cargo xtask soak`.
//!
//! The completions and man page come from the throttle-cli crate the binary
//! parses with, so the generated files can never describe a different
//! command line.

mod bench;
mod demo;
mod dist;
mod soak;
mod system_vm;
mod vm;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;
use throttle_lab::{bpftool, netlab, procfs};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the shell completions checked in under completions/
    Completions {
        /// Only check that the checked-in files are current
        #[arg(long)]
        check: bool,
    },
    /// Regenerate the man page checked in as man/throttle.1
    Man {
        /// Only check that the checked-in page is current
        #[arg(long)]
        check: bool,
    },
    /// Build the static binary and the Debian package into target/dist (see the README's "Install")
    Dist,
    /// Install the Debian package in a Debian 12 guest with systemd and use it as two ordinary users (needs root)
    InstallTest,
    /// Download from a local server through `throttle --down 1M` and show the achieved rate (needs root)
    Demo,
    /// Measure throttle against trickle and no limiter; writes target/bench/report.md (needs root)
    Bench(BenchArgs),
    /// Boot a Debian kernel under qemu on this machine's root filesystem and run COMMAND inside as root (needs root)
    Vm {
        /// Which kernel: 6.1, 6.12 or all
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// The command and its arguments
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Run throttle doctor and the lifecycle, control and 1 MiB/s rate tests under each lab kernel (needs root)
    VmTest {
        /// Which kernel: 6.1, 6.12 or all
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Many runs with faults injected, many at once, and hostile control clients; fails on any leak (needs root)
    Soak {
        /// Runs with a random fault each
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Runs started at once in the concurrent phase
        #[arg(long, default_value_t = 50)]
        concurrent: usize,
        /// Seed of the faults' choice and timing [default: from the clock]
        #[arg(long)]
        seed: Option<u64>,
        /// The throttle binary to soak [default: build the release binary]
        #[arg(long, value_name = "PATH")]
        throttle: Option<PathBuf>,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// A 1 MiB/s download and upload subset that runs in under a minute
    #[arg(long)]
    quick: bool,
    /// The throttle binary to measure [default: build the release binary]
    #[arg(long, value_name = "PATH")]
    throttle: Option<PathBuf>,
    /// Where the report and plot go [default: target/bench]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only the real round-trip times (0, 20, 80 ms under netem, in the Linux 6.12 guest); writes rtt.md
    #[arg(long)]
    rtt: bool,
    /// Leave out the round-trip section (the veth and loopback part alone, about 30 minutes)
    #[arg(long, conflicts_with = "rtt")]
    no_rtt: bool,
    /// Runs per row of the round-trip section
    #[arg(long, default_value_t = 1, value_name = "N")]
    reps: usize,
    /// Only the rows whose case contains TEXT, e.g. "aria2c" or "down 1 MiB/s" (no overhead table, no plot; with neither --rtt nor --no-rtt, the veth and loopback part)
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Leave trickle and no limiter out, for quicker runs while working on the limiter (no overhead table, no plot; the round trips keep their link of the limit)
    #[arg(long)]
    throttle_only: bool,
    /// Only the picture of a 1 MiB/s download (curl and aria2c, throttle and trickle), about two minutes
    #[arg(long, conflicts_with_all = ["rtt", "quick", "filter", "throttle_only"])]
    picture: bool,
    /// Only what each eBPF program costs per run (kernel.bpf_stats_enabled) at 1, 8 and 64 flows each way and at one with no limit; writes costs.md
    #[arg(long, conflicts_with_all = ["rtt", "quick", "filter", "throttle_only", "picture"])]
    costs: bool,
    /// Only 10 000 connections in one run and 500 runs at once, against their bars; writes scale.md (about 3 minutes)
    #[arg(long, conflicts_with_all = ["rtt", "quick", "filter", "throttle_only", "picture", "costs"])]
    scale: bool,
    /// Only the overhead: veth throughput with the programs attached and no limit beside none, and the start-up of `--down 1M -- true`; writes overhead.md (about 5 minutes)
    #[arg(long, conflicts_with_all = ["rtt", "quick", "filter", "throttle_only", "picture", "costs", "scale"])]
    overhead: bool,
    /// Only a running download held by `throttle attach` at 1 and 16 MiB/s, beside the same started under throttle; writes attach.md (about a minute)
    #[arg(long, conflicts_with_all = ["rtt", "quick", "filter", "throttle_only", "picture", "costs", "scale", "overhead"])]
    attach: bool,
    /// An older throttle binary whose programs' costs are measured beside this one's, alternating
    #[arg(long, value_name = "PATH")]
    before: Option<PathBuf>,
    /// The round-trip section's own side, inside the guest
    #[arg(long, hide = true)]
    rtt_guest: bool,
}

/// Each shell's completion file, named as the shell looks for it.
const SHELLS: [(Shell, &str); 4] = [
    (Shell::Bash, "throttle.bash"),
    (Shell::Zsh, "_throttle"),
    (Shell::Fish, "throttle.fish"),
    (Shell::Elvish, "throttle.elv"),
];

fn main() -> Result<()> {
    let root = workspace_root();
    match Xtask::parse().task {
        Task::Completions { check: false } => write_completions(&root.join("completions")),
        Task::Completions { check: true } => check_completions(&root.join("completions")),
        Task::Man { check: false } => write_man(&root.join(MAN_PAGE)),
        Task::Man { check: true } => check_man(&root.join(MAN_PAGE)),
        Task::Demo => demo::run(&root),
        Task::Dist => dist::run(&root).map(|_| ()),
        Task::InstallTest => system_vm::test(&root),
        Task::Bench(args) => bench(&root, args),
        Task::Vm { kernel, command } => vm(&kernel, &command),
        Task::VmTest { kernel } => vm::test(&root, &vm::labels(&kernel)?),
        Task::Soak {
            runs,
            concurrent,
            seed,
            throttle,
        } => soak::run(&soak::Options {
            runs,
            concurrent,
            seed: seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }),
            throttle: match throttle {
                Some(path) => path,
                None => demo::build_release(&root)?,
            },
        }),
    }
}

/// `cargo xtask bench`: one section alone, the round trips alone, or the
/// whole benchmark.
fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| root.join("target/bench"));
    let throttle = match args.throttle {
        Some(path) => path,
        None if args.rtt_guest => bail!("--rtt-guest needs --throttle"),
        None => demo::build_release(root)?,
    };
    if args.rtt || args.rtt_guest {
        let options = bench::rtt::Options {
            quick: args.quick,
            filter: args.filter,
            throttle_only: args.throttle_only,
            reps: args.reps,
            throttle,
            out,
        };
        if args.rtt_guest {
            bench::rtt::refuse_outside_guest()?;
            return bench::rtt::run_inside(&options);
        }
        print!("{}", bench::rtt::run(root, &options)?);
        return Ok(());
    }
    bench::run(
        root,
        &bench::Options {
            quick: args.quick,
            rtt: !args.no_rtt,
            reps: args.reps,
            filter: args.filter,
            throttle_only: args.throttle_only,
            picture: args.picture,
            costs: args.costs,
            scale: args.scale,
            overhead: args.overhead,
            attach: args.attach,
            before: args.before,
            throttle,
            out,
        },
    )
}

/// `cargo xtask vm`: COMMAND in each kernel asked for; exits with the
/// worst status.
fn vm(kernel: &str, command: &[String]) -> Result<()> {
    let mut worst = 0;
    for label in vm::labels(kernel)? {
        let guest = vm::run(
            label,
            command,
            &std::env::current_dir()?,
            &[],
            Duration::from_secs(3600),
        )?;
        print!("{}", guest.output);
        eprintln!(
            "xtask vm: Linux {}: exit status {}, {:.0} s",
            guest.kernel,
            guest
                .status
                .map_or("unknown (no status came back)".into(), |s| s.to_string()),
            guest.took.as_secs_f64()
        );
        worst = worst.max(guest.status.unwrap_or(255));
    }
    if worst != 0 {
        std::process::exit(worst);
    }
    Ok(())
}

/// The cargo that runs xtask (CARGO), so builds use the same toolchain.
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn completion(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(
        shell,
        &mut throttle_cli::Cli::command(),
        "throttle",
        &mut out,
    );
    out
}

fn write_completions(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (shell, file) in SHELLS {
        let path = dir.join(file);
        fs::write(&path, completion(shell))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The files in `dir` that differ from what the current CLI generates.
fn stale_completions(dir: &Path) -> Vec<PathBuf> {
    SHELLS
        .iter()
        .map(|(shell, file)| (dir.join(file), completion(*shell)))
        .filter(|(path, fresh)| fs::read(path).ok().as_ref() != Some(fresh))
        .map(|(path, _)| path)
        .collect()
}

fn check_completions(dir: &Path) -> Result<()> {
    let stale = stale_completions(dir);
    if !stale.is_empty() {
        let names: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "stale completions: {}; run 'cargo xtask completions'",
            names.join(", ")
        );
    }
    println!("completions are current");
    Ok(())
}

/// The man page, checked in so that packagers and readers of the source
/// have it without building.
const MAN_PAGE: &str = "man/throttle.1";

fn man_page() -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(throttle_cli::Cli::command())
        .render(&mut out)
        .expect("rendering into memory cannot fail");
    out
}

fn write_man(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, man_page()).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn man_is_current(path: &Path) -> bool {
    fs::read(path).ok() == Some(man_page())
}

fn check_man(path: &Path) -> Result<()> {
    if !man_is_current(path) {
        bail!("stale man page: {}; run 'cargo xtask man'", path.display());
    }
    println!("the man page is current");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_completions_are_current() {
        let stale = stale_completions(&workspace_root().join("completions"));
        assert!(
            stale.is_empty(),
            "stale completions {stale:?}: run 'cargo xtask completions' and commit the result"
        );
    }

    #[test]
    fn the_checked_in_man_page_is_current() {
        assert!(
            String::from_utf8(man_page())
                .unwrap()
                .contains("kill\\-after")
        );
        assert!(
            man_is_current(&workspace_root().join(MAN_PAGE)),
            "stale {MAN_PAGE}: run 'cargo xtask man' and commit the result"
        );
    }
}
