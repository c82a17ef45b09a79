//! Child processes: start, readiness, restart with backoff, and shutdown.
//!
//! Each child is owned by a waiter task that reports its exit on one channel; the supervisor
//! keeps only pids, so signalling never races with reaping. Children run in their own process
//! group (a terminal's Ctrl+C reaches only the orchestrator, which then shuts them down in
//! order) and carry `PR_SET_PDEATHSIG`, so they are told to stop even when the orchestrator is
//! killed with SIGKILL.
//!
//! Every child is the orchestrator's own executable run in a role (`orchestrator run-webhook`,
//! `orchestrator run-consumer`), so a child is always the very build that supervises it.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pipeline_core::backend::sqlite::StoreIdentity;
use pipeline_core::config::{BackendKind, Config, RawSettings, VARIABLES};
use pipeline_core::runtime::exit;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::restart::RestartPolicy;

/// How long the webhook may take to answer `/health` after it was started.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often the supervisor checks that the SQLite path still names the store it started on.
/// A child's exit is checked against the store first too, so a child that stopped because the
/// store is gone is never taken for a crash and restarted, whichever of them notices first.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The SQLite file the pipeline runs on, remembered at start (`None` for Redis).
///
/// A child restarted after the file was deleted or replaced would open a new, empty store
/// while the others keep the old one: accepted events would never be processed. So a loss
/// stops the whole pipeline instead, and no child is restarted once it is seen.
fn watched_store(config: &Config) -> Result<Option<StoreIdentity>, String> {
    if config.queue_backend != BackendKind::Sqlite {
        return Ok(None);
    }
    let path = &config.sqlite.path;
    StoreIdentity::of(path)
        .map(Some)
        .map_err(|e| format!("Cannot open the SQLite queue at {}: {e}", path.display()))
}

/// `Some(sentence)` once the path no longer names the store the pipeline started on.
fn store_lost(store: &Option<StoreIdentity>) -> Option<String> {
    let store = store.as_ref()?;
    store.check().err().map(|_| {
        format!(
            "SQLite queue file {} was deleted or replaced while the pipeline was running; \
             stopping the pipeline instead of restarting it on a new, empty store",
            store.path().display()
        )
    })
}

/// Which program a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Webhook,
    Consumer,
}

impl Role {
    /// The orchestrator's subcommand that runs this role.
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Webhook => crate::RUN_WEBHOOK,
            Role::Consumer => crate::RUN_CONSUMER,
        }
    }
}

/// One supervised child and its restart history.
struct Slot {
    /// `webhook`, `consumer-1`, …
    name: String,
    role: Role,
    /// Set while the process runs.
    pid: Option<i32>,
    /// Bumped on each start, so an exit report of an older incarnation is recognised.
    generation: u64,
    /// When the running incarnation was started.
    started_at: Option<Instant>,
    /// Recent restarts, for the backoff and the "too many in a minute" rule.
    restarts: RestartPolicy,
    /// When a pending restart is due.
    restart_at: Option<Instant>,
}

/// An exit reported by a waiter task.
struct Exited {
    index: usize,
    generation: u64,
    status: std::io::Result<ExitStatus>,
}

/// Everything needed to start children.
struct Launcher {
    /// The settings the orchestrator resolved, handed to every child verbatim.
    env: Vec<(String, String)>,
    exits: mpsc::Sender<Exited>,
}

/// The command that runs `role`: the orchestrator's own executable with the role's
/// subcommand. On Linux it is exec'd through `/proc/self/exe`, which names the running build
/// even when the file was since rebuilt or removed, so a restart never mixes builds; `argv[0]`
/// stays the orchestrator's path, so `ps` shows `…/orchestrator run-consumer`.
pub fn command_for(role: Role) -> Result<tokio::process::Command, String> {
    let me = std::env::current_exe()
        .map_err(|e| format!("cannot locate the orchestrator's own executable: {e}"))?;
    let own = std::path::Path::new("/proc/self/exe");
    let mut cmd = if own.exists() {
        let mut cmd = tokio::process::Command::new(own);
        cmd.arg0(&me);
        cmd
    } else {
        tokio::process::Command::new(&me)
    };
    cmd.arg(role.subcommand());
    Ok(cmd)
}

impl Launcher {
    fn start(&self, index: usize, slot: &mut Slot) -> Result<(), String> {
        let mut cmd = command_for(slot.role)?;
        cmd.envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .process_group(0);
        let parent = std::process::id() as i32;
        // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid,
        // _exit); no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // The parent may have died before prctl took effect.
                if nix::unistd::getppid().as_raw() != parent {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        let started_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", slot.name))?;
        let pid = child.id().map(|p| p as i32);
        slot.generation += 1;
        slot.pid = pid;
        slot.started_at = Some(started_at);
        slot.restart_at = None;
        let generation = slot.generation;
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // The supervisor may already be gone at exit; nothing left to tell then.
            let _ = exits
                .send(Exited {
                    index,
                    generation,
                    status,
                })
                .await;
        });
        tracing::info!(
            "Started {} (pid {})",
            slot.name,
            pid.map_or("?".to_string(), |p| p.to_string())
        );
        Ok(())
    }
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "unknown status".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// The `DAY15_*` settings for children: every variable, unset ones as empty, so a child
/// resolves exactly what the orchestrator resolved (flags and `--env-file` included).
fn child_env(raw: &RawSettings) -> Vec<(String, String)> {
    VARIABLES
        .iter()
        .map(|(name, _)| (name.to_string(), raw.get(name).unwrap_or("").to_string()))
        .collect()
}

