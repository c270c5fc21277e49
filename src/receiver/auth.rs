//! Bearer-token authentication of span intake (`receivers.otlp.*.auth`): a request to
//! `/v1/traces` or `TraceService/Export` must carry `Authorization: Bearer <token>` with
//! the token in `bearer_token_file`, which is re-read when it changes.

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::watch::Watched;
use crate::config::{ReceiverAuthConfig, Secret, SecurityFileError};

/// Why a request was refused as unauthenticated. The messages never hold the presented
/// token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// No `Authorization` header.
    #[error(
        "this receiver requires a bearer token: send the header Authorization: Bearer <token> (OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>)"
    )]
    Missing,
    /// An `Authorization` header of another scheme, or not text.
    #[error("the Authorization header is not a bearer token; send Authorization: Bearer <token>")]
    NotBearer,
    /// A bearer token other than the configured one.
    #[error(
        "the bearer token is not the one this receiver accepts; send the token in its auth.bearer_token_file"
    )]
    WrongToken,
}

/// A receiver's bearer-token check, its token following `bearer_token_file`.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    token: Arc<Watched<Secret>>,
}

impl BearerAuth {
    /// Reads the token now (an error names `bearer_token_file`), and again whenever the
    /// file changes; `key` (e.g. `receivers.otlp.http.auth`) names it in logs.
    pub fn start(key: &str, config: &ReceiverAuthConfig) -> Result<Self, SecurityFileError> {
        let file = config.bearer_token_file.clone();
        let config = config.clone();
        let token = Watched::start(
            format!("the bearer token of {key} ({})", file.display()),
            vec![file],
            move || config.read_token(),
        )?;
        Ok(Self { token })
    }

    /// Whether `headers` carry the token: `Authorization: Bearer <token>`, the scheme in
    /// any case (RFC 6750), the token compared in constant time.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Unauthenticated> {
        let value = headers
            .get(AUTHORIZATION)
            .ok_or(Unauthenticated::Missing)?
            .as_bytes()
            .trim_ascii();
        let (scheme, presented) = value
            .iter()
            .position(|&b| b == b' ')
            .map(|space| value.split_at(space))
            .ok_or(Unauthenticated::NotBearer)?;
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(Unauthenticated::NotBearer);
        }
        if constant_time_eq(presented.trim_ascii(), self.token.get().expose().as_bytes()) {
            Ok(())
        } else {
            Err(Unauthenticated::WrongToken)
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only, not on
/// where they differ, so that a client cannot guess the token byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let longest = a.len().max(b.len());
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..longest {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn equal_bytes_compare_equal_and_any_difference_does_not() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"s3cret", b""));
        assert!(!constant_time_eq(b"\0", b""));
    }

    #[tokio::test]
    async fn the_header_must_carry_the_token_in_the_bearer_scheme() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").expect("write");
        let auth = BearerAuth::start(
            "receivers.otlp.http.auth",
            &ReceiverAuthConfig {
                bearer_token_file: file,
            },
        )
        .expect("token");
        let check = |value: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            }
            auth.check(&headers)
        };
        assert_eq!(check(Some("Bearer s3cret-token")), Ok(()));
        assert_eq!(check(Some("bearer s3cret-token")), Ok(()));
        assert_eq!(check(Some("BEARER  s3cret-token ")), Ok(()));
        assert_eq!(check(None), Err(Unauthenticated::Missing));
        assert_eq!(
            check(Some("Basic czNjcmV0LXRva2Vu")),
            Err(Unauthenticated::NotBearer)
        );
        assert_eq!(check(Some("s3cret-token")), Err(Unauthenticated::NotBearer));
        assert_eq!(
            check(Some("Bearer s3cret-tokeN")),
            Err(Unauthenticated::WrongToken)
        );
        assert_eq!(check(Some("Bearer ")), Err(Unauthenticated::NotBearer));
        for refusal in [
            Unauthenticated::Missing,
            Unauthenticated::NotBearer,
            Unauthenticated::WrongToken,
        ] {
            assert!(!refusal.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-token").expect("write");
        let token = ReceiverAuthConfig {
            bearer_token_file: file,
        }
        .read_token()
        .expect("token");
        assert_eq!(format!("{token:?}"), "***");
    }
}
