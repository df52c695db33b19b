//! How results are shown: `--output table` (aligned columns and key/value
//! lines for people) or `--output json` (the API's JSON, pretty-printed, for
//! scripts), plus the human units used in tables and the sparklines that
//! draw a node's recent health on one line.
//!
//! Everything goes through [`Printer`], which writes to stdout with `write!`
//! so that a closed pipe (`flotilla model ls | head -1`) is an error to
//! handle, not a panic.

use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Columns of a table: headers and rows of cells.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; each cell is cleaned of control characters because it
    /// came from the server and is about to reach a terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|cell| single_line(&cell)).collect());
    }

    /// Two spaces between columns; the last column is not padded.
    pub(crate) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header_cells: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for cells in std::iter::once(&header_cells).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in cells.iter().take(columns).enumerate() {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    let padding = widths[index].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.push_str(&" ".repeat(padding + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Writes results to stdout in the chosen format.
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Self {
        Self { format }
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.line(&text)
    }

    pub fn table(&self, table: &Table) -> anyhow::Result<()> {
        self.raw(&table.render())
    }

    /// `key: value` lines with the values aligned.
    pub fn fields<K: AsRef<str>>(&self, fields: &[(K, String)]) -> anyhow::Result<()> {
        let width = fields
            .iter()
            .map(|(key, _)| key.as_ref().chars().count() + 1)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in fields {
            let label = format!("{}:", key.as_ref());
            out.push_str(&format!("{label:<width$}  {}\n", single_line(value)));
        }
        self.raw(&out)
    }

    pub fn line(&self, text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()?;
        Ok(())
    }

    pub fn raw(&self, text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }
}

/// Control characters (newlines, terminal escapes) become spaces.
pub fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Like [`single_line`] but keeps newlines and tabs, for multi-line text
/// such as a system prompt.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `98.4 MiB`: binary units, one decimal above bytes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `134.5M`, `7.2B`: decimal units, as model cards count parameters.
pub fn human_count(count: u64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")];
    let value = count as f64;
    for (scale, suffix) in UNITS {
        if value >= scale {
            return format!("{:.1}{suffix}", value / scale);
        }
    }
    count.to_string()
}

/// `2026-11-29 10:19:39Z`: RFC 3339 without the `T` and to the second, in UTC.
pub fn human_time(at: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.to_string())
}

/// `k=v,k2=v2` in key order, as selectors and `node label` write labels.
pub fn label_list(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The first 12 hex characters of a digest, enough to tell artifacts apart in a table.
pub fn short_digest(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// `3s ago`, `5m ago`, `2h ago`, `3d ago`: how long before `now` a moment
/// was. A moment in the future (clocks disagree a little) reads `0s ago`.
pub fn human_age(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (now - at).whole_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3_600 => format!("{}m ago", seconds / 60),
        3_600..172_800 => format!("{}h ago", seconds / 3_600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// Block heights of a sparkline, lowest first.
const SPARK_LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A series drawn as one character per value, and the range it was scaled to.
#[derive(Debug, Clone, PartialEq)]
pub struct Sparkline {
    /// One character per value: a block, or a space where the value is missing.
    pub line: String,
    /// The smallest and largest value drawn; `None` when no value was present.
    pub range: Option<(f64, f64)>,
}

/// Draws `values` scaled between their own minimum (`▁`) and maximum (`█`),
/// so that the shape shows even when a value moves little; the caller
/// prints `range` beside it so the shape can be read. A missing or
/// non-finite value is a space; a series that never changes sits at
/// mid-height rather than pretending to be idle or saturated.
pub fn sparkline(values: &[Option<f64>]) -> Sparkline {
    let present = || values.iter().flatten().copied().filter(|v| v.is_finite());
    let range = present().fold(None, |range: Option<(f64, f64)>, value| match range {
        None => Some((value, value)),
        Some((low, high)) => Some((low.min(value), high.max(value))),
    });
    let top = SPARK_LEVELS.len() - 1;
    let line = values
        .iter()
        .map(|value| match (value, range) {
            (Some(value), Some((low, high))) if value.is_finite() => {
                let level = if high > low {
                    // Rounded, so the extremes land exactly on ▁ and █.
                    (((value - low) / (high - low)) * top as f64).round() as usize
                } else {
                    top / 2
                };
                SPARK_LEVELS[level.min(top)]
            }
            _ => ' ',
        })
        .collect();
    Sparkline { line, range }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_of_nothing_are_blank() {
        assert_eq!(
            sparkline(&[]),
            Sparkline {
                line: String::new(),
                range: None
            }
        );
        assert_eq!(
            sparkline(&[None, None, Some(f64::NAN)]),
            Sparkline {
                line: "   ".to_owned(),
                range: None
            }
        );
    }

    #[test]
    fn sparklines_of_a_constant_sit_at_mid_height() {
        let drawn = sparkline(&[Some(42.0); 5]);
        assert_eq!(drawn.line, "▄▄▄▄▄");
        assert_eq!(drawn.range, Some((42.0, 42.0)));
    }

    #[test]
    fn sparklines_scale_from_the_minimum_to_the_maximum() {
        let values: Vec<Option<f64>> = (0..8).map(|v| Some(f64::from(v) * 10.0 + 20.0)).collect();
        let drawn = sparkline(&values);
        assert_eq!(drawn.line, "▁▂▃▄▅▆▇█");
        assert_eq!(drawn.range, Some((20.0, 90.0)));
        // Only the range matters, not the absolute level.
        assert_eq!(sparkline(&[Some(99.0), Some(100.0)]).line, "▁█");
        assert_eq!(sparkline(&[Some(0.0), Some(100.0), Some(50.0)]).line, "▁█▅");
    }

    #[test]
    fn sparklines_leave_gaps_for_missing_values() {
        let drawn = sparkline(&[Some(1.0), None, Some(3.0), Some(f64::INFINITY), Some(2.0)]);
        assert_eq!(drawn.line, "▁ █ ▅");
        assert_eq!(drawn.range, Some((1.0, 3.0)));
        assert_eq!(drawn.line.chars().count(), 5);
    }

    #[test]
    fn ages_count_back_from_now() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(100);
        let ago = |seconds: i64| human_age(now - time::Duration::seconds(seconds), now);
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(3), "3s ago");
        assert_eq!(ago(59), "59s ago");
        assert_eq!(ago(60), "1m ago");
        assert_eq!(ago(3_599), "59m ago");
        assert_eq!(ago(3_600), "1h ago");
        assert_eq!(ago(47 * 3_600), "47h ago");
        assert_eq!(ago(3 * 86_400), "3d ago");
        assert_eq!(ago(-5), "0s ago");
    }

    #[test]
    fn sizes_and_counts_read_like_model_cards() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(98_362_432), "93.8 MiB");
        assert_eq!(human_bytes(103_179_878), "98.4 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(134_515_008), "134.5M");
        assert_eq!(human_count(7_241_732_096), "7.2B");
    }

    #[test]
    fn tables_align_columns_and_clean_cells() {
        let mut table = Table::new(&["NAME", "SIZE"]);
        table.row(vec!["a".to_owned(), "1 B".to_owned()]);
        table.row(vec!["long\nname".to_owned(), "2.0 KiB".to_owned()]);
        assert_eq!(
            table.render(),
            "NAME       SIZE\na          1 B\nlong name  2.0 KiB\n"
        );
    }

    #[test]
    fn times_are_utc_to_the_second() {
        let at = OffsetDateTime::from_unix_timestamp(1_764_411_579)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(human_time(at), "2025-11-29 10:19:39Z");
    }
}
