//! A tonic codec for OTLP that moves bytes, not messages: the receiver takes request
//! bodies as they came (validated later, so an undecodable one is `INVALID_ARGUMENT`
//! with our message, where tonic's prost codec says `INTERNAL`), and a client can send
//! a batch that is already encoded.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
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

impl WireEncode for super::ExportMetricsServiceResponse {
    fn write_to(self, buf: &mut EncodeBuf<'_>) {
        let _ = self.encode(buf);
    }
}

/// Something the codec can read from the wire.
pub trait WireDecode: Sized + Send + 'static {
    /// Reads one message from `buf`.
    fn read_from(buf: &mut DecodeBuf<'_>) -> Result<Self, Status>;
}

impl WireDecode for Bytes {
    fn read_from(buf: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        Ok(buf.copy_to_bytes(buf.remaining()))
    }
}

impl WireDecode for super::ExportTraceServiceResponse {
    fn read_from(buf: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        Self::decode(buf).map_err(|e| {
            Status::internal(format!(
                "the answer is not an ExportTraceServiceResponse: {e}"
            ))
        })
    }
}

/// Encodes `E` and decodes `D`, each a message or raw bytes.
pub struct OtlpCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for OtlpCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E: WireEncode, D: WireDecode> tonic::codec::Codec for OtlpCodec<E, D> {
    type Encode = E;
    type Decode = D;
    type Encoder = WireEncoder<E>;
    type Decoder = WireDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
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

/// The decoding half of [`OtlpCodec`].
pub struct WireDecoder<D>(PhantomData<D>);

impl<D: WireDecode> Decoder for WireDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::read_from(buf).map(Some)
    }
}
