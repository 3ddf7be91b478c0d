//! Integration tests: the real `throttle` binary against the real kernel,
//! with traffic between the host and a network namespace each test creates.

mod attach;
mod control;
mod harness;
mod lifecycle;
mod networks;
mod privileges;
mod rates;
mod scale;
mod security;

use throttle_lab::{bpftool, netlab, procfs};
