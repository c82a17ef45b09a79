//! A private, throwaway `redis-server`.
//!
//! Tests never use a shared Redis: each starts its own server on a free port, with its data
//! directory in a temp dir, and the server dies with the value. [`RedisServer::start`] gives a
//! server without persistence (a restart comes back empty); [`RedisServer::start_persistent`]
//! one that writes every command to its append-only file before answering, so a kill and
//! restart lose nothing it acknowledged — what an outage test needs to check "nothing lost".
//! Where `redis-server` is not installed the tests that need it are skipped — except under
//! `CI=true`, where a missing server is an error, so a CI run can never pass by skipping.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` child process owned by a test.
pub struct RedisServer {
    /// Fixed for the server's life, so `restart` comes back where clients expect it.
    port: u16,
    /// The running server; `None` between `stop` and `restart`.
    child: Option<Child>,
    /// Holds the server's working directory until the server is gone (or, when persistent,
    /// until the value is dropped, so a restart finds the data).
    dir: Option<tempfile::TempDir>,
    /// `appendonly yes` + `appendfsync always`, and the directory is kept across restarts.
    persistent: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// `Ok(None)` (after printing why) when `redis-server` is not installed, unless the
    /// environment variable `CI` is `true`: then that is an `Err`.
    pub fn start() -> Result<Option<RedisServer>, String> {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), but every write is fsynced to an append-only file before
    /// Redis answers, and [`stop`](Self::stop) + [`restart`](Self::restart) keep the data:
    /// a crash of the server loses nothing it acknowledged.
    pub fn start_persistent() -> Result<Option<RedisServer>, String> {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Result<Option<RedisServer>, String> {
        if !installed("redis-server")? {
            return Ok(None);
        }
        // Another process may take the free port between our probe and the server's bind;
        // then try another.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port =
                super::free_port().map_err(|e| format!("no free port for redis-server: {e}"))?;
            let mut server = RedisServer {
                port,
                child: None,
                dir: None,
                persistent,
            };
            match server.launch() {
                Ok(()) => return Ok(Some(server)),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start: {last_error}"))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, by its PID) and waits for it to exit. Its data is gone,
    /// unless the server is persistent: then its append-only file waits for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.persistent {
            self.dir = None;
        }
    }

    /// A server on the same port: fresh and empty (like a Redis restarted without
    /// persistence), or, when persistent, with everything it had acknowledged.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // The old socket may need a moment to be released.
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("redis-server did not restart: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = match self.dir.take() {
            Some(kept) => kept,
            None => tempfile::tempdir().map_err(|e| format!("temp dir for redis-server: {e}"))?,
        };
        let data_dir = dir.path().to_path_buf();
        // Kept even when this launch fails, so a persistent server's data is never dropped.
        self.dir = Some(dir);
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            // Checked first so a server that failed to bind is never mistaken for one that
            // answers (another process may hold the port).
            let exited = child.try_wait().map_err(|e| e.to_string())?;
            if let Some(status) = exited {
                return Err(format!(
                    "redis-server on port {} exited at start ({status})",
                    self.port
                ));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {START_DEADLINE:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `program` (`redis-server`, `redis-cli`) can be run. `Ok(false)` (after printing
/// that the test is skipped) when it is not installed, unless `CI` is `true`: then an `Err`,
/// so a CI run can never pass by skipping.
pub(super) fn installed(program: &str) -> Result<bool, String> {
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                return Err(format!(
                    "{program} is not installed, and CI=true forbids skipping the tests that \
                     need it"
                ));
            }
            eprintln!("skipping: {program} not installed");
            Ok(false)
        }
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// Whether a server on `port` answers `PING` with `+PONG`.
pub(super) fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
