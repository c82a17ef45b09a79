//! The `webhook` binary; see [`webhook::cli`].

/// Events are many small JSON documents and strings: mimalloc handles that allocation
/// pattern markedly faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(webhook::cli::main(std::env::args_os()));
}