/// Runs the children until a signal or a fatal failure; returns the exit code.
pub async fn run(raw: RawSettings, config: Config) -> i32 {
    let shutdown = CancellationToken::new();
    let kill_now = CancellationToken::new();
    pipeline_core::runtime::watch_signals(shutdown.clone(), kill_now.clone());
    let (tx, mut rx) = mpsc::channel(64);
    let launcher = Launcher {
        env: child_env(&raw),
        exits: tx,
    };
    let mut slots: Vec<Slot> = std::iter::once(("webhook".to_string(), Role::Webhook))
        .chain((1..=config.consumers).map(|i| (format!("consumer-{i}"), Role::Consumer)))
        .map(|(name, role)| Slot {
            name,
            role,
            pid: None,
            generation: 0,
            started_at: None,
            restarts: RestartPolicy::new(),
            restart_at: None,
        })
        .collect();

    let store = match watched_store(&config) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!("{e}");
            return exit::FAILURE;
        }
    };
    let started = Instant::now();
    if let Err(e) = launcher.start(0, &mut slots[0]) {
        tracing::error!("{e}");
        return exit::FAILURE;
    }
    match wait_healthy(&config, &mut rx, &mut slots, &shutdown).await {
        Ok(()) => tracing::info!(
            "Webhook healthy after {} ms at {}/health",
            started.elapsed().as_millis(),
            config.webhook_url()
        ),
        Err(e) => {
            tracing::error!("{e}");
            stop_all(&mut slots, &mut rx, config.shutdown_timeout, &kill_now).await;
            return if shutdown.is_cancelled() {
                exit::OK
            } else {
                exit::FAILURE
            };
        }
    }
    for i in 1..slots.len() {
        if let Err(e) = launcher.start(i, &mut slots[i]) {
            tracing::error!("{e}");
            stop_all(&mut slots, &mut rx, config.shutdown_timeout, &kill_now).await;
            return exit::FAILURE;
        }
    }
    tracing::info!(
        "Pipeline running: webhook + {} consumer(s). Press Ctrl+C to stop.",
        config.consumers
    );

    let mut store_check = tokio::time::interval(STORE_CHECK_EVERY);
    let fatal = loop {
        let next_restart = slots.iter().filter_map(|s| s.restart_at).min();
        let restart_due = async {
            match next_restart {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // A losing branch is simply re-created next turn: no exit report or signal is lost,
        // since both live in the channel / token until read.
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            _ = store_check.tick() => {
                if let Some(message) = store_lost(&store) {
                    tracing::error!("{message}");
                    break true;
                }
            }
            Some(exited) = rx.recv() => {
                // A child that stopped because its store is gone is not restarted.
                if let Some(message) = store_lost(&store) {
                    if let Some(slot) = slots.get_mut(exited.index) {
                        if slot.generation == exited.generation {
                            slot.pid = None;
                        }
                    }
                    tracing::error!("{message}");
                    break true;
                }
                if let Some(message) = on_exit(&mut slots, exited) {
                    tracing::error!("{message}");
                    break true;
                }
            }
            _ = restart_due => {
                if let Some(message) = store_lost(&store) {
                    tracing::error!("{message}");
                    break true;
                }
                let now = Instant::now();
                let mut gave_up = None;
                for (i, slot) in slots.iter_mut().enumerate() {
                    if slot.restart_at.is_some_and(|t| t <= now) {
                        if let Err(e) = launcher.start(i, slot) {
                            // A failed start counts like a crash, so it cannot loop forever.
                            gave_up = gave_up.or(schedule_restart(slot, &format!("could not be started ({e})")));
                        }
                    }
                }
                if let Some(message) = gave_up {
                    tracing::error!("{message}");
                    break true;
                }
            }
        }
    };

    let clean = stop_all(&mut slots, &mut rx, config.shutdown_timeout, &kill_now).await;
    if fatal {
        exit::FAILURE
    } else if clean {
        tracing::info!("All components stopped cleanly");
        exit::OK
    } else {
        tracing::warn!("Shutdown finished, but not every component stopped cleanly");
        exit::FAILURE
    }
}

/// Records an unexpected exit and schedules a restart; `Some(message)` means give up.
fn on_exit(slots: &mut [Slot], exited: Exited) -> Option<String> {
    let slot = slots.get_mut(exited.index)?;
    if exited.generation != slot.generation {
        return None;
    }
    slot.pid = None;
    schedule_restart(
        slot,
        &format!("exited unexpectedly ({})", describe(&exited.status)),
    )
}

