//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), written once for the
//! receiver that verifies them and for every sender that produces them.
//!
//! A signed request carries three headers: [`ID_HEADER`], [`TIMESTAMP_HEADER`] (unix seconds)
//! and [`SIGNATURE_HEADER`], a space-separated list of `v1,<base64 HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}")>`. Several signatures are allowed so a sender can rotate secrets
//! without downtime; one valid signature is enough. A receiver rotates too: [`verify_any`]
//! accepts a signature made with any of several secrets. Svix, whose scheme Standard Webhooks
//! is, names the headers `svix-id`, `svix-timestamp` and `svix-signature`;
//! [`Headers::from_fn_with_svix`] reads those when the standard names are absent.
//!
//! Guarantees: the MAC is computed over the raw body bytes exactly as received, before any
//! parsing; signatures are compared in constant time (`hmac`'s `verify_slice`); a timestamp
//! further than the tolerance from the receiver's clock is refused, which bounds how long a
//! captured request can be replayed. The crate knows no HTTP framework: header values come in
//! as strings, so a caller decides what a header that is not text means for it.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The sender's unique message id; part of what is signed, so it cannot be swapped.
pub const ID_HEADER: &str = "webhook-id";
/// When the sender signed, in unix seconds; part of what is signed, so it cannot be refreshed.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// One or more space-separated `v1,<base64>` signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The Svix name of [`ID_HEADER`], sent by Svix-based senders.
pub const SVIX_ID_HEADER: &str = "svix-id";
/// The Svix name of [`TIMESTAMP_HEADER`].
pub const SVIX_TIMESTAMP_HEADER: &str = "svix-timestamp";
/// The Svix name of [`SIGNATURE_HEADER`].
pub const SVIX_SIGNATURE_HEADER: &str = "svix-signature";

/// Each standard header name with its Svix alias, in check order (id, timestamp, signature).
pub const HEADER_ALIASES: [(&str, &str); 3] = [
    (ID_HEADER, SVIX_ID_HEADER),
    (TIMESTAMP_HEADER, SVIX_TIMESTAMP_HEADER),
    (SIGNATURE_HEADER, SVIX_SIGNATURE_HEADER),
];

/// Prefix of a base64-encoded secret, as Standard Webhooks senders hand them out.
pub const SECRET_PREFIX: &str = "whsec_";

/// Prefix of the one signature scheme this crate knows (HMAC-SHA256); entries with any other
/// prefix are ignored, so a sender may add newer schemes beside it.
const V1_PREFIX: &str = "v1,";

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret is empty, or `whsec_` with nothing after it: an empty key signs nothing.
    #[error("the secret is empty")]
    Empty,
    /// The secret starts with `whsec_` but the rest does not decode.
    #[error("a whsec_ secret must be base64 after the prefix: {0}")]
    NotBase64(base64::DecodeError),
}

/// Why a request's signature was refused, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The named header is absent or blank.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a whole number of seconds.
    #[error("{TIMESTAMP_HEADER} header is not a number of unix seconds")]
    BadTimestamp,
    /// `webhook-timestamp` is further from `now` than the tolerance (either way).
    #[error("{TIMESTAMP_HEADER} is {skew_seconds} s away from the receiver's clock (tolerance {tolerance_seconds} s)")]
    OutsideTolerance {
        /// `now - timestamp`: positive for an old request, negative for one from the future.
        skew_seconds: i64,
        tolerance_seconds: u64,
    },
    /// No `v1` entry matches the body under this secret.
    #[error("no valid v1 signature in {SIGNATURE_HEADER}")]
    NoMatchingSignature,
}

/// The three header values of a request, as text; `None` for an absent header.
///
/// Values are trimmed before use and a blank value counts as absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headers<'a> {
    /// Value of [`ID_HEADER`].
    pub id: Option<&'a str>,
    /// Value of [`TIMESTAMP_HEADER`].
    pub timestamp: Option<&'a str>,
    /// Value of [`SIGNATURE_HEADER`].
    pub signature: Option<&'a str>,
}

