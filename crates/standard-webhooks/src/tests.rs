//! Unit tests of the parent module, compiled only with `#[cfg(test)]`.

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
    let only_svix = Headers::from_fn_with_svix(|name| name.starts_with("svix-").then_some(name));
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
