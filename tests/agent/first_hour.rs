//! The program a newcomer writes from the README alone (examples/first_hour.rs):
//! both facades with tracing-subscriber's default features, the metrics
//! recorder, the panic hook and four threads run without a panic, and
//! everything they emit arrives once.

use crate::examples::successful_stdout;

#[test]
fn the_first_hour_program_runs_and_everything_arrives_once() {
    let stdout = successful_stdout("first_hour");
    let mut lines = stdout.lines().rev();
    let received = lines.next().unwrap_or_default();
    let client = lines.next().unwrap_or_default();
    // log: 4 workers x 25 jobs x (a `log` record + a `tracing` event);
    // counter: `jobs` for each worker's label and `job_seconds_count`;
    // gauge: each worker's backlog, `job_seconds_sum` and 3 quantiles;
    // timer: a timer a job and a span a worker; event: one a worker.
    assert_eq!(
        received, "received 321 envelopes: log=200 counter=5 gauge=8 timer=104 event=4; dropped 0",
        "{stdout}"
    );
    assert_eq!(client, "client: sent 321 dropped 0 queued 0", "{stdout}");
}
