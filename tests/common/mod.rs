//! Shared support for the end-to-end tests: they run the real binaries from `target/`, each in
//! its own temp dir with its own port, SQLite file and log file.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pipeline_core::analytics::StoredMetrics;
use pipeline_core::backend::{self, BackendError};
use pipeline_core::config::{BackendKind, Config, RedisMode};
use pipeline_core::testkit::free_port;
pub use pipeline_core::testkit::wait::blocking::eventually;
pub use pipeline_core::testkit::{RedisCluster, RedisServer, RedisTls};
use serde_json::Value;

mod load;
// Not every test file sends load.
#[allow(unused_imports)]
pub use load::*;

/// How long a read of the figures may keep failing on a loaded machine.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// A built binary of the workspace, beside the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace` (which builds every binary)",
        path.display()
    );
    path
}

/// A process this test started. Dropping it kills it (SIGKILL) if it is still running.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub output: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the process printed (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Pids whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) && alive(child) {
            out.push(child);
        }
    }
    out
}

/// Live processes whose working directory is `dir` (every process a pipeline starts runs in
/// its temp dir, and the orchestrator's children inherit it): what would be left orphaned.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                && alive(*pid)
        })
        .collect()
}

/// The last `bytes` of a file (less at its start), for watching a busy process's output.
pub fn tail(path: &Path, bytes: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The command line of a process, for telling children apart.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// One pipeline's environment: temp dir, port, backend settings.
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub vars: Vec<(String, String)>,
    pub http: reqwest::blocking::Client,
}

