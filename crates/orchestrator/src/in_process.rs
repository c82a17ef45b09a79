//! `DAY15_QUEUE_BACKEND=memory`: the memory backend lives in one process, so the webhook and
//! the consumers run as tasks of the orchestrator instead of child processes. They are
//! supervised by the same [`RestartPolicy`] as child processes: a task that stops before the
//! shutdown signal is started again after a backoff, and one that keeps stopping ends the
//! pipeline with exit 1.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{Backend, BackendOptions};
use pipeline_core::config::Config;
use pipeline_core::runtime::{self, exit};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::restart::RestartPolicy;

/// One incarnation of a role: runs until the token is cancelled (`Ok`) or it fails.
pub type RoleFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A role run as a task: its name in the log and how to start one incarnation of it.
pub struct TaskRole {
    name: String,
    start: Box<dyn Fn(CancellationToken) -> RoleFuture + Send + Sync>,
}

impl TaskRole {
    /// `start` is called for the first run and again for each restart; the future it returns
    /// must end soon after the token it is given is cancelled.
    pub fn new<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        TaskRole {
            name: name.into(),
            start: Box::new(move |stop| Box::pin(start(stop))),
        }
    }
}

/// Runs webhook + consumers as tasks until a signal; returns the exit code.
pub async fn run(config: Config) -> i32 {
    let listener = match crate::preflight::bind_webhook(&config).await {
        Ok(l) => l,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("{message}");
            return exit::FAILURE;
        }
    };
    // The orchestrator keeps the socket: a restarted webhook task serves a copy of it, so the
    // port is never released (and never lost to another process) between two incarnations.
    let listener = match listener.into_std() {
        Ok(l) => Arc::new(l),
        Err(e) => {
            tracing::error!("Cannot keep the webhook's socket: {e}");
            return exit::FAILURE;
        }
    };
    let backend: Arc<dyn Backend> =
        Arc::new(MemoryBackend::new(BackendOptions::from_config(&config)));
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signals(shutdown.clone());

    let mut roles = Vec::new();
    {
        let (config, backend) = (config.clone(), backend.clone());
        roles.push(TaskRole::new("webhook", move |stop| {
            let (config, backend) = (config.clone(), backend.clone());
            let socket = listener.try_clone();
            async move {
                let socket = socket.context("cannot share the webhook's socket")?;
                socket
                    .set_nonblocking(true)
                    .context("cannot share the webhook's socket")?;
                let socket = tokio::net::TcpListener::from_std(socket)
                    .context("cannot share the webhook's socket")?;
                webhook::serve(config, backend, socket, stop).await
            }
        }));
    }
    for i in 1..=config.consumers {
        let (config, backend) = (config.clone(), backend.clone());
        roles.push(TaskRole::new(format!("consumer-{i}"), move |stop| {
            let (config, backend) = (config.clone(), backend.clone());
            async move { consumer::run(config, backend, stop).await.map(|_| ()) }
        }));
    }
    tracing::info!(
        "Pipeline running in one process (memory backend): webhook + {} consumer task(s). Press Ctrl+C to stop.",
        config.consumers
    );
    supervise(roles, shutdown, config.shutdown_timeout).await
}

