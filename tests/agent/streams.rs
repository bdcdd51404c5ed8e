//! Several `BatchSender` streams at once, against a spy that reads each
//! stream at its own pace (as a real agent does) and the faults it injects.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, StatusCode, TestCerts};
use loggregator::{Delivery, Envelope, Error, IngressClient, IngressClientBuilder};

use crate::common::{WAIT, assert_closed_accounting};
use crate::common::{assert_every_one_received, emit_through_restarts, numbered, seqs};

fn builder(certs: &TestCerts, agent: &SpyAgent, streams: usize) -> IngressClientBuilder {
    IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .streams(streams)
        .batch_max_envelopes(500)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
}

/// Envelopes the spy read, by the stream that carried them.
fn per_stream(agent: &SpyAgent) -> HashMap<u64, usize> {
    let mut streams = HashMap::new();
    for batch in agent.batches() {
        *streams.entry(batch.stream).or_default() += batch.envelopes;
    }
    streams
}

#[test]
fn the_per_stream_read_rate_holds_each_stream_to_its_pace_and_reads_them_side_by_side() {
    const RATE: u64 = 5_000;
    const TOTAL: u64 = 10_000;
    const STREAMS: usize = 4;
    const BATCH: u64 = 500;
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    agent.set_stream_read_rate(Some(RATE));
    let client = builder(&certs, &agent, STREAMS).build().unwrap();
    // Connect before the clock starts.
    client.emit(numbered(0));
    client.flush(WAIT).unwrap();
    let started = Instant::now();
    for n in 1..=TOTAL {
        client.emit(numbered(n));
    }
    client.flush(WAIT).unwrap();
    agent.wait_for_count(TOTAL + 1, WAIT);
    let took = started.elapsed();
    client.close(WAIT).unwrap();
    let streams = per_stream(&agent);
    assert_eq!(streams.len(), STREAMS, "{streams:?}");
    // Each stream was held to its pace: the busiest one read at most RATE
    // a second (less the batch it read at once on arrival). Timers never
    // fire early, so this holds on any machine.
    let busiest = *streams.values().max().unwrap() as u64;
    let floor = Duration::from_secs_f64((busiest - BATCH) as f64 / RATE as f64);
    assert!(
        took >= floor,
        "{took:?} for {busiest} on one stream: {streams:?}"
    );
    // And they were read side by side: one pace shared by every stream
    // could not have read them in less than this (each stream's first
    // batch at once, the rest at RATE), however fast the machine. Read side
    // by side they take a quarter of it, 0.4 s, which leaves a loaded
    // machine over a second.
    let one_pace = Duration::from_secs_f64((TOTAL - STREAMS as u64 * BATCH) as f64 / RATE as f64);
    eprintln!("{STREAMS} streams paced at {RATE}/s read {TOTAL} in {took:?}: {streams:?}");
    assert!(
        took < one_pace,
        "{took:?}, one pace takes {one_pace:?}: {streams:?}"
    );
    assert_eq!(seqs(&agent).len() as u64, TOTAL + 1);
    assert_closed_accounting(&client.stats());
}

