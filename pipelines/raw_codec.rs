//! A gRPC codec that passes message bytes through untouched.
//!
//! tonic's generated OTLP services decode with prost before our code runs and answer a malformed message with
//! INTERNAL; with this codec the receiver gets the bytes, decodes them itself (answering INVALID_ARGUMENT as the
//! OTLP specification asks) and keeps them, and the `otlp` exporter sends already-encoded requests as they are.

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// HTTP/2 settings of the OTLP/gRPC receiver (and of `infercol-sink`, the benchmark's transport floor). A 1,000-span
/// export is about 200 KB: with HTTP/2's default 16 KiB frames and 64 KiB stream window it arrives in a dozen frames
/// and several window updates; frames of up to 256 KiB and a 1 MiB window take it in one or two, which cut the CPU
/// per span by about 3% at full load (`bench/run`'s load, four alternating runs each). The connection window bounds
/// what one client can have unread in the server at 4 MiB, the default largest message.
pub const GRPC_MAX_FRAME_SIZE: u32 = 256 * 1024;
pub const GRPC_STREAM_WINDOW: u32 = 1 << 20;
pub const GRPC_CONNECTION_WINDOW: u32 = 4 << 20;
