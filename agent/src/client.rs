//! The uplink: delivers batches to the scheduler over `AgentService.StreamSamples`, buffering
//! what it has not confirmed ([`BatchBuffer`], in memory or on disk), reconnecting with
//! exponential backoff and replaying in order.
//!
//! Delivery: a batch leaves the buffer only when the stream it was sent on closes with a
//! `StreamSummary`, so the uplink rotates streams every [`UplinkConfig::batches_per_stream`]
//! batches. Anything sent on a stream that broke is replayed on the next one with the same
//! sequence number; the scheduler skips sequences it has already metered. Sequence numbers are
//! given when a batch is first sent, after registering, and start after the highest the
//! scheduler reports having accepted (and after any a restarted agent finds in its on-disk
//! buffer), so a restarted agent's new batches are not taken for replays.
//!
//! Layout: [`spawn_uplink`] starts the task; [`Uplink::session`] is one connection.

use std::path::PathBuf;
use std::time::Duration;

use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{Device, RegisterRequest, RegisterResponse, SampleBatch};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::buffer::{BatchBuffer, BufferError, BufferLimits};
use crate::source::SourceError;

/// Batches per stream before it is closed to have them confirmed: one minute at 1 s, so a
/// broken stream costs at most a minute of replay.
pub const DEFAULT_BATCHES_PER_STREAM: usize = 60;

/// Batches waiting between the sampler and the uplink task. The task drains them at once
/// (into its buffer) whether connected or not, so this only absorbs scheduling jitter.
const INPUT_QUEUE: usize = 64;

