//! Request traces to replay: requests per time bucket read from a file, a window of them, and
//! the open-loop Poisson arrivals they make once time-compressed and scaled (pure; seeded).

use std::time::UNIX_EPOCH;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The most buckets a trace may have (80 MB of counts), so a stray timestamp cannot ask for all
/// the memory.
const MAX_BUCKETS: usize = 10_000_000;

/// Requests per bucket of `bucket_s` trace seconds, from time 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub bucket_s: f64,
    pub counts: Vec<f64>,
}

/// A trace file that cannot be read: the line, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}\n  hint: {hint}")]
pub struct TraceError {
    /// 1-based; 0 when the whole file is at fault.
    pub line: usize,
    pub message: String,
    pub hint: &'static str,
}

const NUMBERS_HINT: &str =
    "a trace is numbers of requests per bucket (0 or more), one per line or \
     separated by spaces; or CSV rows `time,count` (time in seconds or as `1998-05-01 10:00:00`); \
     or the Azure LLM CSV `TIMESTAMP,ContextTokens,GeneratedTokens` (one request per row)";

impl TraceError {
    /// The error as `FILE:LINE: message`, with its hint on the next line.
    pub fn in_file(&self, file: &str) -> String {
        match self.line {
            0 => format!("{file}: {}\n  hint: {}", self.message, self.hint),
            line => format!("{file}:{line}: {}\n  hint: {}", self.message, self.hint),
        }
    }
}

fn error(line: usize, message: impl Into<String>) -> TraceError {
    TraceError {
        line,
        message: message.into(),
        hint: NUMBERS_HINT,
    }
}

/// The lines holding data: 1-based number and trimmed text, blank lines and `#` comments left
/// out.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

impl Trace {
    /// Reads a trace, recognising its form by its first data line: numbers (each one bucket of
    /// `bucket_s` seconds), CSV `time,count` with an optional header (the buckets are the
    /// smallest step between times; missing times count 0), or the Azure LLM CSV (one request
    /// per row, counted per second).
    pub fn parse(text: &str, bucket_s: f64) -> Result<Trace, TraceError> {
        let Some((_, first)) = data_lines(text).next() else {
            return Err(error(0, "the trace is empty"));
        };
        if !first.contains(',') {
            return parse_numbers(text, bucket_s);
        }
        let header = first.to_ascii_lowercase();
        if header.starts_with("timestamp,contexttokens") {
            return parse_requests(text);
        }
        parse_time_counts(text)
    }

    /// Trace time covered.
    pub fn duration_s(&self) -> f64 {
        self.bucket_s * self.counts.len() as f64
    }

    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// The part from `start_s` lasting `duration_s` (whole buckets: the window widens to their
    /// boundaries), starting at time 0.
    pub fn window(&self, start_s: f64, duration_s: Option<f64>) -> Trace {
        let first = ((start_s / self.bucket_s).floor().max(0.0) as usize).min(self.counts.len());
        let last = match duration_s {
            Some(d) => (((start_s + d) / self.bucket_s).ceil().max(0.0) as usize)
                .clamp(first, self.counts.len()),
            None => self.counts.len(),
        };
        Trace {
            bucket_s: self.bucket_s,
            counts: self.counts[first..last].to_vec(),
        }
    }

    /// The replay: `speedup` times faster (time compressed, so rates multiplied too, as the
    /// simulator does) and every rate multiplied by `scale`. Run time = trace time / speedup.
    pub fn replay(&self, speedup: f64, scale: f64) -> Trace {
        Trace {
            bucket_s: self.bucket_s / speedup,
            counts: self.counts.iter().map(|c| c * scale).collect(),
        }
    }

    /// Arrival times in seconds from the start, in order: a Poisson process whose rate is
    /// constant within each bucket (`count / bucket_s`), drawn from `seed`.
    pub fn arrivals(&self, seed: u64) -> Arrivals<'_> {
        Arrivals {
            trace: self,
            rng: StdRng::seed_from_u64(seed),
            index: 0,
            clock: 0.0,
        }
    }
}

