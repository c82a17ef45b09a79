//! The client for a URL: plain for `redis://`, TLS (rustls) for `rediss://` with the
//! certificates of [`RedisTlsFiles`] read from disk.

use std::path::Path;

use ::redis::{Client, ClientTlsConfig, TlsCertificates};

use crate::backend::{BackendError, BackendResult};
use crate::config::RedisTlsFiles;

/// A client for `url`. For `rediss://` the server is checked against `files.ca_cert` (else the
/// system roots) and `files.client_cert`/`client_key` are presented when both are given; for
/// other schemes `files` is ignored. Every failure names what was wrong (the file, the URL).
pub(super) fn client(
    url: &str,
    redacted_url: &str,
    files: &RedisTlsFiles,
) -> BackendResult<Client> {
    let invalid = |e: ::redis::RedisError| {
        BackendError::Failed(format!("invalid redis URL {redacted_url}: {e}"))
    };
    if !url.starts_with("rediss://") {
        return Client::open(url).map_err(invalid);
    }
    let certs = certificates(files)?.unwrap_or(TlsCertificates {
        client_tls: None,
        root_cert: None,
    });
    Client::build_with_tls(url, certs).map_err(|e| {
        BackendError::Failed(format!(
            "cannot set up TLS for redis at {redacted_url}: {e}"
        ))
    })
}

/// The certificates of `files`, read from disk; `None` when no file is set (the system roots,
/// no client certificate).
pub(super) fn certificates(files: &RedisTlsFiles) -> BackendResult<Option<TlsCertificates>> {
    let root_cert = files.ca_cert.as_deref().map(read_pem).transpose()?;
    let client_tls = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem(cert)?,
            client_key: read_pem(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(BackendError::Failed(
                "DAY15_REDIS_CLIENT_CERT and DAY15_REDIS_CLIENT_KEY must be set together"
                    .to_string(),
            ))
        }
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The bytes of a PEM file, or an error naming it.
fn read_pem(path: &Path) -> BackendResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| BackendError::Failed(format!("cannot read TLS file {}: {e}", path.display())))
}

/// What to check when connecting to `url` failed with `e`, for the errors a TLS setup
/// causes: a server certificate not signed by the trusted CA, a missing client certificate,
/// or plain `redis://` to a port that only speaks TLS (the server resets the connection).
pub(super) fn hint(url: &str, e: &::redis::RedisError) -> Option<&'static str> {
    let text = e.to_string();
    if url.starts_with("rediss://") {
        if text.contains("CertificateRequired") {
            Some("the server requires a client certificate (DAY15_REDIS_CLIENT_CERT, DAY15_REDIS_CLIENT_KEY)")
        } else if text.contains("certificate") {
            Some("is DAY15_REDIS_CA_CERT the CA that signed the server's certificate?")
        } else {
            None
        }
    } else if e.is_connection_dropped() || text.contains("reset by peer") {
        Some("if the server only speaks TLS, use a rediss:// URL")
    } else {
        None
    }
}

/// `error` with `hint` appended to its message.
pub(super) fn with_hint(error: BackendError, hint: Option<&str>) -> BackendError {
    let Some(hint) = hint else {
        return error;
    };
    match error {
        BackendError::Unavailable(m) => BackendError::Unavailable(format!("{m}; {hint}")),
        BackendError::Failed(m) => BackendError::Failed(format!("{m}; {hint}")),
        BackendError::Misconfigured(m) => BackendError::Misconfigured(format!("{m}; {hint}")),
    }
}
