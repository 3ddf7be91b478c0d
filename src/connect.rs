//! Connecting to a Unix stream socket within a deadline.
//!
//! A blocking connect to a listener whose backlog is full waits until
//! someone accepts, which may be never: a run too busy to accept, a socket
//! another user planted to stall root's clients, a manager that hangs. A
//! Unix stream connect never completes later, as TCP's does: it succeeds at
//! once or, with the backlog full, fails with EAGAIN, so the only way to
//! bound it is to retry until the deadline.

use std::{
    io,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
};

const RETRY: Duration = Duration::from_millis(10);

/// Connects to the socket at `path` by `deadline`; `TimedOut` if it
/// accepted no connection by then. The stream returned blocks.
pub fn within(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let address = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io::Error::from)?;
    loop {
        match connect(fd.as_raw_fd(), &address) {
            Ok(()) => break,
            Err(Errno::EAGAIN) if Instant::now() + RETRY < deadline => thread::sleep(RETRY),
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} accepted no connection in time", path.display()),
                ));
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_listener_that_never_accepts_costs_the_deadline_and_no_more() {
        let dir = std::env::temp_dir().join(format!("throttle-connect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("full.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Fill the backlog: nobody accepts, so the kernel keeps each one.
        let mut held = Vec::new();
        let started = Instant::now();
        let error = loop {
            match within(&path, Instant::now() + Duration::from_millis(200)) {
                Ok(stream) => held.push(stream),
                Err(e) => break e,
            }
            assert!(held.len() < 10_000, "the backlog never filled");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
