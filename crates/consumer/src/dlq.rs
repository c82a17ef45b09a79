//! `consumer dlq list | replay | purge`: dead-letter administration straight against the
//! backend, each returning the text to print so the binary stays thin and tests can read it.

use anyhow::Context;
use pipeline_core::backend::{Backend, DeadLetter, DlqSelection};

/// Lists dead letters, oldest first: a JSON array with `json`, else a table.
pub async fn list(
    backend: &dyn Backend,
    limit: usize,
    offset: usize,
    json: bool,
) -> anyhow::Result<String> {
    let letters = backend
        .dlq_list(limit, offset)
        .await
        .context("cannot list the dead-letter queue")?;
    if json {
        return serde_json::to_string_pretty(&letters).context("cannot encode dead letters");
    }
    if letters.is_empty() {
        return Ok(if offset == 0 {
            "The dead-letter queue is empty.".into()
        } else {
            format!("No dead letters at offset {offset}.")
        });
    }
    Ok(table(&letters, offset))
}

fn table(letters: &[DeadLetter], offset: usize) -> String {
    let headers = [
        "EVENT ID",
        "EVENT TYPE",
        "REASON",
        "ATTEMPTS",
        "FAILED AT",
        "ERROR",
    ];
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|d| {
            let event_type = d
                .event
                .get("event_type")
                .and_then(|t| t.as_str())
                .unwrap_or("-")
                .to_string();
            [
                d.event_id.to_string(),
                event_type,
                d.failure_reason.clone(),
                d.attempts.to_string(),
                d.failed_at.clone(),
                d.error.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out
    };
    let mut out = vec![line(headers.to_vec())];
    for row in &rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.push(format!(
        "{} dead letter{} shown (from offset {offset})",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" }
    ));
    out.join("\n")
}

/// Moves dead letters back to the queue with attempts reset.
pub async fn replay(backend: &dyn Backend, which: DlqSelection) -> anyhow::Result<String> {
    let requested = match &which {
        DlqSelection::Ids(ids) => Some(ids.len()),
        DlqSelection::All => None,
    };
    let moved = backend
        .dlq_replay(which)
        .await
        .context("cannot replay the dead-letter queue")?;
    Ok(match requested {
        Some(n) if n as u64 != moved => format!(
            "Replayed {moved} of {n} requested dead letters (the others are not in the DLQ)"
        ),
        _ => format!("Replayed {moved} dead letter{}", plural(moved)),
    })
}

/// Deletes every dead letter.
pub async fn purge(backend: &dyn Backend) -> anyhow::Result<String> {
    let n = backend
        .dlq_purge()
        .await
        .context("cannot purge the dead-letter queue")?;
    Ok(format!("Purged {n} dead letter{}", plural(n)))
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
