//! Rewrites `.env.example` and `docs/configuration.md` from the configuration rows
//! (`crates/core/src/config/variables.rs`). Run after changing a row:
//!
//! ```sh
//! cargo run -p pipeline-core --example config-docs
//! ```

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (path, text) in pipeline_core::config::docs::generated_files() {
        let target = root.join(path);
        if let Err(e) = std::fs::write(&target, text) {
            eprintln!("cannot write {}: {e}", target.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {path}");
    }
    ExitCode::SUCCESS
}
