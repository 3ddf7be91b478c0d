//! `cargo xtask bench --rtt`: throttle, trickle and no limiter at the round
//! trips users see (0, 20 and 80 ms), with cubic and BBR senders, inside a
//! Debian 6.12 guest of the kernel lab: netem is a module this machine's
//! kernel lacks, and the guest is a kernel users run.
//!
//! The host boots the guest and runs `xtask bench --rtt-guest` in it, which
//! writes `rtt.md` into the output directory (shared writable with the
//! guest); the host prints it.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    lab::{Lab, check_tools},
    measure::Bench,
    plan::{KIB, MIB, Plan},
    report::{self, Bars, Case, Contender, Dir, Link, Measurement, Row, Traffic},
};
use crate::vm;

pub struct Options {
    pub quick: bool,
    /// Only the rows whose case (e.g. "aria2c ×8 down 1 MiB/s") contains it.
    pub filter: Option<String>,
    /// Leave trickle and the no-limiter ceiling out (a quicker run while
    /// working on the limiter).
    pub throttle_only: bool,
    pub reps: usize,
    pub throttle: PathBuf,
    pub out: PathBuf,
}

/// The kernel the RTT benchmark runs under.
const KERNEL: &str = "6.12";

const CURL: Traffic = Traffic::Curl { whole_file: false };
/// A user's download: one connection, a file of the run's time at the
/// limit, rated by its size over its time.
const CURL_WHOLE: Traffic = Traffic::Curl { whole_file: true };
const ARIA2: Traffic = Traffic::Aria2 {
    connections: 8,
    whole_file: false,
};
const ARIA2_WHOLE: Traffic = Traffic::Aria2 {
    connections: 8,
    whole_file: true,
};

/// What one benchmark measures: every client at every limit, under every
/// round trip and sender.
struct Matrix {
    /// Milliseconds of netem delay; 0 is the bare veth.
    rtts: Vec<u32>,
    /// Congestion control of the senders (both namespaces).
    senders: Vec<&'static str>,
    limits: Vec<u64>,
    clients: Vec<(Traffic, Dir)>,
    secs: u32,
    warmup: u32,
}

/// Limits below this are measured for [`LOW_LIMIT_SECS`]: at 8 KiB/s, six
/// seconds hold 48 KiB, some 33 segments, so that the few segments a
/// connection's start or its retransmission timeouts move across the
/// window's edges swung achieved/limit by ±0.1 and waste by hundreds of
/// percent (eight aria2c connections at 8 KiB/s: 0.84 and 0.88 over six
/// seconds, 0.92 and 0.94 over thirty).
const LOW_LIMIT: u64 = 64 * KIB;
const LOW_LIMIT_SECS: u32 = 30;

impl Matrix {
    fn new(quick: bool) -> Matrix {
        if quick {
            return Matrix {
                rtts: vec![20],
                senders: vec!["cubic"],
                limits: vec![MIB],
                clients: vec![
                    (Traffic::Tcp { flows: 1 }, Dir::Down),
                    (CURL, Dir::Down),
                    (ARIA2_WHOLE, Dir::Down),
                ],
                // Eight seconds at 1 MiB/s: a whole file of eight 1 MiB pieces.
                secs: 6,
                warmup: 2,
            };
        }
        Matrix {
            rtts: vec![0, 20, 80],
            senders: vec!["cubic", "bbr"],
            limits: vec![8 * KIB, 64 * KIB, MIB, 8 * MIB],
            clients: vec![
                (Traffic::Tcp { flows: 1 }, Dir::Down),
                (Traffic::Tcp { flows: 8 }, Dir::Down),
                (Traffic::Tcp { flows: 1 }, Dir::Up),
                (Traffic::Tcp { flows: 8 }, Dir::Up),
                (CURL, Dir::Down),
                (CURL_WHOLE, Dir::Down),
                (ARIA2, Dir::Down),
                (ARIA2_WHOLE, Dir::Down),
            ],
            // Slow start at 80 ms takes about a second to reach 8 MiB/s.
            secs: 6,
            warmup: 2,
        }
    }

    /// The seconds measured at `limit` (0: no limiter).
    fn secs_at(&self, limit: u64) -> u32 {
        if limit != 0 && limit < LOW_LIMIT {
            LOW_LIMIT_SECS
        } else {
            self.secs
        }
    }

