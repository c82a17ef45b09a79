//! Standard Webhooks signature verification, adapted to axum.
//!
//! The scheme itself — what is signed, constant-time comparison over the raw body, several
//! signatures for key rotation, the timestamp tolerance against replay — lives in the
//! `standard-webhooks` crate, shared with the event generator. This module reads the three
//! headers from a [`HeaderMap`] (under their Svix names too), accepts any of the
//! space-separated secrets of DAY15_WEBHOOK_SECRET (rotation on the receiving side), and words
//! each refusal as the webhook has always answered it (`401 invalid_signature`, messages
//! naming DAY15_WEBHOOK_SECRET). A verified request yields the [`DeliveryMark`] of its
//! `webhook-id`, which the enqueue sets so that a replay of the delivery stores nothing.

use std::fmt;
use std::time::Duration;

use axum::http::HeaderMap;
use pipeline_core::backend::DeliveryMark;
use standard_webhooks::{
    verify_any, Headers, Secret, VerifyError, HEADER_ALIASES, ID_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};

use crate::error::ApiError;

/// A DAY15_WEBHOOK_SECRET that cannot be used; the message names the variable (and which
/// secret of several).
#[derive(Debug)]
pub struct SecretError {
    /// `None` when the value holds no secret at all (only whitespace).
    error: Option<standard_webhooks::SecretError>,
    /// `(position from 1, count)` when the variable holds several secrets.
    which: Option<(usize, usize)>,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.which {
            Some((n, of)) => format!("DAY15_WEBHOOK_SECRET (secret {n} of {of})"),
            None => "DAY15_WEBHOOK_SECRET".to_string(),
        };
        match &self.error {
            Some(standard_webhooks::SecretError::NotBase64(e)) => write!(
                f,
                "{name} starts with whsec_ but the rest is not valid base64: {e}"
            ),
            Some(standard_webhooks::SecretError::Empty) => {
                write!(f, "{name} is empty after the whsec_ prefix")
            }
            None => write!(f, "{name} holds only whitespace, no secret"),
        }
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The decoded secrets of DAY15_WEBHOOK_SECRET: one or more, separated by whitespace, each
/// `whsec_<base64>` or raw bytes. Never empty.
#[derive(Debug, Clone)]
pub struct WebhookSecret(Vec<Secret>);

impl WebhookSecret {
    /// Parses each whitespace-separated secret as the `standard-webhooks` crate does, with
    /// errors worded for the operator who set DAY15_WEBHOOK_SECRET. Several secrets let the
    /// receiver rotate: a request signed with any of them is accepted.
    pub fn parse(secrets: &str) -> Result<Self, SecretError> {
        let pieces: Vec<&str> = secrets.split_whitespace().collect();
        if pieces.is_empty() {
            return Err(SecretError {
                error: None,
                which: None,
            });
        }
        let count = pieces.len();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                Secret::parse(piece).map_err(|error| SecretError {
                    error: Some(error),
                    which: (count > 1).then_some((i + 1, count)),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(WebhookSecret)
    }
}

/// Checks the signature headers of incoming requests.
#[derive(Debug, Clone)]
pub struct SignatureVerifier {
    /// The keys a request may be signed with (any one is enough).
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
    /// [`ApiError::InvalidSignature`]. On success, returns the mark of the request's
    /// `webhook-id`, to keep for as long as a request with that id can still pass this check:
    /// its timestamp may lie up to the tolerance on either side of the clock, so twice the
    /// tolerance (plus a second for rounding) after the first arrival.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<DeliveryMark, ApiError> {
        let values = header_text(headers)?;
        verify_any(&self.secret.0, values, body, now_unix, self.tolerance).map_err(refusal)?;
        // Present and non-blank: verify_any refused the request otherwise.
        let id = values.id.map(str::trim).unwrap_or_default();
        DeliveryMark::new(id, self.tolerance * 2 + Duration::from_secs(1))
            .map_err(|problem| ApiError::InvalidSignature(format!("{ID_HEADER} header {problem}")))
    }
}

/// The header a value is read from: the standard name, else its Svix alias when only that
/// one is present.
fn header_name(headers: &HeaderMap, name: &'static str, alias: &'static str) -> &'static str {
    if !headers.contains_key(name) && headers.contains_key(alias) {
        alias
    } else {
        name
    }
}

/// The three signature headers as text. A value that is not visible ASCII is refused as
/// malformed only when every header before it is present and non-blank, so the first problem
/// reported is the one a check of the headers in order (id, timestamp, signature) meets first.
fn header_text(headers: &HeaderMap) -> Result<Headers<'_>, ApiError> {
    let mut values = [None; 3];
    for (slot, (name, alias)) in values.iter_mut().zip(HEADER_ALIASES) {
        let name = header_name(headers, name, alias);
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
            secret.0[0].clone(),
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

    fn message<T: fmt::Debug>(result: Result<T, ApiError>) -> String {
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
    fn several_secrets_are_each_accepted_and_a_bad_one_is_named_by_position() {
        let v = SignatureVerifier::new(
            WebhookSecret::parse(" old\tnew ").unwrap(),
            Duration::from_secs(300),
        );
        for key in ["old", "new"] {
            let sig = Secret::parse(key).unwrap().sign("m", 1000, b"{}");
            let h = headers(&[
                (ID_HEADER, b"m"),
                (TIMESTAMP_HEADER, b"1000"),
                (SIGNATURE_HEADER, sig.as_bytes()),
            ]);
            assert_eq!(v.verify(&h, b"{}", 1000).unwrap().id(), "m");
        }
        let sig = Secret::parse("old new").unwrap().sign("m", 1000, b"{}");
        let h = headers(&[
            (ID_HEADER, b"m"),
            (TIMESTAMP_HEADER, b"1000"),
            (SIGNATURE_HEADER, sig.as_bytes()),
        ]);
        assert_eq!(
            message(v.verify(&h, b"{}", 1000)),
            "no valid v1 signature in webhook-signature"
        );
        assert_eq!(
            WebhookSecret::parse("ok whsec_ also-ok")
                .unwrap_err()
                .to_string(),
            "DAY15_WEBHOOK_SECRET (secret 2 of 3) is empty after the whsec_ prefix"
        );
        assert_eq!(
            WebhookSecret::parse(" \t ").unwrap_err().to_string(),
            "DAY15_WEBHOOK_SECRET holds only whitespace, no secret"
        );
    }

    #[test]
    fn svix_names_are_read_when_the_standard_ones_are_absent() {
        let (secret, v) = verifier();
        let sig = secret.sign("m", 1000, b"{}");
        let h = headers(&[
            ("svix-id", b"m"),
            ("svix-timestamp", b"1000"),
            ("svix-signature", sig.as_bytes()),
        ]);
        assert_eq!(v.verify(&h, b"{}", 1000).unwrap().id(), "m");
        let h = headers(&[
            ("svix-id", b"m"),
            ("svix-timestamp", b"1000"),
            (SIGNATURE_HEADER, sig.as_bytes()),
        ]);
        assert_eq!(v.verify(&h, b"{}", 1000).unwrap().id(), "m");
        // A malformed Svix header is named as sent.
        let h = headers(&[("svix-id", b"m\xff")]);
        assert_eq!(
            message(v.verify(&h, b"{}", 1000)),
            "svix-id header is not valid"
        );
    }

    #[test]
    fn the_delivery_mark_outlives_every_acceptable_timestamp() {
        let (secret, v) = verifier();
        // The id is signed and marked without its surrounding whitespace.
        let sig = secret.sign("m", 1000, b"{}");
        let h = headers(&[
            (ID_HEADER, b" m "),
            (TIMESTAMP_HEADER, b"1000"),
            (SIGNATURE_HEADER, sig.as_bytes()),
        ]);
        let mark = v.verify(&h, b"{}", 1000).unwrap();
        assert_eq!(mark.id(), "m");
        assert_eq!(mark.ttl(), Duration::from_secs(601));
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
