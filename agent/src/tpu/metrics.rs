//! A client of the TPU runtime's metrics service (`tpu.monitoring.runtime.RuntimeMetricService`
//! in `offpeak_proto::tpu_monitoring_runtime`), which the process that loaded libtpu serves
//! (on localhost:8431 unless its flags say otherwise; plaintext HTTP/2, which is what gRPC's
//! "local" credentials that Google's `tpu-info` uses amount to on loopback).
//!
//! One [`RuntimeMetrics::snapshot`] asks for three gauges — TensorCore duty cycle, HBM in use,
//! HBM in total — each answered with one data point per device, and checks the answers before
//! anything is estimated from them: every point names an integer device, no device twice, a
//! numeric gauge, a duty cycle within 0–100 %, byte counts that are not negative and use that
//! does not exceed the total, and, once the chips are known, no device that is not one of them.
//! An answer failing any check is rejected whole, with an error naming the metric and what is
//! wrong: one impossible figure makes the rest of that answer suspect too.

use std::collections::BTreeMap;
use std::time::Duration;

use offpeak_proto::tpu_monitoring_runtime::runtime_metric_service_client::RuntimeMetricServiceClient;
use offpeak_proto::tpu_monitoring_runtime::{
    Metric, MetricRequest, attr_value::Attr, gauge::Value, metric::Measure,
};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use crate::source::MemoryUse;
use crate::tpu::profile::DutyCycle;

/// Where libtpu serves the metrics by default (the address `tpu-info` reads).
pub const DEFAULT_ADDR: &str = "http://localhost:8431";

/// TensorCore duty cycle over libtpu's last measuring period, percent, per chip.
pub const DUTY_CYCLE: &str = "tpu.runtime.tensorcore.dutycycle.percent";
/// High-bandwidth memory in use, bytes, per device.
pub const HBM_USED: &str = "tpu.runtime.hbm.memory.usage.bytes";
/// High-bandwidth memory in total, bytes, per device.
pub const HBM_TOTAL: &str = "tpu.runtime.hbm.memory.total.bytes";

/// libtpu answers from memory over loopback in milliseconds; a call slower than this means the
/// runtime is wedged, and the agent leaves the sample out rather than hold up its command
/// handling (a refresh stops at its first failed call, so a wedged runtime costs one of these
/// per sampling tick).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Connecting over loopback either works at once or is refused; waiting longer only delays
/// the next sampling tick.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The attribute key libtpu names devices with in these gauges. Only the value is checked
/// (an integer, as `tpu-info` reads it), not the key: nothing public pins the key down beyond
/// `tpu-info`'s own test server, and refusing a real runtime over a key spelling would leave
/// TPU nodes unmetered.
const DEVICE_ID_KEY: &str = "device-id";

/// What the runtime says about one chip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipMetrics {
    pub duty_cycle: DutyCycle,
    /// `None` where the runtime reports no memory figures for the chip.
    pub hbm: Option<MemoryUse>,
}

/// One checked answer: per runtime device id, its metrics.
pub type Snapshot = BTreeMap<i64, ChipMetrics>;

/// Failure to get usable metrics from the TPU runtime; each variant is named after the
/// operation that failed.
#[derive(Debug, Error)]
pub enum TpuMetricsError {
    /// Making an endpoint of the configured address.
    #[error("parsing the TPU runtime metrics address {addr:?}: {reason}")]
    ParseAddress { addr: String, reason: String },
    /// Asking the service for one metric: it is not there (no TPU workload running, or its
    /// metrics server is off), it timed out, or it answered with an error.
    #[error(
        "asking the TPU runtime metrics service at {addr} for {metric}: {status} (the service \
         runs inside the TPU workload's process; is one running, and reachable from the agent?)"
    )]
    GetRuntimeMetric {
        addr: String,
        metric: &'static str,
        status: String,
    },
    /// Checking an answer: it made no sense.
    #[error("checking the TPU runtime's answer for {metric}: {problem}")]
    CheckAnswer {
        metric: &'static str,
        problem: AnswerProblem,
    },
    /// Reading one chip from a good answer that leaves it out (e.g. the workload uses only some
    /// of the node's chips).
    #[error("reading chip {device_id}: the TPU runtime's answer has no duty cycle for it")]
    ChipNotReported { device_id: i64 },
    /// Reading one chip twice from the same answer: the source was not refreshed between
    /// readings, and a figure already used is not reused.
    #[error("reading chip {device_id}: no answer from the TPU runtime since its last reading")]
    NoFreshAnswer { device_id: i64 },
}

