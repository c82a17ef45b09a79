//! How a record becomes one line, whatever the values in it.
//!
//! Log records carry values a sender chose (`event_type`, `user_id`, metadata, a rejected
//! event's `event_id`). So that no value can forge a record, colour a terminal or flood the
//! file, the formatter itself escapes every character that could break or disguise a line —
//! C0 and C1 controls (`\n`, `\r`, ESC, …), DEL, U+2028/U+2029, bidi overrides and isolates,
//! zero-width and other invisible format characters — in the message and in every field value,
//! in both formats. It also bounds a record: a field value keeps at most
//! [`MAX_VALUE_CHARS`] characters and a whole text line (or a JSON message) at most
//! [`MAX_RECORD_CHARS`], the cut marked with `…`. A call site cannot forget any of this;
//! [`LogSafe`] additionally cuts a value interpolated into a message at the per-value bound.
//! A line made only of printable characters and within the bounds is written unchanged.

use std::fmt;

use chrono::{Datelike, Timelike};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Most characters kept of one value (a field's value, or a value wrapped in [`LogSafe`]),
/// counted after escaping, the `…` included.
pub const MAX_VALUE_CHARS: usize = 200;

/// Most characters of one text line (timestamp to last field, newline excluded) or of one
/// JSON record's message, counted after escaping, the `…` included.
pub const MAX_RECORD_CHARS: usize = 2000;

/// Marks where a value or a record was cut.
const CUT: char = '…';

/// Whether `c` must not reach a log line as it is: it could end or disguise a line, drive a
/// terminal, or be invisible.
pub fn needs_escape(c: char) -> bool {
    c.is_control() // C0, DEL, C1 (NEL U+0085 included)
        || matches!(
            c,
            '\u{00AD}'                     // soft hyphen
            | '\u{061C}'                   // Arabic letter mark
            | '\u{180E}'                   // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}'      // zero-width characters, LRM, RLM
            | '\u{2028}' | '\u{2029}'      // line and paragraph separators
            | '\u{202A}'..='\u{202E}'      // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'      // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'      // bidi isolates
            | '\u{206A}'..='\u{206F}'      // deprecated format characters
            | '\u{FEFF}'                   // byte order mark
            | '\u{FFF9}'..='\u{FFFB}'      // interlinear annotations
            | '\u{FFFE}' | '\u{FFFF}'      // non-characters
            | '\u{E0000}'..='\u{E007F}' // tags
        )
}

/// Accumulates escaped text up to a number of characters; past it, the text ends with `…`.
struct Bounded<'a> {
    out: &'a mut String,
    /// Characters still allowed before the cut mark.
    room: usize,
    cut: bool,
}

impl<'a> Bounded<'a> {
    /// `limit` counts the cut mark, so the result never exceeds it.
    fn new(out: &'a mut String, limit: usize) -> Self {
        Bounded {
            out,
            room: limit.saturating_sub(1),
            cut: false,
        }
    }

    /// Appends `s`, escaping what [`needs_escape`] names, until the room runs out.
    fn push(&mut self, s: &str) {
        if self.cut {
            return;
        }
        // Fast path for the usual line: printable ASCII that fits.
        if s.len() <= self.room && s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            self.out.push_str(s);
            self.room -= s.len();
            return;
        }
        let mut escape = String::new();
        for c in s.chars() {
            if needs_escape(c) {
                escape.clear();
                match c {
                    '\n' => escape.push_str("\\n"),
                    '\r' => escape.push_str("\\r"),
                    '\t' => escape.push_str("\\t"),
                    c if (c as u32) < 0x100 => {
                        let _ =
                            fmt::Write::write_fmt(&mut escape, format_args!("\\x{:02x}", c as u32));
                    }
                    c => {
                        let _ = fmt::Write::write_fmt(
                            &mut escape,
                            format_args!("\\u{{{:04x}}}", c as u32),
                        );
                    }
                }
                // An escape is kept whole or not at all.
                if escape.len() > self.room {
                    self.cut = true;
                    break;
                }
                self.out.push_str(&escape);
                self.room -= escape.len();
            } else {
                if self.room == 0 {
                    self.cut = true;
                    break;
                }
                self.out.push(c);
                self.room -= 1;
            }
        }
    }

    /// Appends the cut mark if anything was left out.
    fn finish(self) {
        if self.cut {
            self.out.push(CUT);
        }
    }
}

