//! The client's own health as envelopes (`self_metrics(true)`): with each
//! pulse, what its counts did since the last report, as counters with a
//! delta and total 0 that the agent adds up, and how much it holds, as a
//! gauge. They go through the client like any other envelope and are
//! counted in `stats()` like any other.
//!
//! Deltas are carried as pulse counters' are: one the queue refuses or
//! evicts goes out with the next report, so `loggregator_client_dropped`
//! reaches the agent with the exact count of an outage once the agent is
//! back.
//!
//! The reports' own envelopes move the counts too (emitted, then sent, a
//! stream opened for them), and with at-least-once delivery their sending
//! shows a confirmation later, in some later interval. Were that news, a
//! client would report its own reports forever; so an interval in which
//! only reports can have moved anything sends nothing, and what they moved
//! goes out with the next report that has news, or the last at close.

use std::sync::Arc;

use crate::envelope::Envelope;
use crate::series::{Carried, CounterSeries};
use crate::stats::Stats;

/// The counts reported as `loggregator_client_<name>`, in order.
const COUNTS: [&str; 5] = ["emitted", "sent", "errors", "reconnects", "replayed"];
/// The reasons of `loggregator_client_dropped`, in order.
const DROP_REASONS: [&str; 5] = [
    "queue_full",
    "too_large",
    "closed",
    "gave_up",
    "zero_counter",
];

/// Turns successive [`Stats`] into envelopes.
pub(crate) struct SelfMetrics {
    /// The source id to set, when the client has no default source.
    source_id: Option<String>,
    /// One series per count of [`COUNTS`], then one per [`DROP_REASONS`].
    series: Vec<Arc<CounterSeries>>,
    /// What the last report covered: its counts went into the series.
    reported: Stats,
    /// Envelopes the reports have emitted, queued or not.
    own: u64,
    /// Envelopes others emitted (`emitted - own`), as of the last report.
    others: u64,
    /// `emitted` at the last report that saw others emit: all of theirs
    /// are among the first this many envelopes.
    others_within: u64,
}

impl SelfMetrics {
    /// `has_source`: the client stamps a default source on envelopes that
    /// name none; otherwise they name the program.
    pub(crate) fn new(has_source: bool) -> SelfMetrics {
        let source_id = (!has_source).then(program_name);
        let counts = COUNTS
            .iter()
            .map(|name| CounterSeries::new(format!("loggregator_client_{name}"), Vec::new()));
        let dropped = DROP_REASONS.iter().map(|reason| {
            let tags = vec![("reason".to_string(), reason.to_string())];
            CounterSeries::new("loggregator_client_dropped".to_string(), tags)
        });
        SelfMetrics {
            source_id,
            series: counts.chain(dropped).map(Arc::new).collect(),
            reported: Stats::default(),
            own: 0,
            others: 0,
            others_within: 0,
        }
    }

    /// The envelopes for a report at `now`, each counter with the token
    /// that carries its delta back if the queue drops it. None when only
    /// reports can have moved anything since the last; at the `last` report
    /// (close) none only when nothing at all moved, since no later report
    /// could carry it.
    pub(crate) fn report(&mut self, now: Stats, last: bool) -> Vec<(Envelope, Option<Carried>)> {
        let values = |stats: &Stats| {
            let d = &stats.dropped;
            [
                stats.emitted,
                stats.sent,
                stats.errors,
                stats.reconnects,
                stats.replayed,
                d.queue_full,
                d.too_large,
                d.closed,
                d.gave_up,
                d.zero_counter,
            ]
        };
        let (then, current) = (values(&self.reported), values(&now));
        let others = now.emitted.saturating_sub(self.own);
        let others_emitted = others != self.others;
        if last {
            let moved = then != current || self.series.iter().any(|s| !s.is_idle());
            if !moved {
                return Vec::new();
            }
        } else if !others_emitted && self.only_reports_since_last(&now) {
            return Vec::new();
        }
        if others_emitted {
            self.others_within = now.emitted;
        }
        for ((series, now), then) in self.series.iter().zip(current).zip(then) {
            series.add(now.saturating_sub(then));
        }
        let mut envelopes: Vec<(Envelope, Option<Carried>)> = self
            .series
            .iter()
            .filter_map(|series| series.take())
            .map(|(envelope, carried)| (self.named(envelope), Some(carried)))
            .collect();
        let gauge = Envelope::gauge()
            .metric("loggregator_client_queued", now.queued as f64, "envelopes")
            .metric(
                "loggregator_client_queued_bytes",
                now.queued_bytes as f64,
                "bytes",
            );
        envelopes.push((self.named(gauge.into()), None));
        self.own += envelopes.len() as u64;
        self.others = others;
        self.reported = now;
        envelopes
    }

