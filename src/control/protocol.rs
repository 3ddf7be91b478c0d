//! The control socket's wire format, shared by the server (`control`) and
//! the clients (`client`): one JSON object per line each way, as the
//! "Protocol" section of docs/protocol.md shows. Keys, kinds of refusal and the word
//! "unlimited" are spelled here and nowhere else.

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use throttle_common::{
    Counters, Direction, PerDirection,
    networks::{CIDR_FORMS, Place},
    units::{MAX_SIZE, Rate, RateRefusal, SIZE_FORMS, UNLIMITED, UnitError, parse_size},
};

use crate::{exit, limits::Limits};

pub const VERSION: u64 = 1;
/// Longest request line accepted; longer ones are refused and the connection closes.
pub const MAX_LINE: usize = 4096;

/// What a client asks of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Info,
    Stats,
    Set(Changes),
    /// Lift an attached run's limits and end it.
    Detach,
}

/// The limits a `set` changes; what it leaves out stays. A list given
/// replaces the run's list (an empty one clears it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub rates: PerDirection<Option<Rate>>,
    pub burst: Option<u64>,
    pub exclude: Option<Vec<Place>>,
    pub only: Option<Vec<Place>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.rates.down.is_none()
            && self.rates.up.is_none()
            && self.burst.is_none()
            && !self.changes_scope()
    }

    /// Whether a list is given.
    pub fn changes_scope(&self) -> bool {
        self.exclude.is_some() || self.only.is_some()
    }

    /// `limits` with these changes made, or why they cannot be.
    pub fn apply(&self, limits: &Limits) -> Result<Limits, Refusal> {
        let mut limits = limits.clone();
        for (direction, rate) in self.rates.each() {
            if let Some(rate) = rate {
                limits.rates[direction] = *rate;
            }
        }
        limits.burst = self.burst.or(limits.burst);
        if let Some(exclude) = &self.exclude {
            limits.scope.exclude.clone_from(exclude);
        }
        if let Some(only) = &self.only {
            limits.scope.only.clone_from(only);
        }
        limits.scope.entries().map_err(Refusal::refused)?;
        limits.check_burst().map_err(Refusal::refused)?;
        Ok(limits)
    }
}

/// A request line as JSON spells it. Amounts stay JSON values here so that
/// a bad one is refused with the field's name and the forms it takes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    version: u64,
    command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    down: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    up: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    only: Option<Value>,
}

impl Request {
    /// The request on one line, without its line end.
    pub fn parse(line: &[u8]) -> Result<Request, Refusal> {
        let wire: WireRequest = serde_json::from_slice(line)
            .map_err(|e| Refusal::refused(format!("malformed request: {e}")))?;
        if wire.version != VERSION {
            return Err(Refusal::refused(format!(
                "unsupported protocol version {}; this run speaks {VERSION}",
                wire.version
            )));
        }
        let has_changes = wire.down.is_some()
            || wire.up.is_some()
            || wire.burst.is_some()
            || wire.exclude.is_some()
            || wire.only.is_some();
        let request = match wire.command.as_str() {
            "info" => Request::Info,
            "stats" => Request::Stats,
            "detach" => Request::Detach,
            "set" => {
                let rate = |value: &Option<Value>, direction: Direction| {
                    value.as_ref().map(|v| rate(v, direction)).transpose()
                };
                let changes = Changes {
                    rates: PerDirection {
                        down: rate(&wire.down, Direction::Down)?,
                        up: rate(&wire.up, Direction::Up)?,
                    },
                    burst: wire.burst.as_ref().map(burst).transpose()?,
                    exclude: places(wire.exclude.as_ref(), "exclude")?,
                    only: places(wire.only.as_ref(), "only")?,
                };
                if changes.is_empty() {
                    return Err(Refusal::refused(
                        "'set' needs at least one of down, up, burst, exclude, only".into(),
                    ));
                }
                return Ok(Request::Set(changes));
            }
            other => {
                return Err(Refusal::refused(format!(
                    "unknown command '{other}'; expected info, stats, set or detach"
                )));
            }
        };
        if has_changes {
            return Err(Refusal::refused(format!(
                "'{}' takes no down, up, burst, exclude or only",
                wire.command
            )));
        }
        Ok(request)
    }

