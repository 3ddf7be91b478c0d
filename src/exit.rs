//! Every exit status throttle gives, as the README's "Exit status" and
//! "Changing a running command" sections and docs/attach.md list them. A
//! run mirrors its command's own status; these are what throttle says for
//! itself.

/// Invalid arguments, as clap and most tools report them.
pub const USAGE: u8 = 2;
/// `list`, `set`, `stats`: no run has that name or pid.
pub const NO_SUCH_RUN: u8 = 3;
/// The run belongs to another user.
pub const PERMISSION: u8 = 4;
/// The run ended before it answered.
pub const RUN_GONE: u8 = 5;
/// The run refused the request (the reason is printed).
pub const REFUSED: u8 = 6;
/// `list` showed every run, but could not read some of them.
pub const INCOMPLETE: u8 = 7;
/// `set`, `stats`: the NAME or PID given names more than one run (each
/// is listed, as NAME@UID).
pub const AMBIGUOUS: u8 = 8;
/// `attach`: no such target, or it is not running.
pub const NO_SUCH_TARGET: u8 = 9;
/// `attach`: the caller may not limit the target (another user's, the
/// root cgroup).
pub const FORBIDDEN: u8 = 10;
/// throttle itself failed (before, or while tearing down after, the command).
pub const FAILURE: u8 = 125;
/// The command exists but could not be executed, as env, nice and timeout say.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found, as env, nice and timeout say.
pub const NOT_FOUND: u8 = 127;

/// The status of a command killed by `signal`, as shells report it.
pub fn signalled(signal: i32) -> i32 {
    128 + signal
}
