//! Standard Webhooks signing (SPEC §5.4), so the generator can drive a webhook that requires
//! signatures exactly as a real sender would.
//!
//! The signature covers `"{webhook-id}.{webhook-timestamp}.{raw body}"` with HMAC-SHA256 and is
//! sent as `v1,<base64>`. A `whsec_<base64>` secret is the base64 of the key; any other secret
//! is used as raw bytes, matching what the webhook accepts.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header names of the Standard Webhooks scheme.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The secret given to `--secret` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("a whsec_ secret must be base64 after the prefix: {0}")]
    BadBase64(base64::DecodeError),
}

/// Signs request bodies with one secret.
#[derive(Clone)]
pub struct Signer {
    /// The HMAC key: the decoded `whsec_` payload or the raw secret bytes.
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("Signer { key: *** }")
    }
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
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => BASE64.decode(encoded).map_err(SecretError::BadBase64)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Signer { key })
    }

    /// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The headers for sending `body` now under message id `id`.
    pub fn headers(&self, id: String, body: &[u8]) -> SignatureHeaders {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.sign(&id, timestamp, body);
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

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn raw_secret_is_used_as_bytes_and_differs_from_its_whsec_form() {
        let raw = Signer::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(raw.key, b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = raw.sign("msg_1", 1, b"{}");
        assert!(sig.starts_with("v1,"));
        assert_ne!(
            sig,
            Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .sign("msg_1", 1, b"{}")
        );
    }

    #[test]
    fn unusable_secrets_are_refused() {
        assert!(matches!(Signer::from_secret(""), Err(SecretError::Empty)));
        assert!(matches!(
            Signer::from_secret("whsec_"),
            Err(SecretError::Empty)
        ));
        assert!(matches!(
            Signer::from_secret("whsec_not base64!"),
            Err(SecretError::BadBase64(_))
        ));
    }
}
