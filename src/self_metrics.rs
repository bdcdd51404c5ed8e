//! The client's own health as envelopes (`self_metrics(true)`): with each
//! pulse, what its counts did since the last report, as counters with a
//! delta and total 0 that the agent adds up, and how much it holds, as a
//! gauge. They go through the client like any other envelope and are
//! counted in `stats()` like any other.

use crate::envelope::Envelope;
use crate::stats::Stats;

/// Turns successive [`Stats`] into envelopes.
pub(crate) struct SelfMetrics {
    /// The source id to set, when the client has no default source.
    source_id: Option<String>,
    /// What the last report covered.
    last: Stats,
    /// Envelopes the last report itself emitted: when they are all that
    /// moved since, nothing is reported, or an idle client would report
    /// its own reports forever.
    own: u64,
}

impl SelfMetrics {
    /// `has_source`: the client stamps a default source on envelopes that
    /// name none; otherwise they name the program.
    pub(crate) fn new(has_source: bool) -> SelfMetrics {
        let source_id = (!has_source).then(program_name);
        SelfMetrics {
            source_id,
            last: Stats::default(),
            own: 0,
        }
    }

    /// The envelopes for a report at `now`; none when nothing but the last
    /// report moved.
    pub(crate) fn report(&mut self, now: Stats) -> Vec<Envelope> {
        let last = &self.last;
        let dropped = [
            (
                "queue_full",
                now.dropped.queue_full,
                last.dropped.queue_full,
            ),
            ("too_large", now.dropped.too_large, last.dropped.too_large),
            ("closed", now.dropped.closed, last.dropped.closed),
            ("gave_up", now.dropped.gave_up, last.dropped.gave_up),
            (
                "zero_counter",
                now.dropped.zero_counter,
                last.dropped.zero_counter,
            ),
        ]
        .map(|(reason, now, then)| (reason, now.saturating_sub(then)));
        let counts = [
            ("loggregator_client_emitted", now.emitted, last.emitted),
            ("loggregator_client_sent", now.sent, last.sent),
            ("loggregator_client_errors", now.errors, last.errors),
            (
                "loggregator_client_reconnects",
                now.reconnects,
                last.reconnects,
            ),
            ("loggregator_client_replayed", now.replayed, last.replayed),
        ]
        .map(|(name, now, then)| (name, now.saturating_sub(then)));
        let [emitted, sent, errors, reconnects, replayed] = counts.map(|(_, delta)| delta);
        let settled = sent + dropped.iter().map(|(_, delta)| delta).sum::<u64>();
        let only_own = emitted == self.own
            && settled == self.own
            && errors + reconnects + replayed == 0
            && now.queued + now.in_flight == 0;
        if only_own {
            return Vec::new();
        }
        let mut envelopes = Vec::new();
        for (name, delta) in counts {
            if delta > 0 {
                envelopes.push(self.named(Envelope::counter(name).delta(delta).into()));
            }
        }
        for (reason, delta) in dropped {
            if delta > 0 {
                let counter = Envelope::counter("loggregator_client_dropped")
                    .delta(delta)
                    .tag("reason", reason);
                envelopes.push(self.named(counter.into()));
            }
        }
        let gauge = Envelope::gauge()
            .metric("loggregator_client_queued", now.queued as f64, "envelopes")
            .metric(
                "loggregator_client_queued_bytes",
                now.queued_bytes as f64,
                "bytes",
            );
        envelopes.push(self.named(gauge.into()));
        self.own = envelopes.len() as u64;
        self.last = now;
        envelopes
    }

    fn named(&self, envelope: Envelope) -> Envelope {
        match &self.source_id {
            Some(source_id) => {
                let mut proto = envelope.into_proto();
                proto.source_id = source_id.clone();
                Envelope::from_proto(proto)
            }
            None => envelope,
        }
    }
}

/// The program's file name, as a source id for a client that has none.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(envelopes: &[Envelope]) -> Vec<(String, u64, u64, Option<String>)> {
        envelopes
            .iter()
            .filter(|e| e.as_proto().has_counter())
            .map(|e| {
                let p = e.as_proto();
                (
                    p.counter().name.clone(),
                    p.counter().delta,
                    p.counter().total,
                    p.tags.get("reason").cloned(),
                )
            })
            .collect()
    }

    #[test]
    fn deltas_with_total_0_a_counter_per_drop_reason_and_a_gauge() {
        let mut metrics = SelfMetrics::new(false);
        let mut stats = Stats {
            emitted: 10,
            sent: 7,
            queued: 1,
            queued_bytes: 120,
            ..Stats::default()
        };
        stats.dropped.queue_full = 2;
        let sent = metrics.report(stats.clone());
        assert_eq!(
            counters(&sent),
            vec![
                ("loggregator_client_emitted".into(), 10, 0, None),
                ("loggregator_client_sent".into(), 7, 0, None),
                (
                    "loggregator_client_dropped".into(),
                    2,
                    0,
                    Some("queue_full".into())
                ),
            ]
        );
        let gauge = sent.last().unwrap().as_proto().gauge().clone();
        assert_eq!(gauge.metrics["loggregator_client_queued"].value, 1.0);
        assert_eq!(
            gauge.metrics["loggregator_client_queued_bytes"].value,
            120.0
        );
        assert!(
            sent.iter()
                .all(|e| e.as_proto().source_id == program_name())
        );
        // The report's own 4 envelopes, emitted and then sent, and the one
        // queued, sent too: only the latter is news.
        stats.emitted += 4;
        stats.sent += 5;
        stats.queued = 0;
        let next = metrics.report(stats.clone());
        assert_eq!(
            counters(&next),
            vec![
                ("loggregator_client_emitted".into(), 4, 0, None),
                ("loggregator_client_sent".into(), 5, 0, None),
            ]
        );
    }

    #[test]
    fn an_interval_where_only_the_last_report_moved_sends_nothing() {
        let mut metrics = SelfMetrics::new(true);
        assert!(metrics.report(Stats::default()).is_empty(), "nothing moved");
        let stats = Stats {
            emitted: 1,
            sent: 1,
            ..Stats::default()
        };
        let first = metrics.report(stats.clone());
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|e| e.as_proto().source_id.is_empty()));
        let own = Stats {
            emitted: 4,
            sent: 4,
            ..stats
        };
        assert!(metrics.report(own.clone()).is_empty());
        assert!(metrics.report(own).is_empty(), "and stays quiet");
    }
}