    /// Whether `traffic` is measured at `limit`: a whole file is what the
    /// limit delivers in the run, and aria2c needs a piece of 1 MiB per
    /// connection, more than 8 s at 8 or 64 KiB/s deliver; curl's whole
    /// file is a user's download at the limits its bar is set for.
    fn applies(&self, traffic: Traffic, limit: u64) -> bool {
        match traffic {
            Traffic::Curl { whole_file: true } => limit >= MIB,
            Traffic::Aria2 {
                whole_file: true, ..
            } => traffic.fits(limit * u64::from(self.secs_at(limit) + self.warmup)),
            _ => true,
        }
    }

    /// Client runs in all, and the longest they may take: per setting,
    /// each client once without a limiter and once per limit it applies at
    /// with throttle and with trickle (and, for downloads at 1 MiB/s and
    /// above, through a link of the limit), each its seconds plus start-up
    /// under emulation (a failed run takes less).
    fn runs(&self, reps: usize) -> (usize, Duration) {
        let run = |limit| u64::from(self.secs_at(limit) + self.warmup) + 20;
        let (mut count, mut secs) = (0, 0);
        for &(traffic, dir) in &self.clients {
            count += 1;
            secs += run(0);
            for &limit in self.limits.iter().filter(|&&l| self.applies(traffic, l)) {
                let case = Case::new(Link::Veth, traffic, dir, limit);
                let contenders = if beside_link(&case) { 3 } else { 2 };
                count += contenders;
                secs += contenders as u64 * run(limit);
            }
        }
        let settings = self.rtts.len() * self.senders.len() * reps;
        (
            count * settings,
            Duration::from_secs(secs * settings as u64),
        )
    }
}

/// Whether a link of the limit ([`Contender::Link`]) runs beside throttle:
/// for downloads at the limits whose rate bar is 0.95, where a client's own
/// start and end at a long round trip can cost more than that.
fn beside_link(case: &Case) -> bool {
    case.dir == Dir::Down && case.fast()
}

/// Host side: boots the 6.12 guest, runs the benchmark there and returns
/// the report.
pub fn run(root: &Path, options: &Options) -> Result<String> {
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let report = options.out.join("rtt.md");
    let _ = fs::remove_file(&report);
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let mut command: Vec<String> = [
        xtask.to_string_lossy().as_ref(),
        "bench",
        "--rtt-guest",
        "--reps",
        &options.reps.to_string(),
        "--throttle",
        options.throttle.to_string_lossy().as_ref(),
        "--out",
        options.out.to_string_lossy().as_ref(),
    ]
    .map(String::from)
    .to_vec();
    if options.quick {
        command.push("--quick".into());
    }
    if let Some(filter) = &options.filter {
        command.extend(["--filter".into(), filter.clone()]);
    }
    if options.throttle_only {
        command.push("--throttle-only".into());
    }
    let matrix = Matrix::new(options.quick);
    let (runs, longest) = matrix.runs(options.reps);
    let limit = longest + Duration::from_secs(600);
    eprintln!(
        "bench --rtt: {runs} runs in Linux {KERNEL} under qemu (at most {} min)",
        limit.as_secs() / 60
    );
    let guest = vm::run(
        KERNEL,
        &command,
        root,
        std::slice::from_ref(&options.out),
        limit,
    )?;
    eprint!("{}", guest.output);
    let text = fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()));
    ensure!(
        guest.status == Some(0),
        "the RTT benchmark failed in Linux {} (exit status {:?}); its output is above{}",
        guest.kernel,
        guest.status,
        if text.is_ok() {
            format!(", and what it measured is in {}", report.display())
        } else {
            String::new()
        }
    );
    text
}

/// One netem delay and sender, and what was measured under it.
struct Section {
    rtt: u32,
    ping: Result<f64, String>,
    sender: &'static str,
    ceilings: Vec<(Case, Row)>,
    rows: Vec<Row>,
}

