//! `--user`: who the command runs as, resolved before anything is created,
//! as `setpriv --reuid USER --regid USER --init-groups` and `runuser` do.

use std::ffi::{CString, OsString};

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

/// `--user`'s value: a user name or a numeric uid with a passwd entry.
pub fn parse(text: &str) -> Result<Identity, String> {
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
            let root = parse(text).unwrap();
            assert!(root.uid.is_root() && root.gid.as_raw() == 0, "{text}");
            assert!(root.groups.contains(&Gid::from_raw(0)));
            let home = root.env.iter().find(|(k, _)| *k == "HOME").unwrap();
            assert_eq!(home.1, OsString::from("/root"));
        }
        let err = parse("no-such-user-13").unwrap_err();
        assert!(err.starts_with("no such user; expected"), "{err}");
    }
}