#[test]
fn flush_and_close_wait_for_writes_in_flight_on_several_streams() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = builder(&certs, &agent, 3)
        .batch_max_envelopes(100)
        // Longer than writes can be held here (the loop below, bounded by
        // WAIT), so that none is given up.
        .write_timeout(2 * WAIT)
        .build()
        .unwrap();
    client.emit(numbered(0));
    client.flush(WAIT).unwrap();
    agent.pause_reading();
    // Until writes are held on several streams. A short flush timing out
    // says some write is held; more in flight than one stream can hold (a
    // batch of 100 in its write, one sealed and one being built: 300) says
    // they are held on more than one. gRPC's flow-control windows take a
    // varying amount before they hold anything, so the loop counts neither
    // rounds nor bytes. A client that wrote on one stream at a time, or a
    // flush that did not wait for writes in flight, never gets out of it.
    let payload = vec![b'p'; 4_000];
    let mut n = 1;
    let deadline = Instant::now() + WAIT;
    let held = loop {
        for _ in 0..100 {
            client.emit(Envelope::log(payload.clone()).timestamp(n as i64));
            n += 1;
        }
        let flushed = client.flush(Duration::from_millis(100));
        let stats = client.stats();
        if matches!(flushed, Err(Error::Timeout { .. })) && stats.in_flight > 300 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "writes never held on several streams: {flushed:?} {stats:?}"
        );
    };
    agent.resume_reading();
    client.flush(WAIT).unwrap();
    // The flush waited for every write that was held, on every stream.
    let flushed = client.stats();
    assert_eq!((flushed.queued, flushed.in_flight), (0, 0), "{flushed:?}");
    assert!(
        flushed.sent >= held.sent + held.in_flight,
        "{held:?} {flushed:?}"
    );
    client.close(WAIT).unwrap();
    let stats = client.stats();
    let received: HashSet<u64> = seqs(&agent).into_iter().collect();
    assert_eq!(received.len() as u64, stats.sent, "{stats:?}");
    assert_eq!(stats.sent + stats.dropped.total(), n, "{stats:?}");
    assert_eq!(stats.dropped.gave_up, 0, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn at_least_once_with_several_streams_every_envelope_survives_three_agent_restarts() {
    const TOTAL: u64 = 30_000;
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    agent.set_stream_read_rate(Some(200_000));
    let client = builder(&certs, &agent, 4)
        .delivery(Delivery::AtLeastOnce)
        .confirm_interval(Duration::from_millis(100))
        .queue_capacity(TOTAL as usize)
        .build()
        .unwrap();
    let _ = emit_through_restarts(&client, &agent, TOTAL);
    client.close(WAIT).unwrap();
    assert_every_one_received(&agent, TOTAL);
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped.total()), (TOTAL, 0), "{stats:?}");
    // Each restart ended at least one stream.
    assert!(stats.errors >= 3, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn at_most_once_with_several_streams_one_ended_by_the_agent_is_replaced_without_duplicates() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = builder(&certs, &agent, 2).build().unwrap();
    for n in 0..2_000 {
        client.emit(numbered(n));
    }
    client.flush(WAIT).unwrap();
    // Read, not only taken by gRPC: the failure hits what follows.
    agent.wait_for_proto_envelopes(2_000, WAIT);
    agent.fail_next_stream(StatusCode::Unavailable, "injected");
    let mut n = 2_000;
    while client.stats().errors == 0 {
        for _ in 0..500 {
            client.emit(numbered(n));
            n += 1;
        }
        let _ = client.flush(WAIT);
        assert!(n < 1_000_000, "the failure was never noticed");
    }
    let noticed = n;
    for _ in 0..2_000 {
        client.emit(numbered(n));
        n += 1;
    }
    match client.close(WAIT) {
        Ok(()) => {}
        // The ended stream may be the last one close ends.
        Err(Error::Agent { status, .. }) if status.contains("injected") => {}
        // Writes the end cut short are given up; no flush above may have
        // reported them yet.
        Err(Error::Undelivered { count, .. }) if count <= client.stats().dropped.gave_up => {}
        other => panic!("{other:?}"),
    }
    let received = seqs(&agent);
    let unique: HashSet<u64> = received.iter().copied().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "at most once never duplicates"
    );
    // Two streams, and the one the agent ended replaced.
    assert!(agent.calls_started() >= 3, "{}", agent.calls_started());
    let stats = client.stats();
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap()
            .contains("UNAVAILABLE: injected"),
        "{stats:?}"
    );
    // What the agent did not read is what the ended stream had taken
    // (counted sent, as at most once says) or gave up, between the
    // injected failure and the client noticing it, and at most the one
    // batch (500) being written there then: nothing emitted later, nothing
    // from before the failure.
    let missing: Vec<u64> = (0..n).filter(|k| !unique.contains(k)).collect();
    assert!(
        missing.iter().all(|&k| (2_000..noticed + 500).contains(&k)),
        "lost {} of {n}, noticed at {noticed}: {:?}… {stats:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(stats.sent + stats.dropped.total(), n, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn streams_must_be_from_1_to_16() {
    let certs = TestCerts::generate().unwrap();
    for streams in [0, 17] {
        let result = IngressClient::builder()
            .tls(certs.client_tls().unwrap())
            .streams(streams)
            .build();
        assert!(
            matches!(
                result,
                Err(Error::Config {
                    setting: "streams",
                    ..
                })
            ),
            "{streams}: {result:?}"
        );
    }
}