/// Guest side: measures the matrix and writes `rtt.md` into `out`.
pub fn run_inside(options: &Options) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark creates network namespaces and cgroups: run it as root"
    );
    check_tools(&["iperf3", "trickle", "curl", "aria2c", "ping", "tc"])?;
    let matrix = Matrix::new(options.quick);
    let plan = Plan {
        cases: Vec::new(),
        reps: options.reps,
        secs: matrix.secs,
        warmup: matrix.warmup,
        overhead_runs: 0,
        plot: false,
    };
    let low_plan = Plan {
        cases: Vec::new(),
        secs: LOW_LIMIT_SECS,
        ..plan
    };
    let lab = Lab::new()?;
    let bench = Bench {
        lab: &lab,
        throttle: &options.throttle,
        plan: &plan,
    };
    let low_bench = Bench {
        plan: &low_plan,
        ..bench
    };
    let _sender = SenderGuard::new()?;
    let mut sections = Vec::new();
    for &rtt in &matrix.rtts {
        set_delay(&lab.netns.name, &lab.netns.link, rtt)?;
        let ping = lab.ping();
        for &sender in &matrix.senders {
            set_sender(&lab.netns.name, sender)?;
            let mut section = Section {
                rtt,
                ping: ping.clone(),
                sender,
                ceilings: Vec::new(),
                rows: Vec::new(),
            };
            eprintln!("== {rtt} ms ({}), {sender}", ping_label(&section.ping));
            let setting = Setting {
                matrix: &matrix,
                options,
                bench: &bench,
                low_bench: &low_bench,
            };
            for &(traffic, dir) in &matrix.clients {
                setting.client(&mut section, traffic, dir)?;
            }
            sections.push(section);
            // Written after every setting, so a guest that dies keeps what
            // it measured (the report says how much that is).
            let text = markdown(&matrix, &sections, plan.reps, options.throttle_only);
            let path = options.out.join("rtt.md");
            fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    set_delay(&lab.netns.name, &lab.netns.link, 0)
}

/// What one round trip and sender's rows are measured with.
struct Setting<'a> {
    matrix: &'a Matrix,
    options: &'a Options,
    bench: &'a Bench<'a>,
    /// The same, for the limits measured over longer runs.
    low_bench: &'a Bench<'a>,
}

impl Setting<'_> {
    fn bench_at(&self, limit: u64) -> &Bench<'_> {
        if self.matrix.secs_at(limit) == LOW_LIMIT_SECS {
            self.low_bench
        } else {
            self.bench
        }
    }

    /// Whether the matrix and the filter ask for `traffic` at `limit`.
    fn wanted(&self, traffic: Traffic, dir: Dir, limit: u64) -> bool {
        let case = Case::new(Link::Veth, traffic, dir, limit);
        self.matrix.applies(traffic, limit)
            && self
                .options
                .filter
                .as_ref()
                .is_none_or(|f| case.label().contains(f.as_str()))
    }

    /// The rows of one client: its ceiling without a limiter, then at each
    /// limit the link of the limit (where measured) and the contenders.
    fn client(&self, section: &mut Section, traffic: Traffic, dir: Dir) -> Result<()> {
        let limits: Vec<u64> = self
            .matrix
            .limits
            .iter()
            .copied()
            .filter(|&l| self.wanted(traffic, dir, l))
            .collect();
        if limits.is_empty() {
            return Ok(());
        }
        let reps = self.bench.plan.reps;
        // Without a limiter the limit only sizes the download.
        let case = Case::new(Link::Veth, traffic, dir, 0);
        if !self.options.throttle_only {
            let runs = repeat(self.bench, &case, Contender::Bare, reps);
            // Against a limit of 1 byte/s, a row's ratio is the rate itself.
            let ceiling = Row::new(Case { limit: 1, ..case }, Contender::Bare, &runs);
            eprintln!(
                "{} no limiter: {}",
                label(&case),
                report::rate(ceiling.ratio)
            );
            section.ceilings.push((case, ceiling));
        }
        let contenders = if self.options.throttle_only {
            &[Contender::Throttle][..]
        } else {
            &[Contender::Throttle, Contender::Trickle][..]
        };
        for limit in limits {
            let case = Case::new(Link::Veth, traffic, dir, limit);
            let bars = Bars::Rtt {
                netem_ms: section.rtt,
                ping_ms: section.ping.as_ref().ok().copied(),
            };
            let link = self.link_of_the_limit(section, &case)?;
            for &contender in contenders {
                let runs = repeat(self.bench_at(limit), &case, contender, reps);
                let row = Row::new(case, contender, &runs)
                    .held_to(bars)
                    .beside_link(link);
                eprintln!("{}", row.progress_line());
                section.rows.push(row);
            }
        }
        Ok(())
    }

    /// The case with no limiter through a link of the limit, where the
    /// case is measured beside one: its row, and its ratio for the others.
    fn link_of_the_limit(&self, section: &mut Section, case: &Case) -> Result<Option<f64>> {
        if !beside_link(case) {
            return Ok(None);
        }
        let netns = &self.bench.lab.netns;
        set_link(
            &netns.name,
            &netns.link,
            section.rtt,
            case.limit,
            case.link.mss(),
        )?;
        let runs = repeat(self.bench, case, Contender::Link, self.bench.plan.reps);
        set_delay(&netns.name, &netns.link, section.rtt)?;
        let row = Row::new(*case, Contender::Link, &runs);
        eprintln!("{}", row.progress_line());
        let ratio = row.ratio;
        section.rows.push(row);
        Ok(Some(ratio))
    }
}

