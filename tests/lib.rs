//! Cross-crate integration tests live in `tests/tests/`, bench binaries in `tests/benches/`;
//! this library holds what both use: [`RawCodec`], which puts pre-encoded (or deliberately
//! malformed) bytes on the wire as the messages of a `StreamSamples` call.

use offpeak_proto::v1::StreamSummary;
use prost::Message as _;
use prost::bytes::BufMut as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The gRPC path of `AgentService.StreamSamples`.
pub const STREAM_SAMPLES_PATH: &str = "/offpeak.v1.AgentService/StreamSamples";

/// Sends each `Vec<u8>` as one message, as is; decodes the `StreamSummary` answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug)]
pub struct RawEncoder;

#[derive(Debug)]
pub struct SummaryDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for SummaryDecoder {
    type Item = StreamSummary;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<StreamSummary>, tonic::Status> {
        StreamSummary::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = StreamSummary;
    type Encoder = RawEncoder;
    type Decoder = SummaryDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> SummaryDecoder {
        SummaryDecoder
    }
}
