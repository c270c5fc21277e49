//! OTLP/gRPC receiver: `TraceService/Export`, gzip accepted, size-limited.
//!
//! The port also speaks HTTP/1.1, only to answer `curl`: `GET /` says what listens here,
//! any other HTTP/1 request gets a 404 naming the port's protocol, and an HTTP/1
//! connection closes after its one answer.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::middleware::Next;
use axum::response::IntoResponse;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode, Version};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use bytes::Bytes;

use super::body::{BodyReservation, ReservedBody};
use super::conn::{ConnectionLimits, Gate};
use super::{Intake, IntakeError, RETRY_AFTER, Refusal, Security, introduction};
use crate::otlp::grpc_codec::OtlpCodec;
use crate::otlp::{ExportTraceServiceResponse, TRACE_EXPORT_PATH, TRACE_SERVICE_NAME};
use crate::telemetry::metrics::RefusalReason;

const PROTOCOL: &str = "grpc";

/// The `TraceService` gRPC service, written by hand so that we choose the status codes.
#[derive(Clone)]
pub struct GrpcReceiver {
    intake: Intake,
    max_request_size: usize,
    limits: ConnectionLimits,
    security: Security,
}

impl GrpcReceiver {
    /// A receiver handing requests to `intake`, refusing messages over `max_request_size`
    /// bytes, its connections bounded by `limits`.
    pub fn new(intake: Intake, max_request_size: usize, limits: ConnectionLimits) -> Self {
        Self {
            intake,
            max_request_size,
            limits,
            security: Security::default(),
        }
    }

    /// Requires the TLS handshake and bearer token `security` holds.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Serves on `listener` until `stop` is cancelled, then finishes in-flight calls.
    ///
    /// `GET /` and every HTTP/1 request are answered by `answer_plain_http` before any
    /// gRPC routing.
    pub async fn serve(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let limits = self.limits;
        let tls = self.security.tls.clone();
        let gate = Arc::new(Gate::new(
            PROTOCOL,
            limits.max_connections,
            Arc::clone(self.intake.metrics()),
        ));
        let routes = Routes::new(self)
            .into_axum_router()
            .layer(axum::middleware::from_fn(answer_plain_http));
        tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .add_routes(Routes::from(routes))
            .serve_with_incoming_shutdown(
                gate.incoming(listener, limits.header_read_timeout, tls),
                stop.cancelled_owned(),
            )
            .await
    }
}

