//! Standard Webhooks signature verification, adapted to axum.
//!
//! The scheme itself — what is signed, constant-time comparison over the raw body, several
//! signatures for key rotation, the timestamp tolerance against replay — lives in the
//! `standard-webhooks` crate, shared with the event generator. This module only reads the
//! three headers from a [`HeaderMap`] and words each refusal as the webhook has always
//! answered it (`401 invalid_signature`, messages naming DAY15_WEBHOOK_SECRET).

use std::fmt;
use std::time::Duration;

use axum::http::HeaderMap;
use standard_webhooks::{
    Headers, Secret, VerifyError, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

use crate::error::ApiError;

/// A DAY15_WEBHOOK_SECRET that cannot be used; the message names the variable.
#[derive(Debug)]
pub struct SecretError(standard_webhooks::SecretError);

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            standard_webhooks::SecretError::NotBase64(e) => write!(
                f,
                "DAY15_WEBHOOK_SECRET starts with whsec_ but the rest is not valid base64: {e}"
            ),
            standard_webhooks::SecretError::Empty => {
                f.write_str("DAY15_WEBHOOK_SECRET is empty after the whsec_ prefix")
            }
        }
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The decoded DAY15_WEBHOOK_SECRET (`whsec_<base64>` or raw bytes).
#[derive(Debug, Clone)]
pub struct WebhookSecret(Secret);

impl WebhookSecret {
    /// Parses the secret as the `standard-webhooks` crate does, with errors worded for the
    /// operator who set DAY15_WEBHOOK_SECRET.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        Secret::parse(secret)
            .map(WebhookSecret)
            .map_err(SecretError)
    }
}

/// Checks the signature headers of incoming requests.
#[derive(Debug, Clone)]
pub struct SignatureVerifier {
    /// The key every request must be signed with.
    secret: WebhookSecret,
    /// Largest allowed distance between `webhook-timestamp` and the server clock.
    tolerance: Duration,
}

impl SignatureVerifier {
    pub fn new(secret: WebhookSecret, tolerance: Duration) -> Self {
        SignatureVerifier { secret, tolerance }
    }

    /// Verifies `body` against the headers at `now_unix` (seconds); the clock is a parameter
    /// so the tolerance can be tested without waiting. Every refusal is
    /// [`ApiError::InvalidSignature`].
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<(), ApiError> {
        let values = header_text(headers)?;
        self.secret
            .0
            .verify(values, body, now_unix, self.tolerance)
            .map_err(refusal)
    }
}