impl<'a> Headers<'a> {
    /// Reads the three values with `get`, called with each header name (lowercase), so any
    /// header map can be adapted in one line.
    pub fn from_fn(mut get: impl FnMut(&'static str) -> Option<&'a str>) -> Self {
        Headers {
            id: get(ID_HEADER),
            timestamp: get(TIMESTAMP_HEADER),
            signature: get(SIGNATURE_HEADER),
        }
    }

    /// Like [`Headers::from_fn`], but a header absent under its standard name is read under
    /// its Svix alias; when both are present the standard name wins.
    pub fn from_fn_with_svix(mut get: impl FnMut(&'static str) -> Option<&'a str>) -> Self {
        let [id, timestamp, signature] =
            HEADER_ALIASES.map(|(name, alias)| get(name).or_else(|| get(alias)));
        Headers {
            id,
            timestamp,
            signature,
        }
    }
}

/// A decoded secret key, able to sign and to verify.
#[derive(Clone)]
pub struct Secret {
    /// The HMAC key: the decoded `whsec_` payload or the raw secret bytes; never empty.
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// A secret as users write it: `whsec_<base64>` is decoded; any other value is used as its
    /// raw bytes (so `whsec_` decoding never applies to a raw secret).
    pub fn parse(secret: &str) -> Result<Secret, SecretError> {
        match secret.strip_prefix(SECRET_PREFIX) {
            Some(encoded) => {
                Secret::from_bytes(&STANDARD.decode(encoded).map_err(SecretError::NotBase64)?)
            }
            None => Secret::from_bytes(secret.as_bytes()),
        }
    }

    /// A secret from the key bytes themselves.
    pub fn from_bytes(key: &[u8]) -> Result<Secret, SecretError> {
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret { key: key.to_vec() })
    }

    /// The MAC of `"{id}.{timestamp}.{body}"`, ready to finalize or compare.
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
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

    /// The [`SIGNATURE_HEADER`] value for a request (`v1,<base64>`).
    ///
    /// `timestamp` is signed as it formats, which must be exactly the [`TIMESTAMP_HEADER`]
    /// value sent: an `i64` of unix seconds normally, any text to sign a malformed one.
    pub fn sign(&self, id: &str, timestamp: impl fmt::Display, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("{V1_PREFIX}{}", STANDARD.encode(tag))
    }

    /// Checks `headers` against the raw `body` at `now_unix` (seconds; a parameter so the
    /// tolerance can be tested without waiting). A timestamp exactly `tolerance` away is still
    /// accepted. Checks run in order: each header present (id, timestamp, signature), the
    /// timestamp a number, within tolerance, then the signatures.
    pub fn verify(
        &self,
        headers: Headers<'_>,
        body: &[u8],
        now_unix: i64,
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        verify_any(
            std::slice::from_ref(self),
            headers,
            body,
            now_unix,
            tolerance,
        )
    }
}

/// [`Secret::verify`] against several secrets, for a receiver rotating its secret: valid when
/// any `v1` signature matches under any of `secrets` (each compared in constant time). The
/// headers and timestamp are checked once, in the same order; with no secrets nothing matches.
pub fn verify_any(
    secrets: &[Secret],
    headers: Headers<'_>,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let id = present(ID_HEADER, headers.id)?;
    let timestamp = present(TIMESTAMP_HEADER, headers.timestamp)?;
    let signatures = present(SIGNATURE_HEADER, headers.signature)?;

    let sent_at: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_unix.saturating_sub(sent_at);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::OutsideTolerance {
            skew_seconds: skew,
            tolerance_seconds: tolerance.as_secs(),
        });
    }

    let tags: Vec<Vec<u8>> = signatures
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(V1_PREFIX))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    let any_valid = secrets.iter().any(|secret| {
        let expected = secret.mac(id, timestamp, body);
        tags.iter()
            .any(|tag| expected.clone().verify_slice(tag).is_ok())
    });
    if any_valid {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// The trimmed value of header `name`, or why it counts as missing.
fn present<'a>(name: &'static str, value: Option<&'a str>) -> Result<&'a str, VerifyError> {
    match value.map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(VerifyError::MissingHeader(name)),
    }
}

#[cfg(test)]
mod tests;
