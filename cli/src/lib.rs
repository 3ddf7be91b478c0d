//! throttle's command line: the clap definition and pure value parsers
//! (clap, humantime and the shared unit grammar only). The binary parses
//! with it; xtask builds the completions and the man page from it without
//! building the eBPF object. Nothing here looks anything up: `--user` is
//! resolved in the binary's plan.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use throttle_common::{
    networks::{CIDR_FORMS, Place},
    units::{Rate, RateRefusal, SIZE_FORMS, parse_rate, parse_size},
};

const ABOUT: &str = "Run a command with its network bandwidth limited, in the kernel";

const LONG_ABOUT: &str = "\
Run a command with its network bandwidth limited, in the kernel.

throttle creates a cgroup for the run, attaches eBPF programs that police the
download (ingress) and upload (egress) of every socket created inside it, and
starts COMMAND there. Everything the command spawns is limited together, static
and Go binaries included. When the command exits, the programs are detached and
the cgroup removed.";

const AFTER_HELP: &str = "\
RATE: a positive number of bytes per second, decimals allowed, with an optional
case-insensitive unit: K, KB, KiB = 1024; M, MB, MiB = 1024^2; G, GB, GiB = 1024^3
(as in curl and wget); kbit, mbit, gbit = 1000, 1000^2, 1000^3 bits/s (as in tc).
A trailing /s is allowed. A bare number is bytes/s, as in curl and wget (not
KiB/s, as in trickle). SIZE takes the same byte units.

DURATION, INTERVAL: seconds, decimals allowed (5, 0.5), as timeout, sleep and
watch -n take them; or with units: 500ms, 1m30s, 2min.

Exit status: the command's own; 128+N if it died of signal N; 125 if throttle
failed before the command ran; 126 if the command is not executable; 127 if it
was not found; 2 for invalid arguments.

CIDR: an IPv4 or IPv6 address with an optional prefix length (10.0.0.0/8,
192.168.1.7, fd00::/8), or 'local' for loopback and link-local (127.0.0.0/8,
169.254.0.0/16, ::1, fe80::/10).

Examples:
  throttle --down 50K --up 10K -- wget https://example.org/big.iso
  throttle --down 2M --exclude local --exclude 10.0.0.0/8 -- cargo build
  throttle --down 20mbit -- cargo build
  throttle --up 1M --name backup -- rsync -a ~/photos host:photos";

const ATTACH_AFTER_HELP: &str = "\
Exit status: 0 when the target ended or 'throttle detach' lifted the limit;
128+N after signal N; 9 if there is no such target or it is not running; 10
if you may not limit it (the root cgroup, another user's); 125 if throttle
failed; 2 for invalid arguments.

Examples:
  throttle attach --down 2M --unit nginx.service
  throttle attach --up 512K --container backup
  throttle attach --down 1M --cgroup /sys/fs/cgroup/system.slice/cron.service";

#[derive(Debug, Parser)]
#[command(
    name = "throttle",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "throttle [OPTIONS] [--] COMMAND [ARGS]...\n       throttle <SUBCOMMAND>"
)]
pub struct Cli {
    #[command(subcommand)]
    pub action: Option<Action>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// The limits of a run, started or attached.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Limit the download (ingress) rate; unlimited if omitted
    #[arg(long, value_name = "RATE", value_parser = rate)]
    pub down: Option<Rate>,

    /// Limit the upload (egress) rate; unlimited if omitted
    #[arg(long, value_name = "RATE", value_parser = rate)]
    pub up: Option<Rate>,

    /// Bucket depth: how far a burst may run ahead of the rate; at least 125 ms of each limited rate and 16K [default: 250 ms of the rate, at least 16K]
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub burst: Option<u64>,

    /// Leave traffic to and from CIDR unlimited (still counted, apart); repeatable. 'local' is loopback and link-local
    #[arg(long, value_name = "CIDR", value_parser = place)]
    pub exclude: Vec<Place>,

    /// Limit only traffic to and from CIDR; repeatable. With --exclude, the longest matching network decides
    #[arg(long, value_name = "CIDR", value_parser = place)]
    pub only: Vec<Place>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub limits: LimitArgs,

