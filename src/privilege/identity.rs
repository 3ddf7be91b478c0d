//! `--user`: who the command runs as, resolved before anything is created,
//! as `setpriv --reuid USER --regid USER --init-groups` and `runuser` do,
//! and the environment it gets, reset as `runuser -l` and sudo's
//! `env_reset` reset it.

use std::ffi::{CString, OsStr, OsString};

use nix::unistd::{Gid, Uid, User, getgrouplist};

/// A user the command is started as: the ids, the supplementary groups,
/// and the variables that name the user (as `su` sets them).
#[derive(Clone, Debug)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub env: Vec<(&'static str, OsString)>,
}

/// The PATH a command run as another user gets, as `runuser -l` gives an
/// ordinary user: not the caller's, which may name the caller's own
/// directories.
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What a command run as another user keeps of the caller's environment
/// without `--keep-env`, as sudo's `env_reset` does: the terminal's type
/// and the locale. Everything else (tokens, agent sockets, proxies,
/// `LD_*`) stays with the caller.
fn kept_by_default(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    matches!(name, b"TERM" | b"COLORTERM" | b"LANG" | b"LANGUAGE" | b"TZ")
        || name.starts_with(b"LC_")
}

impl Identity {
    /// The command's environment, built from the caller's `inherited` one:
    /// PATH and the variables naming the user, plus the terminal and locale
    /// variables and those named in `keep` (`--keep-env`), which win.
    pub fn environment(
        &self,
        inherited: impl Iterator<Item = (OsString, OsString)>,
        keep: &[String],
    ) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = [("PATH", OsString::from(USER_PATH))]
            .into_iter()
            .chain(self.env.iter().cloned())
            .map(|(k, v)| (OsString::from(k), v))
            .collect();
        for (key, value) in inherited {
            if !kept_by_default(&key) && !keep.iter().any(|k| OsStr::new(k) == key) {
                continue;
            }
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        env
    }
}

/// `--user`'s value: a user name or a numeric uid with a passwd entry.
pub fn lookup(text: &str) -> Result<Identity, String> {
    const ACCEPTED: &str = "expected a user name or uid listed in the user database";
    let user = match text.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(text),
    }
    .map_err(|e| format!("looking the user up: {e}"))?
    .ok_or_else(|| format!("no such user; {ACCEPTED}"))?;
    let name = CString::new(user.name.as_str()).map_err(|_| format!("no such user; {ACCEPTED}"))?;
    let groups = getgrouplist(&name, user.gid)
        .map_err(|e| format!("reading the groups of {}: {e}", user.name))?;
    Ok(Identity {
        uid: user.uid,
        gid: user.gid,
        groups,
        env: vec![
            ("HOME", user.dir.into_os_string()),
            ("SHELL", user.shell.into_os_string()),
            ("USER", OsString::from(&user.name)),
            ("LOGNAME", OsString::from(&user.name)),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_or_a_uid_gives_the_user_and_their_variables() {
        for text in ["root", "0"] {
            let root = lookup(text).unwrap();
            assert!(root.uid.is_root() && root.gid.as_raw() == 0, "{text}");
            assert!(root.groups.contains(&Gid::from_raw(0)));
            let home = root.env.iter().find(|(k, _)| *k == "HOME").unwrap();
            assert_eq!(home.1, OsString::from("/root"));
        }
        let err = lookup("no-such-user-13").unwrap_err();
        assert!(err.starts_with("no such user; expected"), "{err}");
    }

    #[test]
    fn another_users_command_gets_a_reset_environment_and_what_keep_names() {
        let root = lookup("root").unwrap();
        let caller = [
            ("PATH", "/home/a/bin:/usr/bin"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("TERM", "xterm"),
            ("LC_ALL", "C.UTF-8"),
            ("HOME", "/home/a"),
            ("HTTPS_PROXY", "http://proxy:3128"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = root.environment(caller.clone().into_iter(), &[]);
        let get = |env: &[(OsString, OsString)], key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get(&env, "PATH").as_deref(), Some(USER_PATH));
        assert_eq!(get(&env, "HOME").as_deref(), Some("/root"));
        assert_eq!(get(&env, "USER").as_deref(), Some("root"));
        assert_eq!(get(&env, "TERM").as_deref(), Some("xterm"));
        assert_eq!(get(&env, "LC_ALL").as_deref(), Some("C.UTF-8"));
        for gone in ["SSH_AUTH_SOCK", "AWS_SECRET_ACCESS_KEY", "HTTPS_PROXY"] {
            assert_eq!(get(&env, gone), None, "{gone}");
        }
        let keep = ["HTTPS_PROXY".to_string(), "PATH".to_string()];
        let env = root.environment(caller.into_iter(), &keep);
        assert_eq!(
            get(&env, "HTTPS_PROXY").as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(get(&env, "PATH").as_deref(), Some("/home/a/bin:/usr/bin"));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}