/// The arrivals of a replay, one at a time.
pub struct Arrivals<'t> {
    trace: &'t Trace,
    rng: StdRng,
    index: usize,
    clock: f64,
}

impl Iterator for Arrivals<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        loop {
            let count = *self.trace.counts.get(self.index)?;
            let end = (self.index + 1) as f64 * self.trace.bucket_s;
            if count > 0.0 {
                let rate = count / self.trace.bucket_s;
                let u: f64 = self.rng.random();
                let next = self.clock - (1.0 - u).ln() / rate;
                if next < end {
                    self.clock = next;
                    return Some(next);
                }
            }
            // Poisson arrivals have no memory: starting over at the boundary is exact.
            self.clock = end;
            self.index += 1;
        }
    }
}

fn count(text: &str, line: usize) -> Result<f64, TraceError> {
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(error(
            line,
            format!("{:?} is not a number of requests", text.trim()),
        )),
    }
}

fn parse_numbers(text: &str, bucket_s: f64) -> Result<Trace, TraceError> {
    if !(bucket_s.is_finite() && bucket_s > 0.0) {
        return Err(TraceError {
            line: 0,
            message: format!("a bucket of {bucket_s} s"),
            hint: "give --bucket a number of seconds above 0, such as --bucket 60",
        });
    }
    let mut counts = Vec::new();
    for (line, text) in data_lines(text) {
        for word in text.split_whitespace() {
            counts.push(count(word, line)?);
            if counts.len() > MAX_BUCKETS {
                return Err(error(line, format!("more than {MAX_BUCKETS} buckets")));
            }
        }
    }
    Ok(Trace { bucket_s, counts })
}

/// Seconds since the epoch of a time written as seconds or as `YYYY-MM-DD HH:MM:SS[.fraction]`.
fn seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(s) = text.parse::<f64>() {
        return s.is_finite().then_some(s);
    }
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// Puts `(time, count)` rows into buckets of the smallest step between their times.
fn bucketed(rows: &[(usize, f64, f64)], bucket_s: Option<f64>) -> Result<Trace, TraceError> {
    let Some(start) = rows.iter().map(|r| r.1).reduce(f64::min) else {
        return Err(error(0, "the trace has no rows"));
    };
    let bucket_s = bucket_s.unwrap_or_else(|| {
        let mut times: Vec<f64> = rows.iter().map(|r| r.1).collect();
        times.sort_by(f64::total_cmp);
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|d| *d > 0.0)
            .reduce(f64::min)
            .unwrap_or(1.0)
    });
    // Buckets on whole multiples of their width: per-second buckets on whole seconds.
    let start = (start / bucket_s).floor() * bucket_s;
    let mut counts = Vec::new();
    for &(line, at, n) in rows {
        let index = ((at - start) / bucket_s + 1e-9).floor() as usize;
        if index >= MAX_BUCKETS {
            return Err(error(
                line,
                format!("this time is more than {MAX_BUCKETS} buckets after the first"),
            ));
        }
        if counts.len() <= index {
            counts.resize(index + 1, 0.0);
        }
        counts[index] += n;
    }
    Ok(Trace { bucket_s, counts })
}

fn parse_time_counts(text: &str) -> Result<Trace, TraceError> {
    let mut rows = Vec::new();
    for (i, (line, text)) in data_lines(text).enumerate() {
        let Some((time, n)) = text.split_once(',') else {
            return Err(error(line, format!("{text:?} is not `time,count`")));
        };
        let Some(at) = seconds(time) else {
            // A header names its columns.
            if i == 0 {
                continue;
            }
            return Err(error(line, format!("{:?} is not a time", time.trim())));
        };
        rows.push((line, at, count(n, line)?));
    }
    bucketed(&rows, None)
}