    /// Run COMMAND as USER (name or uid), with that user's groups, a reset environment (see --keep-env) and a session of its own without the caller's controlling terminal, as 'runuser -l -c' does; needs root. Without it the command runs as the caller: as root under sudo
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// With --user, keep the caller's variable NAME (repeatable, or NAME,NAME); the command otherwise gets PATH, HOME, SHELL, USER, LOGNAME, TERM and the locale only, as 'runuser -l' and sudo's env_reset give it
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = variable_name)]
    pub keep_env: Vec<String>,

    /// Name of the run, for 'throttle list/set/stats' [default: COMMAND-PID]
    #[arg(long, value_name = "NAME", value_parser = run_name)]
    pub name: Option<String>,

    /// After COMMAND exits, how long processes it left behind get between SIGTERM and SIGKILL
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub kill_after: Duration,

    /// After COMMAND exits, wait for the processes it left behind (still throttled) instead of killing them
    #[arg(long)]
    pub wait_all: bool,

    /// At exit, print one line on stderr: bytes, duration, average rates and drops per direction.
    /// UDP sent over the upload limit is dropped without telling the sender (iperf3 reports 0% loss): its drops are counted here and in 'throttle stats'
    #[arg(
        long,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text"
    )]
    pub summary: Option<SummaryFormat>,

    /// The command to run, with its arguments
    #[arg(
        value_name = "COMMAND",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 1..
    )]
    pub command: Vec<OsString>,
}

/// `throttle attach`: limits, and the one thing already running to hold to them.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["cgroup", "unit", "user_unit", "container"])))]
pub struct AttachArgs {
    #[command(flatten)]
    pub limits: LimitArgs,

    /// The cgroup v2 directory to attach to, absolute or relative to the cgroup2 mount
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// A systemd unit of the system manager (nginx.service, user-1000.slice): its cgroup
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,

    /// A systemd unit of your own user manager (systemctl --user): its cgroup
    #[arg(long, value_name = "UNIT")]
    pub user_unit: Option<String>,

    /// A running podman or docker container, by name or id: its cgroup
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,

    /// Name of the run, for 'throttle list/set/stats/detach' [default: the target's name and this pid]
    #[arg(long, value_name = "NAME", value_parser = run_name)]
    pub name: Option<String>,

    /// At detach, print one line on stderr: bytes, duration, average rates and drops per direction
    #[arg(
        long,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text"
    )]
    pub summary: Option<SummaryFormat>,
}

/// What `throttle attach` holds, as the command line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Cgroup(&'a Path),
    Unit(&'a str),
    UserUnit(&'a str),
    Container(&'a str),
}

impl AttachArgs {
    /// The one target clap made sure was given.
    pub fn target(&self) -> Target<'_> {
        match (&self.cgroup, &self.unit, &self.user_unit, &self.container) {
            (Some(path), ..) => Target::Cgroup(path),
            (_, Some(unit), ..) => Target::Unit(unit),
            (_, _, Some(unit), _) => Target::UserUnit(unit),
            (.., Some(container)) => Target::Container(container),
            (None, None, None, None) => unreachable!("clap requires one target"),
        }
    }
}

/// How `--summary` prints its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// For people: units and rounding
    Text,
    /// One JSON object with exact byte and packet counts, for scripts
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Check this machine for everything throttle needs, and say how to fix what is missing
    Doctor,
    /// Remove what runs killed with SIGKILL left behind (cgroups, lock files); live runs are never touched
    Cleanup,
    /// List the live runs you may see, with limits, current rates and totals
    List {
        /// One JSON array, for scripts
        #[arg(long)]
        json: bool,
    },
    /// Change a live run's limits (within 100 ms); RATE or 'unlimited'
    Set {
        /// The run's name or its wrapper's pid [default: the run this command is inside of]
        #[arg(value_name = "NAME|PID")]
        target: Option<String>,
        /// New download limit
        #[arg(long, value_name = "RATE|unlimited", value_parser = limit)]
        down: Option<Rate>,
        /// New upload limit
        #[arg(long, value_name = "RATE|unlimited", value_parser = limit)]
        up: Option<Rate>,
        /// New bucket depth
        #[arg(long, value_name = "SIZE", value_parser = size)]
        burst: Option<u64>,
        /// Replace the run's --exclude list (repeatable; 'none' empties it)
        #[arg(long, value_name = "CIDR|none", value_parser = list_word)]
        exclude: Vec<ListWord>,
        /// Replace the run's --only list (repeatable; 'none' empties it)
        #[arg(long, value_name = "CIDR|none", value_parser = list_word)]
        only: Vec<ListWord>,
    },
    /// Show a live run's current rates (sampled over the interval) and totals
    Stats {
        /// The run's name or its wrapper's pid [default: the run this command is inside of]
        #[arg(value_name = "NAME|PID")]
        target: Option<String>,
        /// Keep refreshing every INTERVAL [default: 1s]
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1", value_parser = interval)]
        watch: Option<Duration>,
        /// JSON lines, for scripts
        #[arg(long)]
        json: bool,
    },
    /// Limit what already runs: every socket of a cgroup, a systemd unit or a container, until it is gone, Ctrl-C or 'throttle detach'; nothing is moved or killed
    #[command(after_help = ATTACH_AFTER_HELP)]
    Attach(AttachArgs),
    /// Lift an attached run's limits, as Ctrl-C in its terminal does
    Detach {
        /// The attached run's name or its throttle's pid
        #[arg(value_name = "NAME|PID")]
        target: String,
    },
    /// Print shell completions to stdout
    Completions {
        /// The shell to generate completions for
        shell: Shell,
    },
}