fn repeat(
    bench: &Bench,
    case: &Case,
    contender: Contender,
    reps: usize,
) -> Vec<Result<Measurement, String>> {
    (0..reps)
        .map(|_| bench.measure(case, contender).map_err(|e| format!("{e:#}")))
        .collect()
}

/// The case without its limit: the client and direction.
fn label(case: &Case) -> String {
    let full = Case { limit: 0, ..*case }.label();
    full.trim_start_matches("veth ")
        .trim_end_matches(" 0 KiB/s")
        .to_string()
}

fn ping_label(ping: &Result<f64, String>) -> String {
    match ping {
        Ok(ms) => format!("ping {}", report::round_trip(*ms)),
        Err(why) => format!("ping failed: {why}"),
    }
}

/// Puts `rtt_ms` of netem delay on the namespace's side of the veth (the
/// servers' side), or none for 0. netem delays what the servers send:
/// data for downloads, acknowledgements for uploads.
fn set_delay(netns: &str, link: &str, rtt_ms: u32) -> Result<()> {
    let mut tc = Command::new("tc");
    tc.args(["-n", netns, "qdisc"]);
    if rtt_ms == 0 {
        // No qdisc to delete is fine: the veth is bare already.
        tc.args(["del", "dev", link, "root"]);
        let _ = tc.output().context("running tc")?;
        return Ok(());
    }
    netem(netns, link, &["delay".into(), format!("{rtt_ms}ms")])
}

