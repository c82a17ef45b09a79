//! `orchestrator`: validates the configuration, checks the backend, then runs the webhook and
//! DAY15_CONSUMERS consumers as supervised child processes until SIGINT/SIGTERM.

/// Events are many small JSON documents and strings: mimalloc handles that allocation
/// pattern markedly faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Runs the analytics pipeline: webhook + consumers, supervised"
)]
struct Cli {
    /// Only validate the configuration, report every problem, and exit (0 valid, 2 invalid)
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    config: pipeline_core::config::ConfigArgs,
}

fn main() {
    // Run as a child role when started that way by an orchestrator whose sibling binaries are
    // missing (see `supervisor::program_for`).
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some(orchestrator::WEBHOOK_ROLE) => {
            let rest = std::iter::once(program).chain(args);
            std::process::exit(webhook::cli::main(rest));
        }
        Some(orchestrator::CONSUMER_ROLE) => {
            let rest = std::iter::once(program).chain(args);
            std::process::exit(consumer::cli::main(rest));
        }
        _ => {}
    }
    let cli = Cli::parse();
    std::process::exit(orchestrator::main_entry(cli.config, cli.check));
}