    /// Whether, others having emitted nothing since the last report, only
    /// reports can have moved anything since. True when no error or replay
    /// happened and the last report saw every envelope of others settled
    /// (sent or dropped): any later send or drop is then of a report's
    /// envelope. A stream opened without an error is a report's too (at
    /// least once opens one per confirmation); one after a failure comes
    /// with errors. Envelopes settle in the order they were emitted, except
    /// across several streams, where one of others' may settle after a
    /// later report's: it then waits for the next report with news.
    fn only_reports_since_last(&self, now: &Stats) -> bool {
        let last = &self.reported;
        let settled = last.sent + last.dropped.total();
        now.errors == last.errors && now.replayed == last.replayed && settled >= self.others_within
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

    use crate::series::all_taken as sent;

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
        let first = sent(metrics.report(stats.clone(), false));
        assert_eq!(
            counters(&first),
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
        let gauge = first.last().unwrap().as_proto().gauge().clone();
        assert_eq!(gauge.metrics["loggregator_client_queued"].value, 1.0);
        assert_eq!(
            gauge.metrics["loggregator_client_queued_bytes"].value,
            120.0
        );
        assert!(
            first
                .iter()
                .all(|e| e.as_proto().source_id == program_name())
        );
        // The report's own 4 envelopes, emitted and then sent, and the one
        // queued, sent too: the latter is news, and the report covers both.
        stats.emitted += 4;
        stats.sent += 5;
        stats.queued = 0;
        let next = sent(metrics.report(stats.clone(), false));
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
        assert!(
            metrics.report(Stats::default(), false).is_empty(),
            "nothing moved"
        );
        let stats = Stats {
            emitted: 1,
            sent: 1,
            ..Stats::default()
        };
        let first = sent(metrics.report(stats.clone(), false));
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|e| e.as_proto().source_id.is_empty()));
        let own = Stats {
            emitted: 4,
            sent: 4,
            ..stats
        };
        assert!(metrics.report(own.clone(), false).is_empty());
        assert!(
            metrics.report(own.clone(), false).is_empty(),
            "and stays quiet"
        );
        // At close the report covers what the reports moved.
        let last = sent(metrics.report(own.clone(), true));
        assert_eq!(
            counters(&last),
            vec![
                ("loggregator_client_emitted".into(), 3, 0, None),
                ("loggregator_client_sent".into(), 3, 0, None),
            ]
        );
        let mut closed = SelfMetrics::new(true);
        assert!(closed.report(Stats::default(), true).is_empty());
    }

    /// At least once, a report's envelopes are sent only when their stream
    /// is confirmed, several reports later, each on a new stream.
    #[test]
    fn confirmations_of_reports_alone_do_not_keep_an_idle_client_reporting() {
        let mut metrics = SelfMetrics::new(true);
        let mut stats = Stats {
            emitted: 5,
            in_flight: 5,
            ..Stats::default()
        };
        let mut unconfirmed = vec![5];
        let mut reports = 0;
        for _ in 0..20 {
            let count = sent(metrics.report(stats.clone(), false)).len() as u64;
            if count > 0 {
                reports += 1;
                stats.reconnects += 1;
            }
            stats.emitted += count;
            unconfirmed.push(count);
            // What was written three pulses ago is confirmed now.
            if unconfirmed.len() > 3 {
                let confirmed = unconfirmed.remove(0);
                stats.sent += confirmed;
            }
            stats.in_flight = unconfirmed.iter().sum();
        }
        // The first three reports see the others' 5 unsent; the fourth sees
        // them sent, and covers that; after it only reports moved.
        assert_eq!(reports, 4);
        assert!(metrics.report(stats.clone(), false).is_empty());
        // Others emitting is news again.
        stats.emitted += 1;
        assert!(!metrics.report(stats, false).is_empty());
    }

    #[test]
    fn a_delta_the_queue_dropped_goes_out_with_the_next_report() {
        let mut metrics = SelfMetrics::new(true);
        let mut stats = Stats {
            emitted: 3,
            ..Stats::default()
        };
        stats.dropped.queue_full = 3;
        // The queue refuses the whole report, 3 envelopes: every token is dropped.
        let refused = metrics.report(stats.clone(), false);
        assert_eq!(refused.len(), 3);
        drop(refused);
        stats.emitted += 3;
        stats.dropped.queue_full += 3;
        // Others emit 1 more, dropped too.
        stats.emitted += 1;
        stats.dropped.queue_full += 1;
        let next = sent(metrics.report(stats.clone(), false));
        assert_eq!(
            counters(&next),
            vec![
                ("loggregator_client_emitted".into(), 7, 0, None),
                (
                    "loggregator_client_dropped".into(),
                    7,
                    0,
                    Some("queue_full".into())
                ),
            ]
        );
        // A refused delta with nothing else moving still goes out at close.
        let (_gauge, rest) = {
            let mut report = metrics.report(
                Stats {
                    emitted: stats.emitted + 3,
                    ..stats.clone()
                },
                true,
            );
            let gauge = report.pop().unwrap();
            (gauge, report)
        };
        assert_eq!(rest.len(), 1, "emitted moved by the report");
        drop(rest);
        assert!(
            !metrics
                .report(
                    Stats {
                        emitted: stats.emitted + 3,
                        ..stats
                    },
                    true
                )
                .is_empty(),
            "carried"
        );
    }
}
