//! Limits hold on real TCP transfers between the host and a namespace.

use std::{io::Write as _, time::Duration};

use crate::harness::{
    self, MIB, Netns, Samples, assert_clean, assert_ratio, measure_file_growth, measure_stdout,
    throttle,
};
use crate::netlab::{Server, jain};

/// At 1 MiB/s, 10 MiB take about 10 s: a 1 s start (the bucket's initial
/// burst) is left out and at least 5 s are measured.
const TRANSFER: u64 = 10 * MIB;
const SKIP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(40);

fn download(name: &str, limits: &[&str], url: &str, bytes: u64) -> Samples {
    let mut cmd = throttle();
    cmd.args(limits)
        .args(["--name", name, "--", "curl", "-sS", "--fail"])
        .arg(format!("{url}/{bytes}"));
    let (samples, output) = measure_stdout(&mut cmd, TIMEOUT);
    assert!(
        output.status.success(),
        "download failed: {}",
        harness::stderr(&output)
    );
    assert_eq!(samples.total(), bytes);
    samples
}

/// Uploads `bytes` through throttle and returns what the server recorded.
fn upload(name: &str, limits: &[&str], server: &Server, bytes: u64) -> Samples {
    let file = upload_file(bytes);
    let child = upload_command(name, limits, &server.url, &file)
        .spawn()
        .unwrap();
    let output = harness::wait_with_timeout(child, TIMEOUT);
    assert!(
        output.status.success(),
        "upload failed: {}",
        harness::stderr(&output)
    );
    let samples = server.last_upload();
    assert_eq!(samples.total(), bytes);
    samples
}

pub(crate) fn upload_file(bytes: u64) -> tempfile_path::TempFile {
    let file = tempfile_path::TempFile::new("upload");
    let mut f = std::fs::File::create(&file.0).unwrap();
    let chunk = vec![0u8; MIB as usize];
    for _ in 0..bytes / MIB {
        f.write_all(&chunk).unwrap();
    }
    file
}

fn upload_command(
    name: &str,
    limits: &[&str],
    url: &str,
    file: &tempfile_path::TempFile,
) -> std::process::Command {
    let mut cmd = throttle();
    cmd.args(limits).args([
        "--name",
        name,
        "--",
        "curl",
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "-H",
        "Expect:",
        "-T",
    ]);
    cmd.arg(&file.0).arg(format!("{url}/upload"));
    cmd
}

#[test]
fn download_is_held_to_its_limit() {
    let Some(_serial) = harness::start("download_is_held_to_its_limit") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let samples = download("t-down", &["--down", "1M"], &server.url, TRANSFER);
    assert_ratio(
        "download at --down 1M",
        samples.steady_rate(SKIP, WINDOW),
        MIB,
        0.90,
        1.05,
    );
    assert_clean("t-down");
}

/// Issue 12: a download split into eight ranged connections, as download
/// managers make it, is held to the limit from its first byte to its last,
/// although the connections finish their ranges at different moments
/// (before the fair policer, 0.36–0.80 of the limit on this veth).
#[test]
fn a_download_over_eight_ranged_connections_is_held_to_its_limit() {
    let Some(_serial) =
        harness::start("a_download_over_eight_ranged_connections_is_held_to_its_limit")
    else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let dir = tempfile_path::TempDir::new("aria2");
    let file = dir.0.join("download");
    let mut cmd = throttle();
    // Eight pieces of 1 MiB, one per connection: eight seconds at 1 MiB/s.
    cmd.args(["--down", "1M", "--name", "t-aria2", "--"])
        .args([
            "aria2c",
            "-q",
            "-x8",
            "-s8",
            "-k1M",
            "--file-allocation=none",
        ])
        .args(["--disk-cache=0", "-d"])
        .arg(&dir.0)
        .args(["-o", "download"])
        .arg(format!("{}/{}", server.url, 8 * MIB));
    let (samples, output) = measure_file_growth(&mut cmd, &file, TIMEOUT, Duration::ZERO);
    assert!(
        output.status.success(),
        "aria2c failed: {}",
        harness::stderr(&output)
    );
    assert_eq!(samples.total(), 8 * MIB);
    assert_ratio(
        "eight ranged connections at --down 1M",
        samples.overall_rate(),
        MIB,
        0.90,
        1.05,
    );
    assert_clean("t-aria2");
}

