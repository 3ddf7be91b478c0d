//! The benchmark's peers: a namespace with iperf3 and HTTP servers, an
//! iperf3 server on loopback, and the counters and round trips read there.

use std::{
    cell::RefCell,
    fs,
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::report::{Dir, Link};
use crate::netlab::{self, Netns};

/// The average round trip of five pings to `addr`, in milliseconds.
fn ping(addr: &str) -> Result<f64> {
    let out = Command::new("ping")
        .args(["-q", "-c", "5", "-i", "0.2", "-W", "2", addr])
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ping_average(&text).with_context(|| format!("ping {addr} gave no round trip: {}", text.trim()))
}

/// The average of ping's "rtt min/avg/max/mdev = 20.1/20.3/20.6/0.1 ms".
fn ping_average(summary: &str) -> Option<f64> {
    let line = summary.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    values.split('/').nth(1)?.trim().parse().ok()
}

/// Fails naming the first of `tools` that cannot be run.
pub fn check_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        // Every one of them answers -V or -h; whether it can start is what counts.
        let started = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        ensure!(started, "{tool} is missing; scripts/setup.sh installs it");
    }
    Ok(())
}

/// The network side: a namespace with iperf3 and HTTP servers, and an
/// iperf3 server on loopback.
pub struct Lab {
    pub netns: Netns,
    veth_iperf: RefCell<Server>,
    loopback_iperf: RefCell<Server>,
    pub(super) http: netlab::Server,
    /// Where curl and aria2c write their downloads.
    pub(super) scratch: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

struct Server {
    child: Child,
    addr: Ipv4Addr,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// The round trip over the veth in milliseconds, as ping measures it
    /// now, or why it could not.
    /// The lab HTTP server's `http://ADDR:PORT`.
    pub(crate) fn http_url(&self) -> String {
        self.http.url.clone()
    }

    /// Bytes the lab HTTP server's TCP has seen acknowledged, in all.
    pub(super) fn delivered(&self) -> u64 {
        self.http.delivered()
    }

    pub fn ping(&self) -> Result<f64, String> {
        ping(&self.netns.peer.to_string()).map_err(|e| format!("{e:#}"))
    }

    pub fn new() -> Result<Lab> {
        let netns = Netns::create();
        let veth_iperf = iperf_server(Some(&netns.name), netns.peer)?;
        let loopback_iperf = iperf_server(None, Ipv4Addr::LOCALHOST)?;
        let http = netns.serve();
        let scratch =
            std::env::temp_dir().join(format!("throttle-bench-downloads-{}", std::process::id()));
        fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        Ok(Lab {
            netns,
            veth_iperf: RefCell::new(veth_iperf),
            loopback_iperf: RefCell::new(loopback_iperf),
            http,
            scratch,
        })
    }

    fn iperf_server(&self, link: Link) -> &RefCell<Server> {
        match link {
            Link::Veth => &self.veth_iperf,
            Link::Loopback => &self.loopback_iperf,
        }
    }

    /// Where the link's iperf3 server listens.
    pub(crate) fn iperf(&self, link: Link) -> (Ipv4Addr, u16) {
        let server = self.iperf_server(link).borrow();
        (server.addr, server.port)
    }

    /// Replaces the link's iperf3 server with a fresh one.
    pub(crate) fn restart_iperf(&self, link: Link) -> Result<()> {
        let netns = (link == Link::Veth).then_some(self.netns.name.as_str());
        let addr = self.iperf(link).0;
        let mut server = self.iperf_server(link).borrow_mut();
        let old = std::mem::replace(&mut *server, iperf_server(netns, addr)?);
        drop(old);
        Ok(())
    }

    /// TcpRetransSegs of the namespace the sender of `dir` lives in.
    pub(super) fn retransmitted_segments(&self, link: Link, dir: Dir) -> Result<u64> {
        let snmp = if link == Link::Veth && dir == Dir::Down {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns.name, "cat", "/proc/net/snmp"])
                .output()
                .context("reading the namespace's /proc/net/snmp")?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?
        };
        tcp_counter(&snmp, "RetransSegs")
    }
}

/// A counter from the two "Tcp:" lines of /proc/net/snmp (names, then values).
fn tcp_counter(snmp: &str, name: &str) -> Result<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Tcp {name} in /proc/net/snmp"))
}

fn iperf_server(netns: Option<&str>, addr: Ipv4Addr) -> Result<Server> {
    let port = free_port()?;
    let mut cmd = match netns {
        Some(name) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name, "iperf3"]);
            c
        }
        None => Command::new("iperf3"),
    };
    let child = cmd
        .args(["-s", "-J", "-B", &addr.to_string(), "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting an iperf3 server")?;
    let server = Server { child, addr, port };
    // The server is ready once a client could connect; iperf3 says nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = match netns {
            Some(name) => Command::new("ip")
                .args(["netns", "exec", name, "ss", "-Htln"])
                .output()?,
            None => Command::new("ss").args(["-Htln"]).output()?,
        };
        if String::from_utf8_lossy(&probe.stdout).contains(&format!("{addr}:{port}")) {
            return Ok(server);
        }
        ensure!(Instant::now() < deadline, "iperf3 server did not start");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on right now (the kernel picks it).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_average_round_trip() {
        let out = "--- 10.213.1.2 ping statistics ---\n\
                   5 packets transmitted, 5 received, 0% packet loss, time 801ms\n\
                   rtt min/avg/max/mdev = 20.112/20.348/20.610/0.180 ms\n";
        assert_eq!(ping_average(out), Some(20.348));
        assert_eq!(ping_average("5 packets transmitted, 0 received"), None);
    }

    #[test]
    fn reads_tcp_counters_by_name() {
        let snmp = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 42 0\n";
        assert_eq!(tcp_counter(snmp, "RetransSegs").unwrap(), 42);
        assert!(tcp_counter(snmp, "Nope").is_err());
    }
}