/// Answers what is not a gRPC call: `GET /` (what `curl` asks) with the receiver's one
/// line, over either HTTP version, and any other HTTP/1 request with a 404 saying this port
/// speaks gRPC over HTTP/2. Every HTTP/1 answer closes its connection, so that HTTP/1 here
/// is one request whose head the connection gate timed, never a keep-alive connection
/// outside its limits.
async fn answer_plain_http(
    request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    let http1 = request.version() < Version::HTTP_2;
    let path = request.uri().path();
    let send_to = TRACE_EXPORT_PATH.trim_start_matches('/');
    let (status, text) = if path == "/" && matches!(*request.method(), Method::GET | Method::HEAD) {
        (
            StatusCode::OK,
            introduction("OTLP/gRPC", &format!("send traces to {send_to}")),
        )
    } else if http1 {
        (
            StatusCode::NOT_FOUND,
            format!(
                "{path} is not served here: this port takes OTLP/gRPC over HTTP/2 ({send_to}); send OTLP/HTTP (http/protobuf) to the agent's OTLP/HTTP receiver (port 4318 by default)\n"
            ),
        )
    } else {
        return next.run(request).await;
    };
    let mut response = (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response();
    if http1 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

impl NamedService for GrpcReceiver {
    const NAME: &'static str = TRACE_SERVICE_NAME;
}

impl UnaryService<Bytes> for Intake {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let intake = self.clone();
        // What the body reserved of the memory budget while it arrived.
        let memory = request
            .extensions()
            .get::<BodyReservation>()
            .map_or_else(|| intake.reservation(), BodyReservation::take);
        Box::pin(async move {
            match intake
                .accept_encoded(PROTOCOL, request.into_inner(), memory)
                .await
            {
                Ok(partial_success) => Ok(Response::new(ExportTraceServiceResponse {
                    partial_success,
                })),
                Err(error @ IntakeError::Undecodable(_)) => {
                    intake
                        .metrics()
                        .refused_request(PROTOCOL, RefusalReason::Undecodable);
                    Err(Status::invalid_argument(error.to_string()))
                }
                // Not retryable: without RetryInfo, OTLP clients drop it.
                Err(IntakeError::OverLimit(over)) => {
                    Err(Status::resource_exhausted(over.to_string()))
                }
                Err(IntakeError::Refused(refusal)) => Err(refusal_status(&refusal)),
            }
        })
    }
}

/// The gRPC answer to a refusal. "Retry later" carries RetryInfo, which is also what
/// makes `RESOURCE_EXHAUSTED` retryable for OTLP clients.
fn refusal_status(refusal: &Refusal) -> Status {
    let code = match refusal {
        Refusal::ShuttingDown { .. } => return Status::unavailable(refusal.to_string()),
        Refusal::PipelineFull { .. } | Refusal::OverMemoryBudget { .. } => Code::Unavailable,
        Refusal::OverMemoryLimit { .. } | Refusal::NotQueued { .. } => Code::ResourceExhausted,
    };
    Status::with_error_details(
        code,
        refusal.to_string(),
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for GrpcReceiver {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != TRACE_EXPORT_PATH {
            let status = Status::unimplemented(format!(
                "{} is not served here; this agent receives traces at {TRACE_EXPORT_PATH}",
                request.uri().path()
            ));
            return Box::pin(ready(Ok(status.into_http())));
        }
        let intake = self.intake.clone();
        // Before the body is read: an unauthenticated client costs no decoding.
        if let Some(auth) = &self.security.auth
            && let Err(refusal) = auth.check(request.headers())
        {
            intake
                .metrics()
                .refused_request(PROTOCOL, RefusalReason::Unauthenticated);
            return Box::pin(ready(Ok(
                Status::unauthenticated(refusal.to_string()).into_http()
            )));
        }
        let limit = self.max_request_size;
        // The body's frames are reserved as they arrive; the handler takes the reservation over.
        let memory = BodyReservation::new(intake.reservation());
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(memory.clone());
        let request = http::Request::from_parts(parts, ReservedBody::new(body, memory.clone()));
        Box::pin(async move {
            let mut grpc = Grpc::new(OtlpCodec::<ExportTraceServiceResponse, Bytes>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            let response = grpc.unary(intake.clone(), request).await;
            if memory.refused() {
                let refusal = Refusal::OverMemoryBudget { spans: 0 };
                intake.metrics().refused_request(PROTOCOL, refusal.reason());
                return Ok(refusal_status(&refusal).into_http());
            }
            Ok(relabel_refusals(response, &intake, limit))
        })
    }
}

/// Counts requests tonic refused before our handler ran and gives them the OTLP codes:
/// tonic says `OUT_OF_RANGE` for an oversized message, which OTLP clients would retry
/// forever, so it becomes the non-retryable `RESOURCE_EXHAUSTED`.
fn relabel_refusals(
    response: http::Response<tonic::body::Body>,
    intake: &Intake,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted
            if status.message().contains("length too large") =>
        {
            intake
                .metrics()
                .refused_request(PROTOCOL, RefusalReason::TooLarge);
            Status::resource_exhausted(format!(
                "request is larger than the receiver's limit of {limit} bytes ({}); send smaller batches or raise receivers.otlp.grpc.max_request_size",
                status.message()
            ))
            .into_http()
        }
        // tonic says INTERNAL for a body that does not gunzip: bad input, not a server fault.
        Code::Internal => {
            intake
                .metrics()
                .refused_request(PROTOCOL, RefusalReason::Undecodable);
            Status::invalid_argument(status.message().to_owned()).into_http()
        }
        _ => response,
    }
}