#[test]
fn upload_is_held_to_its_limit() {
    let Some(_serial) = harness::start("upload_is_held_to_its_limit") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let samples = upload("t-up", &["--up", "1M"], &server, TRANSFER);
    assert_ratio(
        "upload at --up 1M",
        samples.steady_rate(SKIP, WINDOW),
        MIB,
        0.90,
        1.05,
    );
    assert_clean("t-up");
}

#[test]
fn the_unlimited_direction_is_not_slowed() {
    let Some(_serial) = harness::start("the_unlimited_direction_is_not_slowed") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    // Compared with the same transfer under a run with no limit, side by
    // side, so the bar holds on a slow machine or an emulated guest too; a
    // policed transfer would not reach 16 times the other direction's limit.
    // A 64 MiB transfer here takes tens of milliseconds, which one stall
    // of the machine can halve, so each side is the best of three,
    // alternating.
    let floor = 16.0 * (64 << 10) as f64;
    let best = |runs: [&dyn Fn() -> f64; 2]| {
        let mut best = [0.0f64; 2];
        for _ in 0..3 {
            for (b, run) in best.iter_mut().zip(runs) {
                *b = b.max(run());
            }
        }
        best
    };
    // A 64K/s upload limit polices upstream data, not the download's ACKs.
    let [base, rate] = best([
        &|| download("t-base-down", &[], &server.url, 64 * MIB).overall_rate(),
        &|| download("t-free-down", &["--up", "64K"], &server.url, 64 * MIB).overall_rate(),
    ]);
    eprintln!(
        "download with only --up 64K: {:.1} MiB/s, with no limit {:.1} MiB/s",
        rate / MIB as f64,
        base / MIB as f64
    );
    assert!(
        rate > 0.5 * base && rate > floor,
        "download slowed to {rate:.0} B/s (no limit: {base:.0} B/s) by an upload limit"
    );
    assert_clean("t-free-down");

    let [base, rate] = best([
        &|| upload("t-base-up", &[], &server, 64 * MIB).overall_rate(),
        &|| upload("t-free-up", &["--down", "64K"], &server, 64 * MIB).overall_rate(),
    ]);
    eprintln!(
        "upload with only --down 64K: {:.1} MiB/s, with no limit {:.1} MiB/s",
        rate / MIB as f64,
        base / MIB as f64
    );
    assert!(
        rate > 0.5 * base && rate > floor,
        "upload slowed to {rate:.0} B/s (no limit: {base:.0} B/s) by a download limit"
    );
    assert_clean("t-free-up");
}

#[test]
fn both_directions_limited_at_once() {
    let Some(_serial) = harness::start("both_directions_limited_at_once") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let file = upload_file(TRANSFER * 3 / 4);
    // One run: the upload (at 512K, about 10 s) in the background while the
    // download (at 1M, about 7 s) streams to stdout.
    let script = format!(
        "curl -sS --fail -o /dev/null -H Expect: -T {file} {url}/upload & up=$!; \
         curl -sS --fail {url}/{TRANSFER} || exit 1; wait $up",
        file = file.0.display(),
        url = server.url,
    );
    let mut cmd = throttle();
    cmd.args([
        "--down", "1M", "--up", "512K", "--name", "t-both", "--", "sh", "-c", &script,
    ]);
    let (down, output) = measure_stdout(&mut cmd, TIMEOUT);
    assert!(
        output.status.success(),
        "transfers failed: {}",
        harness::stderr(&output)
    );
    assert_ratio(
        "download at --down 1M (with upload)",
        down.steady_rate(SKIP, WINDOW),
        MIB,
        0.90,
        1.05,
    );
    let up = server.last_upload();
    assert_ratio(
        "upload at --up 512K (with download)",
        up.steady_rate(SKIP, WINDOW),
        MIB / 2,
        0.90,
        1.05,
    );
    assert_clean("t-both");
}