/// `s` escaped and cut at `limit` characters (the `…` included).
pub fn escape(s: &str, limit: usize) -> String {
    let mut out = String::with_capacity(s.len().min(limit));
    let mut b = Bounded::new(&mut out, limit);
    b.push(s);
    b.finish();
    out
}

/// Writes a value interpolated into a log message escaped and cut at [`MAX_VALUE_CHARS`], so
/// a long value cannot push the rest of the message out of the record bound:
/// `tracing::info!("User signup: {}", LogSafe(user))`.
pub struct LogSafe<'a>(pub &'a str);

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fits = self.0.len() < MAX_VALUE_CHARS && !self.0.chars().any(needs_escape);
        if fits {
            f.write_str(self.0)
        } else {
            f.write_str(&escape(self.0, MAX_VALUE_CHARS))
        }
    }
}

/// Formats one record as the original did, or as JSON, escaped and bounded as the module
/// says.
pub struct PipelineFormat {
    /// Which process wrote the line (`webhook`, `consumer`, …).
    pub component: String,
    pub format: LogFormat,
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Collects a record's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

impl PipelineFormat {
    /// The text line for a record, newline included: the prefix as the original wrote it,
    /// then the message and ` name=value` fields, escaped, each value cut at
    /// [`MAX_VALUE_CHARS`] and the line at [`MAX_RECORD_CHARS`].
    fn text_line(&self, prefix_time: &str, level: &str, fields: &Fields) -> String {
        let mut line = String::with_capacity(64 + fields.message.len());
        line.push_str(prefix_time);
        line.push_str(" - ");
        let prefix_len = line.chars().count();
        {
            let mut b = Bounded::new(&mut line, MAX_RECORD_CHARS.saturating_sub(prefix_len));
            b.push(&self.component);
            b.push(" - ");
            b.push(level);
            b.push(" - ");
            b.push(&fields.message);
            for (k, v) in &fields.rest {
                b.push(" ");
                b.push(k);
                b.push("=");
                b.push(&escape(v, MAX_VALUE_CHARS));
            }
            b.finish();
        }
        line.push('\n');
        line
    }
}

impl PipelineFormat {
    /// The JSON line for a record, newline included: the message and every field escaped as
    /// in text (JSON escaping alone lets C1 controls, U+2028 and bidi characters through), the
    /// message cut at [`MAX_RECORD_CHARS`] and each field at [`MAX_VALUE_CHARS`].
    fn json_line(&self, timestamp: &str, level: &str, fields: &Fields) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("timestamp".into(), timestamp.into());
        obj.insert("component".into(), self.component.clone().into());
        obj.insert("level".into(), level.into());
        obj.insert(
            "message".into(),
            escape(&fields.message, MAX_RECORD_CHARS).into(),
        );
        for (k, v) in &fields.rest {
            obj.insert(
                escape(k, MAX_VALUE_CHARS),
                escape(v, MAX_VALUE_CHARS).into(),
            );
        }
        let mut line = serde_json::Value::Object(obj).to_string();
        line.push('\n');
        line
    }
}

