//! The `consumer` binary; see [`consumer::cli`].

fn main() {
    std::process::exit(consumer::cli::main(std::env::args_os()));
}