fn parse_requests(text: &str) -> Result<Trace, TraceError> {
    let mut rows = Vec::new();
    for (line, text) in data_lines(text).skip(1) {
        let time = text.split(',').next().unwrap_or_default();
        let at =
            seconds(time).ok_or_else(|| error(line, format!("{:?} is not a time", time.trim())))?;
        rows.push((line, at, 1.0));
    }
    bucketed(&rows, Some(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_buckets_of_the_given_width() {
        let trace = Trace::parse("# NASA\n1 2\n3\n\n0 4\n", 60.0).unwrap();
        assert_eq!(trace.counts, [1.0, 2.0, 3.0, 0.0, 4.0]);
        assert_eq!(
            (trace.bucket_s, trace.duration_s(), trace.total()),
            (60.0, 300.0, 10.0)
        );
        let err = Trace::parse("1\n2\nmany\n", 1.0).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(
            err.in_file("t.txt").starts_with("t.txt:3: \"many\""),
            "{err}"
        );
        assert!(
            err.to_string().contains("\"many\" is not a number"),
            "{err}"
        );
        assert!(Trace::parse("-1", 1.0).is_err());
        assert!(Trace::parse("", 1.0)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(Trace::parse("1", 0.0)
            .unwrap_err()
            .to_string()
            .contains("--bucket"));
    }

    #[test]
    fn csv_times_make_the_buckets_and_gaps_count_zero() {
        let text = "period,count\n1998-04-30 21:30:00,2\n1998-04-30 21:31:00,11\n\
                    1998-04-30 21:34:00,5\n";
        let trace = Trace::parse(text, 1.0).unwrap();
        assert_eq!(trace.bucket_s, 60.0);
        assert_eq!(trace.counts, [2.0, 11.0, 0.0, 0.0, 5.0]);
        let seconds = Trace::parse("0,5\n2,7\n1,1\n", 1.0).unwrap();
        assert_eq!(seconds.counts, [5.0, 1.0, 7.0]);
        let err = Trace::parse("0,5\nnoon,3\n", 1.0).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn azure_rows_are_one_request_each_per_second() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:04.0319600,3180,8\n\
                    2023-11-16 18:17:04.5,1,1\n2023-11-16 18:17:06.1,1,1\n";
        let trace = Trace::parse(text, 1.0).unwrap();
        assert_eq!(trace.bucket_s, 1.0);
        assert_eq!(trace.counts, [1.0, 2.0, 0.0, 1.0]);
    }

    #[test]
    fn a_window_keeps_whole_buckets() {
        let trace = Trace {
            bucket_s: 60.0,
            counts: (0..10).map(f64::from).collect(),
        };
        assert_eq!(trace.window(90.0, Some(60.0)).counts, [1.0, 2.0]);
        assert_eq!(trace.window(540.0, None).counts, [9.0]);
        assert!(trace.window(6_000.0, Some(60.0)).counts.is_empty());
    }

    #[test]
    fn a_replay_compresses_time_and_scales_rates() {
        let trace = Trace {
            bucket_s: 60.0,
            counts: vec![600.0, 0.0, 60.0],
        };
        let fast = trace.replay(60.0, 0.5);
        assert_eq!(fast.bucket_s, 1.0);
        assert_eq!(fast.counts, [300.0, 0.0, 30.0]);
        let times: Vec<f64> = fast.arrivals(7).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order");
        let first = times.iter().filter(|t| **t < 1.0).count();
        let silent = times.iter().filter(|t| (1.0..2.0).contains(*t)).count();
        let last = times.iter().filter(|t| **t >= 2.0).count();
        assert!((250..350).contains(&first), "{first}");
        assert_eq!(silent, 0);
        assert!((15..50).contains(&last), "{last}");
        assert!(times.iter().all(|t| *t < 3.0));
        assert_eq!(times, fast.arrivals(7).collect::<Vec<_>>(), "seeded");
        assert_ne!(times, fast.arrivals(8).collect::<Vec<_>>());
    }
}
