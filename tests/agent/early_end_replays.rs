//! At least once, a stream the agent ended before the client half-closed
//! it confirms none of its writes, even with the status a half-closed
//! stream is confirmed with (UNKNOWN "EOF", or OK): they are replayed.

use std::time::Duration;

use loggregator::spy::{SpyAgent, StatusCode, TestCerts};
use loggregator::{Delivery, Envelope};

use crate::common::{WAIT, assert_closed_accounting};
use crate::flush_close_answer::{builder, numbered, seqs};

#[test]
fn at_least_once_a_stream_the_agent_ended_early_with_eof_is_replayed() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = builder(&certs, agent.addr())
        .delivery(Delivery::AtLeastOnce)
        .confirm_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // The agent ends the stream that brings envelope 1 as the real agents
    // end a half-closed one, without reading it; it reads nothing until
    // the client has seen gRPC accept the write, so the write itself
    // cannot fail.
    agent.fail_next_stream(StatusCode::Unknown, "EOF");
    agent.pause_reading();
    client.emit(numbered(1));
    client.flush(WAIT).unwrap();
    agent.resume_reading();
    assert!(agent.wait_for_streams_ended(1, WAIT));
    // A unary call on the same connection, answered after the agent ended
    // the stream: by then the client has the stream's end, so the
    // half-close that close makes finds the call over.
    client
        .send(vec![Envelope::event("after", "the end").into()], WAIT)
        .unwrap();
    assert_eq!(client.stats().errors, 0, "no write met the end");
    client.close(WAIT).unwrap();
    let stats = client.stats();
    let received: Vec<u64> = seqs(&agent).into_iter().filter(|n| *n == 1).collect();
    assert_eq!(received, vec![1], "{stats:?}");
    // Written again on a stream of its own.
    assert_eq!(stats.reconnects, 1, "{stats:?}");
    assert_eq!(stats.sent, 1, "{stats:?}");
    assert_closed_accounting(&stats);
}
