//! The progress display on stderr while a `load` run lasts.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::worker::Shared;

/// Shows progress on stderr while the run lasts: a bar on a terminal, a line a second
/// otherwise (none with `--json` off a terminal, to keep logs quiet).
pub(super) async fn show_progress(shared: Arc<Shared>, done: CancellationToken, json: bool) {
    let terminal = std::io::stderr().is_terminal();
    if json && !terminal {
        return;
    }
    let plan = &shared.plan;
    let (length, by_time) = match (plan.duration, plan.events) {
        (Some(d), _) => (d.as_millis() as u64, true),
        (None, Some(n)) => (n, false),
        (None, None) => (0, true),
    };
    let bar = if terminal {
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let tick = if terminal {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        // When the run is done the pending tick is abandoned and the bar is cleared.
        tokio::select! {
            _ = done.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = shared.started.elapsed();
        let requests = shared.live.requests.load(Ordering::Relaxed);
        let events = shared.live.events.load(Ordering::Relaxed);
        let errors = shared.live.errors.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (requests - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, requests);
        let text =
            format!("{requests} requests, {events} events, {errors} errors, {rate:.0} req/s");
        match &bar {
            Some(bar) => {
                bar.set_position(if by_time {
                    elapsed.as_millis() as u64
                } else {
                    events
                });
                bar.set_message(text);
            }
            None => eprintln!("  {:>6.1} s  {text}", elapsed.as_secs_f64()),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
