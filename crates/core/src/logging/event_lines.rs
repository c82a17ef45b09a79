//! Per-event log lines within a budget (`DAY15_LOG_EVENTS_PER_SECOND`).
//!
//! The original writes one line per event (`Event received: …`, `Processed …`). That is what an
//! operator greps for at a few events a second, and what makes a log unreadable — and a
//! process slower — at thousands. Each process keeps its per-event lines up to the budget in
//! every second; past it, the rest of that second's events are counted and one summary line
//! is written when the second ends (`… and 8,412 more events received in the last second`),
//! so `tail -f` keeps up at any rate and nothing goes uncounted. A consumer's batch lines
//! (`Processing batch of …`, `Batch complete: …`) take the same budget per batch: at batch size
//! 10, 100,000 events a second would otherwise be 20,000 lines a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a budget lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// The level a summary line is written at: that of the lines it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryLevel {
    Info,
    Warning,
}

/// One kind of per-event line (events received, processed, rejected; batches processed) and its
/// budget.
/// Cloning shares the budget.
#[derive(Debug, Clone)]
pub struct EventLines {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    per_second: u64,
    /// What the summary counts: `… and N more <what> in the last second`.
    what: &'static str,
    level: SummaryLevel,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u64,
    /// Events of this window whose line was not written.
    held: u64,
    /// Whether a task will write this window's summary when it ends.
    timer_set: bool,
}

impl EventLines {
    /// `per_second` lines a second (0: only summaries); `what` names the lines' subject in
    /// the summary, such as "events received".
    pub fn new(per_second: u64, what: &'static str, level: SummaryLevel) -> EventLines {
        EventLines {
            inner: Arc::new(Inner {
                per_second,
                what,
                level,
                window: Mutex::new(Window {
                    started: Instant::now(),
                    written: 0,
                    held: 0,
                    timer_set: false,
                }),
            }),
        }
    }

    /// Whether this event's own line may be written; when not, the event is counted in the
    /// summary of the current second.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let (admitted, ended, set_timer) = {
            let mut w = self.lock();
            let ended = if now.duration_since(w.started) >= WINDOW {
                let held = std::mem::take(&mut w.held);
                w.started = now;
                w.written = 0;
                w.timer_set = false;
                held
            } else {
                0
            };
            let admitted = w.written < self.inner.per_second;
            let mut set_timer = false;
            if admitted {
                w.written += 1;
            } else {
                w.held += 1;
                set_timer = !std::mem::replace(&mut w.timer_set, true);
            }
            (admitted, ended, set_timer.then_some(w.started + WINDOW))
        };
        if ended > 0 {
            self.summarise(ended);
        }
        if let Some(at) = set_timer {
            self.summarise_at(at);
        }
        admitted
    }

    /// Writes the summary of a second that has ended, if it held events back.
    pub fn flush(&self) {
        let held = {
            let mut w = self.lock();
            if w.started.elapsed() < WINDOW {
                return;
            }
            w.timer_set = false;
            std::mem::take(&mut w.held)
        };
        if held > 0 {
            self.summarise(held);
        }
    }

    /// Writes the held events' summary when the window ends, even if no event comes after:
    /// on the runtime when there is one, otherwise with the next event's call.
    fn summarise_at(&self, at: Instant) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lines = self.clone();
            runtime.spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                lines.flush();
            });
        }
    }

    fn summarise(&self, held: u64) {
        let (count, what) = (thousands(held), self.inner.what);
        match self.inner.level {
            SummaryLevel::Info => tracing::info!("… and {count} more {what} in the last second"),
            SummaryLevel::Warning => {
                tracing::warn!("… and {count} more {what} in the last second")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding this lock cannot leave the counts inconsistent.
        self.inner
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `8412` as `8,412`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(8412), "8,412");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn lines_past_the_budget_are_held_until_the_second_ends() {
        let lines = EventLines::new(3, "events received", SummaryLevel::Info);
        let admitted = (0..10).filter(|_| lines.admit()).count();
        assert_eq!(admitted, 3);
        assert_eq!(lines.lock().held, 7);
        // A new second: the held events are summarised and the budget is whole again.
        lines.lock().started -= WINDOW;
        assert!(lines.admit());
        assert_eq!(lines.lock().held, 0);
        assert_eq!(lines.lock().written, 1);
    }

    #[test]
    fn a_zero_budget_only_summarises() {
        let lines = EventLines::new(0, "events processed", SummaryLevel::Info);
        assert!(!(0..5).any(|_| lines.admit()));
        assert_eq!(lines.lock().held, 5);
        lines.lock().started -= WINDOW;
        lines.flush();
        assert_eq!(lines.lock().held, 0);
    }
}
