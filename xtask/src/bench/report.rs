//! The benchmark's vocabulary (cases, contenders, measurements), its
//! statistics, the bars from issue 4, and the markdown report.

use std::{fmt::Write as _, path::Path};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Veth,
    Loopback,
}

impl Link {
    /// TCP payload per segment (MTU minus IP, TCP and timestamp headers):
    /// TcpRetransSegs counts segments of this size.
    pub fn mss(self) -> u64 {
        match self {
            Link::Veth => 1500 - 52,
            Link::Loopback => 65536 - 52,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Down,
    Up,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Tcp {
        flows: u32,
    },
    /// One HTTP download with curl, stopped after the run's time or, with
    /// `whole_file`, run to its end as [`Traffic::Aria2`]'s is.
    Curl {
        whole_file: bool,
    },
    /// One HTTP download split into ranges over parallel connections, as
    /// download managers do (aria2c -x N -s N). Stopped after the run's
    /// time, or with `whole_file` run to its end: a file the limit delivers
    /// in that time, whose connections finish their ranges at different
    /// moments, as a user's download does.
    Aria2 {
        connections: u32,
        whole_file: bool,
    },
    /// UDP sent at twice the limit.
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    Throttle,
    Trickle,
    Bare,
    /// No limiter, the servers sending through a link of the limit
    /// (netem's rate, with a queue that never drops; see rtt's `set_link`):
    /// what the client itself can make of the limit at that round trip,
    /// the yardstick of the round-trip section's rate bar.
    Link,
}

impl Contender {
    /// The contenders of the veth and loopback benchmark.
    pub const ALL: [Contender; 3] = [Contender::Throttle, Contender::Trickle, Contender::Bare];

    pub fn label(self) -> &'static str {
        match self {
            Contender::Throttle => "throttle",
            Contender::Trickle => "trickle",
            Contender::Bare => "no limiter",
            Contender::Link => "link of the limit",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub link: Link,
    pub traffic: Traffic,
    pub dir: Dir,
    /// Bytes per second.
    pub limit: u64,
}

impl Case {
    /// Whether issue 12 holds the case to its bars for 1 MiB/s and above.
    pub fn fast(&self) -> bool {
        self.limit >= 1 << 20
    }

    pub fn new(link: Link, traffic: Traffic, dir: Dir, limit: u64) -> Case {
        Case {
            link,
            traffic,
            dir,
            limit,
        }
    }

    pub fn label(&self) -> String {
        let what = match self.traffic {
            Traffic::Tcp { flows: 1 } => "TCP".to_string(),
            Traffic::Tcp { flows } => format!("TCP ×{flows}"),
            Traffic::Curl { whole_file: false } => "curl HTTP".to_string(),
            Traffic::Curl { whole_file: true } => "curl HTTP whole file".to_string(),
            Traffic::Aria2 {
                connections,
                whole_file: false,
            } => format!("aria2c ×{connections}"),
            Traffic::Aria2 {
                connections,
                whole_file: true,
            } => format!("aria2c ×{connections} whole file"),
            Traffic::Udp => "UDP at 2× limit".to_string(),
        };
        let dir = match self.dir {
            Dir::Down => "down",
            Dir::Up => "up",
        };
        let link = match self.link {
            Link::Veth => "veth",
            Link::Loopback => "lo",
        };
        format!("{link} {what} {dir} {}", rate(self.limit as f64))
    }
}

/// One run of one contender on one case.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Bytes per second the receiver got after the warm-up.
    pub achieved: f64,
    /// Bytes the receiver got over the whole run.
    pub delivered: u64,
    /// Bytes throttle's programs dropped (0 for the others).
    pub dropped: u64,
    /// TcpRetransSegs delta on the sender, in bytes.
    pub retransmitted_bytes: u64,
    /// Receiver rate in each whole second after the warm-up.
    pub per_second: Vec<f64>,
    /// CPU seconds of the client side (limiter and program).
    pub cpu: f64,
    /// Jain's fairness index of the bytes each flow received, for several
    /// iperf3 flows: 1 when they are equal, 1/n when one took everything.
    pub fairness: Option<f64>,
}

impl Measurement {
    /// Wasted bytes over delivered bytes. A segment dropped on ingress is
    /// retransmitted, so drops and retransmissions count the same loss
    /// twice; the larger of the two is the waste.
    pub fn waste(&self) -> f64 {
        self.dropped.max(self.retransmitted_bytes) as f64 / self.delivered.max(1) as f64
    }

    /// Coefficient of variation of the per-second rate.
    pub fn cv(&self) -> Option<f64> {
        let n = self.per_second.len();
        if n < 2 {
            return None;
        }
        let mean = self.per_second.iter().sum::<f64>() / n as f64;
        let var = self
            .per_second
            .iter()
            .map(|r| (r - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        (mean > 0.0).then(|| var.sqrt() / mean)
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Medians over the successful repetitions of one case and contender.
pub struct Row {
    pub case: Case,
    pub contender: Contender,
    /// Runs that failed, and the last failure's message.
    pub failed: usize,
    pub failure: Option<String>,
    pub ratio: f64,
    pub waste: f64,
    pub cv: Option<f64>,
    pub cpu: f64,
    pub fairness: Option<f64>,
    /// Which bars the row is held to.
    pub bars: Bars,
    /// achieved/limit of a [`Contender::Link`] of the limit in the same
    /// setting, where one was measured.
    pub link: Option<f64>,
}

/// The bars a row is held to: issue 4's on this machine's veth and
/// loopback, or issue 12's at a real round trip. Either way `ping_ms` is
/// the round trip ping measured over the row's veth, if it did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bars {
    Veth {
        ping_ms: Option<f64>,
    },
    /// `netem_ms` of delay on the veth.
    Rtt {
        netem_ms: u32,
        ping_ms: Option<f64>,
    },
}

impl Bars {
    fn ping_ms(self) -> Option<f64> {
        match self {
            Bars::Veth { ping_ms } | Bars::Rtt { ping_ms, .. } => ping_ms,
        }
    }
}

/// A round trip as people write it: microseconds on a bare veth,
/// milliseconds with a delay.
pub fn round_trip(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// The least a TCP connection sends per round trip is two segments (a
/// smaller window stalls the sender), so `flows` connections over a round
/// trip of `rtt_ms` are offered at least this many bytes/s whatever their
/// windows: where it exceeds the limit, only drops can hold the limit.
pub fn least_offered(flows: u32, mss: u64, rtt_ms: f64) -> f64 {
    f64::from(flows) * 2.0 * mss as f64 / (rtt_ms / 1000.0)
}

impl Traffic {
    /// How many TCP connections carry the data.
    pub fn flows(self) -> u32 {
        match self {
            Traffic::Tcp { flows } => flows,
            Traffic::Aria2 { connections, .. } => connections,
            Traffic::Curl { .. } | Traffic::Udp => 1,
        }
    }

    /// Whether the download runs to the end of a file the limit delivers in
    /// the run's time, and is rated by its size over its time.
    pub fn whole_file(self) -> bool {
        matches!(
            self,
            Traffic::Curl { whole_file: true }
                | Traffic::Aria2 {
                    whole_file: true,
                    ..
                }
        )
    }

    /// Whether a download of `size` bytes can be made this way: aria2c
    /// splits no file into pieces under 1 MiB, and each connection needs one.
    pub fn fits(self, size: u64) -> bool {
        match self {
            Traffic::Aria2 { connections, .. } => size >= u64::from(connections) << 20,
            _ => true,
        }
    }
}

impl Row {
    pub fn new(case: Case, contender: Contender, results: &[Result<Measurement, String>]) -> Row {
        let runs: Vec<Measurement> = results.iter().filter_map(|r| r.clone().ok()).collect();
        let failure = results.iter().filter_map(|r| r.clone().err()).next_back();
        let of = |f: &dyn Fn(&Measurement) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let cvs: Vec<f64> = runs.iter().filter_map(Measurement::cv).collect();
        let fairness: Vec<f64> = runs.iter().filter_map(|m| m.fairness).collect();
        Row {
            case,
            contender,
            failed: results.len() - runs.len(),
            failure,
            ratio: of(&|m| m.achieved / case.limit as f64),
            waste: of(&Measurement::waste),
            cv: (!cvs.is_empty()).then(|| median(&cvs)),
            cpu: of(&|m| m.cpu),
            fairness: (!fairness.is_empty()).then(|| median(&fairness)),
            bars: Bars::Veth { ping_ms: None },
            link: None,
        }
    }

    /// The row held to `bars` instead of issue 4's.
    pub fn held_to(self, bars: Bars) -> Row {
        Row { bars, ..self }
    }

    /// The row measured beside a link of the limit that reached `link`.
    pub fn beside_link(self, link: Option<f64>) -> Row {
        Row { link, ..self }
    }

    /// Where the row falls short of its rate bar no further than a link of
    /// exactly the limit does for the same client: what is missing is the
    /// client's own start and end at that round trip, which no limiter
    /// can give back. The reason, for the verdict.
    pub fn link_bound(&self) -> Option<String> {
        let link = self.link.filter(|l| l.is_finite())?;
        let (low, _) = self.rate_bar();
        (self.ratio < low && self.ratio >= link)
            .then(|| format!("a link of the limit reaches {link:.3}"))
    }

    /// The round-trip section's bounds of achieved/limit for this row.
    fn rate_bar(&self) -> (f64, f64) {
        if self.case.fast() {
            (0.95, 1.02)
        } else {
            (0.90, 1.05)
        }
    }

    /// Where the row's connections are offered more than its limit even
    /// with the smallest windows (see [`least_offered`]): the reason, for
    /// the verdict; the waste bar does not apply there.
    pub fn physics(&self) -> Option<String> {
        let rtt = self.bars.ping_ms()?;
        let flows = self.case.traffic.flows();
        let least = least_offered(flows, self.case.link.mss(), rtt);
        (self.case.traffic != Traffic::Udp && least > self.case.limit as f64).then(|| {
            format!(
                "physics: {flows} × 2 MSS / {} = {} > the limit",
                round_trip(rtt),
                rate(least)
            )
        })
    }

    /// Which of issue 4's bars this row misses (only throttle has bars).
    pub fn misses(&self) -> Vec<&'static str> {
        let mut misses = Vec::new();
        if self.contender != Contender::Throttle {
            return misses;
        }
        if self.failed > 0 {
            misses.push("runs failed");
        }
        if let Bars::Rtt { netem_ms, .. } = self.bars {
            self.rtt_misses(netem_ms, &mut misses);
            return misses;
        }
        let case = &self.case;
        let tcp = case.traffic != Traffic::Udp;
        match (case.link, tcp) {
            (Link::Veth, true) => {
                if !(0.95..=1.02).contains(&self.ratio) {
                    misses.push("rate");
                }
                if self.waste > 0.10 && self.physics().is_none() {
                    misses.push("waste");
                }
                let single = matches!(
                    case.traffic,
                    Traffic::Tcp { flows: 1 } | Traffic::Curl { .. }
                );
                if single && case.limit >= 1 << 20 && self.cv.is_none_or(|cv| cv > 0.10) {
                    misses.push("CV");
                }
            }
            (Link::Veth, false) => {
                if self.ratio > 1.02 {
                    misses.push("rate");
                }
            }
            (Link::Loopback, _) => {
                if !(0.90..=1.05).contains(&self.ratio) {
                    misses.push("rate");
                }
            }
        }
        misses
    }

    /// Issue 12's bars: achieved/limit within [0.95, 1.02] at 1 MiB/s and
    /// above, [0.90, 1.05] below, or at least what a link of the limit
    /// reaches where that is less (see [`link_bound`](Row::link_bound));
    /// for downloads at 20 ms and more, waste
    /// at most 3 % for one connection and 5 % for several at 1 MiB/s and
    /// above, 10 % for one at 64 KiB/s, unless physics forbids it; Jain's
    /// index at least 0.95 for several iperf3 flows, physics permitting.
    fn rtt_misses(&self, netem_ms: u32, misses: &mut Vec<&'static str>) {
        let case = &self.case;
        let (low, high) = self.rate_bar();
        if !(low..=high).contains(&self.ratio) && self.link_bound().is_none() {
            misses.push("rate");
        }
        let possible = self.physics().is_none();
        let single = case.traffic.flows() == 1;
        let waste_bar = match (case.fast(), single) {
            (true, true) => Some(0.03),
            (true, false) => Some(0.05),
            (false, true) if case.limit >= 64 << 10 => Some(0.10),
            (false, _) => None,
        };
        if case.dir == Dir::Down
            && netem_ms >= 20
            && possible
            && waste_bar.is_some_and(|bar| self.waste > bar)
        {
            misses.push("waste");
        }
        if possible && self.fairness.is_some_and(|f| f < 0.95) {
            misses.push("fairness");
        }
    }

    fn verdict(&self) -> String {
        if self.contender != Contender::Throttle {
            return match &self.failure {
                Some(why) => format!("{} run(s) failed: {why}", self.failed),
                None => String::new(),
            };
        }
        let misses = self.misses();
        let mut verdict = if misses.is_empty() {
            "pass".to_string()
        } else {
            format!("**misses {}**", misses.join(", "))
        };
        for reason in [self.physics(), self.link_bound()].into_iter().flatten() {
            verdict = format!("{verdict}; {reason}");
        }
        match &self.failure {
            Some(why) => format!("{verdict} ({} run(s) failed: {why})", self.failed),
            None => verdict,
        }
    }

    pub fn progress_line(&self) -> String {
        format!(
            "{:<32} {:<11} achieved/limit {:>7.3}  waste {:>6.1}%  CV {}  cpu {:.2} s {}",
            self.case.label(),
            self.contender.label(),
            self.ratio,
            self.waste * 100.0,
            self.cv.map_or("  -  ".to_string(), |c| format!("{c:.3}")),
            self.cpu,
            self.verdict()
        )
    }
}

/// One direction's throughput, bytes/s: bare; with programs attached (no
/// limit); and with `--exclude` lists the traffic never matches.
pub struct Throughput {
    pub dir: Dir,
    pub bare: f64,
    pub attached: f64,
    pub listed: f64,
}

pub struct Overhead {
    pub throughput: Vec<Throughput>,
    pub true_bare: f64,
    pub true_throttled: f64,
    pub true_runs: usize,
}

/// The bars of issue 26: programs attached without a limit cost at most
/// 1 % of a veth's throughput, and a run at most 3 ms of start-up.
const OVERHEAD_RATIO: f64 = 0.99;
const OVERHEAD_START_MS: f64 = 3.0;

impl Overhead {
    /// The report's section: each throughput beside bare, then `true`.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "## Overhead\n\n\
             | measurement | bare | throttle | ratio | bar |\n|---|---:|---:|---:|---|\n",
        );
        for t in &self.throughput {
            let dir = if t.dir == Dir::Down { "down" } else { "up" };
            for (what, measured) in [
                ("programs attached without a limit", t.attached),
                (
                    "programs attached without a limit, with --exclude lists it never matches",
                    t.listed,
                ),
            ] {
                let ratio = measured / t.bare;
                let _ = writeln!(
                    out,
                    "| veth TCP {dir} throughput, {what} | {} | {} | {:.3} | {} |",
                    rate(t.bare),
                    rate(measured),
                    ratio,
                    if ratio >= OVERHEAD_RATIO {
                        "pass".to_string()
                    } else {
                        format!("**misses ≥ {OVERHEAD_RATIO}**")
                    }
                );
            }
        }
        let added_ms = (self.true_throttled - self.true_bare) * 1e3;
        let _ = writeln!(
            out,
            "| wall time of `throttle --down 1M -- true`, median of {} | {:.1} ms | {:.1} ms | +{:.1} ms | {} |",
            self.true_runs,
            self.true_bare * 1e3,
            self.true_throttled * 1e3,
            added_ms,
            if added_ms <= OVERHEAD_START_MS {
                "pass".to_string()
            } else {
                format!("**misses ≤ +{OVERHEAD_START_MS} ms**")
            }
        );
        out
    }
}

pub fn rate(bytes_per_sec: f64) -> String {
    const MIB: f64 = 1048576.0;
    if bytes_per_sec >= MIB {
        format!("{:.0} MiB/s", bytes_per_sec / MIB)
    } else {
        format!("{:.0} KiB/s", bytes_per_sec / 1024.0)
    }
}

/// What the columns of [`table`] mean.
pub const LEGEND: &str = "\
- achieved/limit: bytes received per second ÷ limit, as iperf3's receiving side counts them, and for curl and aria2c as the HTTP server's TCP saw them acknowledged (bar: TCP on veth 0.95–1.02, UDP ≤ 1.02, lo 0.90–1.05)
- waste: max(bytes throttle dropped, sender TcpRetransSegs × MSS) ÷ bytes delivered (bar: ≤ 10 % for TCP on veth, physics permitting)
- physics: the connections are offered more than the limit even at the smallest window, two segments per round trip (N × 2 MSS / RTT > limit, RTT as ping measured it over the veth); only drops can hold such a limit, so the waste bar does not apply
- CV: coefficient of variation of the per-second receive rate (bar: ≤ 0.10 for one TCP flow or curl at ≥ 1 MiB/s)
- fairness: Jain's index of the bytes each of several iperf3 flows received (1: equal; 1/n: one took all)
- CPU: user + system seconds of the client side (limiter and iperf3, curl or aria2c)

";

/// The rows as a markdown table, and which of them miss throttle's bars.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| case | contender | achieved/limit | waste | CV | fairness | CPU s | throttle's bar |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.1} % | {} | {} | {:.2} | {} |",
            row.case.label(),
            row.contender.label(),
            row.ratio,
            row.waste * 100.0,
            row.cv.map_or("–".to_string(), |c| format!("{c:.3}")),
            row.fairness.map_or("–".to_string(), |f| format!("{f:.3}")),
            row.cpu,
            row.verdict()
        );
    }
    let missed: Vec<String> = rows
        .iter()
        .filter(|r| !r.misses().is_empty())
        .map(|r| format!("{} ({})", r.case.label(), r.misses().join(", ")))
        .collect();
    let _ = writeln!(
        out,
        "\nthrottle meets its bars in {} of {} rows.",
        rows.iter()
            .filter(|r| r.contender == Contender::Throttle && r.misses().is_empty())
            .count(),
        rows.iter()
            .filter(|r| r.contender == Contender::Throttle)
            .count()
    );
    if !missed.is_empty() {
        let _ = writeln!(out, "Missed: {}.", missed.join("; "));
    }
    out
}

