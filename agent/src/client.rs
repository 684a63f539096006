//! Streaming readings to the scheduler: sample every device of a [`PowerSource`], buffer the
//! batches, and deliver them over `AgentService.StreamSamples`, reconnecting with exponential
//! backoff and replaying in order what the scheduler has not confirmed.
//!
//! Delivery: a batch leaves the buffer only when the stream it was sent on closes with a
//! `StreamSummary`, so the agent rotates streams every [`UplinkConfig::batches_per_stream`]
//! batches. Anything sent on a stream that broke is replayed on the next one with the same
//! sequence number; the scheduler skips sequences it has already metered. Sequence numbers are
//! given when a batch is first sent, after registering, and start after the highest the
//! scheduler reports having accepted, so a restarted agent's batches are not taken for replays.
//!
//! The buffer is bounded ([`MAX_BUFFERED_BATCHES`]); when it is full the oldest batch is
//! dropped (logged, counted). Since the scheduler meters energy from counter deltas, a dropped
//! batch loses time resolution, not energy: the next delivered sample's delta covers the gap.
//!
//! Layout: [`Sampler`] reads a source into batches (synchronous, so tests drive it with a
//! manual clock); [`spawn_uplink`] delivers them; [`run`] wires both to the simulated source on
//! a real interval for the `offpeak-agent` binary.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{Device, RegisterRequest, Sample, SampleBatch};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::clock::{Clock, MonotonicClock};
use crate::sim::{PowerProfile, SimConfig, SimulatedSource};
use crate::source::{DeviceInfo, PowerSource, Provenance, Reading, SourceError};

/// The most batches kept while the scheduler is away: one hour at the default 1 s interval. A
/// batch of 8 GPUs is about 1 KiB in memory, so the buffer stays under 4 MiB, within the
/// agent's 20 MiB budget (issue 4), and an hour covers a scheduler rollout or node drain.
pub const MAX_BUFFERED_BATCHES: usize = 3_600;

/// Batches per stream before it is closed to have them confirmed: one minute at 1 s, so a
/// broken stream costs at most a minute of replay.
pub const DEFAULT_BATCHES_PER_STREAM: usize = 60;

/// Batches waiting between the sampler and the uplink task. The task drains them at once
/// (into its buffer) whether connected or not, so this only absorbs scheduling jitter.
const INPUT_QUEUE: usize = 64;

/// How long connecting may take before it counts as a failure and is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("starting the power source: {0}")]
    StartSource(#[source] SourceError),
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
    /// At most this many batches are buffered; the oldest go first.
    pub buffer_limit: usize,
    /// After the sampler stops, how long the uplink keeps trying to deliver what is buffered.
    pub flush_timeout: Duration,
}

impl UplinkConfig {
    /// Defaults for everything but the address and identity: backoff from 100 ms to 30 s (a
    /// restarting scheduler is back in seconds; 30 s keeps a fleet of agents from hammering
    /// one that is not), [`DEFAULT_BATCHES_PER_STREAM`], [`MAX_BUFFERED_BATCHES`], and 10 s to
    /// flush on shutdown (well inside Kubernetes' default 30 s termination grace period).
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
            buffer_limit: MAX_BUFFERED_BATCHES,
            flush_timeout: Duration::from_secs(10),
        }
    }
}

/// What the uplink did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkReport {
    /// Batches the scheduler confirmed.
    pub confirmed: u64,
    /// Batches dropped because the buffer was full.
    pub dropped: u64,
    /// Batches still buffered when the uplink gave up flushing.
    pub unsent: u64,
    /// Streams that broke (or could not be opened) and were retried.
    pub reconnects: u64,
}

/// Reads every device of a source into the samples of one batch.
#[derive(Debug)]
pub struct Sampler<S> {
    source: S,
    /// Unix time, in ms, of the source clock's origin: readings carry clock time.
    unix_origin_ms: i64,
}

impl<S: PowerSource> Sampler<S> {
    /// `unix_origin_ms` is the Unix time of the source clock's zero.
    pub fn new(source: S, unix_origin_ms: i64) -> Self {
        Self {
            source,
            unix_origin_ms,
        }
    }

    /// The source, e.g. to read its counters in a test.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The inventory to register.
    pub fn devices(&self) -> Vec<Device> {
        self.source.devices().iter().map(to_device).collect()
    }

    /// Reads every device once. A device that fails to read is logged and left out; the
    /// others' samples still go.
    pub fn sample(&mut self) -> Vec<Sample> {
        let origin = self.unix_origin_ms;
        self.source
            .read_all()
            .into_iter()
            .filter_map(|r| match r {
                Ok(reading) => Some(to_sample(&reading, origin)),
                Err(e) => {
                    warn!(error = %e, "reading a device failed; its sample is left out");
                    None
                }
            })
            .collect()
    }
}

