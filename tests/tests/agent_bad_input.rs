//! Bad input to the scheduler's `AgentService`, over real gRPC: every class is refused with a
//! reason (and counted), never metered, never a crash, and the service keeps serving after.
//! Classes: negative, non-numeric and absurd power; counters going backwards; unknown devices
//! and agents; inconsistent inventories; bad curves; a message over the size limit; bytes that
//! are not a message at all. (Out-of-range limit commands: `agent_commands.rs`.)

mod agent_common;

use std::collections::BTreeMap;

use agent_common::{Scheduler, metric};
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{CurvePoint, Device, PowerCurve, RegisterRequest, Sample, SampleBatch};
use offpeak_scheduler::service::grpc::MAX_MESSAGE_BYTES;
use offpeak_tests::{RawCodec, STREAM_SAMPLES_PATH};
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

async fn register(client: &mut AgentServiceClient<Channel>, node: &str) -> anyhow::Result<String> {
    Ok(client
        .register(RegisterRequest {
            node: node.into(),
            zone: "GB".into(),
            devices: vec![Device {
                uuid: "GPU-0".into(),
                model: "test".into(),
                min_power_limit_watts: 100,
                max_power_limit_watts: 300,
                default_power_limit_watts: 300,
            }],
        })
        .await?
        .into_inner()
        .agent_id)
}

fn sample(uuid: &str, power_watts: f64, energy_mj: u64) -> Sample {
    Sample {
        device_uuid: uuid.into(),
        power_watts,
        energy_mj,
        ..Sample::default()
    }
}

