//! Writes the OpenAPI contract of the HTTP API to docs/openapi.json (or prints it with `-`).
//!
//! `cargo run -p webhook --example openapi`; the webhook's test `openapi_document_is_current`
//! fails until the committed file matches what the handlers declare.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let text = webhook::openapi::json();
    if std::env::args().nth(1).as_deref() == Some("-") {
        print!("{text}");
        return Ok(());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    std::fs::write(&path, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
