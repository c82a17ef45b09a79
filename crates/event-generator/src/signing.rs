//! Standard Webhooks signing (docs/api.md), so the generator can drive a webhook that requires
//! signatures exactly as a real sender would.
//!
//! The scheme — what is signed, `v1,<base64>`, how `whsec_<base64>` and raw secrets become
//! keys — lives in the `standard-webhooks` crate, which the webhook verifies with too, so the
//! two cannot drift apart. This module only stamps each request with the current time.

use standard_webhooks::Secret;
pub use standard_webhooks::SecretError;

/// Signs request bodies with one secret.
#[derive(Debug, Clone)]
pub struct Signer {
    /// The key from `--secret` / DAY15_WEBHOOK_SECRET (its `Debug` never shows the key).
    secret: Secret,
}

/// The three headers of one signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

impl Signer {
    /// Builds a signer from a secret as users write it (`whsec_<base64>` or raw).
    pub fn from_secret(secret: &str) -> Result<Signer, SecretError> {
        Secret::parse(secret).map(|secret| Signer { secret })
    }

    /// The headers for sending `body` now under message id `id`.
    pub fn headers(&self, id: String, body: &[u8]) -> SignatureHeaders {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.secret.sign(&id, timestamp, body);
        SignatureHeaders {
            id,
            timestamp: timestamp.to_string(),
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn headers_are_stamped_now_and_verify_under_the_same_secret() {
        let signer = Signer::from_secret(WHSEC).unwrap();
        let before = chrono::Utc::now().timestamp();
        let h = signer.headers("msg_1".into(), b"{}");
        let ts: i64 = h.timestamp.parse().unwrap();
        assert!(before <= ts && ts <= chrono::Utc::now().timestamp());
        let received = standard_webhooks::Headers {
            id: Some(&h.id),
            timestamp: Some(&h.timestamp),
            signature: Some(&h.signature),
        };
        assert_eq!(
            Secret::parse(WHSEC)
                .unwrap()
                .verify(received, b"{}", ts, Duration::ZERO),
            Ok(())
        );
    }

    #[test]
    fn unusable_secrets_are_refused() {
        assert_eq!(Signer::from_secret("").unwrap_err(), SecretError::Empty);
        assert!(matches!(
            Signer::from_secret("whsec_not base64!"),
            Err(SecretError::NotBase64(_))
        ));
    }
}
