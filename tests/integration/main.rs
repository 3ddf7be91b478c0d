//! Integration tests: the real `throttle` binary against the real kernel,
//! with traffic between the host and a network namespace each test creates.

mod control;
mod harness;
mod lifecycle;
mod networks;
// Shared with the benchmark, which uses helpers these tests do not.
#[allow(dead_code)]
#[path = "../../xtask/src/netlab.rs"]
mod netlab;
mod privileges;
// What the tests and the soak read from /proc about runs.
#[path = "../../xtask/src/procfs.rs"]
mod procfs;
mod rates;
mod scale;
mod security;
