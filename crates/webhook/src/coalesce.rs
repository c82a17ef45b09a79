//! Single events that arrive together are stored with one backend call (group commit).
//!
//! Under concurrent `POST /webhook/events` each request used to make its own enqueue call: one
//! script call, one round trip and one transaction per event, most of the cost of a single
//! event on either backend. Here an unsigned single event is handed to a dispatcher that takes
//! every event waiting at that moment (at most [`MAX_EVENTS`]) into one
//! [`Backend::enqueue_delivery`] call, with at most [`IN_FLIGHT`] calls at once. Nothing waits
//! for company: a lone event is sent at once, and events only gather while earlier calls are
//! in flight, so a quiet webhook answers as fast as before and a busy one makes fewer, larger
//! calls.
//!
//! The answer is unchanged: each request is answered only after the call holding its event
//! succeeded, with its own outcome (ids repeated across the gathered events are duplicates
//! after their first, as within a batch); a failed call answers each of its requests 503, and
//! none of their events was stored (a call is atomic on every backend). Signed requests keep a
//! call of their own, since their delivery mark belongs to that request alone.
//!
//! [`Backend::enqueue_delivery`]: pipeline_core::backend::Backend::enqueue_delivery

use std::sync::Arc;

use pipeline_core::backend::{EnqueueOutcome, QueuedEvent};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ApiError;
use crate::AppState;

/// Most events one gathered call carries: the batch endpoint's order of size.
pub(crate) const MAX_EVENTS: usize = 256;
/// Gathered calls in flight at once, so one slow call does not hold every request behind it.
const IN_FLIGHT: usize = 4;
/// Events waiting for a call; past it a request waits for room (the server's own concurrency
/// and timeouts bound how many can).
const WAITING: usize = 4096;

type Answer = oneshot::Sender<Result<EnqueueOutcome, String>>;

/// The dispatcher's door, shared by every request of one [`AppState`].
pub(crate) struct Coalescer {
    tx: mpsc::Sender<(QueuedEvent, Answer)>,
}

impl Coalescer {
    /// Starts the dispatcher on the current runtime.
    pub(crate) fn start(state: AppState) -> Coalescer {
        let (tx, rx) = mpsc::channel(WAITING);
        tokio::spawn(dispatch(state, rx));
        Coalescer { tx }
    }

    /// Stores `event` in the next gathered call; its outcome once that call succeeded.
    pub(crate) async fn enqueue(&self, event: QueuedEvent) -> Result<EnqueueOutcome, ApiError> {
        let (answer, outcome) = oneshot::channel();
        let gone = || ApiError::Unavailable("the webhook is shutting down".into());
        self.tx.send((event, answer)).await.map_err(|_| gone())?;
        match outcome.await {
            Ok(result) => result.map_err(ApiError::Unavailable),
            Err(_) => Err(gone()),
        }
    }
}

async fn dispatch(state: AppState, mut rx: mpsc::Receiver<(QueuedEvent, Answer)>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Taking a slot first lets events gather while every slot is busy.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut gathered = Vec::new();
        if rx.recv_many(&mut gathered, MAX_EVENTS).await == 0 {
            return;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (events, answers): (Vec<QueuedEvent>, Vec<Answer>) = gathered.into_iter().unzip();
            let count = events.len();
            let result = state
                .call("enqueue", state.backend().enqueue_delivery(events, None))
                .await;
            match result {
                Ok(outcomes) if outcomes.len() == count => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        let _ = answer.send(Ok(outcome));
                    }
                }
                Ok(outcomes) => {
                    let problem = format!(
                        "backend returned {} outcomes for {count} events",
                        outcomes.len()
                    );
                    for answer in answers {
                        let _ = answer.send(Err(problem.clone()));
                    }
                }
                Err(error) => {
                    let problem = match error {
                        ApiError::Unavailable(message) => message,
                        other => other.to_string(),
                    };
                    for answer in answers {
                        let _ = answer.send(Err(problem.clone()));
                    }
                }
            }
        });
    }
}