fn rate(text: &str) -> Result<Rate, String> {
    parse_rate(text).and_then(Rate::per_sec).map_err(|error| {
        RateRefusal {
            text,
            error,
            unlimited: false,
        }
        .to_string()
    })
}

/// A RATE, or "unlimited" to remove a limit.
fn limit(text: &str) -> Result<Rate, String> {
    Rate::parse(text).map_err(|error| {
        RateRefusal {
            text,
            error,
            unlimited: true,
        }
        .to_string()
    })
}

/// A network of `--exclude` or `--only`.
fn place(text: &str) -> Result<Place, String> {
    Place::parse(text).map_err(|e| format!("{e}; expected {CIDR_FORMS}"))
}

/// A word of `set --exclude` and `set --only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListWord {
    /// `none`: the list is emptied.
    None,
    Place(Place),
}

fn list_word(text: &str) -> Result<ListWord, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(ListWord::None);
    }
    place(text)
        .map(ListWord::Place)
        .map_err(|e| format!("{e}, or 'none'"))
}

/// The list a `set` gives: None when the option was not given.
pub fn new_list(words: &[ListWord]) -> Option<Vec<Place>> {
    (!words.is_empty()).then(|| {
        words
            .iter()
            .filter_map(|word| match word {
                ListWord::None => None,
                ListWord::Place(place) => Some(*place),
            })
            .collect()
    })
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| format!("{e}; expected {SIZE_FORMS}"))
}

const DURATION_FORMS: &str = "expected seconds (5, 0.5) or a duration with units (500ms, 1m30s)";

/// A DURATION: bare seconds, as `timeout`, `sleep` and `watch -n` take
/// them, or humantime's forms.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.');
    if bare {
        return text
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("not a number of seconds; {DURATION_FORMS}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e}; {DURATION_FORMS}"))
}

/// A DURATION that is more than zero, for repeating intervals.
fn interval(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err(format!("must be more than zero; {DURATION_FORMS}")),
        interval => Ok(interval),
    }
}

/// A `--keep-env` NAME: a shell variable's name.
pub fn variable_name(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(text.to_string())
    } else {
        Err("expected a variable name: letters, digits and '_', not starting with a digit".into())
    }
}

/// Longest accepted run name; it becomes a cgroup and a file name.
pub const MAX_NAME_LEN: usize = 64;

/// Run names become directory and file names and are looked up by
/// `throttle set NAME|PID`, so they are plain words that cannot pass for a PID.
pub fn run_name(text: &str) -> Result<String, String> {
    const ACCEPTED: &str = "expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, and not all digits";
    let valid = !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !text.chars().all(|c| c.is_ascii_digit());
    if valid {
        Ok(text.to_string())
    } else {
        Err(ACCEPTED.to_string())
    }
}

/// The longest default name's `-PID` suffix: a dash and a u32's 10 digits.
const PID_SUFFIX_MAX: usize = 11;

