//! Starting a client: what it starts from ([`Config`]), the threads it
//! starts (the sender, and the pulse once a metric needs it), and what
//! every clone of the handle shares ([`Inner`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use parking_lot::Mutex;

use crate::LOG_TARGET;
use crate::batch::Stamp;
use crate::error::{Error, Result};
use crate::grpc::{ChannelSettings, GrpcTransport};
use crate::pulse::{PulseCommand, Pulses};
use crate::queue::{Queue, QueueSettings};
use crate::self_metrics::SelfMetrics;
use crate::sender::{Control, SenderLoop, Settings};
use crate::source::SourceInfo;
use crate::stats::Counters;

/// What every clone of the handle shares. Dropping the last handle closes
/// the client; no thread of the client's holds one, so that happens on the
/// caller's thread.
pub(super) struct Inner {
    pub(super) addr: String,
    /// The emitting side of the queue; the pulse thread holds it too.
    pub(super) queue: Arc<Queue>,
    pub(super) counters: Arc<Counters>,
    pub(super) pulses: Arc<Pulses>,
    pub(super) pulse_interval: Duration,
    pub(super) control: Sender<Control>,
    /// Commands to the pulse thread, once started.
    pub(super) pulse_thread: Mutex<Option<Sender<PulseCommand>>>,
    /// Disconnects when close begins, stopping the pulse thread.
    pub(super) closing: Receiver<()>,
    pub(super) close_signal: Mutex<Option<Sender<()>>>,
    /// What unary sends add to each envelope, as the sender thread does:
    /// the default source where an envelope names none, the client's tags.
    pub(super) stamp: Arc<Stamp>,
    pub(super) batch_max_bytes: usize,
    pub(super) close_on_drop_timeout: Duration,
    pub(super) sender_thread: Mutex<Option<SenderThread>>,
}

pub(super) struct SenderThread {
    pub(super) handle: JoinHandle<()>,
    /// Disconnects when the thread exits.
    pub(super) exited: Receiver<()>,
}

/// Everything `build()` checked, to start a client from.
pub(crate) struct Config {
    pub addr: String,
    pub sender: Settings,
    pub channel: ChannelSettings,
    pub queue: QueueSettings,
    pub stamp: Stamp,
    pub source: Option<SourceInfo>,
    pub pulse_interval: Duration,
    pub self_metrics: bool,
    pub close_on_drop_timeout: Duration,
}

impl Inner {
    /// Starts the sender thread, and the pulse thread if the client reports
    /// on itself; the channel connects on the first write.
    pub(super) fn start(config: Config) -> Result<Inner> {
        let counters = Arc::new(Counters::default());
        let stamp = Arc::new(config.stamp);
        let (wake, wakeups) = bounded(1);
        let batch_max_bytes = config.queue.batch_max_bytes;
        let (queue, receiver) =
            Queue::new(config.queue, stamp.clone(), counters.clone(), wake.clone());
        let (control, control_rx) = unbounded();
        let (exited_tx, exited) = bounded::<()>(0);
        let (settings, channel) = (config.sender, config.channel);
        let sender_stamp = stamp.clone();
        let worker_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{}sender", crate::THREAD_PREFIX))
            .spawn(move || {
                crate::mark_own_thread();
                let _exited = exited_tx;
                let transport = GrpcTransport::new(&channel);
                SenderLoop::new(
                    transport,
                    receiver,
                    control_rx,
                    sender_stamp,
                    settings,
                    worker_counters,
                    wake,
                    wakeups,
                )
                .run();
            })
            .map_err(Error::Spawn)?;
        let queue = Arc::new(queue);
        let (close_signal, closing) = bounded::<()>(0);
        let self_metrics = config.self_metrics;
        let inner = Inner {
            addr: config.addr,
            pulses: Arc::new(Pulses::new(
                queue.clone(),
                config
                    .self_metrics
                    .then(|| SelfMetrics::new(config.source.is_some())),
            )),
            queue,
            counters,
            pulse_interval: config.pulse_interval,
            control,
            pulse_thread: Mutex::new(None),
            closing,
            close_signal: Mutex::new(Some(close_signal)),
            stamp,
            batch_max_bytes,
            close_on_drop_timeout: config.close_on_drop_timeout,
            sender_thread: Mutex::new(Some(SenderThread { handle, exited })),
        };
        if self_metrics {
            inner.start_pulse_thread();
        }
        Ok(inner)
    }

    /// Starts the thread behind pulse metrics and process metrics, once.
    pub(super) fn start_pulse_thread(&self) {
        let mut thread = self.pulse_thread.lock();
        if thread.is_some() || self.queue.is_closed() {
            return;
        }
        let pulses = self.pulses.clone();
        let closing = self.closing.clone();
        match crate::pulse::start_thread(pulses, closing, self.pulse_interval) {
            Ok(commands) => *thread = Some(commands),
            Err(error) => log::error!(target: LOG_TARGET, "cannot start the pulse thread: {error}"),
        }
    }
}