fn to_device(d: &DeviceInfo) -> Device {
    // Whole watts are what the wire carries; limits are set in whole watts too.
    let watts = |w: f64| w.round().clamp(0.0, f64::from(u32::MAX)) as u32;
    let range = d.power_limit;
    Device {
        uuid: d.uuid.clone(),
        model: d.model.clone(),
        min_power_limit_watts: range.map_or(0, |r| watts(r.min_watts)),
        max_power_limit_watts: range.map_or(0, |r| watts(r.max_watts)),
        default_power_limit_watts: range.map_or(0, |r| watts(r.default_watts)),
    }
}

fn to_sample(r: &Reading, unix_origin_ms: i64) -> Sample {
    let at_ms = i64::try_from(r.at.as_millis()).unwrap_or(i64::MAX);
    Sample {
        device_uuid: r.device_uuid.clone(),
        time_unix_ms: unix_origin_ms.saturating_add(at_ms),
        power_watts: r.power_watts,
        energy_mj: r.energy_mj,
        // Percent, as the sources report it.
        utilization: r.utilisation_percent.map_or(0.0, f64::from),
        sm_clock_mhz: r.sm_clock_mhz.unwrap_or(0),
        pod: None,
        // The wire has one flag for "not read from hardware"; simulated figures must not pass
        // for measured ones either.
        estimated: r.power_provenance != Provenance::Measured
            || r.energy_provenance != Provenance::Measured,
    }
}

/// A buffered batch; its sequence is given when it is first sent.
#[derive(Debug)]
struct Pending {
    sequence: Option<u64>,
    samples: Vec<Sample>,
}

