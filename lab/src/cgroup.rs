//! A cgroup the lab makes for processes it starts, as something already
//! running that `throttle attach` is to hold: its processes killed and the
//! cgroup removed when it is dropped.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A cgroup of the lab's own, with the processes started in it.
pub struct Scratch {
    pub path: PathBuf,
    children: Vec<Child>,
}

impl Scratch {
    /// Makes `name` under the cgroup2 mount, replacing an empty one a killed
    /// lab left.
    pub fn create(name: &str) -> io::Result<Scratch> {
        let mount = crate::procfs::cgroup_mount()
            .ok_or_else(|| io::Error::other("cgroup2 is not mounted"))?;
        Scratch::at(mount.join(name))
    }

    /// Makes the cgroup at `path`.
    pub fn at(path: PathBuf) -> io::Result<Scratch> {
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path)?;
        Ok(Scratch {
            path,
            children: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts `command` inside the cgroup: a shell moves itself in, then
    /// becomes the command, so its first instruction runs there.
    pub fn spawn(&mut self, command: &[&str]) -> io::Result<()> {
        let child = Command::new("sh")
            .args([
                "-c",
                r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
                "sh",
            ])
            .arg(&self.path)
            .args(command)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    /// Whether every process started in it still runs.
    pub fn all_alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
}
