//! Where runs are found, and the boundary against other users: each
//! user's runtime directory (`rundir`), the lock file that marks a run live
//! (`registration`), and the sweep of what dead runs left (`sweep`).

pub(crate) mod registration;
pub(crate) mod rundir;
pub(crate) mod sweep;
