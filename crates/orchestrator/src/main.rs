//! `orchestrator`: validates the configuration, checks the backend, then runs the webhook and
//! DAY15_CONSUMERS consumers as supervised child processes until SIGINT/SIGTERM.

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
    let cli = Cli::parse();
    std::process::exit(orchestrator::main_entry(cli.config, cli.check));
}