/// Runs every role as a task until `shutdown` is cancelled, restarting one that stops by the
/// shared [`RestartPolicy`]; returns the exit code: 0 when every task stopped cleanly after
/// `shutdown`, 1 when a role stopped too often, a task failed while stopping, or tasks were
/// still running `shutdown_timeout` after the stop (they are abandoned then).
pub async fn supervise(
    roles: Vec<TaskRole>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
) -> i32 {
    // Cancelled on a signal (through `shutdown`) and when a role gives up.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    // Which role a running task is.
    let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut policies: Vec<RestartPolicy> = roles.iter().map(|_| RestartPolicy::new()).collect();
    let mut restart_at: Vec<Option<Instant>> = vec![None; roles.len()];
    let start = |i: usize, tasks: &mut JoinSet<anyhow::Result<()>>| {
        let handle = tasks.spawn((roles[i].start)(stop.clone()));
        (handle.id(), i)
    };
    for i in 0..roles.len() {
        let (id, i) = start(i, &mut tasks);
        running.insert(id, i);
    }

    let fatal = loop {
        let next_restart = restart_at.iter().flatten().min().copied();
        let restart_due = async {
            match next_restart {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // Biased: once the shutdown signal came, a task ending because of it is no failure.
        // A losing branch is re-created next turn; a finished task stays in the set until read.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break false,
            Some(ended) = tasks.join_next_with_id() => {
                let (id, what) = match ended {
                    Ok((id, Ok(()))) => (id, "stopped unexpectedly".to_string()),
                    Ok((id, Err(e))) => (id, format!("failed ({e:#})")),
                    Err(e) => (e.id(), format!("panicked ({e})")),
                };
                let Some(i) = running.remove(&id) else { continue };
                let now = Instant::now();
                match policies[i].on_stop(&roles[i].name, &what, now) {
                    Ok(backoff) => restart_at[i] = Some(now + backoff),
                    Err(message) => {
                        tracing::error!("{message}");
                        break true;
                    }
                }
            }
            _ = restart_due => {
                let now = Instant::now();
                for (i, due) in restart_at.iter_mut().enumerate() {
                    if due.is_some_and(|t| t <= now) {
                        *due = None;
                        let (id, i) = start(i, &mut tasks);
                        running.insert(id, i);
                        tracing::info!("Started {}", roles[i].name);
                    }
                }
            }
        }
    };

    stop.cancel();
    let mut failed = fatal;
    let names: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
    // Nothing is started any more: what the roles hold (the webhook's socket) goes now.
    drop(roles);
    let name = |id: tokio::task::Id| running.get(&id).map_or("a task", |&i| names[i].as_str());
    let drained = tokio::time::timeout(shutdown_timeout, async {
        while let Some(ended) = tasks.join_next_with_id().await {
            match ended {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(e))) => {
                    failed = true;
                    tracing::error!("{} failed while stopping: {e:#}", name(id));
                }
                Err(e) => {
                    failed = true;
                    tracing::error!("{} panicked while stopping: {e}", name(e.id()));
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("Shutdown timeout reached: abandoning tasks still running");
        return exit::FAILURE;
    }
    if failed {
        exit::FAILURE
    } else {
        tracing::info!("All components stopped cleanly");
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::restart::{FIRST_BACKOFF, MAX_RESTARTS};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A role that fails its first `failures` runs, then runs until stopped; counts its starts.
    fn flaky(name: &str, failures: usize, starts: Arc<AtomicUsize>) -> TaskRole {
        TaskRole::new(name, move |stop: CancellationToken| {
            let n = starts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < failures {
                    anyhow::bail!("injected failure {}", n + 1);
                }
                stop.cancelled().await;
                Ok(())
            }
        })
    }

    /// Waits (on the test's clock) until `starts` reaches `n`.
    async fn until_started(starts: &AtomicUsize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while starts.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "{n} starts never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_role_is_restarted_with_backoff_and_a_clean_stop_exits_0() {
        let starts = Arc::new(AtomicUsize::new(0));
        let others = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let began = Instant::now();
        let pipeline = tokio::spawn(supervise(
            vec![
                flaky("webhook", 0, others.clone()),
                flaky("consumer-1", 2, starts.clone()),
            ],
            shutdown.clone(),
            TIMEOUT,
        ));
        until_started(&starts, 3).await;
        // Two restarts: after 0.5 s, then after 1 s more.
        assert!(
            began.elapsed() >= FIRST_BACKOFF * 3,
            "{:?}",
            began.elapsed()
        );
        assert_eq!(others.load(Ordering::SeqCst), 1, "the healthy role ran on");
        shutdown.cancel();
        assert_eq!(pipeline.await.expect("supervisor"), exit::OK);
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "no restart after the stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_role_that_keeps_failing_stops_everything_with_exit_1() {
        let starts = Arc::new(AtomicUsize::new(0));
        let others = Arc::new(AtomicUsize::new(0));
        let began = Instant::now();
        let code = supervise(
            vec![
                flaky("webhook", 0, others.clone()),
                flaky("consumer-1", usize::MAX, starts.clone()),
            ],
            CancellationToken::new(),
            TIMEOUT,
        )
        .await;
        assert_eq!(code, exit::FAILURE);
        assert_eq!(starts.load(Ordering::SeqCst), MAX_RESTARTS + 1);
        // 0.5 + 1 + 2 + 4 + 8 s of backoff, all within the minute.
        assert!(began.elapsed() >= Duration::from_millis(15_500));
        assert!(began.elapsed() < Duration::from_secs(60));
        assert_eq!(others.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_role_is_restarted_too() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let role = TaskRole::new("consumer-1", move |stop: CancellationToken| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "injected panic");
                stop.cancelled().await;
                Ok(())
            }
        });
        let shutdown = CancellationToken::new();
        let pipeline = tokio::spawn(supervise(vec![role], shutdown.clone(), TIMEOUT));
        until_started(&starts, 2).await;
        shutdown.cancel();
        assert_eq!(pipeline.await.expect("supervisor"), exit::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_role_that_ignores_the_stop_is_abandoned_after_the_timeout_with_exit_1() {
        let stubborn = TaskRole::new("consumer-1", |_stop| std::future::pending());
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let began = Instant::now();
        let code = supervise(vec![stubborn], shutdown, TIMEOUT).await;
        assert_eq!(code, exit::FAILURE);
        assert!(began.elapsed() >= TIMEOUT);
    }
}
