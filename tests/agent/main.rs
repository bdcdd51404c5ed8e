//! End-to-end tests: the client against the spy agent over mutual TLS on loopback.

mod bad_input;
mod batching;
mod bounds;
mod bridge_losses;
mod cli_check;
mod cli_pipe;
mod cli_run;
mod common;
mod connection_faults;
mod delivery;
mod examples;
mod fault_proxy;
mod faults;
mod first_hour;
mod metrics;
mod metrics_recorder;
mod metrics_series_admission;
mod pipe;
mod pipe_multiline;
mod properties;
mod round_trip;
mod spy;
mod spy_reading;
mod streams;
mod tracing_layer;
mod unary;
