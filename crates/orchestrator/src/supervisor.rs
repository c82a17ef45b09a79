//! Child processes: start, readiness, restart with backoff, and shutdown.
//!
//! Each child is owned by a waiter task that reports its exit on one channel; the supervisor
//! keeps only pids, so signalling never races with reaping. Children run in their own process
//! group (a terminal's Ctrl+C reaches only the orchestrator, which then shuts them down in
//! order) and carry `PR_SET_PDEATHSIG`, so they are told to stop even when the orchestrator is
//! killed with SIGKILL.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pipeline_core::config::{Config, RawSettings, VARIABLES};
use pipeline_core::runtime::exit;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// More restarts than this within [`RESTART_WINDOW`] stops the pipeline.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the webhook may take to answer `/health` after it was started.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Which program a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Webhook,
    Consumer,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Webhook => "webhook",
            Role::Consumer => "consumer",
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
    /// Start times of recent restarts, for the "too many in a minute" rule.
    restarts: VecDeque<Instant>,
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

/// How to start a role: the sibling binary beside the orchestrator's own executable when it
/// is there and not older than the orchestrator (so a stale build is never mixed in), else the
/// orchestrator's own executable in that role (`cargo run --bin orchestrator` builds only it).
pub fn program_for(role: Role) -> Result<(PathBuf, Vec<&'static str>), String> {
    let me = std::env::current_exe()
        .map_err(|e| format!("cannot locate the orchestrator's own executable: {e}"))?;
    let sibling = me.with_file_name(role.binary());
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (modified(&sibling), modified(&me)) {
        (Some(theirs), Some(mine)) => theirs >= mine,
        _ => false,
    };
    if sibling.is_file() && fresh {
        return Ok((sibling, Vec::new()));
    }
    let flag = match role {
        Role::Webhook => crate::WEBHOOK_ROLE,
        Role::Consumer => crate::CONSUMER_ROLE,
    };
    Ok((me, vec![flag]))
}

impl Launcher {
    fn start(&self, index: usize, slot: &mut Slot) -> Result<(), String> {
        let (program, args) = program_for(slot.role)?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(args)
            .envs(self.env.iter().cloned())
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
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id().map(|p| p as i32);
        slot.generation += 1;
        slot.pid = pid;
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
            restarts: VecDeque::new(),
            restart_at: None,
        })
        .collect();

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

    let fatal = loop {
        let next_restart = slots.iter().filter_map(|s| s.restart_at).min();
        let restart_due = async {
            match next_restart {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        // A losing branch is simply re-created next turn: no exit report or signal is lost,
        // since both live in the channel / token until read.
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            Some(exited) = rx.recv() => {
                if let Some(message) = on_exit(&mut slots, exited) {
                    tracing::error!("{message}");
                    break true;
                }
            }
            _ = restart_due => {
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

/// Schedules the next start of a child that died or could not be started, with exponential
/// backoff; `Some(message)` when it failed more than [`MAX_RESTARTS`] times within
/// [`RESTART_WINDOW`] and the pipeline should stop.
fn schedule_restart(slot: &mut Slot, what: &str) -> Option<String> {
    let now = Instant::now();
    while slot
        .restarts
        .front()
        .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
    {
        slot.restarts.pop_front();
    }
    if slot.restarts.len() >= MAX_RESTARTS {
        return Some(format!(
            "{} {what} after {} restarts within {} s; stopping the pipeline",
            slot.name,
            slot.restarts.len(),
            RESTART_WINDOW.as_secs()
        ));
    }
    slot.restarts.push_back(now);
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << (slot.restarts.len() - 1).min(16))
        .min(MAX_BACKOFF);
    slot.restart_at = Some(now + backoff);
    tracing::warn!(
        "{} {what}; restarting in {} ms (restart {} of at most {} per minute)",
        slot.name,
        backoff.as_millis(),
        slot.restarts.len(),
        MAX_RESTARTS
    );
    None
}

/// Polls the webhook's `/health` until it answers 200, the webhook exits, or a deadline.
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
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        // Losing branches: the sleep is re-created next turn; an exit report stays queued
        // only if this select did not take it, and then it is handled here next turn.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = shutdown.cancelled() => return Err("shutdown requested during start-up".into()),
            Some(exited) = rx.recv() => {
                if exited.index == 0 && exited.generation == slots[0].generation {
                    slots[0].pid = None;
                    return Err(format!(
                        "the webhook exited during start-up ({}); see the log above",
                        describe(&exited.status)
                    ));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the webhook did not answer {url} within {} s",
                READY_DEADLINE.as_secs()
            ));
        }
    }
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

    fn slot() -> Slot {
        Slot {
            name: "consumer-1".into(),
            role: Role::Consumer,
            pid: None,
            generation: 1,
            restarts: VecDeque::new(),
            restart_at: None,
        }
    }

    #[test]
    fn restarts_back_off_and_the_sixth_failure_within_a_minute_gives_up() {
        let mut s = slot();
        let mut delays = Vec::new();
        for _ in 0..MAX_RESTARTS {
            let start = Instant::now();
            assert_eq!(
                schedule_restart(&mut s, "exited unexpectedly (exit code 1)"),
                None
            );
            delays.push(s.restart_at.map(|t| t - start).unwrap_or_default());
        }
        assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
        assert!(delays[0] >= FIRST_BACKOFF);
        let message = schedule_restart(&mut s, "exited unexpectedly (exit code 1)")
            .expect("more than 5 restarts in 60 s stops the pipeline");
        assert!(message.contains("consumer-1"), "{message}");
        assert!(message.contains("5 restarts within 60 s"), "{message}");
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut s = slot();
        // A machine up for less than a minute has no such instant; nothing to check then.
        let Some(long_ago) = Instant::now().checked_sub(RESTART_WINDOW + Duration::from_secs(1))
        else {
            return;
        };
        s.restarts = std::iter::repeat_n(long_ago, MAX_RESTARTS).collect();
        assert_eq!(schedule_restart(&mut s, "exited unexpectedly"), None);
        assert_eq!(s.restarts.len(), 1);
    }
}