pub fn markdown(
    rows: &[Row],
    overhead: Option<&Overhead>,
    plot: Option<&Path>,
    secs: u32,
    warmup: u32,
    reps: usize,
    veth_ping: &Result<f64, String>,
) -> String {
    let mut out = String::new();
    let veth_rtt = match veth_ping {
        Ok(ms) => format!("a round trip of {} as ping measured it", round_trip(*ms)),
        Err(why) => format!("ping failed ({why}), so no row is reckoned by physics"),
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(out, "# throttle benchmark\n");
    let _ = writeln!(
        out,
        "Kernel {}; {} CPUs. Each row is the median of {reps} runs of {secs} s measured after a \
         warm-up of {warmup} s (waste counts the warm-up too); the no-limiter TCP and curl runs do not \
         depend on the limit and are measured once per kind of case. veth: MTU 1500 into a network namespace, \
         {veth_rtt}; lo: loopback. Every contender runs the same iperf3 or curl command with the same limit \
         on both directions.\n",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    out.push_str(LEGEND);
    out.push_str(&table(rows));
    if let Some(overhead) = overhead {
        out.push('\n');
        out.push_str(&overhead.markdown());
    }
    if let Some(plot) = plot {
        let _ = writeln!(
            out,
            "\n## A 1 MiB/s download, every 100 ms\n\n![rate every 100 ms]({})",
            plot.file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(per_second: Vec<f64>) -> Measurement {
        Measurement {
            achieved: 1.0,
            delivered: 1000,
            dropped: 50,
            retransmitted_bytes: 80,
            per_second,
            cpu: 0.0,
            fairness: None,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn waste_counts_a_loss_once() {
        assert_eq!(measurement(vec![]).waste(), 0.08);
    }

    #[test]
    fn cv_needs_two_seconds() {
        assert_eq!(measurement(vec![1.0]).cv(), None);
        assert_eq!(measurement(vec![1.0, 1.0]).cv(), Some(0.0));
        let cv = measurement(vec![0.9, 1.1]).cv().unwrap();
        assert!((cv - 0.1).abs() < 1e-9);
    }

    #[test]
    fn issue_12s_bars_spare_the_waste_that_physics_forces() {
        let at = |traffic, limit: u64, waste: f64, netem_ms| {
            let case = Case::new(Link::Veth, traffic, Dir::Down, limit);
            let m = Measurement {
                achieved: limit as f64,
                delivered: 1000,
                dropped: (waste * 1000.0) as u64,
                retransmitted_bytes: 0,
                ..measurement(vec![1.0, 1.0])
            };
            let ping_ms = Some(f64::from(netem_ms) + 1.5);
            Row::new(case, Contender::Throttle, &[Ok(m)]).held_to(Bars::Rtt { netem_ms, ping_ms })
        };
        let one = Traffic::Tcp { flows: 1 };
        let eight = Traffic::Tcp { flows: 8 };
        // One flow at 1 MiB/s and 21.5 ms: two segments per round trip are
        // 132 KiB/s, so the 3 % bar holds.
        assert_eq!(at(one, 1 << 20, 0.04, 20).misses(), vec!["waste"]);
        assert!(at(one, 1 << 20, 0.02, 20).misses().is_empty());
        assert!(at(eight, 1 << 20, 0.04, 20).misses().is_empty());
        // Waste bars are for 20 ms and more.
        assert!(at(one, 8 << 20, 0.2, 0).misses().is_empty());
        // Eight flows at 64 KiB/s are offered 1 MiB/s at least: physics.
        let bound = at(eight, 64 << 10, 2.0, 20);
        assert!(bound.misses().is_empty());
        assert!(
            bound.verdict().contains("physics: 8 × 2 MSS / 21.5 ms"),
            "{}",
            bound.verdict()
        );
        assert_eq!(least_offered(1, 1448, 80.0), 36_200.0);
    }

    #[test]
    fn on_the_bare_veth_physics_spares_the_waste_of_slow_limits_only() {
        let at = |flows, limit: u64, ping_ms| {
            let case = Case::new(Link::Veth, Traffic::Tcp { flows }, Dir::Down, limit);
            let m = Measurement {
                achieved: limit as f64,
                delivered: 1000,
                dropped: 2000,
                retransmitted_bytes: 0,
                ..measurement(vec![1.0, 1.0])
            };
            Row::new(case, Contender::Throttle, &[Ok(m)]).held_to(Bars::Veth { ping_ms })
        };
        // Two segments per 50 µs are 55 MiB/s for one flow.
        let bound = at(8, 64 << 10, Some(0.05));
        assert!(bound.misses().is_empty());
        assert!(
            bound.verdict().contains("physics: 8 × 2 MSS / 50 µs"),
            "{}",
            bound.verdict()
        );
        assert_eq!(at(1, 128 << 20, Some(0.05)).misses(), vec!["waste"]);
        // Without a round trip, nothing is reckoned.
        assert_eq!(at(8, 64 << 10, None).misses(), vec!["waste"]);
    }

    #[test]
    fn a_rate_a_link_of_the_limit_cannot_beat_is_no_miss() {
        let case = Case::new(
            Link::Veth,
            Traffic::Aria2 {
                connections: 8,
                whole_file: true,
            },
            Dir::Down,
            8 << 20,
        );
        let at = |ratio: f64, link| {
            let m = Measurement {
                achieved: ratio * (8 << 20) as f64,
                dropped: 0,
                retransmitted_bytes: 0,
                ..measurement(vec![1.0, 1.0])
            };
            let bars = Bars::Rtt {
                netem_ms: 80,
                ping_ms: Some(81.0),
            };
            Row::new(case, Contender::Throttle, &[Ok(m)])
                .held_to(bars)
                .beside_link(link)
        };
        let bound = at(0.945, Some(0.93));
        assert!(bound.misses().is_empty());
        assert!(
            bound
                .verdict()
                .contains("a link of the limit reaches 0.930")
        );
        // Short of the link, or with none beside it, the bar stands.
        assert_eq!(at(0.92, Some(0.93)).misses(), vec!["rate"]);
        assert_eq!(at(0.945, None).misses(), vec!["rate"]);
        // A link never excuses overshooting.
        assert_eq!(at(1.05, Some(1.06)).misses(), vec!["rate"]);
    }

    #[test]
    fn bars_apply_to_throttle_only() {
        let case = Case::new(Link::Veth, Traffic::Tcp { flows: 1 }, Dir::Down, 1 << 20);
        let m = Measurement {
            achieved: 1.1 * (1 << 20) as f64,
            ..measurement(vec![1.0, 1.0])
        };
        let row = Row::new(case, Contender::Throttle, &[Ok(m.clone())]);
        assert_eq!(row.misses(), vec!["rate"]);
        assert!(
            Row::new(case, Contender::Trickle, &[Ok(m)])
                .misses()
                .is_empty()
        );
    }

    #[test]
    fn failed_runs_are_reported_not_hidden() {
        let case = Case::new(Link::Veth, Traffic::Tcp { flows: 1 }, Dir::Down, 1 << 20);
        let ok = Measurement {
            achieved: (1 << 20) as f64,
            ..measurement(vec![1.0, 1.0])
        };
        let row = Row::new(case, Contender::Trickle, &[Ok(ok), Err("select".into())]);
        assert_eq!(row.failed, 1);
        assert!(row.verdict().contains("select"));
    }
}
