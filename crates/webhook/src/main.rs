//! The `webhook` binary; see [`webhook::cli`].

fn main() {
    std::process::exit(webhook::cli::main(std::env::args_os()));
}