/// Schedules the next start of a child that died or could not be started, by the shared
/// [`RestartPolicy`]; `Some(message)` when it stopped too often and the pipeline should stop.
fn schedule_restart(slot: &mut Slot, what: &str) -> Option<String> {
    let now = Instant::now();
    match slot.restarts.on_stop(&slot.name, what, now) {
        Ok(backoff) => {
            slot.restart_at = Some(now + backoff);
            None
        }
        Err(message) => Some(message),
    }
}

/// Polls the webhook's `/health` until it answers 200, the webhook exits, or a deadline.
///
/// The answer must come from this orchestrator's own child: the port was free before the
/// child started (see [`crate::preflight::check_port`]), the child must not have exited, and
/// the answering webhook must not have been up longer than the child (its `uptime_seconds`).
async fn wait_healthy(
    config: &Config,
    rx: &mut mpsc::Receiver<Exited>,
    slots: &mut [Slot],
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let url = format!("{}/health", config.webhook_url());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let started_at = slots[0].started_at.unwrap_or_else(Instant::now);
    let deadline = started_at + READY_DEADLINE;
    // Whether an exit report is the webhook's own, and if so the start-up failure it means.
    let webhook_exit = |slots: &mut [Slot], exited: Exited| {
        if exited.index != 0 || exited.generation != slots[0].generation {
            return None;
        }
        slots[0].pid = None;
        Some(format!(
            "the webhook exited during start-up ({}); see the log above",
            describe(&exited.status)
        ))
    };
    loop {
        let answer = healthy_uptime(&client, &url).await;
        // An exit already reported wins over any answer: that answer was not our child's.
        while let Ok(exited) = rx.try_recv() {
            if let Some(failure) = webhook_exit(slots, exited) {
                return Err(failure);
            }
        }
        if let Some(uptime) = answer {
            let ours = started_at.elapsed().as_secs();
            if uptime <= ours {
                return Ok(());
            }
            return Err(format!(
                "another webhook answers {url} (up {uptime} s, longer than ours) — stop it or set DAY15_WEBHOOK_PORT"
            ));
        }
        // Losing branches: the sleep is re-created next turn; an exit report stays queued
        // only if this select did not take it, and then it is handled here next turn.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = shutdown.cancelled() => return Err("shutdown requested during start-up".into()),
            Some(exited) = rx.recv() => {
                if let Some(failure) = webhook_exit(slots, exited) {
                    return Err(failure);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the webhook did not answer {url} within {} s",
                READY_DEADLINE.as_secs()
            ));
        }
    }
}

/// `Some(uptime_seconds)` when `/health` answers 200 (a healthy body without the field
/// counts as just started).
async fn healthy_uptime(client: &reqwest::Client, url: &str) -> Option<u64> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    Some(body["uptime_seconds"].as_u64().unwrap_or(0))
}

/// SIGTERM to every running child, then wait up to `timeout` (or until `kill_now`) before
/// SIGKILL. Returns whether every child exited by itself with status 0.
async fn stop_all(
    slots: &mut [Slot],
    rx: &mut mpsc::Receiver<Exited>,
    timeout: Duration,
    kill_now: &CancellationToken,
) -> bool {
    for s in slots.iter_mut() {
        s.restart_at = None;
        if let Some(pid) = s.pid {
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
                tracing::warn!("cannot send SIGTERM to {} (pid {pid}): {e}", s.name);
            }
        }
    }
    let mut clean = true;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut killed = false;
    while slots.iter().any(|s| s.pid.is_some()) {
        // Losing branches hold nothing: the timer and token are re-checked next turn.
        tokio::select! {
            Some(exited) = rx.recv() => {
                let Some(slot) = slots.get_mut(exited.index) else { continue };
                if exited.generation != slot.generation {
                    continue;
                }
                slot.pid = None;
                // Dying of our own SIGTERM is a clean stop too: a child still starting up
                // has no handler installed yet, and no work in hand.
                let ok = exited.status.as_ref().is_ok_and(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    s.success() || s.signal() == Some(Signal::SIGTERM as i32)
                });
                clean &= ok && !killed;
                tracing::info!("{} stopped ({})", slot.name, describe(&exited.status));
            }
            _ = tokio::time::sleep_until(deadline), if !killed => {
                tracing::warn!("Shutdown timeout ({} s) reached: killing stragglers", timeout.as_secs_f64());
                kill_remaining(slots);
                killed = true;
            }
            _ = kill_now.cancelled(), if !killed => {
                kill_remaining(slots);
                killed = true;
            }
            else => break,
        }
    }
    clean && !killed
}

fn kill_remaining(slots: &[Slot]) {
    for s in slots {
        if let Some(pid) = s.pid {
            tracing::warn!("Killing {} (pid {pid})", s.name);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_runs_the_orchestrators_own_executable_in_its_role() {
        let cmd = command_for(Role::Consumer).expect("the test's own executable");
        let cmd = cmd.as_std();
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, [crate::RUN_CONSUMER]);
    }

    #[test]
    fn exit_statuses_are_described_for_the_log() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(&Ok(ExitStatus::from_raw(1 << 8))), "exit code 1");
        assert_eq!(describe(&Ok(ExitStatus::from_raw(9))), "killed by SIGKILL");
    }
}