/// The name of a run not given `--name`: `<command>-<pid>`, with the
/// command's name reduced to what a run name allows.
pub fn default_name(command: &OsStr, pid: u32) -> String {
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
        .take(MAX_NAME_LEN - PID_SUFFIX_MAX)
        .collect();
    let base = if cleaned.is_empty() { "run" } else { &cleaned };
    format!("{base}-{pid}")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, error::ErrorKind};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("throttle").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_and_command() {
        let cli = parse(&["--down", "50K", "--up", "1mbit", "--", "wget", "-q", "url"]).unwrap();
        assert!(cli.action.is_none());
        assert_eq!(cli.run.limits.down, Rate::per_sec(50 * 1024).ok());
        assert_eq!(cli.run.limits.up, Rate::per_sec(125_000).ok());
        assert_eq!(cli.run.limits.burst, None);
        assert_eq!(cli.run.command, ["wget", "-q", "url"]);
        assert_eq!(cli.run.kill_after, Duration::from_secs(5));
    }

    #[test]
    fn command_without_double_dash_keeps_its_own_flags() {
        let cli = parse(&["--down", "1M", "curl", "--limit-rate", "5M", "-o", "x"]).unwrap();
        assert_eq!(cli.run.command, ["curl", "--limit-rate", "5M", "-o", "x"]);
        assert_eq!(cli.run.limits.down, Rate::per_sec(1 << 20).ok());
    }

    #[test]
    fn both_directions_may_be_omitted() {
        let cli = parse(&["true"]).unwrap();
        assert_eq!((cli.run.limits.down, cli.run.limits.up), (None, None));
    }

    #[test]
    fn options_after_the_command_belong_to_the_command() {
        let cli = parse(&["--", "sh", "--down", "1M"]).unwrap();
        assert_eq!(cli.run.limits.down, None);
        assert_eq!(cli.run.command, ["sh", "--down", "1M"]);
    }

    #[test]
    fn a_command_is_required() {
        let err = parse(&["--down", "1M"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn bad_rates_name_the_value_and_the_accepted_forms() {
        for bad in ["0", "-1M", "5X", "", "nan", "1e9", "99G"] {
            let err = parse(&["--down", bad, "--", "true"]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
            let text = err.to_string();
            assert!(text.contains(&format!("'{bad}'")), "{text}");
            assert!(text.contains("kbit"), "{text}");
        }
    }

    #[test]
    fn mbps_is_refused_with_both_readings_spelled_out() {
        let err = parse(&["--down", "10Mbps", "true"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'10Mbps'") && err.contains("'10mbit'") && err.contains("'10M'"),
            "{err}"
        );
        let err = parse(&["set", "--up", "1.5kbps"]).unwrap_err().to_string();
        assert!(err.contains("'1.5kbit'") && err.contains("'1.5K'"), "{err}");
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("A bare number is bytes/s"), "{help}");
    }

    #[test]
    fn durations_are_bare_seconds_or_humantime() {
        let cli = parse(&["--kill-after", "1m 30s", "--wait-all", "true"]).unwrap();
        assert_eq!(cli.run.kill_after, Duration::from_secs(90));
        assert!(cli.run.wait_all);
        let kill_after =
            |text: &str| parse(&["--kill-after", text, "true"]).map(|c| c.run.kill_after);
        assert_eq!(kill_after("5").unwrap(), Duration::from_secs(5));
        assert_eq!(kill_after("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(kill_after("0").unwrap(), Duration::ZERO);
        assert_eq!(kill_after("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["soon", "1.2.3", ".", "1e3", "inf"] {
            let err = kill_after(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("'{bad}'")) && err.contains("500ms"),
                "{err}"
            );
        }
        let watch = |args: &[&str]| match parse(args).map(|c| c.action) {
            Ok(Some(Action::Stats { watch, .. })) => Ok(watch),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            watch(&["stats", "--watch", "1"]).unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watch(&["stats", "ci", "--watch"]).unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watch(&["stats", "--watch", "0.5", "ci"]).unwrap(),
            Some(Duration::from_millis(500))
        );
        assert!(watch(&["stats", "--watch", "0"]).is_err());
    }

    #[test]
    fn burst_takes_a_size() {
        assert_eq!(
            parse(&["--burst", "256K", "true"])
                .unwrap()
                .run
                .limits
                .burst,
            Some(256 << 10)
        );
        assert!(parse(&["--burst", "1mbit", "true"]).is_err());
    }

    #[test]
    fn run_names() {
        for good in ["ci", "wget-1234", "a.b_c", "9lives"] {
            assert_eq!(run_name(good).as_deref(), Ok(good));
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "1234",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            long.as_str(),
        ] {
            assert!(run_name(bad).is_err(), "{bad}");
        }
    }

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
            let name = default_name(OsStr::new(command), 42);
            assert_eq!(run_name(&name), Ok(name.clone()), "{command}");
        }
        let long = "x".repeat(200);
        assert!(run_name(&default_name(OsStr::new(&long), u32::MAX)).is_ok());
    }

    #[test]
    fn set_takes_unlimited_and_a_run_does_not() {
        let cli = parse(&["set", "ci", "--down", "UNLIMITED", "--up", "2M"]).unwrap();
        let Some(Action::Set { down, up, .. }) = cli.action else {
            panic!("{cli:?}");
        };
        assert_eq!(
            (down, up),
            (Some(Rate::Unlimited), Rate::per_sec(2 << 20).ok())
        );
        assert!(parse(&["--down", "unlimited", "true"]).is_err());
    }

    #[test]
    fn networks_are_repeatable_and_bad_ones_named() {
        let cli = parse(&[
            "--exclude",
            "local",
            "--exclude",
            "10.0.0.0/8",
            "--only",
            "fd00::/8",
            "true",
        ])
        .unwrap();
        assert_eq!(cli.run.limits.exclude.len(), 2);
        assert_eq!(cli.run.limits.only.len(), 1);
        for bad in ["10.0.0.0/33", "example.org", "", "none"] {
            let err = parse(&["--exclude", bad, "true"]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("'{bad}'")) && err.contains("10.0.0.0/8"),
                "{err}"
            );
        }
        let cli = parse(&["set", "ci", "--exclude", "none", "--only", "10.1.0.0/16"]).unwrap();
        let Some(Action::Set { exclude, only, .. }) = cli.action else {
            panic!("{cli:?}");
        };
        assert_eq!(new_list(&exclude), Some(Vec::new()));
        assert_eq!(new_list(&only).map(|l| l.len()), Some(1));
        assert_eq!(new_list(&[]), None);
    }

    #[test]
    fn subcommands() {
        assert!(matches!(
            parse(&["doctor"]).unwrap().action,
            Some(Action::Doctor)
        ));
        assert!(matches!(
            parse(&["cleanup"]).unwrap().action,
            Some(Action::Cleanup)
        ));
        assert!(matches!(
            parse(&["completions", "zsh"]).unwrap().action,
            Some(Action::Completions { shell: Shell::Zsh })
        ));
        // A program that shares a subcommand's name runs after `--`.
        let cli = parse(&["--", "doctor"]).unwrap();
        assert!(cli.action.is_none());
        assert_eq!(cli.run.command, ["doctor"]);
    }

    #[test]
    fn keep_env_takes_variable_names_only() {
        assert_eq!(variable_name("HTTPS_PROXY").unwrap(), "HTTPS_PROXY");
        assert!(variable_name("_x1").is_ok());
        for bad in ["", "1X", "A=B", "A-B", "Ä"] {
            let err = variable_name(bad).unwrap_err();
            assert!(err.starts_with("expected a variable name"), "{bad}: {err}");
        }
    }

    #[test]
    fn attach_takes_exactly_one_target() {
        let cli = parse(&["attach", "--down", "1M", "--unit", "nginx.service"]).unwrap();
        let Some(Action::Attach(args)) = cli.action else {
            panic!("not an attach");
        };
        assert_eq!(args.target(), Target::Unit("nginx.service"));
        assert_eq!(args.limits.down, Rate::per_sec(1 << 20).ok());
        for bad in [
            &["attach", "--down", "1M"][..],
            &["attach", "--cgroup", "a", "--container", "b"],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
                ),
                "{bad:?}: {err}"
            );
        }
        assert!(matches!(
            parse(&["detach", "backup"]).unwrap().action,
            Some(Action::Detach { target }) if target == "backup"
        ));
    }
}