#[test]
fn nested_runs_compose_and_the_tighter_limit_wins() {
    let Some(_serial) = harness::start("nested_runs_compose_and_the_tighter_limit_wins") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    for (outer, inner, case) in [("1M", "4M", "outer tighter"), ("4M", "1M", "inner tighter")] {
        let mut cmd = throttle();
        cmd.args([
            "--down",
            outer,
            "--name",
            "t-outer",
            "--",
            harness::THROTTLE,
            "--down",
            inner,
        ])
        .args(["--name", "t-inner", "--", "curl", "-sS", "--fail"])
        .arg(format!("{}/{TRANSFER}", server.url));
        let (samples, output) = measure_stdout(&mut cmd, TIMEOUT);
        assert!(
            output.status.success(),
            "{case}: {}",
            harness::stderr(&output)
        );
        assert_ratio(
            &format!("nested, {case}"),
            samples.steady_rate(SKIP, WINDOW),
            MIB,
            0.90,
            1.05,
        );
        assert_clean("t-outer");
    }
}

/// The download's rate and the bytes the run named `holder` dropped, for
/// `throttle OUTER... -- [throttle INNER... --] curl` fetching `bytes`.
fn download_dropping(
    server: &Server,
    bytes: u64,
    outer: &[&str],
    inner: Option<&[&str]>,
    holder: &str,
) -> (f64, u64) {
    let mut cmd = throttle();
    cmd.args(outer).args(["--summary=json", "--"]);
    if let Some(inner) = inner {
        cmd.arg(harness::THROTTLE)
            .args(inner)
            .args(["--summary=json", "--"]);
    }
    cmd.args(["curl", "-sS", "--fail"])
        .arg(format!("{}/{bytes}", server.url));
    let (samples, output) = measure_stdout(&mut cmd, TIMEOUT);
    let stderr = harness::stderr(&output);
    assert!(output.status.success(), "{stderr}");
    let dropped = harness::summaries(&stderr)
        .into_iter()
        .find(|s| s["name"] == holder)
        .and_then(|s| s["down"]["dropped_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no summary of {holder} in: {stderr}"));
    (samples.steady_rate(SKIP, WINDOW), dropped)
}

/// Issue 26: the kernel runs the inner run's `sock_ops` program first,
/// then the outer's, so an outer run's looser window clamp used to undo
/// the inner run's, and the drops the clamp saves came back. Nested, the
/// run that holds the limit drops no more than it does alone.
///
/// At 128 MiB/s, as the windows can hold a limit over veth only where
/// one round trip (~50 µs) of it is more than the two segments a window
/// never goes below; at 1 MiB/s drops hold the limit there, nested or not.
#[test]
fn nested_runs_drop_no_more_than_the_tighter_run_alone() {
    let Some(_serial) = harness::start("nested_runs_drop_no_more_than_the_tighter_run_alone")
    else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    const LIMIT: u64 = 128 * MIB;
    let bytes = LIMIT * 7;
    let tight = ["--down", "128M", "--name", "t-tight"];
    let loose = ["--down", "1G", "--name", "t-loose"];
    let (_, alone) = download_dropping(&server, bytes, &tight, None, "t-tight");
    assert_clean("t-tight");
    // The slack keeps a few more segments' drops from failing the test.
    let bar = alone * 2 + bytes / 200;
    for (outer, inner, case) in [
        (loose, tight, "inner tighter"),
        (tight, loose, "outer tighter"),
    ] {
        let (rate, dropped) = download_dropping(&server, bytes, &outer, Some(&inner), "t-tight");
        eprintln!("{case}: {dropped} B dropped, alone {alone} B");
        assert_ratio(&format!("nested, {case}"), rate, LIMIT, 0.90, 1.05);
        assert!(
            dropped <= bar,
            "nested, {case}: the 128M run dropped {dropped} B, alone {alone} B"
        );
        assert_clean("t-loose");
    }
}

/// A file removed when dropped.
pub(crate) mod tempfile_path {
    use std::path::PathBuf;

    pub struct TempFile(pub PathBuf);

