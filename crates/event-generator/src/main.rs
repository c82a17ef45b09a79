//! `event-generator`: see the library crate for what it does.

/// Events are many small JSON documents and strings: mimalloc handles that allocation
/// pattern markedly faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
    let cli = event_generator::cli::Cli::parse();
    let code = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(event_generator::run(cli)),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            pipeline_core::runtime::exit::FAILURE
        }
    };
    std::process::exit(code);
}