    /// The request as one line, with its line end.
    pub fn to_line(&self) -> String {
        let amount = |rate: Option<Rate>| {
            rate.map(|rate| match rate {
                Rate::Unlimited => Value::from(UNLIMITED),
                Rate::PerSec(rate) => Value::from(rate.get()),
            })
        };
        let list =
            |places: &Option<Vec<Place>>| places.as_ref().map(|places| Value::from(names(places)));
        let none = Changes::default();
        let (command, changes) = match self {
            Request::Info => ("info", &none),
            Request::Stats => ("stats", &none),
            Request::Detach => ("detach", &none),
            Request::Set(changes) => ("set", changes),
        };
        let wire = WireRequest {
            version: VERSION,
            command: command.into(),
            down: amount(changes.rates.down),
            up: amount(changes.rates.up),
            burst: changes.burst.map(Value::from),
            exclude: list(&changes.exclude),
            only: list(&changes.only),
        };
        line(&wire)
    }
}

const RATE_EXPECTED: &str = "a rate string, a number of bytes/s or \"unlimited\"";
const SIZE_EXPECTED: &str = "a size string or a number of bytes";

/// A rate in a `set`: a RATE string, "unlimited", or a number of bytes/s.
fn rate(value: &Value, direction: Direction) -> Result<Rate, Refusal> {
    let what = direction.name();
    let invalid = |e: UnitError| Refusal::refused(format!("{what}: {e}"));
    match value {
        Value::Number(n) => Rate::per_sec(positive(n, what)?).map_err(invalid),
        Value::String(text) => Rate::parse(text).map_err(|error| {
            let refusal = RateRefusal {
                text,
                error,
                unlimited: true,
            };
            Refusal::refused(format!("{what}: {refusal}"))
        }),
        other => Err(Refusal::refused(format!(
            "{what}: expected {RATE_EXPECTED}, got {other}"
        ))),
    }
}

/// A burst in a `set`: a SIZE string or a number of bytes.
fn burst(value: &Value) -> Result<u64, Refusal> {
    let invalid = |e: UnitError| Refusal::refused(format!("burst: {e}"));
    match value {
        Value::Number(n) => match positive(n, "burst")? {
            n if n > MAX_SIZE => Err(invalid(UnitError::TooLarge { max: MAX_SIZE })),
            n => Ok(n),
        },
        Value::String(s) => parse_size(s)
            .map_err(|e| Refusal::refused(format!("burst: {e}; expected {SIZE_FORMS}"))),
        other => Err(Refusal::refused(format!(
            "burst: expected {SIZE_EXPECTED}, got {other}"
        ))),
    }
}

/// A list in a `set`: an array of CIDR strings or "local".
fn places(value: Option<&Value>, what: &str) -> Result<Option<Vec<Place>>, Refusal> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(Refusal::refused(format!(
            "{what}: expected an array of networks, got {value}"
        )));
    };
    let mut places = Vec::with_capacity(items.len());
    for item in items {
        let place = item
            .as_str()
            .ok_or_else(|| format!("{item} is not a string"))
            .and_then(|text| Place::parse(text).map_err(|e| format!("'{text}': {e}")));
        match place {
            Ok(place) => places.push(place),
            Err(e) => {
                return Err(Refusal::refused(format!(
                    "{what}: {e}; expected {CIDR_FORMS}"
                )));
            }
        }
    }
    Ok(Some(places))
}

/// The lists as replies and requests spell them.
pub fn names(places: &[Place]) -> Vec<String> {
    places.iter().map(ToString::to_string).collect()
}

fn positive(n: &serde_json::Number, what: &str) -> Result<u64, Refusal> {
    n.as_u64()
        .filter(|n| *n > 0)
        .ok_or_else(|| Refusal::refused(format!("{what}: {n} is not a positive integer")))
}

/// Every reply: the protocol version, whether the request was done, and
/// what the request asked for (or the refusal).
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply<T> {
    pub version: u64,
    pub ok: bool,
    #[serde(flatten)]
    pub body: T,
}

/// The reply to `info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub pid: u32,
    pub command: Vec<String>,
    /// Unix time, in seconds.
    pub started: f64,
    pub limits: PerDirection<LimitView>,
    /// `--exclude`, when the run has such a list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// `--only`, when the run has such a list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// What an attached run holds (`cgroup PATH`, `unit NAME`, ...); absent
    /// for a run that started its command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<String>,
}