impl Pipeline {
    /// A sqlite pipeline with quick test settings (short batch timeout and retry delays).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("queue.sqlite3");
        Self::with_backend(
            dir,
            [
                ("DAY15_QUEUE_BACKEND", "sqlite".to_string()),
                ("DAY15_SQLITE_PATH", db.display().to_string()),
            ],
        )
    }

    /// A pipeline on the test's own `redis-server`, with the same quick test settings.
    pub fn redis(server: &RedisServer) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::with_backend(
            dir,
            [
                ("DAY15_QUEUE_BACKEND", "redis".to_string()),
                ("DAY15_REDIS_URL", server.url()),
            ],
        )
    }

    /// A pipeline on the test's own Redis Cluster, every node a seed, with the queue split into
    /// the cluster mode's default number of partitions.
    pub fn redis_cluster(cluster: &RedisCluster) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::with_backend(
            dir,
            [
                ("DAY15_QUEUE_BACKEND", "redis".to_string()),
                ("DAY15_REDIS_MODE", "cluster".to_string()),
                ("DAY15_REDIS_URL", cluster.seed_urls().join(",")),
            ],
        )
    }

    /// A pipeline on the test's own TLS `redis-server`, over `rediss://` with its CA.
    pub fn redis_tls(server: &RedisTls) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::with_backend(
            dir,
            [
                ("DAY15_QUEUE_BACKEND", "redis".to_string()),
                ("DAY15_REDIS_URL", server.url()),
                (
                    "DAY15_REDIS_CA_CERT",
                    server.ca_cert().display().to_string(),
                ),
            ],
        )
    }

    fn with_backend<const N: usize>(
        mut dir: tempfile::TempDir,
        backend: [(&str, String); N],
    ) -> Self {
        // KEEP_TEST_DIRS=1 keeps each pipeline's folder (outputs, log, SQLite file) for a
        // post-mortem; run with `--nocapture` to see where they are.
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("pipeline folder kept: {}", dir.path().display());
        }
        let port = free_port().expect("a free port");
        let log = dir.path().join("pipeline.log");
        let vars = backend.into_iter().chain([
            ("DAY15_WEBHOOK_PORT", port.to_string()),
            ("DAY15_LOG_FILE", log.display().to_string()),
            ("DAY15_BATCH_TIMEOUT_SECONDS", "1".to_string()),
            ("DAY15_RETRY_DELAY_SECONDS", "0.05".to_string()),
            ("DAY15_VISIBILITY_TIMEOUT_SECONDS", "2".to_string()),
            ("DAY15_SHUTDOWN_TIMEOUT_SECONDS", "10".to_string()),
            // The load checks count each event under its own feature name (one value per
            // event id), so every id must keep its name rather than become "other".
            ("DAY15_MAX_DIMENSION_VALUES", "1000000".to_string()),
        ]);
        Pipeline {
            dir,
            port,
            vars: vars.map(|(k, v)| (k.to_string(), v)).collect(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    /// The backend settings of this pipeline, as its processes resolve them (the test process
    /// itself can then open the same queue through the backend API).
    pub fn backend_config(&self) -> Config {
        let mut config = Config::defaults();
        let var = |name: &str| {
            self.vars
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        config.queue_backend = match var("DAY15_QUEUE_BACKEND").as_deref() {
            Some("redis") => BackendKind::Redis,
            Some("memory") => BackendKind::Memory,
            _ => BackendKind::Sqlite,
        };
        if let Some(path) = var("DAY15_SQLITE_PATH") {
            config.sqlite.path = path.into();
        }
        if let Some(url) = var("DAY15_REDIS_URL") {
            config.redis.url = url;
        }
        if let Some(prefix) = var("DAY15_KEY_PREFIX") {
            config.redis.key_prefix = prefix;
        }
        if var("DAY15_REDIS_MODE").as_deref() == Some("cluster") {
            config.redis.mode = RedisMode::Cluster;
        }
        config.redis.partitions = match var("DAY15_REDIS_PARTITIONS") {
            Some(n) => n.parse().expect("DAY15_REDIS_PARTITIONS is a number"),
            None => config.redis.mode.default_partitions(),
        };
        config.redis.tls.ca_cert = var("DAY15_REDIS_CA_CERT").map(PathBuf::from);
        // A partitioned read re-applies this cap when it merges the partitions' maps.
        if let Some(n) = var("DAY15_MAX_DIMENSION_VALUES") {
            config.max_dimension_values =
                n.parse().expect("DAY15_MAX_DIMENSION_VALUES is a number");
        }
        config
    }

    /// The backend as the figures name it: `sqlite`, `redis`, or `redis-cluster`.
    pub fn backend_name(&self) -> String {
        let config = self.backend_config();
        match (config.queue_backend, config.redis.mode) {
            (BackendKind::Redis, RedisMode::Cluster) => "redis-cluster".to_string(),
            (kind, _) => kind.as_str().to_string(),
        }
    }

    /// Every metric map, read straight from the backend the pipeline's processes share.
    /// A read the backend refuses as unavailable (a timeout on a loaded machine) is retried.
    pub fn backend_metrics(&self) -> StoredMetrics {
        let config = self.backend_config();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let backend = backend::connect(&config).await.expect("open the backend");
            let deadline = Instant::now() + READ_DEADLINE;
            loop {
                match backend.metrics().await {
                    Ok(m) => return m,
                    Err(BackendError::Unavailable(e)) if Instant::now() < deadline => {
                        eprintln!("metrics read refused, retrying: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("read the metrics: {e}"),
                }
            }
        })
    }

    /// A read endpoint's JSON, retried until it answers 200 (under load a backend read may
    /// time out and answer 503, as it should).
    pub fn get_ok(&self, path: &str) -> Value {
        eventually(&format!("GET {path} to answer 200"), READ_DEADLINE, || {
            let r = self.http.get(self.url(path)).send().ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().ok()
        })
    }

    /// Sets (or replaces) one variable for every process started afterwards.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.into()));
        self
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pipeline.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts a binary in the pipeline's folder with only this pipeline's `DAY15_*` settings.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_program(&bin(name), name, args)
    }

    /// As [`Pipeline::spawn`], with `vars` set on top of the pipeline's settings for this
    /// process only (e.g. a fault to inject into one consumer).
    pub fn spawn_with(&self, name: &str, args: &[&str], vars: &[(&str, &str)]) -> Proc {
        self.spawn_program_with(&bin(name), name, args, vars)
    }

    /// As [`Pipeline::spawn`], for a program file anywhere (e.g. a copy of a binary).
    pub fn spawn_program(&self, program: &Path, name: &str, args: &[&str]) -> Proc {
        self.spawn_program_with(program, name, args, &[])
    }

    fn spawn_program_with(
        &self,
        program: &Path,
        name: &str,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> Proc {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let output = self.dir.path().join(format!("{name}-{n}.out"));
        let out = File::create(&output).expect("output file");
        let err = out.try_clone().expect("output file");
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars() {
            if k.starts_with("DAY15_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.vars.iter().cloned())
            .envs(vars.iter().copied())
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // A program file just written (a copied binary) can be briefly "busy" while another
        // test thread forks with its write descriptor still open; that passes at once.
        let child = eventually(
            "the program to start",
            Duration::from_secs(10),
            || match cmd.spawn() {
                Ok(child) => Some(child),
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => None,
                Err(e) => panic!("cannot start {}: {e}", program.display()),
            },
        );
        Proc {
            name: name.to_string(),
            child,
            output,
        }
    }

    /// Stops every process still running with SIGTERM (each must exit 0 within `within`),
    /// then checks that nothing this pipeline started is left.
    pub fn shut_down(&self, procs: Vec<&mut Proc>, within: Duration) {
        for proc in &procs {
            proc.signal(Signal::SIGTERM);
        }
        for proc in procs {
            let status = proc
                .wait_timeout(within)
                .unwrap_or_else(|| panic!("{} did not stop after SIGTERM", proc.name));
            assert_eq!(status.code(), Some(0), "{}: {}", proc.name, proc.output());
        }
        self.assert_no_orphans(within);
    }

    /// Waits until no process runs in this pipeline's folder any more.
    pub fn assert_no_orphans(&self, within: Duration) {
        let left = eventually("every pipeline process to exit", within, || {
            let left = processes_in(self.dir.path());
            left.is_empty().then_some(left)
        });
        assert!(left.is_empty());
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        eventually("webhook /health to answer 200", timeout, || {
            let r = self.http.get(self.url("/health")).send().ok()?;
            r.status().is_success().then_some(())
        });
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    }

    pub fn stats(&self) -> Value {
        self.get("/stats")
    }

    pub fn health(&self) -> Value {
        self.get("/health")
    }

    /// Polls `/health` until nothing is queued, in flight or waiting for a retry.
    pub fn wait_queue_empty(&self, timeout: Duration) {
        eventually("/health queue_depth == 0", timeout, || {
            (self.health()["queue_depth"].as_u64()? == 0).then_some(())
        });
    }

    /// Polls `/stats` until `field` reaches `at_least`.
    pub fn wait_stat(&self, field: &str, at_least: u64, timeout: Duration) -> Value {
        eventually(&format!("/stats {field} >= {at_least}"), timeout, || {
            let s = self.stats();
            (s[field].as_u64()? >= at_least).then_some(s)
        })
    }
}

/// The sample events shipped in `data/sample_events.json`.
pub fn sample_events() -> Vec<Value> {
    let text = include_str!("../../data/sample_events.json");
    serde_json::from_str(text).expect("sample events are JSON")
}

/// A valid event with the given id and type.
pub fn event(id: &str, event_type: &str, metadata: Value) -> Value {
    serde_json::json!({
        "event_id": id,
        "event_type": event_type,
        "user_id": format!("user_{id}"),
        "timestamp": "2025-12-16T10:00:00Z",
        "metadata": metadata,
    })
}
