//! A private `redis-server` that speaks only TLS, with certificates made at start.
//!
//! [`RedisTls::start`] makes a CA and a server certificate for `127.0.0.1`/`localhost` (rcgen,
//! no external tool), writes them to the server's temp dir and starts
//! `redis-server --port 0 --tls-port P`; [`RedisTls::start_mutual`] also makes a client
//! certificate and has the server require one. Skipped like [`super::RedisServer`] where
//! `redis-server` is not installed (an error under `CI=true`).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::redis_server::installed;
use crate::config::RedisTlsFiles;

/// How long a starting server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A TLS-only `redis-server` child process owned by a test; killed on drop.
pub struct RedisTls {
    port: u16,
    child: Child,
    /// Certificates and the server's working directory; removed after the server is gone.
    dir: tempfile::TempDir,
    /// Whether the server requires a client certificate.
    mutual: bool,
}

/// A CA able to sign, kept in memory while the certificates are made.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Result<Ca, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Ok(Ca { cert, key })
    }

    /// A leaf certificate for `names`, for `purpose`, and its key (both PEM).
    fn issue(
        &self,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), String> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(tls_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "pipeline test");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(tls_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn tls_err(e: rcgen::Error) -> String {
    format!("cannot make a test certificate: {e}")
}

impl RedisTls {
    /// Starts a TLS-only server on a free port, trusting no client certificates (any client
    /// that trusts [`ca_cert`](Self::ca_cert) may connect), and waits until it accepts
    /// connections. `Ok(None)` (after printing why) when `redis-server` is not installed,
    /// unless `CI` is `true`: then an `Err`.
    pub fn start() -> Result<Option<RedisTls>, String> {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), but the server refuses clients without a certificate
    /// signed by its CA (mutual TLS); [`client_cert`](Self::client_cert) is one.
    pub fn start_mutual() -> Result<Option<RedisTls>, String> {
        Self::start_with(true)
    }

    fn start_with(mutual: bool) -> Result<Option<RedisTls>, String> {
        if !installed("redis-server")? {
            return Ok(None);
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir for redis-server: {e}"))?;
        let ca = Ca::new("pipeline test CA")?;
        let (server_cert, server_key) = ca.issue(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            ca.issue(&["pipeline-client"], ExtendedKeyUsagePurpose::ClientAuth)?;
        for (name, pem) in [
            ("ca.pem", ca.cert.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        // Another process may take the free port before the server binds it; then try another.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port =
                super::free_port().map_err(|e| format!("no free port for redis-server: {e}"))?;
            match launch(dir.path(), port, mutual) {
                Ok(child) => {
                    return Ok(Some(RedisTls {
                        port,
                        child,
                        dir,
                        mutual,
                    }))
                }
                Err(e) => last_error = e,
            }
        }
        Err(format!("TLS redis-server did not start: {last_error}"))
    }

    /// `rediss://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The TLS port (the server has no plain-text one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PEM file of the CA that signed the server's (and the client's) certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// PEM file of a client certificate the server accepts.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// PEM file of the key of [`client_cert`](Self::client_cert).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// What a client needs to connect: the CA, plus the client certificate when the server
    /// requires one.
    pub fn files(&self) -> RedisTlsFiles {
        RedisTlsFiles {
            ca_cert: Some(self.ca_cert()),
            client_cert: self.mutual.then(|| self.client_cert()),
            client_key: self.mutual.then(|| self.client_key()),
        }
    }

    /// Writes the PEM of a CA that signed nothing this server knows, for tests of a client
    /// that trusts the wrong CA, and returns its path.
    pub fn write_unrelated_ca(&self) -> Result<PathBuf, String> {
        let path = self.dir.path().join("unrelated-ca.pem");
        let ca = Ca::new("unrelated CA")?;
        std::fs::write(&path, ca.cert.pem())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on `port` and waits until it accepts TCP connections (it sets up TLS
/// before it listens, so then it is ready).
fn launch(dir: &Path, port: u16, mutual: bool) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port"])
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args(["--tls-auth-clients", if mutual { "yes" } else { "no" }])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
    let deadline = Instant::now() + START_DEADLINE;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        // Checked first so a server that failed to bind is never mistaken for one that
        // listens (another process may hold the port).
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "redis-server on TLS port {port} exited at start ({status})"
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on TLS port {port} did not listen within {START_DEADLINE:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
