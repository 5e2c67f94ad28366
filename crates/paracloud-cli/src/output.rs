//! Printing results as tables, JSON or YAML.

use serde::Serialize;

use crate::cli::Output;

/// Prints `value` as JSON or YAML, or calls `table` for the human form.
pub fn print<T: Serialize>(
    format: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match format {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Output::Table => print!("{}", table(value)),
    }
    Ok(())
}

/// Left-aligned columns separated by three spaces, like kubectl and docker.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A duration in the largest whole unit, like `docker ps`: 45s, 12m, 3h, 2d.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A database server's own figures, as `describe` writes them: `230 queries/s, 40 ms behind
/// the primary`; `None` for an instance that is not one.
pub fn server_line(instance: &paracloud_api::InstanceView) -> Option<String> {
    let queries = instance
        .queries_per_second
        .map(|q| format!("{q:.0} queries/s"));
    let lag = instance
        .lag_ms
        .map(|ms| format!("{ms} ms behind the primary"));
    let parts: Vec<String> = queries.into_iter().chain(lag).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A time given in milliseconds since the Unix epoch, as RFC 3339 in UTC to the second.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// A migration done, on one machine or on a cluster: a line on standard error, or the outcome
/// as JSON.
pub fn migrated(format: Output, done: &paracloud_api::MigrateResponse) -> anyhow::Result<()> {
    if format == Output::Table {
        let handover = match (done.handover_ms, done.state_bytes) {
            (Some(ms), Some(bytes)) => format!(" (state of {bytes} bytes handed over in {ms} ms)"),
            _ => String::new(),
        };
        eprintln!(
            "migrated {} to {} via {} in {} ms{handover}",
            done.from, done.to, done.via, done.took_ms
        );
    } else {
        println!("{}", serde_json::to_string(done)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     BB\nxyz   1\nq     22\n");
    }

    #[test]
    fn ages_use_the_largest_unit() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(61), "1m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(200_000), "2d");
    }
}