/// How long connecting may take before it counts as a failure and is retried.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failure of the agent's client side; each variant is named after the operation that failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("parsing the scheduler address {uri:?}: {reason}")]
    ParseSchedulerUri { uri: String, reason: String },
    #[error("connecting to the scheduler: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("registering with the scheduler: {0}")]
    Register(#[source] tonic::Status),
    #[error("streaming samples: {0}")]
    StreamSamples(#[source] tonic::Status),
    #[error("receiving commands: {0}")]
    ReceiveCommands(#[source] tonic::Status),
    #[error("reporting a command acknowledgement: {0}")]
    ReportAck(#[source] tonic::Status),
    #[error("starting the power source: {0}")]
    StartSource(#[source] SourceError),
    #[error("opening the sample buffer: {0}")]
    OpenBuffer(#[source] BufferError),
    #[error("sending to the uplink: it stopped")]
    UplinkStopped,
    #[error("watching pod resources: {0}")]
    WatchPods(String),
}

/// How the uplink reaches the scheduler and who it says it is.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// The scheduler's gRPC address, e.g. `http://127.0.0.1:7700`.
    pub scheduler: String,
    pub node: String,
    pub zone: String,
    /// The first reconnect delay; it doubles after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub batches_per_stream: usize,
    /// How much is buffered at most; beyond it the oldest batches go first.
    pub buffer_limits: BufferLimits,
    /// Where the buffer lives on disk (surviving agent restarts); `None` keeps it in memory.
    pub buffer_dir: Option<PathBuf>,
    /// After the sampler stops, how long the uplink keeps trying to deliver what is buffered.
    pub flush_timeout: Duration,
}

impl UplinkConfig {
    /// Defaults for everything but the address and identity: backoff from 100 ms to 30 s (a
    /// restarting scheduler is back in seconds; 30 s keeps a fleet of agents from hammering
    /// one that is not), [`DEFAULT_BATCHES_PER_STREAM`], the default [`BufferLimits`] in
    /// memory, and 10 s to flush on shutdown (well inside Kubernetes' default 30 s
    /// termination grace period).
    pub fn new(
        scheduler: impl Into<String>,
        node: impl Into<String>,
        zone: impl Into<String>,
    ) -> Self {
        Self {
            scheduler: scheduler.into(),
            node: node.into(),
            zone: zone.into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            batches_per_stream: DEFAULT_BATCHES_PER_STREAM,
            buffer_limits: BufferLimits::default(),
            buffer_dir: None,
            flush_timeout: Duration::from_secs(10),
        }
    }

    /// The gRPC endpoint, with the connect timeout.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ClientError> {
        Ok(Endpoint::from_shared(self.scheduler.clone())
            .map_err(|e| ClientError::ParseSchedulerUri {
                uri: self.scheduler.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT))
    }
}

/// Connects to the scheduler and registers this node and its devices: how every session of
/// either link (this uplink and the [command link](crate::commands)) begins, since the
/// scheduler knows an agent only by the id registering gives.
pub(crate) async fn connect_and_register(
    endpoint: &Endpoint,
    config: &UplinkConfig,
    devices: &[Device],
) -> Result<(AgentServiceClient<Channel>, RegisterResponse), ClientError> {
    let channel = endpoint.connect().await.map_err(ClientError::Connect)?;
    let mut client = AgentServiceClient::new(channel);
    let registered = client
        .register(RegisterRequest {
            node: config.node.clone(),
            zone: config.zone.clone(),
            devices: devices.to_vec(),
        })
        .await
        .map_err(ClientError::Register)?
        .into_inner();
    Ok((client, registered))
}

/// What the uplink did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkReport {
    /// Batches the scheduler confirmed.
    pub confirmed: u64,
    /// Batches dropped because the buffer was full, or lost to an unreadable buffer file.
    pub dropped: u64,
    /// Batches still buffered when the uplink gave up flushing (on disk, they are replayed by
    /// the next run).
    pub unsent: u64,
    /// Streams that broke (or could not be opened) and were retried.
    pub reconnects: u64,
}

/// Starts the uplink task. Send each batch (samples and curves; `agent_id` and `sequence` are
/// filled in here) into the returned sender; drop it to stop the uplink, which then flushes
/// (up to `flush_timeout`) and returns its report.
pub fn spawn_uplink(
    config: UplinkConfig,
    devices: Vec<Device>,
) -> Result<(mpsc::Sender<SampleBatch>, JoinHandle<UplinkReport>), ClientError> {
    let endpoint = config.endpoint()?;
    let buffer = match &config.buffer_dir {
        Some(dir) => {
            BatchBuffer::open(dir, config.buffer_limits)
                .map_err(ClientError::OpenBuffer)?
                .0
        }
        None => BatchBuffer::in_memory(config.buffer_limits),
    };
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let span = info_span!("uplink", node = %config.node, scheduler = %config.scheduler);
    let uplink = Uplink {
        backoff: config.backoff_initial,
        next_sequence: buffer.last_sequence().map_or(1, |s| s + 1),
        config,
        endpoint,
        devices,
        input: rx,
        input_closed: false,
        flush_deadline: None,
        buffer,
        report: UplinkReport::default(),
    };
    Ok((tx, tokio::spawn(uplink.run().instrument(span))))
}

#[derive(Debug)]
struct Uplink {
    config: UplinkConfig,
    endpoint: Endpoint,
    devices: Vec<Device>,
    input: mpsc::Receiver<SampleBatch>,
    input_closed: bool,
    /// Set when the input closes: the time the uplink stops trying to flush.
    flush_deadline: Option<tokio::time::Instant>,
    buffer: BatchBuffer,
    next_sequence: u64,
    backoff: Duration,
    report: UplinkReport,
}

impl Uplink {
    async fn run(mut self) -> UplinkReport {
        loop {
            if let Some(deadline) = self.flush_deadline {
                if self.buffer.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    warn!(unsent = self.buffer.len(), "giving up flushing the buffer");
                    break;
                }
            }
            match self.session().await {
                Ok(()) => {}
                Err(e) => {
                    self.report.reconnects += 1;
                    warn!(error = %error_chain(&e), retry_in = ?self.backoff, buffered = self.buffer.len(), "scheduler unreachable");
                    self.wait_backoff().await;
                    self.backoff = (self.backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        self.report.unsent = self.buffer.len() as u64;
        self.report.dropped += self.buffer.dropped();
        info!(report = ?self.report, "uplink stopped");
        self.report
    }

    /// Buffers a batch (with its sequence, or 0 for none yet). A batch the buffer cannot keep
    /// (a disk error) is logged as lost: its energy is still in later counters.
    fn push(&mut self, batch: SampleBatch) {
        if let Err(e) = self.buffer.push(batch) {
            error!(error = %e, "buffering a batch failed; it is lost (its energy is still in later counters)");
            self.report.dropped += 1;
        }
    }

    /// Takes one input message (or notes that the input closed).
    fn accept_input(&mut self, input: Option<SampleBatch>) {
        match input {
            Some(batch) => self.push(SampleBatch {
                sequence: 0,
                ..batch
            }),
            None => self.close_input(),
        }
    }

    /// The sampler stopped: from now on only the buffer is delivered, until the flush deadline.
    fn close_input(&mut self) {
        self.input_closed = true;
        self.flush_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + self.config.flush_timeout);
    }

    /// Waits out the backoff, still taking batches in.
    async fn wait_backoff(&mut self) {
        let until = tokio::time::Instant::now() + self.backoff;
        // Flushing: the last attempt is not put off past the deadline.
        let capped =
            |deadline: Option<tokio::time::Instant>| deadline.map_or(until, |d| until.min(d));
        let sleep = tokio::time::sleep_until(capped(self.flush_deadline));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                input = self.input.recv(), if !self.input_closed => {
                    self.accept_input(input);
                    sleep.as_mut().reset(capped(self.flush_deadline));
                }
            }
        }
    }

    /// The buffered batch at `position`, given a sequence if it had none. A batch that cannot
    /// be read back is logged, counted as lost and removed.
    fn replay_batch(&mut self, position: usize, agent_id: &str) -> Option<SampleBatch> {
        let sequence = match self.buffer.sequence(position) {
            Some(s) => s,
            None => {
                let s = self.next_sequence;
                if let Err(e) = self.buffer.assign(position, s) {
                    error!(error = %e, "numbering a buffered batch failed; sending it anyway");
                }
                self.next_sequence += 1;
                s
            }
        };
        match self.buffer.get(position) {
            Ok(Some(batch)) => Some(SampleBatch {
                agent_id: agent_id.to_owned(),
                sequence,
                ..batch
            }),
            Ok(None) => None,
            Err(e) => {
                error!(error = %e, "a buffered batch cannot be read back; it is lost");
                self.report.dropped += 1;
                None
            }
        }
    }

    /// One connection: register, replay the buffer, send new batches, close the stream after
    /// `batches_per_stream` (or when the input closes) and drop what the scheduler confirmed.
    async fn session(&mut self) -> Result<(), ClientError> {
        let (mut client, registered) =
            connect_and_register(&self.endpoint, &self.config, &self.devices).await?;
        self.next_sequence = self
            .next_sequence
            .max(registered.last_sequence.saturating_add(1));
        self.backoff = self.config.backoff_initial;
        let agent_id = registered.agent_id;
        debug!(%agent_id, last_sequence = registered.last_sequence, buffered = self.buffer.len(), "registered");

        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        let call = client.stream_samples(UnboundedReceiverStream::new(stream_rx));
        tokio::pin!(call);
        let mut last_sent = None;
        let mut in_stream = 0;
        // Replay first, in order, then what arrives.
        for position in 0..self.buffer.len() {
            if let Some(batch) = self.replay_batch(position, &agent_id) {
                last_sent = Some(batch.sequence);
                in_stream += 1;
                // A closed receiver means the call already ended; the select below sees why.
                let _ = stream_tx.send(batch);
            }
        }
        while in_stream < self.config.batches_per_stream.max(1) && !self.input_closed {
            tokio::select! {
                ended = &mut call => {
                    // The scheduler ended the stream before we closed it: nothing sent on it
                    // counts as confirmed, so all of it is replayed.
                    return Err(ClientError::StreamSamples(match ended {
                        Err(status) => status,
                        Ok(_) => tonic::Status::aborted("the scheduler closed the stream early"),
                    }));
                }
                input = self.input.recv() => match input {
                    Some(batch) => {
                        let batch = SampleBatch {
                            agent_id: agent_id.clone(),
                            sequence: self.next_sequence,
                            ..batch
                        };
                        self.next_sequence += 1;
                        last_sent = Some(batch.sequence);
                        in_stream += 1;
                        self.push(batch.clone());
                        let _ = stream_tx.send(batch);
                    }
                    None => self.close_input(),
                }
            }
        }
        drop(stream_tx);
        let summary = call.await.map_err(ClientError::StreamSamples)?.into_inner();
        let confirmed = match last_sent {
            Some(last) => self.buffer.confirm_through(last).unwrap_or_else(|e| {
                // The batches stay and are replayed; the scheduler skips them as duplicates.
                error!(error = %e, "removing confirmed batches failed");
                0
            }),
            None => 0,
        };
        self.report.confirmed += confirmed;
        debug!(
            confirmed,
            accepted = summary.accepted,
            duplicates = summary.duplicates,
            rejected = summary.rejected,
            "stream confirmed"
        );
        Ok(())
    }
}

/// An error with its causes, for logs: transport errors say little at the top ("transport
/// error") and the reason ("connection refused") underneath.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use offpeak_proto::v1::Sample;

    use super::*;

    fn batch() -> SampleBatch {
        SampleBatch {
            samples: vec![Sample::default()],
            ..SampleBatch::default()
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_the_oldest_and_an_unreachable_scheduler_leaves_the_rest_unsent()
    -> Result<(), Box<dyn std::error::Error>> {
        // Port 9 (discard) on loopback: nothing listens there on a test machine, so every
        // connection is refused at once.
        let config = UplinkConfig {
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            buffer_limits: BufferLimits {
                batches: 2,
                bytes: u64::MAX,
            },
            flush_timeout: Duration::from_millis(100),
            ..UplinkConfig::new("http://127.0.0.1:9", "n", "z")
        };
        let (tx, uplink) = spawn_uplink(config, vec![])?;
        for _ in 0..3 {
            assert!(tx.send(batch()).await.is_ok());
        }
        drop(tx);
        let report = tokio::time::timeout(Duration::from_secs(10), uplink).await??;
        assert_eq!((report.dropped, report.unsent, report.confirmed), (1, 2, 0));
        assert!(report.reconnects >= 1);
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_leaves_batches_on_disk_for_the_next_run()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = UplinkConfig {
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            buffer_dir: Some(dir.path().to_owned()),
            flush_timeout: Duration::from_millis(50),
            ..UplinkConfig::new("http://127.0.0.1:9", "n", "z")
        };
        let (tx, uplink) = spawn_uplink(config, vec![])?;
        for _ in 0..4 {
            assert!(tx.send(batch()).await.is_ok());
        }
        drop(tx);
        let report = tokio::time::timeout(Duration::from_secs(10), uplink).await??;
        assert_eq!(report.unsent, 4);
        let (buffer, loaded) = BatchBuffer::open(dir.path(), BufferLimits::default())?;
        assert_eq!((loaded.batches, buffer.len()), (4, 4));
        Ok(())
    }

    #[test]
    fn a_bad_scheduler_address_is_refused_up_front() {
        let config = UplinkConfig::new("not a uri", "n", "z");
        assert!(matches!(
            spawn_uplink(config, vec![]),
            Err(ClientError::ParseSchedulerUri { .. })
        ));
    }
}