    impl TempFile {
        pub fn new(what: &str) -> TempFile {
            TempFile(
                std::env::temp_dir().join(format!("throttle-test-{what}-{}", std::process::id())),
            )
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A fresh directory, removed with what it holds.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(what: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("throttle-test-{what}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Issue 15: the smallest `--burst` throttle accepts at 1 MiB/s (128K,
/// 125 ms of the rate) holds the rate both ways, over veth and loopback
/// (whose 64 KiB packets are the hard case); one smaller is refused in one
/// line that names it, with exit status 2 and nothing left behind.
#[test]
fn the_smallest_accepted_burst_holds_the_rate() {
    let Some(_serial) = harness::start("the_smallest_accepted_burst_holds_the_rate") else {
        return;
    };
    let netns = Netns::create();
    for (link, server) in [
        ("veth", netns.serve()),
        ("loopback", crate::netlab::serve_loopback()),
    ] {
        let down = download(
            "t-burst",
            &["--down", "1M", "--burst", "128K"],
            &server.url,
            TRANSFER,
        );
        assert_ratio(
            &format!("download over {link} with --burst 128K"),
            down.steady_rate(SKIP, WINDOW),
            MIB,
            0.90,
            1.05,
        );
        assert_clean("t-burst");
        let up = upload(
            "t-burst",
            &["--up", "1M", "--burst", "128K"],
            &server,
            TRANSFER,
        );
        assert_ratio(
            &format!("upload over {link} with --burst 128K"),
            up.steady_rate(SKIP, WINDOW),
            MIB,
            0.90,
            1.05,
        );
        assert_clean("t-burst");
    }
    let refused = throttle()
        .args([
            "--down", "1M", "--burst", "127K", "--name", "t-burst", "--", "true",
        ])
        .output()
        .unwrap();
    let stderr = harness::stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--burst 127K") && stderr.contains("smallest accepted is 128K"),
        "{stderr}"
    );
    assert_clean("t-burst");
}

/// Issue 15: the lowest limit docs/enforcement.md states, 1 KiB/s, holds over the
/// first 30 s of a curl download, from its first byte: the default bucket
/// starts with one second of credit, not its full 16 KiB.
#[test]
fn a_download_at_one_kib_per_second_holds_over_thirty_seconds() {
    let Some(_serial) =
        harness::start("a_download_at_one_kib_per_second_holds_over_thirty_seconds")
    else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let mut cmd = throttle();
    cmd.args([
        "--down",
        "1K",
        "--name",
        "t-1k",
        "--",
        "curl",
        "-sS",
        "--fail",
        "--no-buffer",
    ])
    .arg(format!("{}/{}", server.url, 40 * 1024));
    let (samples, output) = measure_stdout(&mut cmd, Duration::from_secs(90));
    assert!(output.status.success(), "{}", harness::stderr(&output));
    assert_ratio(
        "download at --down 1K, its first 30 s",
        samples.rate_between(Duration::ZERO, Duration::from_secs(30)),
        1024,
        0.90,
        1.10,
    );
    assert_clean("t-1k");
}

/// Runs python3 `script` under throttle with `limits` as run `name`, its
/// arguments the lab server's host and port and then `args`; returns what
/// it printed, once it has ended well and the run has left nothing behind.
fn python_beside_the_lab(limits: &[&str], name: &str, script: &str, args: &[&str]) -> String {
    let netns = Netns::create();
    let server = netns.serve();
    let address = server.url.trim_start_matches("http://");
    let (host, port) = address.rsplit_once(':').unwrap();
    let mut cmd = throttle();
    cmd.args(limits)
        .args(["--name", name, "--", "python3", "-c", script, host, port])
        .args(args);
    let output = harness::output_within(&mut cmd, TIMEOUT);
    assert!(output.status.success(), "{}", harness::stderr(&output));
    assert_clean(name);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two downloads, each read as it arrives; prints `a|b SECONDS BYTES` per
/// read (seconds since both requests went out, bytes so far), and ends when
/// `a` does.
const TWO_DOWNLOADS: &str = r#"
import select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conns = {}
for name, path in (("a", sys.argv[3]), ("b", sys.argv[4])):
    s = socket.create_connection((host, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: lab\r\n\r\n" % path).encode())
    conns[s] = [name, 0]
start = time.monotonic()
out = []
while True:
    ready, _, _ = select.select(list(conns), [], [], 30)
    if not ready:
        sys.exit("nothing arrived for 30 s")
    for s in ready:
        data = s.recv(1 << 16)
        name = conns[s][0]
        if not data:
            if name == "a":
                sys.stdout.write("".join(out))
                sys.exit(0)
            del conns[s]
            continue
        conns[s][1] += len(data)
        out.append("%s %.4f %d\n" % (name, time.monotonic() - start, conns[s][1]))
"#;

/// Issue 12: a connection that goes idle hands its share of the download
/// limit to the busy one within half a second. Two downloads share 1 MiB/s;
/// one stops after 1.5 MiB but stays open, and from half a second after its
/// last byte the other must carry the whole limit. Measured over 3.5 s of
/// the reader's samples: over 2 s, a reader held off the CPU for a tenth of
/// a second by tests running beside it read 1.058 of the limit.
#[test]
fn an_idle_connection_hands_its_share_on_within_half_a_second() {
    let Some(_serial) =
        harness::start("an_idle_connection_hands_its_share_on_within_half_a_second")
    else {
        return;
    };
    let printed = python_beside_the_lab(
        &["--down", "1M"],
        "t-handover",
        TWO_DOWNLOADS,
        &[
            &format!("/{}", 6 * MIB),
            &format!("/{}?stall=20", 3 * MIB / 2),
        ],
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for line in printed.lines() {
        let mut words = line.split(' ');
        let (name, t, bytes) = (words.next(), words.next(), words.next());
        let point = (
            t.unwrap().parse::<f64>().unwrap(),
            bytes.unwrap().parse::<u64>().unwrap(),
        );
        if name == Some("a") {
            a.push(point)
        } else {
            b.push(point)
        }
    }
    // B's last byte before its stall: the last read before a gap of 1 s.
    let idle_from = b
        .windows(2)
        .find(|w| w[1].0 - w[0].0 > 1.0)
        .map_or(b.last().unwrap().0, |w| w[0].0);
    let at = |t: f64| {
        a.iter()
            .take_while(|p| p.0 <= t)
            .last()
            .copied()
            .unwrap_or((0.0, 0))
    };
    let (from, to) = (at(idle_from + 0.5), at(idle_from + 4.0));
    assert!(
        to.0 - from.0 > 3.0,
        "the busy download ended too soon: {a:?}"
    );
    assert_ratio(
        "the busy download, from 0.5 s after the other went idle",
        (to.1 - from.1) as f64 / (to.0 - from.0),
        MIB,
        0.90,
        1.05,
    );
}

/// Eight connections to the lab's server for SECS seconds, then prints what
/// each moved: `down` reads a large download on each, `up` sends a large
/// upload on each and reports the bytes the server acknowledged (TCP_INFO's
/// tcpi_bytes_acked). A send that fails (the kernel aborts a connection
/// whose every segment is dropped for 7.5 s) ends it with an error.
const EIGHT_CONNECTIONS: &str = r#"
import select, socket, struct, sys, time
host, port, mode, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
size = 1 << 30
request = ("GET /%d HTTP/1.1\r\nHost: lab\r\n\r\n" % size if mode == "down"
           else "PUT /upload HTTP/1.1\r\nHost: lab\r\nContent-Length: %d\r\n\r\n" % size)
socks = [socket.create_connection((host, port)) for _ in range(8)]
for s in socks:
    s.sendall(request.encode())
    s.setblocking(False)
moved = {s: 0 for s in socks}
chunk = bytes(16384)
end = time.monotonic() + secs
while time.monotonic() < end:
    if mode == "down":
        ready, _, _ = select.select(socks, [], [], 0.1)
        for s in ready:
            moved[s] += len(s.recv(1 << 16))
    else:
        _, ready, _ = select.select([], socks, [], 0.1)
        for s in ready:
            s.send(chunk)
if mode == "up":
    for s in socks:
        moved[s] = struct.unpack_from("Q", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232), 120)[0]
print(" ".join(str(moved[s]) for s in socks))
"#;

/// Runs EIGHT_CONNECTIONS at 8 KiB/s one way and returns what each moved
/// in its 12 s.
fn eight_connections_at_8k(name: &str, mode: &str) -> Vec<u64> {
    python_beside_the_lab(
        &[&format!("--{mode}"), "8K"],
        name,
        EIGHT_CONNECTIONS,
        &[mode, "12"],
    )
    .split_whitespace()
    .map(|n| n.parse().unwrap())
    .collect()
}

/// Every one of eight connections moves at least an eighth of its equal
/// share (1 KiB/s for 12 s): two full-size segments, where a starved one
/// moved none. More is not asked: at 1 KiB/s a connection whose segment is
/// dropped waits out a retransmission timeout, and which ones are dropped
/// is chance (Jain's index over 6 s in the round-trip bench: 0.99-1.00).
fn assert_none_starved(what: &str, moved: &[u64]) {
    let eighth = 12 * 1024 / 8;
    assert!(
        moved.len() == 8 && moved.iter().all(|&m| m >= eighth),
        "{what}: each of eight connections at 8 KiB/s should move at least {eighth} bytes in 12 s, moved {moved:?}"
    );
}

/// Eight downloads share 8 KiB/s and none is starved. Before the fix four of
/// eight iperf3 flows received nothing in 8 s: at 1 KiB/s each, none
/// counted as a flow, each was policed as if alone, and the few that got
/// ahead kept the run in debt.
#[test]
fn eight_downloads_at_eight_kib_per_second_all_receive() {
    let Some(_serial) = harness::start("eight_downloads_at_eight_kib_per_second_all_receive")
    else {
        return;
    };
    let moved = eight_connections_at_8k("t-down8x8", "down");
    assert_none_starved("downloads", &moved);
}

/// Eight uploads share 8 KiB/s and none is starved or aborted. Before the
/// fix the kernel aborted one ("Connection timed out") after its every
/// segment had been dropped for 7.5 s.
#[test]
fn eight_uploads_at_eight_kib_per_second_all_send() {
    let Some(_serial) = harness::start("eight_uploads_at_eight_kib_per_second_all_send") else {
        return;
    };
    let moved = eight_connections_at_8k("t-up8x8", "up");
    assert_none_starved("uploads", &moved);
}

/// One upload at 8 KiB/s for 10 s, then a message of 100 bytes on a second
/// connection that has been quiet since its headers (as iperf3's control
/// connection is): prints the seconds until the server's reply came back,
/// or "never" after 10 s.
const QUIET_BESIDE_AN_UPLOAD: &str = r#"
import select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
quiet = socket.create_connection((host, port))
quiet.sendall(b"PUT /message HTTP/1.1\r\nHost: lab\r\nContent-Length: 100\r\n\r\n")
upload = socket.create_connection((host, port))
upload.sendall(b"PUT /upload HTTP/1.1\r\nHost: lab\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
upload.setblocking(False)
chunk = bytes(16384)
def upload_until(end, also=None):
    while time.monotonic() < end:
        readable, writable, _ = select.select([also] if also else [], [upload], [], 0.1)
        if writable:
            try:
                upload.send(chunk)
            except BlockingIOError:
                pass
        if readable:
            return True
    return False
upload_until(time.monotonic() + 10)
sent = time.monotonic()
quiet.sendall(bytes(100))
answered = upload_until(sent + 10, quiet)
print("%.2f" % (time.monotonic() - sent) if answered else "never")
"#;

/// A connection quiet beside one upload gets its message through: the
/// counts see only the upload, so the quiet one had the whole limit for its
/// share too and only its packet's worth of the run's debt, which the
/// upload kept the run beyond; iperf3's control connection was given up by
/// the kernel that way after 30 s of an upload at 8 KiB/s.
#[test]
fn a_quiet_connection_beside_an_upload_gets_its_message_through() {
    let Some(_serial) =
        harness::start("a_quiet_connection_beside_an_upload_gets_its_message_through")
    else {
        return;
    };
    let printed = python_beside_the_lab(&["--up", "8K"], "t-quiet", QUIET_BESIDE_AN_UPLOAD, &[]);
    let took = printed.trim();
    assert!(
        took.parse::<f64>().is_ok_and(|secs| secs < 2.0),
        "the quiet connection's 100 bytes beside an upload at 8 KiB/s should be answered within 2 s; took {took}"
    );
}

/// Issue 26: eight uploads in a looser run nested inside a 1 MiB/s run
/// share the outer limit fairly. Each run counts its own bulk connections;
/// when the mark of "counted" was a flag of the socket, which both runs'
/// programs see, whichever run counted a socket first hid it from the
/// other, both uncounted it on close, and the outer run policed its uploads
/// as lone ones (Jain's index 0.36-0.45 in the audit).
#[test]
fn eight_uploads_nested_in_a_tighter_run_share_it_fairly() {
    let Some(_serial) = harness::start("eight_uploads_nested_in_a_tighter_run_share_it_fairly")
    else {
        return;
    };
    const SECS: u64 = 8;
    let moved: Vec<u64> = python_beside_the_lab(
        &[
            "--up",
            "1M",
            "--name",
            "t-nest-out",
            "--",
            harness::THROTTLE,
            "--up",
            "100M",
        ],
        "t-nest-in",
        EIGHT_CONNECTIONS,
        &["up", &SECS.to_string()],
    )
    .split_whitespace()
    .map(|n| n.parse().unwrap())
    .collect();
    assert_clean("t-nest-out");
    let amounts: Vec<f64> = moved.iter().map(|&m| m as f64).collect();
    let index = jain(&amounts).unwrap_or(0.0);
    eprintln!("moved {moved:?}, Jain's index {index:.3}");
    assert!(index >= 0.90, "Jain's index {index:.3} of {moved:?}");
    let total: u64 = moved.iter().sum();
    assert_ratio(
        "nested uploads",
        total as f64 / SECS as f64,
        MIB,
        0.90,
        1.05,
    );
}

/// N concurrent downloads from the lab's server, read for SECS seconds;
/// prints, as one line of numbers: the bytes all received between 4 s and
/// SECS, Jain's index of what each received then, how many received
/// nothing at all, and the latest first byte, in seconds.
const MANY_DOWNLOADS: &str = r#"
import asyncio, resource, sys, time
host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, n + 256))
got, first = [0] * n, [None] * n
async def one(i, start):
    for attempt in range(10):
        try:
            r, w = await asyncio.open_connection(host, port)
            break
        except OSError:
            await asyncio.sleep(0.2)
    else:
        return
    w.write(b"GET /%d HTTP/1.1\r\nHost: lab\r\n\r\n" % (1 << 30))
    while True:
        data = await r.read(1 << 16)
        if not data:
            return
        if first[i] is None:
            first[i] = time.monotonic() - start
        got[i] += len(data)
async def main():
    start = time.monotonic()
    tasks = [asyncio.ensure_future(one(i, start)) for i in range(n)]
    await asyncio.sleep(4)
    before = list(got)
    await asyncio.sleep(secs - 4)
    moved = [a - b for a, b in zip(got, before)]
    for t in tasks:
        t.cancel()
    squares = sum(m * m for m in moved)
    jain = sum(moved) ** 2 / (n * squares) if squares else 0
    late = max((f for f in first if f is not None), default=0)
    print(sum(moved), "%.4f" % jain, sum(1 for f in first if f is None), "%.2f" % late)
asyncio.run(main())
"#;

/// Issue 26, the scale case for `cargo test`: 2000 concurrent downloads in
/// one run at 16 MiB/s (the bench holds 10 000). Each connection's state
/// is the run's socket storage, so nothing is evicted past 4096 (the LRU
/// maps it replaced): the aggregate holds the limit, the connections share
/// it, and every one of them receives within 10 s.
#[test]
fn two_thousand_downloads_share_one_limit() {
    let Some(_serial) = harness::start("two_thousand_downloads_share_one_limit") else {
        return;
    };
    const SECS: f64 = 14.0;
    let printed = python_beside_the_lab(
        &["--down", "16M"],
        "t-2000",
        MANY_DOWNLOADS,
        &["2000", &SECS.to_string()],
    );
    eprintln!("2000 downloads: {printed}");
    let fields: Vec<f64> = printed
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let [moved, index, starved, late] = fields[..] else {
        panic!("unreadable: {printed}");
    };
    assert_ratio("2000 downloads", moved / (SECS - 4.0), 16 * MIB, 0.90, 1.05);
    assert!(index >= 0.80, "Jain's index {index} over 2000 connections");
    assert_eq!(starved, 0.0, "{starved} connections received nothing");
    assert!(
        late <= 10.0,
        "a connection's first byte came after {late} s"
    );
}