/// What is wrong with an answer.
#[derive(Debug, Error, PartialEq)]
pub enum AnswerProblem {
    #[error("the answer carries no metric")]
    NoMetric,
    #[error("the answer is for metric {0:?}")]
    OtherMetric(String),
    #[error("data point {index} names no device (want an integer {DEVICE_ID_KEY:?} attribute)")]
    NoDevice { index: usize },
    #[error("data point {index} names device {device_id}, which cannot be a device id")]
    BadDeviceId { index: usize, device_id: String },
    #[error("device {0} appears twice")]
    DuplicateDevice(i64),
    #[error(
        "device {device_id} is not one of this node's chips {known:?}; the runtime and the \
         agent disagree on the chips (check --tpu-chips)"
    )]
    UnknownDevice { device_id: i64, known: Vec<i64> },
    #[error("device {0} has no numeric gauge value")]
    NoGauge(i64),
    #[error("device {device_id}: duty cycle {percent} % is outside 0–100 %")]
    DutyCycleOutOfRange { device_id: i64, percent: f64 },
    #[error("device {device_id}: {value} is not a whole, non-negative number of bytes")]
    BadBytes { device_id: i64, value: String },
    #[error("device {device_id}: {used_bytes} bytes of HBM in use exceed its {total_bytes} bytes")]
    UsedExceedsTotal {
        device_id: i64,
        used_bytes: u64,
        total_bytes: u64,
    },
    #[error("device {0} has a memory figure for use or total but not both")]
    HalfMemory(i64),
}

/// A client of the runtime's metrics service. The connection is made on first use and remade
/// after failures by tonic, so a runtime that comes and goes (TPU workloads start and end) is
/// picked up again without the agent doing anything.
#[derive(Debug, Clone)]
pub struct RuntimeMetrics {
    addr: String,
    client: RuntimeMetricServiceClient<Channel>,
}

impl RuntimeMetrics {
    /// A client for `addr` ("localhost:8431" or "http://localhost:8431"). Connects lazily, so
    /// it must be made inside a Tokio runtime but needs no service yet.
    pub fn new(addr: &str) -> Result<Self, TpuMetricsError> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint =
            Endpoint::from_shared(uri.clone()).map_err(|e| TpuMetricsError::ParseAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(Self {
            addr: uri,
            client: RuntimeMetricServiceClient::new(channel),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Every chip's duty cycle and memory now. With `known` chips, a device outside them makes
    /// the answer invalid; without, whatever the runtime reports is taken (discovery).
    pub async fn snapshot(&mut self, known: Option<&[i64]>) -> Result<Snapshot, TpuMetricsError> {
        let duty = self.gauges(DUTY_CYCLE, known).await?;
        let used = self.gauges(HBM_USED, known).await?;
        let total = self.gauges(HBM_TOTAL, known).await?;
        let check = |problem| TpuMetricsError::CheckAnswer {
            metric: DUTY_CYCLE,
            problem,
        };
        let mut snapshot = Snapshot::new();
        for (&device_id, value) in &duty {
            let percent = value.as_f64();
            let duty_cycle = DutyCycle::from_percent(percent).ok_or(check(
                AnswerProblem::DutyCycleOutOfRange { device_id, percent },
            ))?;
            let hbm = hbm_of(device_id, used.get(&device_id), total.get(&device_id))?;
            snapshot.insert(device_id, ChipMetrics { duty_cycle, hbm });
        }
        Ok(snapshot)
    }

    /// One metric's gauge per device, checked for shape.
    async fn gauges(
        &mut self,
        metric: &'static str,
        known: Option<&[i64]>,
    ) -> Result<BTreeMap<i64, GaugeValue>, TpuMetricsError> {
        let response = self
            .client
            .get_runtime_metric(MetricRequest {
                metric_name: metric.to_owned(),
                skip_node_aggregation: false,
            })
            .await
            .map_err(|status| TpuMetricsError::GetRuntimeMetric {
                addr: self.addr.clone(),
                metric,
                status: status_text(&status),
            })?
            .into_inner();
        let check = |problem| TpuMetricsError::CheckAnswer { metric, problem };
        let answer = response.metric.ok_or(check(AnswerProblem::NoMetric))?;
        if !answer.name.is_empty() && answer.name != metric {
            return Err(check(AnswerProblem::OtherMetric(answer.name)));
        }
        per_device(&answer.metrics, known).map_err(check)
    }
}

/// A gauge's value as sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GaugeValue {
    Double(f64),
    Int(i64),
}

impl GaugeValue {
    fn as_f64(self) -> f64 {
        match self {
            Self::Double(v) => v,
            Self::Int(v) => v as f64,
        }
    }

    /// Whole, non-negative bytes.
    fn as_bytes(self) -> Option<u64> {
        match self {
            Self::Int(v) => u64::try_from(v).ok(),
            // A whole double below 2^53 is exact; anything else is not a byte count.
            Self::Double(v)
                if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) =>
            {
                Some(v as u64)
            }
            Self::Double(_) => None,
        }
    }

    fn text(self) -> String {
        match self {
            Self::Double(v) => v.to_string(),
            Self::Int(v) => v.to_string(),
        }
    }
}

/// The data points of one answer by device id, with the checks every metric shares.
fn per_device(
    points: &[Metric],
    known: Option<&[i64]>,
) -> Result<BTreeMap<i64, GaugeValue>, AnswerProblem> {
    let mut out = BTreeMap::new();
    for (index, point) in points.iter().enumerate() {
        let device_id = device_id(point, index)?;
        if let Some(known) = known
            && !known.contains(&device_id)
        {
            return Err(AnswerProblem::UnknownDevice {
                device_id,
                known: known.to_vec(),
            });
        }
        let value = match &point.measure {
            Some(Measure::Gauge(g)) => match g.value {
                Some(Value::AsDouble(v)) => GaugeValue::Double(v),
                Some(Value::AsInt(v)) => GaugeValue::Int(v),
                None => return Err(AnswerProblem::NoGauge(device_id)),
            },
            None => return Err(AnswerProblem::NoGauge(device_id)),
        };
        if out.insert(device_id, value).is_some() {
            return Err(AnswerProblem::DuplicateDevice(device_id));
        }
    }
    Ok(out)
}

/// The device a data point names: an integer attribute (libtpu's [`DEVICE_ID_KEY`]), or a
/// string of digits, which newer libtpu versions send for some device attributes.
fn device_id(point: &Metric, index: usize) -> Result<i64, AnswerProblem> {
    let value = point
        .attribute
        .as_ref()
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.attr.as_ref())
        .ok_or(AnswerProblem::NoDevice { index })?;
    let bad = |shown: String| AnswerProblem::BadDeviceId {
        index,
        device_id: shown,
    };
    let id = match value {
        Attr::IntAttr(id) => *id,
        Attr::StringAttr(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| bad(format!("{s:?}")))?
        }
        Attr::StringAttr(s) => return Err(bad(format!("{s:?}"))),
    };
    if id < 0 {
        return Err(bad(id.to_string()));
    }
    Ok(id)
}

