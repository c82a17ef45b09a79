//! `orchestrator`: validates the configuration, checks the backend, then runs the webhook and
//! DAY15_CONSUMERS consumers as supervised child processes until SIGINT/SIGTERM.

/// Events are many small JSON documents and strings: mimalloc handles that allocation
/// pattern markedly faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Runs the analytics pipeline: webhook + consumers, supervised",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    /// Only validate the configuration, report every problem, and exit (0 valid, 2 invalid)
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    config: pipeline_core::config::ConfigArgs,
    #[command(subcommand)]
    role: Option<Role>,
}

/// How the orchestrator starts its children: its own executable in one role, so a child is
/// always the very build that supervises it. Hidden: users run the `webhook` and `consumer`
/// binaries for that.
#[derive(Subcommand)]
enum Role {
    /// Run as the webhook; every further argument is the webhook's
    #[command(name = orchestrator::RUN_WEBHOOK, hide = true, disable_help_flag = true)]
    RunWebhook {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run as a consumer; every further argument is the consumer's
    #[command(name = orchestrator::RUN_CONSUMER, hide = true, disable_help_flag = true)]
    RunConsumer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() {
    // The shared configuration flags are global (so `consumer dlq list --backend …` works), but
    // here every argument after a role belongs to that role, verbatim.
    let command = Cli::command().mut_args(|a| a.global(false));
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let code = match cli.role {
        None => orchestrator::main_entry(cli.config, cli.check),
        Some(Role::RunWebhook { args }) => {
            webhook::cli::main(std::iter::once("webhook".into()).chain(args))
        }
        Some(Role::RunConsumer { args }) => {
            consumer::cli::main(std::iter::once("consumer".into()).chain(args))
        }
    };
    std::process::exit(code);
}
