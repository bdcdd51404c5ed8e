//! The public handle, [`IngressClient`]: `emit`, the metric helpers,
//! `send`, `flush`, `close` and `stats`, and the threads it starts.
//!
//! `handle.rs` is the handle and most of its methods, `send.rs` the unary
//! call, `timer.rs` the timer guard; `start.rs` starts the threads and holds
//! what the handles share; `close.rs` closes, on `close` or on the last drop.

mod close;
mod handle;
mod send;
mod start;
mod timer;

pub use close::CLOSE_MARGIN;
pub use handle::IngressClient;
pub(crate) use start::Config;
pub use timer::TimerGuard;
