//! Standard Webhooks signature verification (SPEC §5.4).
//!
//! A signed request carries `webhook-id`, `webhook-timestamp` (unix seconds) and
//! `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256(secret, "{id}.{ts}.{body}")>`.
//! Several signatures are allowed so a sender can rotate secrets without downtime; one valid
//! signature is enough. The MAC is computed over the raw request bytes, before any JSON parsing,
//! and compared in constant time (`hmac`'s `verify_slice`). Timestamps outside the tolerance are
//! refused, which bounds how long a captured request can be replayed.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Prefix of a base64-encoded secret, as Standard Webhooks senders hand them out.
pub const SECRET_PREFIX: &str = "whsec_";

/// A DAY15_WEBHOOK_SECRET that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("DAY15_WEBHOOK_SECRET starts with whsec_ but the rest is not valid base64: {0}")]
    NotBase64(base64::DecodeError),
    #[error("DAY15_WEBHOOK_SECRET is empty after the whsec_ prefix")]
    Empty,
}

/// Why a request's signature was refused; the text is safe to return to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header (DAY15_WEBHOOK_SECRET is set, requests must be signed)")]
    MissingHeader(&'static str),
    #[error("{0} header is not valid")]
    MalformedHeader(&'static str),
    #[error("webhook-timestamp is {skew_seconds} s away from the server clock (tolerance {tolerance_seconds} s)")]
    OutsideTolerance {
        skew_seconds: i64,
        tolerance_seconds: u64,
    },
    #[error("no valid v1 signature in webhook-signature")]
    NoValidSignature,
}

/// The decoded secret key.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// `whsec_<base64>` is decoded; any other value is used as raw bytes.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let key = match secret.strip_prefix(SECRET_PREFIX) {
            Some(b64) => STANDARD.decode(b64).map_err(SecretError::NotBase64)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(WebhookSecret { key })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value a sender puts on this request (`v1,<base64>`).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// Checks the signature headers of incoming requests.
#[derive(Debug, Clone)]
pub struct SignatureVerifier {
    secret: WebhookSecret,
    /// Largest allowed distance between `webhook-timestamp` and the server clock.
    tolerance: Duration,
}

impl SignatureVerifier {
    pub fn new(secret: WebhookSecret, tolerance: Duration) -> Self {
        SignatureVerifier { secret, tolerance }
    }

    /// Verifies `body` against the headers at `now_unix` (seconds); the clock is a parameter
    /// so the tolerance can be tested without waiting.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let header = |name: &'static str| -> Result<&str, SignatureError> {
            let value = headers
                .get(name)
                .ok_or(SignatureError::MissingHeader(name))?;
            let text = value
                .to_str()
                .map_err(|_| SignatureError::MalformedHeader(name))?
                .trim();
            if text.is_empty() {
                return Err(SignatureError::MissingHeader(name));
            }
            Ok(text)
        };
        let id = header(ID_HEADER)?;
        let timestamp = header(TIMESTAMP_HEADER)?;
        let signatures = header(SIGNATURE_HEADER)?;

        let sent_at: i64 = timestamp
            .parse()
            .map_err(|_| SignatureError::MalformedHeader(TIMESTAMP_HEADER))?;
        let skew = now_unix.saturating_sub(sent_at);
        if skew.unsigned_abs() > self.tolerance.as_secs() {
            return Err(SignatureError::OutsideTolerance {
                skew_seconds: skew,
                tolerance_seconds: self.tolerance.as_secs(),
            });
        }

        let expected = self.secret.mac(id, timestamp, body);
        let any_valid = signatures
            .split_ascii_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .any(|tag| expected.clone().verify_slice(&tag).is_ok());
        if any_valid {
            Ok(())
        } else {
            Err(SignatureError::NoValidSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ID_HEADER, HeaderValue::from_str(id).unwrap());
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_str(ts).unwrap());
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    /// The example published with the Standard Webhooks specification.
    #[test]
    fn the_published_standard_webhooks_example_verifies() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            sig
        );
        let v = SignatureVerifier::new(secret, Duration::from_secs(300));
        let h = headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig);
        assert_eq!(v.verify(&h, body, 1614265330 + 10), Ok(()));
        assert_eq!(
            v.verify(&h, b"{\"test\": 2432232315}", 1614265330),
            Err(SignatureError::NoValidSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        let secret = WebhookSecret::parse("raw secret").unwrap();
        let v = SignatureVerifier::new(secret.clone(), Duration::from_secs(300));
        let sig = secret.sign("m", 1000, b"{}");
        let h = headers("m", "1000", &sig);
        assert!(v.verify(&h, b"{}", 1300).is_ok());
        assert!(matches!(
            v.verify(&h, b"{}", 1301),
            Err(SignatureError::OutsideTolerance { .. })
        ));
        assert!(matches!(
            v.verify(&h, b"{}", 699),
            Err(SignatureError::OutsideTolerance { .. })
        ));
    }

    #[test]
    fn bad_secrets_are_reported() {
        assert!(matches!(
            WebhookSecret::parse("whsec_***"),
            Err(SecretError::NotBase64(_))
        ));
        assert!(matches!(
            WebhookSecret::parse("whsec_"),
            Err(SecretError::Empty)
        ));
    }
}