/// The reply to `detach`: nothing but that it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {}

/// The reply to `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Seconds since the run started.
    pub elapsed: f64,
    #[serde(flatten)]
    pub counters: PerDirection<Counters>,
    /// The traffic `--exclude` and `--only` leave unlimited, when the run
    /// has such a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<PerDirection<Counters>>,
}

/// The reply to `set`: the limits now in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetReply {
    pub limits: PerDirection<LimitView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
}

/// A direction's limit as replies show it: both null when unlimited, else
/// the rate and the burst in force (the default one, unless one was set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitView {
    pub rate: Option<u64>,
    pub burst: Option<u64>,
}

impl LimitView {
    pub fn of(limits: &Limits) -> PerDirection<LimitView> {
        PerDirection::from_fn(|direction| {
            let limit = limits.map_value(direction);
            match limits.rates[direction] {
                Rate::Unlimited => LimitView {
                    rate: None,
                    burst: None,
                },
                Rate::PerSec(_) => LimitView {
                    rate: Some(limit.rate),
                    burst: Some(limit.burst),
                },
            }
        })
    }

    pub fn rate(&self) -> Rate {
        self.rate
            .and_then(|rate| Rate::per_sec(rate).ok())
            .unwrap_or(Rate::Unlimited)
    }
}

/// Why a request was not done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The client is neither the run's owner nor root.
    PermissionDenied,
    /// The run is tearing down and no longer holds its programs.
    Ending,
    /// The run already serves as many clients as it will.
    Busy,
    /// Anything else: the request was malformed, or could not be done. A
    /// refusal from a run that names no kind, or one this client does not
    /// know, is this kind.
    #[default]
    #[serde(other)]
    Refused,
}

/// A refusal as the wire carries it: `{"version":1,"ok":false,"error":"…","kind":"…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
    #[serde(default)]
    pub kind: RefusalKind,
}

impl Refusal {
    pub fn new(kind: RefusalKind, error: String) -> Refusal {
        Refusal { error, kind }
    }

    pub fn refused(error: String) -> Refusal {
        Refusal::new(RefusalKind::Refused, error)
    }

    /// The exit status a client gives for this refusal.
    pub fn exit_status(&self) -> u8 {
        match self.kind {
            RefusalKind::PermissionDenied => exit::PERMISSION,
            RefusalKind::Ending => exit::RUN_GONE,
            RefusalKind::Busy | RefusalKind::Refused => exit::REFUSED,
        }
    }