impl<S, N> FormatEvent<S, N> for PipelineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = chrono::Local::now();
        let level = level_name(event.metadata().level());
        match self.format {
            LogFormat::Text => {
                // Written field by field: no strftime parsing.
                let time = format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
                    now.year(),
                    now.month(),
                    now.day(),
                    now.hour(),
                    now.minute(),
                    now.second(),
                    now.timestamp_subsec_millis().min(999),
                );
                writer.write_str(&self.text_line(&time, level, &fields))
            }
            LogFormat::Json => writer.write_str(&self.json_line(&now.to_rfc3339(), level, &fields)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORGED: &str = "x\n2025-12-16 19:30:15,234 - webhook - INFO - forged";

    #[test]
    fn printable_text_is_unchanged() {
        let s = "Event received: user_signup (evt_1) - latency: 0.41ms — ünïcödé ✓ \\n";
        assert_eq!(escape(s, MAX_RECORD_CHARS), s);
        assert_eq!(LogSafe(s).to_string(), s);
    }

    #[test]
    fn line_breaks_and_terminal_controls_are_escaped() {
        assert_eq!(
            escape(FORGED, 200),
            "x\\n2025-12-16 19:30:15,234 - webhook - INFO - forged"
        );
        assert_eq!(
            escape("a\r\tb\u{1b}[31mc\u{7f}", 200),
            "a\\r\\tb\\x1b[31mc\\x7f"
        );
        assert_eq!(escape("\u{85}\u{9b}", 200), "\\x85\\x9b");
        assert_eq!(
            escape("\u{2028}\u{2029}\u{202e}\u{2066}\u{200b}\u{feff}", 200),
            "\\u{2028}\\u{2029}\\u{202e}\\u{2066}\\u{200b}\\u{feff}"
        );
        for c in (0u32..0xa0).filter_map(char::from_u32) {
            let out = escape(&c.to_string(), 200);
            assert!(out.chars().all(|c| !needs_escape(c)), "{c:?} -> {out:?}");
        }
    }

    #[test]
    fn long_values_are_cut_with_a_mark() {
        let long = "é".repeat(900_000);
        let cut = escape(&long, MAX_VALUE_CHARS);
        assert_eq!(cut.chars().count(), MAX_VALUE_CHARS);
        assert!(cut.ends_with('…'));
        let safe = LogSafe(&long).to_string();
        assert_eq!(safe, cut);
        // Escapes count, and are never cut in the middle.
        let esc = escape(&"\u{1b}".repeat(1000), 10);
        assert_eq!(esc, "\\x1b\\x1b…");
        // Exactly at the bound: nothing is cut.
        let exact = "a".repeat(MAX_VALUE_CHARS - 1);
        assert_eq!(escape(&exact, MAX_VALUE_CHARS), exact);
    }

    #[test]
    fn a_json_line_is_escaped_and_bounded_too() {
        let format = PipelineFormat {
            component: "consumer".into(),
            format: LogFormat::Json,
        };
        let fields = Fields {
            message: format!(
                "User signup: {FORGED}\u{1b}[31m\u{2028}{}",
                "z".repeat(900_000)
            ),
            rest: vec![("user".into(), format!("\u{85}{}", "y".repeat(900_000)))],
        };
        let line = format.json_line("2025-12-16T19:30:15+00:00", "INFO", &fields);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(
            !line.contains('\u{1b}') && !line.contains("\\u001b"),
            "{line:.200}"
        );
        assert!(!line.contains('\u{2028}') && !line.contains('\u{85}'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(
            message.starts_with("User signup: x\\n2025-12-16 19:30:15,234"),
            "{message:.100}"
        );
        assert!(message.contains("\\x1b[31m\\u{2028}"));
        assert_eq!(message.chars().count(), MAX_RECORD_CHARS);
        let user = v["user"].as_str().unwrap();
        assert!(user.starts_with("\\x85yyy") && user.ends_with('…'));
        assert_eq!(user.chars().count(), MAX_VALUE_CHARS);
    }

    #[test]
    fn a_text_line_is_one_bounded_line() {
        let format = PipelineFormat {
            component: "webhook".into(),
            format: LogFormat::Text,
        };
        let fields = Fields {
            message: format!("Event received: {FORGED} ({})", "z".repeat(900_000)),
            rest: vec![("user".into(), format!("{FORGED}{}", "y".repeat(900_000)))],
        };
        let line = format.text_line("2025-12-16 19:30:15,234", "INFO", &fields);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with("…\n"));
        assert!(line.chars().count() <= MAX_RECORD_CHARS + 1);
        assert!(line.starts_with(
            "2025-12-16 19:30:15,234 - webhook - INFO - Event received: x\\n2025-12-16"
        ));

        let fields = Fields {
            message: "Processed".into(),
            rest: vec![("user".into(), format!("{FORGED}{}", "y".repeat(900_000)))],
        };
        let line = format.text_line("2025-12-16 19:30:15,234", "INFO", &fields);
        let value = line.trim_end().split_once(" user=").unwrap().1;
        assert_eq!(value.chars().count(), MAX_VALUE_CHARS);
        assert!(value.starts_with("x\\n2025"));
    }
}
