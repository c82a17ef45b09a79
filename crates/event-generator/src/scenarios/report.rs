//! How a scenario's outcome is printed as text (`--json` prints the outcomes instead).

use super::Outcome;

pub(super) fn print_outcome(o: &Outcome) {
    println!(
        "{}  {:<12} {} ({:.2} s)",
        o.verdict.label(),
        o.scenario,
        o.description,
        o.elapsed_ms as f64 / 1000.0
    );
    println!("      expected: {}", o.expected);
    println!("      observed: {}", o.observed);
    if let Some(note) = &o.note {
        println!("      note:     {note}");
    }
}
