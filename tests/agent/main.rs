//! End-to-end tests: the client against the spy agent over mutual TLS on loopback.

mod bad_input;
mod batching;
mod bounds;
mod common;
mod connection_faults;
mod delivery;
mod early_end_replays;
mod examples;
mod fault_proxy;
mod faults;
mod flush_close_answer;
mod metrics;
mod metrics_recorder;
mod pipe;
mod properties;
mod round_trip;
mod send_restart;
mod spy;
mod streams;
mod tracing_layer;
mod unary;