/// Puts netem with `options` at the root of `link` in `netns`, with a limit
/// of packets well above any bandwidth-delay product here, so that netem
/// itself never drops.
fn netem(netns: &str, link: &str, options: &[String]) -> Result<()> {
    let out = Command::new("tc")
        .args([
            "-n", netns, "qdisc", "replace", "dev", link, "root", "netem",
        ])
        .args(options)
        .args(["limit", "100000"])
        .output()
        .context("running tc")?;
    ensure!(
        out.status.success(),
        "tc qdisc replace dev {link} root netem {}: {}",
        options.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The bytes netem counts beside a full segment's payload: the Ethernet,
/// IP and TCP headers (with timestamps) of every segment.
const FRAME_OVERHEAD: u64 = 14 + 20 + 32;

/// Makes the servers' side of the veth a link that carries `rate` bytes/s
/// of payload in full-size segments of `mss`, with `rtt_ms` of delay
/// ([`Contender::Link`]); [`set_delay`] undoes it. netem's rate counts
/// whole frames: a link of the bare limit delivered 0.955 of it to every
/// client, the headers taking the rest. Its queue is the delay's, large
/// enough never to drop: the link is the best any limiter could be at that
/// rate, so a client that falls short of the limit through it does so by
/// its own start and end.
fn set_link(netns: &str, link: &str, rtt_ms: u32, rate: u64, mss: u64) -> Result<()> {
    let framed = rate * (mss + FRAME_OVERHEAD) / mss;
    netem(
        netns,
        link,
        &[
            "delay".into(),
            format!("{rtt_ms}ms"),
            "rate".into(),
            format!("{}bit", framed * 8),
        ],
    )
}

const CONGESTION_CONTROL: &str = "net.ipv4.tcp_congestion_control";

/// Sets the congestion control of both namespaces' senders: the servers'
/// for downloads, this namespace's for uploads.
fn set_sender(netns: &str, algorithm: &str) -> Result<()> {
    let setting = format!("{CONGESTION_CONTROL}={algorithm}");
    let mut servers = Command::new("ip");
    servers.args(["netns", "exec", netns, "sysctl", "-qw", &setting]);
    let mut clients = Command::new("sysctl");
    clients.args(["-qw", &setting]);
    for mut sysctl in [servers, clients] {
        let out = sysctl.output().context("running sysctl")?;
        ensure!(
            out.status.success(),
            "sysctl -w {setting}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Puts back this namespace's congestion control when the benchmark ends,
/// however it ends.
struct SenderGuard(String);

impl SenderGuard {
    fn new() -> Result<SenderGuard> {
        let path = Path::new("/proc/sys").join(CONGESTION_CONTROL.replace('.', "/"));
        let current =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(SenderGuard(current.trim().to_string()))
    }
}

impl Drop for SenderGuard {
    fn drop(&mut self) {
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("{CONGESTION_CONTROL}={}", self.0)])
            .status();
    }
}

fn markdown(matrix: &Matrix, sections: &[Section], reps: usize, throttle_only: bool) -> String {
    let mut out = String::new();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(out, "# throttle at real round-trip times\n");
    let settings = matrix.rtts.len() * matrix.senders.len();
    if sections.len() < settings {
        let _ = writeln!(
            out,
            "**Incomplete: {} of {settings} round-trip and sender settings measured.**\n",
            sections.len()
        );
    }
    let _ = writeln!(
        out,
        "Linux {} in the kernel lab (qemu{}), {} CPUs. A veth pair (MTU 1500) into a network \
         namespace whose servers (iperf3, and an HTTP server that honours Range requests) \
         send through netem's delay; both namespaces' senders use the congestion control \
         named. Each row is the median of {reps} run(s) of {} s ({LOW_LIMIT_SECS} s below \
         {}) measured after a warm-up of {} s (waste counts the warm-up too); curl and \
         aria2c download a file larger than the limit allows in that time and are stopped at \
         its end. {}\n",
        kernel.trim(),
        if vm::kvm_usable() {
            " with KVM"
        } else {
            ", emulated: no KVM for this kernel here"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        matrix.secs,
        report::rate(LOW_LIMIT as f64),
        matrix.warmup,
        if throttle_only {
            "trickle and the runs without a limiter were left out (--throttle-only)."
        } else {
            "trickle rows say so where trickle cannot run the client."
        }
    );
    out.push_str(LEGEND);
    out.push_str(&summary_table(sections));
    let _ = writeln!(
        out,
        "\nA cell is achieved/limit, then waste, in bold where it misses a bar; (p) where \
         physics forbids the waste bar; (l) where a link of the limit reaches no more; \
         \"failed\" when no run succeeded (the section below says why).\n"
    );
    for s in sections {
        let _ = writeln!(
            out,
            "## {} ms netem ({}), {} senders\n",
            s.rtt,
            ping_label(&s.ping),
            s.sender
        );
        if !s.ceilings.is_empty() {
            out.push_str(&ceiling_table(&s.ceilings, reps));
        }
        out.push('\n');
        out.push_str(&report::table(&s.rows));
        out.push('\n');
    }
    out
}

/// Throttle's rows, one column per round-trip and sender setting.
fn summary_table(sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## throttle, achieved/limit and waste\n");
    let mut head = "| case |".to_string();
    let mut rule = "|---|".to_string();
    for s in sections {
        let _ = write!(head, " {} ms {} |", s.rtt, s.sender);
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    let first = sections.first().map_or(&[][..], |s| &s.rows[..]);
    for row in first.iter().filter(|r| r.contender == Contender::Throttle) {
        let mut line = format!("| {} |", row.case.label());
        for s in sections {
            let cell = s
                .rows
                .iter()
                .find(|r| {
                    r.contender == Contender::Throttle
                        && r.case.traffic == row.case.traffic
                        && r.case.dir == row.case.dir
                        && r.case.limit == row.case.limit
                })
                .map_or("–".to_string(), summary_cell);
            let _ = write!(line, " {cell} |");
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The runs without a limiter: what the emulated link carries.
fn ceiling_table(ceilings: &[(Case, Row)], reps: usize) -> String {
    let mut out = "Without a limiter (the ceiling under emulation):\n\n\
                   | client | rate | waste | CV |\n|---|---:|---:|---:|\n"
        .to_string();
    for (case, ceiling) in ceilings {
        let rate = if ceiling.failed == reps {
            format!(
                "failed: {}",
                ceiling.failure.as_deref().unwrap_or("no run succeeded")
            )
        } else {
            report::rate(ceiling.ratio)
        };
        let _ = writeln!(
            out,
            "| {} | {rate} | {:.1} % | {} |",
            label(case),
            ceiling.waste * 100.0,
            ceiling.cv.map_or("–".to_string(), |c| format!("{c:.3}"))
        );
    }
    out
}

fn summary_cell(row: &Row) -> String {
    if row.ratio.is_nan() {
        return "failed".to_string();
    }
    let mut cell = format!("{:.2} / {:.0} %", row.ratio, row.waste * 100.0);
    if row.physics().is_some() {
        cell.push_str(" (p)");
    }
    if row.link_bound().is_some() {
        cell.push_str(" (l)");
    }
    if !row.misses().is_empty() {
        cell = format!("**{cell}**");
    }
    cell
}

/// What the columns mean, and the bars of issue 12 the rows are held to.
const LEGEND: &str = "- achieved/limit: bytes received per second ÷ limit, as iperf3's receiving side counts them, and for curl and aria2c as the HTTP server's TCP saw them acknowledged (bar: 0.95–1.02 at 1 MiB/s and above, 0.90–1.05 below)
- link of the limit, (l): downloads at 1 MiB/s and above also run with no limiter through netem's rate at the limit (raised by the headers netem counts, so that full-size segments carry exactly the limit), with a queue that never drops: the most any limiter could give the client at that round trip. Where throttle falls short of the rate bar but not of the link, (l), what is missing is the client's own start and end, and the rate bar does not apply
- waste: max(bytes throttle dropped, sender TcpRetransSegs × MSS) ÷ bytes delivered (bar, for downloads at 20 and 80 ms: ≤ 3 % for one connection and ≤ 5 % for several at 1 MiB/s and above, ≤ 10 % for one at 64 KiB/s)
- physics, (p): the connections are offered more than the limit even at the smallest window, two segments per round trip (N × 2 MSS / RTT > limit); only drops can hold such a limit, so the waste and fairness bars do not apply
- CV: coefficient of variation of the per-second receive rate
- fairness: Jain's index of the bytes each of several iperf3 flows received (bar: ≥ 0.95)
- CPU: user + system seconds of the client side (limiter and iperf3, curl or aria2c)

";

/// Refuses to run the guest side outside a guest of the lab unless asked:
/// it changes the machine's default congestion control while it runs.
fn in_guest() -> bool {
    fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("virtme"))
}

pub fn refuse_outside_guest() -> Result<()> {
    if !in_guest() {
        bail!(
            "--rtt-guest runs inside the kernel lab's guest; use cargo xtask bench --rtt, which boots it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_cover_what_the_issue_names() {
        let full = Matrix::new(false);
        assert_eq!(full.rtts, [0, 20, 80]);
        assert_eq!(full.senders, ["cubic", "bbr"]);
        assert_eq!(full.limits.len(), 4);
        assert_eq!(full.clients.len(), 8);
        // The whole file is not split at 8 and 64 KiB/s, and curl's is a
        // user's download at 1 and 8 MiB/s.
        assert!(!full.applies(ARIA2_WHOLE, 64 * KIB) && full.applies(ARIA2_WHOLE, MIB));
        assert!(!full.applies(CURL_WHOLE, 64 * KIB) && full.applies(CURL_WHOLE, MIB));
        // Six download clients also go through a link of 1 and 8 MiB/s.
        assert_eq!(full.runs(1).0, 3 * 2 * (8 * 9 - 4 - 4 + 6 * 2));
        assert!(Matrix::new(true).runs(1).0 <= 12);
        // 8 KiB/s is measured long enough to resolve its bar; the rest not
        // longer than needed.
        assert_eq!(full.secs_at(8 * KIB), LOW_LIMIT_SECS);
        assert_eq!(full.secs_at(64 * KIB), full.secs);
        assert_eq!(full.secs_at(0), full.secs);
    }

    #[test]
    fn labels_drop_link_and_limit() {
        let case = Case::new(Link::Veth, ARIA2_WHOLE, Dir::Down, MIB);
        assert_eq!(label(&case), "aria2c ×8 whole file down");
    }
}