/// The three signature headers as text. A value that is not visible ASCII is refused as
/// malformed only when every header before it is present and non-blank, so the first problem
/// reported is the one a check of the headers in order (id, timestamp, signature) meets first.
fn header_text(headers: &HeaderMap) -> Result<Headers<'_>, ApiError> {
    let mut values = [None; 3];
    for (slot, name) in values
        .iter_mut()
        .zip([ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
    {
        let Some(value) = headers.get(name) else {
            break;
        };
        let text = value.to_str().map_err(|_| malformed(name))?;
        if text.trim().is_empty() {
            break;
        }
        *slot = Some(text);
    }
    let [id, timestamp, signature] = values;
    Ok(Headers {
        id,
        timestamp,
        signature,
    })
}

fn malformed(name: &str) -> ApiError {
    ApiError::InvalidSignature(format!("{name} header is not valid"))
}

/// The webhook's wording of each refusal; the text is safe to return to the sender.
fn refusal(error: VerifyError) -> ApiError {
    match error {
        VerifyError::MissingHeader(name) => ApiError::InvalidSignature(format!(
            "missing {name} header (DAY15_WEBHOOK_SECRET is set, requests must be signed)"
        )),
        VerifyError::BadTimestamp => malformed(TIMESTAMP_HEADER),
        VerifyError::OutsideTolerance {
            skew_seconds,
            tolerance_seconds,
        } => ApiError::InvalidSignature(format!(
            "{TIMESTAMP_HEADER} is {skew_seconds} s away from the server clock (tolerance {tolerance_seconds} s)"
        )),
        VerifyError::NoMatchingSignature => {
            ApiError::InvalidSignature(format!("no valid v1 signature in {SIGNATURE_HEADER}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn verifier() -> (Secret, SignatureVerifier) {
        let secret = WebhookSecret::parse("raw secret").unwrap();
        (
            secret.0.clone(),
            SignatureVerifier::new(secret, Duration::from_secs(300)),
        )
    }

    /// Header (name, raw value) pairs of one request.
    type Raw<'a> = &'a [(&'static str, &'a [u8])];

    fn headers(values: Raw<'_>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in values {
            h.insert(*name, HeaderValue::from_bytes(value).unwrap());
        }
        h
    }

    fn message(result: Result<(), ApiError>) -> String {
        match result {
            Err(ApiError::InvalidSignature(message)) => message,
            other => panic!("expected InvalidSignature, got {other:?}"),
        }
    }

    #[test]
    fn a_signed_request_passes() {
        let (secret, v) = verifier();
        let sig = secret.sign("m", 1000, b"{}");
        let h = headers(&[
            (ID_HEADER, b"m"),
            (TIMESTAMP_HEADER, b"1000"),
            (SIGNATURE_HEADER, sig.as_bytes()),
        ]);
        assert!(v.verify(&h, b"{}", 1000).is_ok());
    }

    #[test]
    fn refusals_keep_their_wording() {
        let (secret, v) = verifier();
        let sig = secret.sign("m", 1000, b"{}");
        let sig = sig.as_bytes();
        let cases: [(Raw<'_>, &str); 6] = [
            (
                &[(TIMESTAMP_HEADER, b"1000"), (SIGNATURE_HEADER, sig)],
                "missing webhook-id header (DAY15_WEBHOOK_SECRET is set, requests must be signed)",
            ),
            (
                &[(ID_HEADER, b"m"), (TIMESTAMP_HEADER, b" "), (SIGNATURE_HEADER, sig)],
                "missing webhook-timestamp header (DAY15_WEBHOOK_SECRET is set, requests must be signed)",
            ),
            (
                &[(ID_HEADER, b"m"), (TIMESTAMP_HEADER, b"soon"), (SIGNATURE_HEADER, sig)],
                "webhook-timestamp header is not valid",
            ),
            (
                &[(ID_HEADER, b"m\xff"), (TIMESTAMP_HEADER, b"1000"), (SIGNATURE_HEADER, sig)],
                "webhook-id header is not valid",
            ),
            (
                &[(ID_HEADER, b"m"), (TIMESTAMP_HEADER, b"1301"), (SIGNATURE_HEADER, sig)],
                "webhook-timestamp is -301 s away from the server clock (tolerance 300 s)",
            ),
            (
                &[(ID_HEADER, b"n"), (TIMESTAMP_HEADER, b"1000"), (SIGNATURE_HEADER, sig)],
                "no valid v1 signature in webhook-signature",
            ),
        ];
        for (values, expected) in cases {
            assert_eq!(message(v.verify(&headers(values), b"{}", 1000)), expected);
        }
    }

    #[test]
    fn a_header_that_is_not_text_is_reported_only_after_earlier_missing_ones() {
        let (_, v) = verifier();
        let h = headers(&[(TIMESTAMP_HEADER, b"\xff"), (SIGNATURE_HEADER, b"v1,x")]);
        assert_eq!(
            message(v.verify(&h, b"{}", 1000)),
            "missing webhook-id header (DAY15_WEBHOOK_SECRET is set, requests must be signed)"
        );
        let h = headers(&[(ID_HEADER, b"m"), (TIMESTAMP_HEADER, b"\xff")]);
        assert_eq!(
            message(v.verify(&h, b"{}", 1000)),
            "webhook-timestamp header is not valid"
        );
    }

    #[test]
    fn unusable_secrets_name_the_variable() {
        assert_eq!(
            WebhookSecret::parse("whsec_").unwrap_err().to_string(),
            "DAY15_WEBHOOK_SECRET is empty after the whsec_ prefix"
        );
        assert!(WebhookSecret::parse("whsec_***")
            .unwrap_err()
            .to_string()
            .starts_with(
                "DAY15_WEBHOOK_SECRET starts with whsec_ but the rest is not valid base64: "
            ));
    }
}
