//! `DAY15_QUEUE_BACKEND=memory`: the memory backend lives in one process, so the webhook and
//! the consumers run as tasks of the orchestrator instead of child processes.

use std::sync::Arc;

use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{Backend, BackendOptions};
use pipeline_core::config::Config;
use pipeline_core::runtime::{self, exit};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Runs webhook + consumers as tasks until a signal; returns the exit code.
pub async fn run(config: Config) -> i32 {
    let backend: Arc<dyn Backend> =
        Arc::new(MemoryBackend::new(BackendOptions::from_config(&config)));
    let address = (config.http.host.clone(), config.http.port);
    let listener = match TcpListener::bind((address.0.as_str(), address.1)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("Cannot listen on {}:{}: {e}", address.0, address.1);
            return exit::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signals(shutdown.clone());

    let mut tasks = JoinSet::new();
    tasks.spawn(webhook::serve(
        config.clone(),
        backend.clone(),
        listener,
        shutdown.clone(),
    ));
    for _ in 0..config.consumers {
        let (config, backend, shutdown) = (config.clone(), backend.clone(), shutdown.clone());
        tasks.spawn(async move { consumer::run(config, backend, shutdown).await.map(|_| ()) });
    }
    tracing::info!(
        "Pipeline running in one process (memory backend): webhook + {} consumer task(s). Press Ctrl+C to stop.",
        config.consumers
    );

    let mut failed = false;
    // A task that ends before the shutdown signal is a failure: stop the rest.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(ended) = tasks.join_next() => {
            failed = true;
            match ended {
                Ok(Ok(())) => tracing::error!("A pipeline task stopped unexpectedly"),
                Ok(Err(e)) => tracing::error!("A pipeline task failed: {e:#}"),
                Err(e) => tracing::error!("A pipeline task panicked: {e}"),
            }
            shutdown.cancel();
        }
    }
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failed = true;
                    tracing::error!("A pipeline task failed while stopping: {e:#}");
                }
                Err(e) => {
                    failed = true;
                    tracing::error!("A pipeline task panicked while stopping: {e}");
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