/// Starts the uplink task. Send each batch's samples into the returned sender; drop it to stop
/// the uplink, which then flushes (up to `flush_timeout`) and returns its report.
pub fn spawn_uplink(
    config: UplinkConfig,
    devices: Vec<Device>,
) -> Result<(mpsc::Sender<Vec<Sample>>, JoinHandle<UplinkReport>), ClientError> {
    let endpoint = Endpoint::from_shared(config.scheduler.clone())
        .map_err(|e| ClientError::ParseSchedulerUri {
            uri: config.scheduler.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let span = info_span!("uplink", node = %config.node, scheduler = %config.scheduler);
    let uplink = Uplink {
        backoff: config.backoff_initial,
        config,
        endpoint,
        devices,
        input: rx,
        input_closed: false,
        flush_deadline: None,
        buffer: VecDeque::new(),
        next_sequence: 1,
        report: UplinkReport::default(),
    };
    Ok((tx, tokio::spawn(uplink.run().instrument(span))))
}

#[derive(Debug)]
struct Uplink {
    config: UplinkConfig,
    endpoint: Endpoint,
    devices: Vec<Device>,
    input: mpsc::Receiver<Vec<Sample>>,
    input_closed: bool,
    /// Set when the input closes: the time the uplink stops trying to flush.
    flush_deadline: Option<tokio::time::Instant>,
    buffer: VecDeque<Pending>,
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
        info!(report = ?self.report, "uplink stopped");
        self.report
    }

    /// Buffers a batch, dropping the oldest when full.
    fn push(&mut self, samples: Vec<Sample>) {
        if self.buffer.len() >= self.config.buffer_limit.max(1) {
            self.buffer.pop_front();
            self.report.dropped += 1;
            warn!(
                limit = self.config.buffer_limit,
                "buffer full: dropped the oldest batch (its energy is still in later counters)"
            );
        }
        self.buffer.push_back(Pending {
            sequence: None,
            samples,
        });
    }

    /// Takes one input message (or notes that the input closed).
    fn accept_input(&mut self, input: Option<Vec<Sample>>) {
        match input {
            Some(samples) => self.push(samples),
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

    fn batch_of(&mut self, index: usize, agent_id: &str) -> Option<SampleBatch> {
        let next = &mut self.next_sequence;
        let pending = self.buffer.get_mut(index)?;
        let sequence = *pending.sequence.get_or_insert_with(|| {
            let s = *next;
            *next += 1;
            s
        });
        Some(SampleBatch {
            agent_id: agent_id.to_owned(),
            sequence,
            samples: pending.samples.clone(),
            curves: vec![],
        })
    }

    /// One connection: register, replay the buffer, send new batches, close the stream after
    /// `batches_per_stream` (or when the input closes) and drop what the scheduler confirmed.
    async fn session(&mut self) -> Result<(), ClientError> {
        let channel: Channel = self
            .endpoint
            .connect()
            .await
            .map_err(ClientError::Connect)?;
        let mut client = AgentServiceClient::new(channel);
        let registered = client
            .register(RegisterRequest {
                node: self.config.node.clone(),
                zone: self.config.zone.clone(),
                devices: self.devices.clone(),
            })
            .await
            .map_err(ClientError::Register)?
            .into_inner();
        self.next_sequence = self
            .next_sequence
            .max(registered.last_sequence.saturating_add(1));
        self.backoff = self.config.backoff_initial;
        debug!(agent_id = %registered.agent_id, last_sequence = registered.last_sequence, buffered = self.buffer.len(), "registered");

        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        let call = client.stream_samples(UnboundedReceiverStream::new(stream_rx));
        tokio::pin!(call);
        let mut last_sent = None;
        let mut in_stream = 0;
        // Replay first, in order, then what arrives.
        for index in 0..self.buffer.len() {
            if let Some(batch) = self.batch_of(index, &registered.agent_id) {
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
                    Some(samples) => {
                        self.push(samples);
                        let newest = self.buffer.len().saturating_sub(1);
                        if let Some(batch) = self.batch_of(newest, &registered.agent_id) {
                            last_sent = Some(batch.sequence);
                            in_stream += 1;
                            let _ = stream_tx.send(batch);
                        }
                    }
                    None => self.close_input(),
                }
            }
        }
        drop(stream_tx);
        let summary = call.await.map_err(ClientError::StreamSamples)?.into_inner();
        let mut confirmed = 0;
        while let Some(front) = self.buffer.front() {
            match (front.sequence, last_sent) {
                (Some(s), Some(last)) if s <= last => {
                    self.buffer.pop_front();
                    confirmed += 1;
                }
                _ => break,
            }
        }
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
fn error_chain(e: &dyn std::error::Error) -> String {
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

/// Where readings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Simulated GPUs playing a bundled Zeus profile.
    Sim,
}

/// Which bundled profile the simulated source plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimProfile {
    V100,
    A40,
}

/// Everything `offpeak-agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub uplink: UplinkConfig,
    pub source: SourceKind,
    pub profile: SimProfile,
    /// Simulated devices.
    pub devices: usize,
    /// Seeds the simulated noise (and the device UUIDs).
    pub seed: u64,
    /// Time between samples.
    pub interval: Duration,
}

/// Samples the configured source every `interval` and streams to the scheduler until
/// `shutdown` completes, then flushes and returns the uplink's report.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<UplinkReport, ClientError> {
    let span = info_span!("agent", node = %config.uplink.node, devices = config.devices);
    async move {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
        let SourceKind::Sim = config.source;
        let profile = match config.profile {
            SimProfile::V100 => PowerProfile::bundled_v100_resnet50(),
            SimProfile::A40 => PowerProfile::bundled_a40_resnet50(),
        }
        .map_err(ClientError::StartSource)?;
        let sim = SimConfig {
            seed: config.seed,
            ..SimConfig::default()
        };
        let source = SimulatedSource::new(Arc::clone(&clock), sim, profile, config.devices)
            .map_err(ClientError::StartSource)?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let origin_ms = now_ms - i64::try_from(clock.now().as_millis()).unwrap_or(0);
        let mut sampler = Sampler::new(source, origin_ms);
        let (tx, uplink) = spawn_uplink(config.uplink.clone(), sampler.devices())?;
        let mut ticks = tokio::time::interval(config.interval);
        // A late tick is sampled once, not caught up: the counter carries the energy anyway.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        info!(interval = ?config.interval, "sampling");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticks.tick() => {
                    if tx.send(sampler.sample()).await.is_err() {
                        // The uplink only ends when we drop the sender, or if it panicked.
                        warn!("the uplink stopped early");
                        break;
                    }
                }
            }
        }
        info!("stopping: flushing the buffer");
        drop(tx);
        Ok(uplink.await.unwrap_or_else(|e| {
            warn!(error = %e, "the uplink task failed");
            UplinkReport::default()
        }))
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn samples_carry_counters_unix_time_and_are_marked_not_measured() -> Result<(), SourceError> {
        let clock = ManualClock::new();
        let source = SimulatedSource::new(
            Arc::new(clock.clone()),
            SimConfig::flat(),
            PowerProfile::bundled_v100_resnet50()?,
            2,
        )?;
        let mut sampler = Sampler::new(source, 1_700_000_000_000);
        assert_eq!(sampler.devices().len(), 2);
        clock.advance(Duration::from_secs(2));
        let samples = sampler.sample();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].time_unix_ms, 1_700_000_002_000);
        assert!(samples[0].estimated);
        // Flat draw for 2 s: the counter is twice the reported power, in mJ.
        assert_eq!(
            samples[0].energy_mj,
            (samples[0].power_watts * 2_000.0).round() as u64
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_full_buffer_drops_the_oldest_and_an_unreachable_scheduler_leaves_the_rest_unsent()
    -> Result<(), Box<dyn std::error::Error>> {
        // Port 9 (discard) on loopback: nothing listens there on a test machine, so every
        // connection is refused at once.
        let config = UplinkConfig {
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            buffer_limit: 2,
            flush_timeout: Duration::from_millis(100),
            ..UplinkConfig::new("http://127.0.0.1:9", "n", "z")
        };
        let (tx, uplink) = spawn_uplink(config, vec![])?;
        for _ in 0..3 {
            assert!(tx.send(vec![Sample::default()]).await.is_ok());
        }
        drop(tx);
        let report = tokio::time::timeout(Duration::from_secs(10), uplink).await??;
        assert_eq!((report.dropped, report.unsent, report.confirmed), (1, 2, 0));
        assert!(report.reconnects >= 1);
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