    /// The refusal as one reply line, with its line end.
    pub fn to_line(&self) -> String {
        line(&Reply {
            version: VERSION,
            ok: false,
            body: self,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

/// A reply that did what was asked, as one line with its line end.
pub fn done<T: Serialize>(body: &T) -> String {
    line(&Reply {
        version: VERSION,
        ok: true,
        body,
    })
}

/// Reads a reply line: the body a done request answers with, or the refusal.
/// A reply that is neither is an error message.
pub fn read_reply<T: DeserializeOwned>(line: &[u8]) -> Result<Result<T, Refusal>, String> {
    #[derive(Deserialize)]
    struct Head {
        ok: bool,
    }
    let head: Head = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if head.ok {
        let reply: Reply<T> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        Ok(Ok(reply.body))
    } else {
        let reply: Reply<Refusal> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        Ok(Err(reply.body))
    }
}

fn line<T: Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).expect("protocol types always serialise");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use throttle_common::policer::MAX_RATE;

    use super::*;

    fn set(line: &str) -> Result<Changes, Refusal> {
        match Request::parse(line.as_bytes())? {
            Request::Set(changes) => Ok(changes),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_in_requests_hold_the_grammars_bounds() {
        let down = |v: Value| set(&format!(r#"{{"version":1,"command":"set","down":{v}}}"#));
        assert_eq!(
            down(Value::from(MAX_RATE)).unwrap().rates.down,
            Some(Rate::per_sec(MAX_RATE).unwrap())
        );
        assert_eq!(
            down(Value::from("16G")).unwrap().rates.down,
            Some(Rate::per_sec(MAX_RATE).unwrap())
        );
        for too_big in [Value::from(MAX_RATE + 1), Value::from(u64::MAX)] {
            let error = down(too_big).unwrap_err().error;
            assert!(error.contains("larger than the maximum"), "{error}");
        }
        for refused in ["0", "-1", "1.5", "true", "\"0\""] {
            let refusal = down(serde_json::from_str(refused).unwrap()).unwrap_err();
            assert!(refusal.error.starts_with("down: "), "{refusal:?}");
            assert_eq!(refusal.kind, RefusalKind::Refused);
        }
        let burst = |v: Value| set(&format!(r#"{{"version":1,"command":"set","burst":{v}}}"#));
        assert_eq!(burst(Value::from(MAX_SIZE)).unwrap().burst, Some(MAX_SIZE));
        assert!(burst(Value::from(u64::MAX)).is_err());
    }

    #[test]
    fn unlimited_is_one_word_from_the_client_to_the_maps() {
        let request = Request::Set(Changes {
            rates: PerDirection {
                down: Some(Rate::Unlimited),
                up: Some(Rate::per_sec(2 << 20).unwrap()),
            },
            ..Changes::default()
        });
        let line = request.to_line();
        assert_eq!(
            line,
            "{\"version\":1,\"command\":\"set\",\"down\":\"unlimited\",\"up\":2097152}\n"
        );
        assert_eq!(Request::parse(line.trim_end().as_bytes()), Ok(request));
    }

    #[test]
    fn requests_that_are_not_the_protocol_are_refused_with_the_reason() {
        for (line, reason) in [
            (
                r#"{"version":1,"command":"stats","extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"version":9,"command":"info"}"#,
                "unsupported protocol version 9",
            ),
            (
                r#"{"version":1,"command":"kill"}"#,
                "unknown command 'kill'",
            ),
            (
                r#"{"version":1,"command":"info","down":"1M"}"#,
                "takes no down",
            ),
            (r#"{"version":1,"command":"set"}"#, "needs at least one"),
            (r#"{"version":1,"command":"info""#, "malformed request"),
        ] {
            let refusal = Request::parse(line.as_bytes()).unwrap_err();
            assert!(refusal.error.contains(reason), "{line}: {refusal:?}");
            assert_eq!(refusal.exit_status(), exit::REFUSED);
        }
    }

    #[test]
    fn lists_are_arrays_of_networks_and_an_empty_one_clears() {
        let changes =
            set(r#"{"version":1,"command":"set","exclude":["local","10.0.0.1/8"],"only":[]}"#)
                .unwrap();
        assert_eq!(
            changes.exclude.as_deref().map(names),
            Some(vec!["local".to_string(), "10.0.0.0/8".to_string()])
        );
        assert_eq!(changes.only, Some(Vec::new()));
        let line = Request::Set(changes.clone()).to_line();
        assert_eq!(
            line,
            "{\"version\":1,\"command\":\"set\",\"exclude\":[\"local\",\"10.0.0.0/8\"],\"only\":[]}\n"
        );
        for (bad, reason) in [
            (r#""exclude":"local""#, "exclude: expected an array"),
            (
                r#""only":["10.0.0.0/33"]"#,
                "only: '10.0.0.0/33': the prefix length",
            ),
            (r#""exclude":[7]"#, "exclude: 7 is not a string"),
        ] {
            let refusal = set(&format!(r#"{{"version":1,"command":"set",{bad}}}"#)).unwrap_err();
            assert!(refusal.error.starts_with(reason), "{refusal:?}");
        }
    }

    #[test]
    fn a_refusal_carries_its_kind_and_an_old_one_still_reads() {
        let line =
            Refusal::new(RefusalKind::PermissionDenied, "permission denied".into()).to_line();
        assert_eq!(
            line,
            "{\"version\":1,\"ok\":false,\"error\":\"permission denied\",\"kind\":\"permission_denied\"}\n"
        );
        let refusal = read_reply::<Stats>(line.as_bytes()).unwrap().unwrap_err();
        assert_eq!(refusal.exit_status(), exit::PERMISSION);
        for old in [
            r#"{"version":1,"ok":false,"error":"no"}"#,
            r#"{"version":1,"ok":false,"error":"no","kind":"from_the_future"}"#,
        ] {
            let refusal = read_reply::<Stats>(old.as_bytes()).unwrap().unwrap_err();
            assert_eq!(refusal.kind, RefusalKind::Refused, "{old}");
        }
    }

    #[test]
    fn a_renamed_key_is_an_error_not_a_zero() {
        let line = r#"{"version":1,"ok":true,"elapsed":1.0,"down":{"passed_bytez":5,"passed_packets":1,"dropped_bytes":0,"dropped_packets":0},"up":{"passed_bytes":0,"passed_packets":0,"dropped_bytes":0,"dropped_packets":0}}"#;
        assert!(read_reply::<Stats>(line.as_bytes()).is_err());
    }

    /// The examples of docs/protocol.md, with the values it leaves out (`…`) filled in:
    /// each must read into the protocol's types and write back byte for byte.
    #[test]
    fn the_documented_examples_are_the_wire_format() {
        let readme = include_str!("../../docs/protocol.md");
        let counters =
            r#"{"passed_bytes":1,"passed_packets":2,"dropped_bytes":3,"dropped_packets":4}"#;
        let info = r#"{"version":1,"ok":true,"name":"wget-42","pid":42,"command":["wget","…"],"started":1795420000.5,
       "limits":{"down":{"rate":1048576,"burst":262144},"up":{"rate":null,"burst":null}}}"#;
        let stats = r#"{"version":1,"ok":true,"elapsed":12.5,"down":{"passed_bytes":…,"passed_packets":…,
       "dropped_bytes":…,"dropped_packets":…},"up":{…}}"#;
        let set_reply = r#"{"version":1,"ok":true,"limits":{…}}"#;
        let limits = r#"{"down":{"rate":2097152,"burst":524288},"up":{"rate":null,"burst":null}}"#;
        let refusal = r#"{"version":1,"ok":false,"error":"…","kind":"…"}"#;
        for shown in [info, stats, set_reply, refusal] {
            assert!(
                readme.contains(shown),
                "docs/protocol.md no longer shows {shown}"
            );
        }
        let unwrap = |text: &str| text.replace("\n       ", "");
        let filled = [
            (unwrap(info), "info"),
            (
                unwrap(stats)
                    .replace(
                        r#""passed_bytes":…,"passed_packets":…,"dropped_bytes":…,"dropped_packets":…"#,
                        r#""passed_bytes":1,"passed_packets":2,"dropped_bytes":3,"dropped_packets":4"#,
                    )
                    .replace("{…}", counters),
                "stats",
            ),
            (set_reply.replace("{…}", limits), "set"),
            (
                refusal
                    .replace(r#""error":"…""#, r#""error":"busy: too many clients""#)
                    .replace(r#""kind":"…""#, r#""kind":"busy""#),
                "refusal",
            ),
        ];
        for (line, kind) in filled {
            let written = match kind {
                "info" => done(&read_reply::<Info>(line.as_bytes()).unwrap().unwrap()),
                "stats" => done(&read_reply::<Stats>(line.as_bytes()).unwrap().unwrap()),
                "set" => done(&read_reply::<SetReply>(line.as_bytes()).unwrap().unwrap()),
                _ => read_reply::<Info>(line.as_bytes())
                    .unwrap()
                    .unwrap_err()
                    .to_line(),
            };
            assert_eq!(written.trim_end(), line);
        }
        for request in [
            r#"{"version":1,"command":"info"}"#,
            r#"{"version":1,"command":"stats"}"#,
            r#"{"version":1,"command":"detach"}"#,
        ] {
            assert!(readme.contains(&format!("→ {request}")));
            let parsed = Request::parse(request.as_bytes()).unwrap();
            assert_eq!(parsed.to_line().trim_end(), request);
        }
        let detached = r#"{"version":1,"ok":true}"#;
        assert!(readme.contains(&format!("← {detached}")));
        let Detached {} = read_reply::<Detached>(detached.as_bytes())
            .unwrap()
            .unwrap();
        let set = r#"{"version":1,"command":"set","down":"2M","up":"unlimited"}"#;
        assert!(readme.contains(&format!("→ {set}")));
        assert_eq!(
            Request::parse(set.as_bytes()).unwrap().to_line().trim_end(),
            r#"{"version":1,"command":"set","down":2097152,"up":"unlimited"}"#
        );
    }
}
