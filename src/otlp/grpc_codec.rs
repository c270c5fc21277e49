//! A tonic codec for OTLP that lets the receiver answer `INVALID_ARGUMENT` for an
//! undecodable body (tonic's prost codec says `INTERNAL`, which clients treat as a
//! server bug) and lets the exporter send a batch that is already encoded.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Something the codec can write to the wire.
pub trait WireEncode: Send + 'static {
    /// Writes the protobuf encoding of `self` into `buf`.
    fn write_to(self, buf: &mut EncodeBuf<'_>);
}

impl WireEncode for Bytes {
    fn write_to(self, buf: &mut EncodeBuf<'_>) {
        buf.put_slice(&self);
    }
}

impl WireEncode for super::ExportTraceServiceResponse {
    fn write_to(self, buf: &mut EncodeBuf<'_>) {
        // EncodeBuf grows on demand, so encoding cannot run out of space.
        let _ = self.encode(buf);
    }
}

/// Encodes `E` (a message or pre-encoded bytes) and decodes the protobuf message `D`.
pub struct OtlpCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for OtlpCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E: WireEncode, D: Message + Default + Send + 'static> tonic::codec::Codec for OtlpCodec<E, D> {
    type Encode = E;
    type Decode = D;
    type Encoder = WireEncoder<E>;
    type Decoder = ProtoDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

/// The encoding half of [`OtlpCodec`].
pub struct WireEncoder<E>(PhantomData<E>);

impl<E: WireEncode> Encoder for WireEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write_to(buf);
        Ok(())
    }
}

/// The decoding half of [`OtlpCodec`]; a malformed message is `INVALID_ARGUMENT`.
pub struct ProtoDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ProtoDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "body is not a valid OTLP protobuf message: {e}; send an ExportTraceServiceRequest"
            ))
        })
    }
}
