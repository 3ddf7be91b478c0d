//! Talking to a live run: the per-run control socket (`server`), the
//! line protocol it speaks (`protocol`), the `list`, `set` and `stats`
//! clients (`client`) and how their answers are shown (`render`).

pub(crate) mod client;
pub(crate) mod protocol;
mod render;
mod server;

pub(crate) use server::{RunState, Server};
