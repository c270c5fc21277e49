//! TEMPORARY STUB
use super::*;
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JsonDecodeError(String);
pub fn decode_request(_body: &[u8]) -> Result<ExportTraceServiceRequest, JsonDecodeError> { Err(JsonDecodeError(String::new())) }
pub fn encode_response(_r: &ExportTraceServiceResponse) -> Vec<u8> { vec![] }
pub fn encode_request(_r: &ExportTraceServiceRequest) -> Vec<u8> { vec![] }
