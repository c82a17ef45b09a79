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
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Headers<'a> {
        Headers {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    /// The example published with the Standard Webhooks specification.
    #[test]
    fn the_published_standard_webhooks_example_signs_and_verifies() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            sig
        );
        let h = headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig);
        assert_eq!(secret.verify(h, body, 1614265330 + 10, TOLERANCE), Ok(()));
        assert_eq!(
            secret.verify(h, b"{\"test\": 2432232315}", 1614265330, TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    /// The vector in the reference Rust library of the Standard Webhooks repository.
    #[test]
    fn the_reference_library_vector_signs_and_verifies() {
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert_eq!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_553, body),
            sig
        );
        let h = headers("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", "1649367553", sig);
        assert_eq!(secret.verify(h, body, 1_649_367_553, TOLERANCE), Ok(()));
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        let secret = Secret::parse("raw secret").unwrap();
        let sig = secret.sign("m", 1000, b"{}");
        let h = headers("m", "1000", &sig);
        assert!(secret.verify(h, b"{}", 1300, TOLERANCE).is_ok());
        assert!(secret.verify(h, b"{}", 700, TOLERANCE).is_ok());
        assert_eq!(
            secret.verify(h, b"{}", 1301, TOLERANCE),
            Err(VerifyError::OutsideTolerance {
                skew_seconds: 301,
                tolerance_seconds: 300
            })
        );
        assert_eq!(
            secret.verify(h, b"{}", 699, TOLERANCE),
            Err(VerifyError::OutsideTolerance {
                skew_seconds: -301,
                tolerance_seconds: 300
            })
        );
    }

    #[test]
    fn one_valid_signature_among_several_is_enough_and_other_versions_are_ignored() {
        let secret = Secret::parse("current").unwrap();
        let retired = Secret::parse("retired").unwrap();
        let body = b"{}";
        let old = retired.sign("m", 5, body);
        let new = secret.sign("m", 5, body);
        let list = format!("{old} v1a,ignored v1,*** {new}");
        assert_eq!(
            secret.verify(headers("m", "5", &list), body, 5, TOLERANCE),
            Ok(())
        );
        let v2 = new.replacen("v1,", "v2,", 1);
        assert_eq!(
            secret.verify(
                headers("m", "5", &format!("{old} {v2}")),
                body,
                5,
                TOLERANCE
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn the_signature_covers_id_and_timestamp_as_sent() {
        let secret = Secret::parse("k").unwrap();
        let sig = secret.sign("m", 5, b"{}");
        assert_eq!(secret.sign("m", "5", b"{}"), sig);
        assert_eq!(
            secret.verify(headers("other", "5", &sig), b"{}", 5, TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        // "05" is the same instant but not the text that was signed.
        assert_eq!(
            secret.verify(headers("m", "05", &sig), b"{}", 5, TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        // Surrounding whitespace is not part of a header value.
        assert_eq!(
            secret.verify(
                headers(" m ", " 5\t", &format!(" {sig} ")),
                b"{}",
                5,
                TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn missing_or_blank_headers_and_bad_timestamps_are_named_in_check_order() {
        let secret = Secret::parse("k").unwrap();
        let sig = secret.sign("m", 5, b"{}");
        let good = headers("m", "5", &sig);
        let check = |h: Headers<'_>| secret.verify(h, b"{}", 5, TOLERANCE);
        assert_eq!(
            check(Headers::default()),
            Err(VerifyError::MissingHeader(ID_HEADER))
        );
        assert_eq!(
            check(Headers {
                id: Some("  "),
                ..good
            }),
            Err(VerifyError::MissingHeader(ID_HEADER))
        );
        assert_eq!(
            check(Headers {
                timestamp: None,
                signature: None,
                ..good
            }),
            Err(VerifyError::MissingHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            check(Headers {
                signature: Some(""),
                timestamp: Some("x"),
                ..good
            }),
            Err(VerifyError::MissingHeader(SIGNATURE_HEADER))
        );
        for ts in ["yesterday", "5.0", "+5x", "99999999999999999999999"] {
            assert_eq!(
                check(Headers {
                    timestamp: Some(ts),
                    ..good
                }),
                Err(VerifyError::BadTimestamp),
                "{ts}"
            );
        }
    }

    #[test]
    fn headers_from_fn_asks_for_each_name() {
        let h = Headers::from_fn(|name| (name != TIMESTAMP_HEADER).then_some(name));
        assert_eq!(
            h,
            Headers {
                id: Some("webhook-id"),
                timestamp: None,
                signature: Some("webhook-signature"),
            }
        );
    }

    #[test]
    fn a_receiver_with_several_secrets_accepts_any_of_them() {
        let old = Secret::parse("old").unwrap();
        let new = Secret::parse("new").unwrap();
        let both = [old.clone(), new.clone()];
        for signer in [&old, &new] {
            let sig = signer.sign("m", 5, b"{}");
            assert_eq!(
                verify_any(&both, headers("m", "5", &sig), b"{}", 5, TOLERANCE),
                Ok(())
            );
        }
        let stranger = Secret::parse("stranger").unwrap().sign("m", 5, b"{}");
        assert_eq!(
            verify_any(&both, headers("m", "5", &stranger), b"{}", 5, TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_any(&[], headers("m", "5", &stranger), b"{}", 5, TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        // Header and timestamp checks come before any secret is tried.
        assert_eq!(
            verify_any(&both, headers("m", "5", &stranger), b"{}", 500, TOLERANCE),
            Err(VerifyError::OutsideTolerance {
                skew_seconds: 495,
                tolerance_seconds: 300
            })
        );
    }

    #[test]
    fn svix_names_are_read_only_where_the_standard_names_are_absent() {
        let only_svix =
            Headers::from_fn_with_svix(|name| name.starts_with("svix-").then_some(name));
        assert_eq!(
            only_svix,
            Headers {
                id: Some(SVIX_ID_HEADER),
                timestamp: Some(SVIX_TIMESTAMP_HEADER),
                signature: Some(SVIX_SIGNATURE_HEADER),
            }
        );
        let mixed = Headers::from_fn_with_svix(|name| {
            (name != TIMESTAMP_HEADER && name != SVIX_SIGNATURE_HEADER).then_some(name)
        });
        assert_eq!(
            mixed,
            Headers {
                id: Some(ID_HEADER),
                timestamp: Some(SVIX_TIMESTAMP_HEADER),
                signature: Some(SIGNATURE_HEADER),
            }
        );
    }

    #[test]
    fn raw_secret_is_used_as_bytes_and_differs_from_its_whsec_form() {
        let raw = Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(raw.key, b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            Secret::from_bytes(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .key,
            raw.key
        );
        let sig = raw.sign("msg_1", 1, b"{}");
        assert!(sig.starts_with("v1,"));
        assert_ne!(
            sig,
            Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .sign("msg_1", 1, b"{}")
        );
    }

    #[test]
    fn unusable_secrets_are_refused() {
        assert_eq!(Secret::parse("").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::from_bytes(b"").unwrap_err(), SecretError::Empty);
        for bad in ["whsec_***", "whsec_not base64!"] {
            assert!(
                matches!(Secret::parse(bad), Err(SecretError::NotBase64(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let secret = Secret::parse("hunter2").unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