fn hbm_of(
    device_id: i64,
    used: Option<&GaugeValue>,
    total: Option<&GaugeValue>,
) -> Result<Option<MemoryUse>, TpuMetricsError> {
    let (used, total) = match (used, total) {
        (None, None) => return Ok(None),
        (Some(u), Some(t)) => (*u, *t),
        (u, _) => {
            return Err(TpuMetricsError::CheckAnswer {
                metric: if u.is_none() { HBM_USED } else { HBM_TOTAL },
                problem: AnswerProblem::HalfMemory(device_id),
            });
        }
    };
    let bytes = |metric, v: GaugeValue| {
        v.as_bytes().ok_or(TpuMetricsError::CheckAnswer {
            metric,
            problem: AnswerProblem::BadBytes {
                device_id,
                value: v.text(),
            },
        })
    };
    let (used_bytes, total_bytes) = (bytes(HBM_USED, used)?, bytes(HBM_TOTAL, total)?);
    if used_bytes > total_bytes {
        return Err(TpuMetricsError::CheckAnswer {
            metric: HBM_USED,
            problem: AnswerProblem::UsedExceedsTotal {
                device_id,
                used_bytes,
                total_bytes,
            },
        });
    }
    Ok(Some(MemoryUse {
        used_bytes,
        total_bytes,
    }))
}

/// A status with the transport error under it, if any ("transport error: Connection refused").
fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let chain = crate::client::error_chain(source);
        if !text.contains(&chain) {
            text.push_str(": ");
            text.push_str(&chain);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use offpeak_proto::tpu_monitoring_runtime::{AttrValue, Attribute, Gauge};

    use super::*;

    fn point(attr: Option<Attr>, value: Option<Value>) -> Metric {
        Metric {
            attribute: Some(Attribute {
                key: DEVICE_ID_KEY.into(),
                value: Some(AttrValue { attr }),
            }),
            measure: Some(Measure::Gauge(Gauge { value })),
        }
    }

    #[test]
    fn device_ids_are_integers_or_digit_strings() {
        let ok = [
            point(Some(Attr::IntAttr(3)), Some(Value::AsDouble(1.0))),
            point(Some(Attr::StringAttr("4".into())), Some(Value::AsInt(2))),
        ];
        let map = per_device(&ok, None).unwrap_or_default();
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        for (attr, want) in [
            (None, AnswerProblem::NoDevice { index: 0 }),
            (
                Some(Attr::StringAttr("core-0".into())),
                AnswerProblem::BadDeviceId {
                    index: 0,
                    device_id: "\"core-0\"".into(),
                },
            ),
            (
                Some(Attr::IntAttr(-1)),
                AnswerProblem::BadDeviceId {
                    index: 0,
                    device_id: "-1".into(),
                },
            ),
        ] {
            let got = per_device(&[point(attr, Some(Value::AsInt(1)))], None).err();
            assert_eq!(got, Some(want));
        }
    }

    #[test]
    fn bytes_must_be_whole_and_not_negative() {
        assert_eq!(GaugeValue::Int(5).as_bytes(), Some(5));
        assert_eq!(GaugeValue::Double(5.0).as_bytes(), Some(5));
        for v in [
            GaugeValue::Int(-1),
            GaugeValue::Double(5.5),
            GaugeValue::Double(-2.0),
            GaugeValue::Double(f64::NAN),
        ] {
            assert_eq!(v.as_bytes(), None, "{v:?}");
        }
    }
}