fn batch(agent_id: &str, sequence: u64, samples: Vec<Sample>) -> SampleBatch {
    SampleBatch {
        agent_id: agent_id.into(),
        sequence,
        samples,
        curves: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_samples_are_rejected_counted_and_not_metered() -> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let mut client = AgentServiceClient::connect(scheduler.uri()).await?;
    let agent_id = register(&mut client, "bad-node").await?;
    let one = |seq, s| batch(&agent_id, seq, vec![s]);
    let batches = vec![
        one(1, sample("GPU-0", 100.0, 1_000)),
        one(2, sample("GPU-0", -5.0, 2_000)),
        one(3, sample("GPU-0", 100.0, 500)),
        one(4, sample("GPU-9", 100.0, 2_000)),
        one(5, sample("GPU-0", 1.0e6, 2_000)),
        one(6, sample("GPU-0", f64::NAN, 2_000)),
        one(3, sample("GPU-0", 100.0, 2_000)),
        one(7, sample("GPU-0", 100.0, 3_000)),
    ];
    let summary = client
        .stream_samples(tokio_stream::iter(batches))
        .await?
        .into_inner();
    assert_eq!(
        (summary.accepted, summary.rejected, summary.duplicates),
        (2, 5, 1)
    );
    assert_eq!(
        scheduler.registry.energy_by_device(),
        BTreeMap::from([(("bad-node".to_string(), "GPU-0".to_string()), 2_000)])
    );
    let text = scheduler.metrics().await?;
    for reason in [
        "negative_power",
        "counter_backwards",
        "unknown_device",
        "absurd_power",
        "non_finite_power",
    ] {
        assert_eq!(
            metric(
                &text,
                &format!("offpeak_samples_rejected_total{{reason=\"{reason}\"}}")
            )?,
            1,
            "{reason}"
        );
    }

    // A stream from an agent that never registered is refused as such.
    let refused = client
        .stream_samples(tokio_stream::iter(vec![batch("agent-404", 1, vec![])]))
        .await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::NotFound));
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inventories_and_curves_are_refused_with_their_reason() -> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let mut client = AgentServiceClient::connect(scheduler.uri()).await?;
    for (devices, why) in [
        (
            vec![Device {
                uuid: "GPU-0".into(),
                min_power_limit_watts: 300,
                max_power_limit_watts: 100,
                default_power_limit_watts: 200,
                ..Device::default()
            }],
            "inconsistent",
        ),
        (
            vec![
                Device {
                    uuid: "GPU-0".into(),
                    ..Device::default()
                },
                Device {
                    uuid: "GPU-0".into(),
                    ..Device::default()
                },
            ],
            "listed twice",
        ),
        (vec![Device::default()], "empty UUID"),
    ] {
        let refused = client
            .register(RegisterRequest {
                node: "n".into(),
                zone: "GB".into(),
                devices,
            })
            .await;
        let status = refused.err();
        assert_eq!(
            status.as_ref().map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        let message = status.map(|s| s.message().to_owned()).unwrap_or_default();
        assert!(message.contains(why), "{message}");
    }

    let agent_id = register(&mut client, "curvy").await?;
    let curve = |workload: &str, points: Vec<(u32, f64, f64)>| PowerCurve {
        device_model: "test".into(),
        workload: workload.into(),
        points: points
            .into_iter()
            .map(|(power_limit_watts, throughput, watts)| CurvePoint {
                power_limit_watts,
                throughput,
                watts,
            })
            .collect(),
    };
    let with_curves = SampleBatch {
        curves: vec![
            curve("good", vec![(200, 2.0, 190.0), (300, 3.0, 280.0)]),
            curve("negative", vec![(200, 2.0, -190.0)]),
            curve("stalled", vec![(200, 0.0, 190.0)]),
            curve("twice", vec![(200, 2.0, 190.0), (200, 2.5, 195.0)]),
        ],
        ..batch(&agent_id, 1, vec![sample("GPU-0", 100.0, 1)])
    };
    client
        .stream_samples(tokio_stream::iter(vec![with_curves]))
        .await?;
    let profiles = scheduler.curves.profiles();
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["test/good"]);
    let text = scheduler.metrics().await?;
    assert_eq!(metric(&text, "offpeak_curves_accepted_total")?, 1);
    assert_eq!(
        metric(&text, "offpeak_curves_rejected_total{reason=\"bad_point\"}")?,
        2
    );
    assert_eq!(
        metric(
            &text,
            "offpeak_curves_rejected_total{reason=\"duplicate_limit\"}"
        )?,
        1
    );
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_the_service_carries_on() -> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let mut client = AgentServiceClient::connect(scheduler.uri()).await?;
    let agent_id = register(&mut client, "big").await?;
    // One sample whose device name alone is over the limit.
    let huge = batch(
        &agent_id,
        1,
        vec![sample(&"x".repeat(MAX_MESSAGE_BYTES + 1), 100.0, 1)],
    );
    assert!(huge.encoded_len() > MAX_MESSAGE_BYTES);
    let refused = client.stream_samples(tokio_stream::iter(vec![huge])).await;
    let status = refused.err();
    assert_eq!(status.as_ref().map(|s| s.code()), Some(Code::OutOfRange));
    let message = status.map(|s| s.message().to_owned()).unwrap_or_default();
    assert!(message.contains("too large"), "{message}");
    assert!(
        scheduler
            .registry
            .energy_by_device()
            .values()
            .all(|&e| e == 0)
    );

    // The same agent, within the limit, is served as usual.
    let fine = vec![
        batch(&agent_id, 2, vec![sample("GPU-0", 100.0, 1_000)]),
        batch(&agent_id, 3, vec![sample("GPU-0", 100.0, 1_500)]),
    ];
    let summary = client
        .stream_samples(tokio_stream::iter(fine))
        .await?
        .into_inner();
    assert_eq!(summary.accepted, 2);
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_refused_and_the_service_carries_on() -> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let channel = tonic::transport::Endpoint::from_shared(scheduler.uri())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    // Field 1 (agent_id, length-delimited) whose length is a varint that never ends.
    let garbage = vec![0x0a, 0xff, 0xff, 0xff];
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(STREAM_SAMPLES_PATH);
    let refused = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(vec![garbage])),
            path,
            RawCodec,
        )
        .await;
    let status = refused.err();
    assert_eq!(status.as_ref().map(|s| s.code()), Some(Code::Internal));
    let message = status.map(|s| s.message().to_owned()).unwrap_or_default();
    assert!(message.contains("decode"), "{message}");

    // The service is still there for a well-formed agent on the same connection.
    let mut client = AgentServiceClient::new(channel);
    let agent_id = register(&mut client, "after").await?;
    let summary = client
        .stream_samples(tokio_stream::iter(vec![batch(
            &agent_id,
            1,
            vec![sample("GPU-0", 100.0, 5)],
        )]))
        .await?
        .into_inner();
    assert_eq!(summary.accepted, 1);
    scheduler.stop().await
}
