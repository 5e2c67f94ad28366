//! Request traces: arrival rates over time (or explicit requests with work sizes), their parsers and
//! operations.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const SECOND_US: u64 = 1_000_000;
/// The most buckets a CSV trace may spread over (80 MB of counts), so that a stray time cannot
/// ask for all the memory.
const MAX_BUCKETS: usize = 10_000_000;
/// The random stream of the arrivals, apart from the simulator's other streams.
pub(crate) const STREAM_ARRIVALS: u64 = 1;

/// How much more a generated token costs than a context token in the Azure LLM traces' work size
/// (`ContextTokens + GENERATED_TOKEN_WEIGHT * GeneratedTokens`): the context is processed in one
/// parallel pass, while every generated token is a sequential step of its own.
pub const GENERATED_TOKEN_WEIGHT: f64 = 20.0;

/// What arrives at the application's entry service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Trace {
    /// Requests per bucket; arrivals inside a bucket are a Poisson process at `count / bucket`.
    Counts { bucket_us: u64, counts: Vec<f64> },
    /// Explicit requests, sorted by time, each with a work size (1 is the trace's mean).
    Requests {
        duration_us: u64,
        requests: Vec<TracedRequest>,
    },
}

/// One request of an explicit trace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TracedRequest {
    pub at_us: u64,
    /// Multiplies the CPU demand of the request at every service it reaches.
    pub size: f64,
}

/// How to read a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ParseOptions {
    /// The time each number of a plain list of numbers covers (default one second). CSV files
    /// carry their own times.
    pub bucket: Option<Duration>,
}

/// A trace line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}{}", hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
pub struct TraceError {
    /// 1-based line of the input; 0 when the whole input is at fault.
    pub line: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl TraceError {
    fn new(line: usize, message: impl Into<String>, hint: Option<&str>) -> Self {
        Self {
            line,
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }

    /// The error as `FILE:LINE: message`, with its hint on the next line.
    pub fn in_file(&self, file: &str) -> String {
        let mut out = if self.line == 0 {
            format!("{file}: {}", self.message)
        } else {
            format!("{file}:{}: {}", self.line, self.message)
        };
        if let Some(hint) = &self.hint {
            out.push_str(&format!("\n  hint: {hint}"));
        }
        out
    }
}

const NUMBERS_HINT: &str = "a trace of counts is numbers of requests (0 or more), one per line or \
     separated by spaces; CSV traces are `time,count` or the Azure LLM columns \
     `TIMESTAMP,ContextTokens,GeneratedTokens`";
const CSV_HINT: &str = "each row is `time,count`: time in seconds (such as 60) or a timestamp \
     (such as 1998-05-01 10:00:00), count 0 or more";
const AZURE_HINT: &str =
    "each row is `YYYY-MM-DD HH:MM:SS[.fraction],context tokens,generated tokens`";

impl Trace {
    /// Reads a trace, recognising its format: plain numbers (one per line or separated by
    /// whitespace), CSV `time,count` (with an optional header), or the Azure LLM CSV
    /// `TIMESTAMP,ContextTokens,GeneratedTokens` (one row per request). Lines starting with `#`
    /// are comments. Never panics, whatever the input.
    pub fn parse(text: &str, options: &ParseOptions) -> Result<Trace, TraceError> {
        let first = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .find(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((_, first)) = first else {
            return Err(TraceError::new(0, "the trace is empty", Some(NUMBERS_HINT)));
        };
        if !first.contains(',') {
            return parse_numbers(text, options);
        }
        let header: Vec<String> = first
            .split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .collect();
        if header == ["timestamp", "contexttokens", "generatedtokens"] {
            parse_azure(text)
        } else {
            parse_time_counts(text, options)
        }
    }

    /// How long the trace lasts.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us())
    }

    pub(crate) fn duration_us(&self) -> u64 {
        match self {
            Trace::Counts { bucket_us, counts } => bucket_us.saturating_mul(counts.len() as u64),
            Trace::Requests { duration_us, .. } => *duration_us,
        }
    }

    /// The number of requests expected (exact for explicit requests).
    pub fn total(&self) -> f64 {
        match self {
            // Plus 0 turns the -0 of an empty sum into 0.
            Trace::Counts { counts, .. } => counts.iter().sum::<f64>() + 0.0,
            Trace::Requests { requests, .. } => requests.len() as f64,
        }
    }

    /// The highest rate, in requests per second (over whole buckets, or over seconds for explicit
    /// requests).
    pub fn peak(&self) -> f64 {
        match self {
            Trace::Counts { bucket_us, counts } => {
                let seconds = *bucket_us as f64 / SECOND_US as f64;
                counts.iter().fold(0.0, |m: f64, c| m.max(c / seconds))
            }
            Trace::Requests { requests, .. } => {
                let mut best = 0usize;
                let mut start = 0usize;
                let mut run = 0usize;
                for (i, r) in requests.iter().enumerate() {
                    let second = r.at_us / SECOND_US;
                    if second != requests[start].at_us / SECOND_US {
                        start = i;
                        run = 0;
                    }
                    run += 1;
                    best = best.max(run);
                }
                best as f64
            }
        }
    }

    /// The same trace with every rate multiplied by `factor` (positive). Explicit requests are
    /// repeated or thinned deterministically: request i gets floor((i+1)f) - floor(if) copies,
    /// spread over the time to the next request.
    pub fn scale(&self, factor: f64) -> Trace {
        let factor = if factor.is_finite() {
            factor.max(0.0)
        } else {
            0.0
        };
        match self {
            Trace::Counts { bucket_us, counts } => Trace::Counts {
                bucket_us: *bucket_us,
                counts: counts.iter().map(|c| c * factor).collect(),
            },
            Trace::Requests {
                duration_us,
                requests,
            } => {
                let mut out = Vec::new();
                for (i, r) in requests.iter().enumerate() {
                    let copies = ((i + 1) as f64 * factor).floor() - (i as f64 * factor).floor();
                    let copies = copies.max(0.0) as u64;
                    let next = requests.get(i + 1).map_or(*duration_us, |n| n.at_us);
                    let gap = next.saturating_sub(r.at_us) / copies.max(1);
                    for k in 0..copies {
                        out.push(TracedRequest {
                            at_us: r.at_us + k * gap,
                            size: r.size,
                        });
                    }
                }
                Trace::Requests {
                    duration_us: *duration_us,
                    requests: out,
                }
            }
        }
    }

    /// The same trace played `factor` times faster (positive): time is compressed, so rates are
    /// multiplied by `factor` too.
    pub fn speedup(&self, factor: f64) -> Trace {
        let factor = if factor.is_finite() && factor > 0.0 {
            factor
        } else {
            1.0
        };
        let squeeze = |us: u64| (us as f64 / factor).round() as u64;
        match self {
            Trace::Counts { bucket_us, counts } => Trace::Counts {
                bucket_us: squeeze(*bucket_us).max(1),
                counts: counts.clone(),
            },
            Trace::Requests {
                duration_us,
                requests,
            } => Trace::Requests {
                duration_us: squeeze(*duration_us),
                requests: requests
                    .iter()
                    .map(|r| TracedRequest {
                        at_us: squeeze(r.at_us),
                        size: r.size,
                    })
                    .collect(),
            },
        }
    }

    /// The part of the trace from `start` lasting `len`, starting at time 0 (buckets are kept
    /// whole: the window widens to bucket boundaries).
    pub fn window(&self, start: Duration, len: Duration) -> Trace {
        let start_us = u64::try_from(start.as_micros()).unwrap_or(u64::MAX);
        let len_us = u64::try_from(len.as_micros()).unwrap_or(u64::MAX);
        match self {
            Trace::Counts { bucket_us, counts } => {
                let bucket = (*bucket_us).max(1);
                let first = usize::try_from(start_us / bucket).unwrap_or(usize::MAX);
                let end_us = start_us.saturating_add(len_us);
                let last = usize::try_from(end_us.div_ceil(bucket)).unwrap_or(usize::MAX);
                let counts = counts
                    .get(first.min(counts.len())..last.min(counts.len()))
                    .unwrap_or_default()
                    .to_vec();
                Trace::Counts {
                    bucket_us: bucket,
                    counts,
                }
            }
            Trace::Requests {
                duration_us,
                requests,
            } => {
                let end_us = start_us.saturating_add(len_us);
                Trace::Requests {
                    duration_us: end_us.min(*duration_us).saturating_sub(start_us),
                    requests: requests
                        .iter()
                        .filter(|r| r.at_us >= start_us && r.at_us < end_us)
                        .map(|r| TracedRequest {
                            at_us: r.at_us - start_us,
                            size: r.size,
                        })
                        .collect(),
                }
            }
        }
    }

    /// The arrivals this trace makes for `seed`, in time order: the same ones the simulator
    /// replays for that seed, so a live replay and a simulated run see the same requests.
    pub fn arrivals(&self, seed: u64) -> Arrivals<'_> {
        Arrivals {
            trace: self,
            rng: rng(seed, STREAM_ARRIVALS),
            index: 0,
            clock: 0.0,
        }
    }
}

/// The arrivals of a trace, produced one at a time: (time in µs, work size).
pub struct Arrivals<'t> {
    trace: &'t Trace,
    rng: StdRng,
    /// The current bucket (counts) or request (explicit).
    index: usize,
    /// Time of the last arrival in µs, as a fraction (counts).
    clock: f64,
}

impl Iterator for Arrivals<'_> {
    type Item = (u64, f64);

    fn next(&mut self) -> Option<(u64, f64)> {
        match self.trace {
            Trace::Requests { requests, .. } => {
                let r = requests.get(self.index)?;
                self.index += 1;
                Some((r.at_us, r.size))
            }
            Trace::Counts { bucket_us, counts } => loop {
                let count = *counts.get(self.index)?;
                let bucket = *bucket_us as f64;
                let end = (self.index as f64 + 1.0) * bucket;
                if count > 0.0 {
                    let rate = count / bucket;
                    let u: f64 = self.rng.random();
                    let next = self.clock - (1.0 - u).ln() / rate;
                    if next < end {
                        self.clock = next;
                        return Some((next as u64, 1.0));
                    }
                }
                // Poisson arrivals have no memory: starting over at the boundary is exact.
                self.clock = end;
                self.index += 1;
            },
        }
    }
}

/// Iterates over the lines that hold data: 1-based number and trimmed text, comments and blank
/// lines left out.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn bucket_us(options: &ParseOptions, line: usize) -> Result<Option<u64>, TraceError> {
    match options.bucket {
        None => Ok(None),
        Some(b) => match u64::try_from(b.as_micros()) {
            Ok(us) if us > 0 => Ok(Some(us)),
            _ => Err(TraceError::new(
                line,
                format!("the bucket {b:?} is not a usable duration"),
                Some("give a bucket of at least a microsecond, such as 1 (second)"),
            )),
        },
    }
}

fn count(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c >= 0.0)
}

fn parse_numbers(text: &str, options: &ParseOptions) -> Result<Trace, TraceError> {
    let bucket_us = bucket_us(options, 0)?.unwrap_or(SECOND_US);
    let mut counts = Vec::new();
    for (line, content) in data_lines(text) {
        for (column, word) in content.split_ascii_whitespace().enumerate() {
            let Some(c) = count(word) else {
                let at = if column > 0 {
                    format!(" (value {} of the line)", column + 1)
                } else {
                    String::new()
                };
                return Err(TraceError::new(
                    line,
                    format!("{:?} is not a count of requests{at}", truncate(word)),
                    Some(NUMBERS_HINT),
                ));
            };
            counts.push(c);
        }
    }
    Ok(Trace::Counts { bucket_us, counts })
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

fn parse_time_counts(text: &str, options: &ParseOptions) -> Result<Trace, TraceError> {
    let mut rows: Vec<(usize, i128)> = Vec::new();
    let mut values: Vec<f64> = Vec::new();
    for (n, (line, content)) in data_lines(text).enumerate() {
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let parsed = match fields.as_slice() {
            [time, c] => match (parse_time(time), count(c)) {
                (Some(t), Some(c)) => Some((t, c)),
                (None, _) if n == 0 => None,
                (None, _) => {
                    return Err(TraceError::new(
                        line,
                        format!("{:?} is not a time", truncate(time)),
                        Some(CSV_HINT),
                    ))
                }
                (Some(_), None) => {
                    return Err(TraceError::new(
                        line,
                        format!("{:?} is not a count of requests", truncate(c)),
                        Some(CSV_HINT),
                    ))
                }
            },
            _ => {
                return Err(TraceError::new(
                    line,
                    format!("expected 2 columns, time and count, found {}", fields.len()),
                    Some(CSV_HINT),
                ))
            }
        };
        // An unreadable first row is the header.
        let Some((time, c)) = parsed else { continue };
        if let Some((_, previous)) = rows.last() {
            if time <= *previous {
                return Err(TraceError::new(
                    line,
                    "the time does not come after the row before",
                    Some("sort the rows by time, one row per time"),
                ));
            }
        }
        rows.push((line, time));
        values.push(c);
    }
    let Some(&(_, t0)) = rows.first() else {
        return Err(TraceError::new(0, "the trace has no rows", Some(CSV_HINT)));
    };
    let bucket = match rows.get(1) {
        Some((_, t1)) => u64::try_from(t1 - t0).unwrap_or(u64::MAX),
        None => bucket_us(options, 0)?.unwrap_or(SECOND_US),
    };
    let mut counts: Vec<f64> = Vec::new();
    for ((line, time), c) in rows.iter().zip(values) {
        let index = usize::try_from((time - t0) / i128::from(bucket)).unwrap_or(usize::MAX);
        if index >= MAX_BUCKETS {
            return Err(TraceError::new(
                *line,
                "the time is too far after the first row for the trace's bucket",
                Some("check the times: the bucket is the step between the first two rows"),
            ));
        }
        if counts.len() <= index {
            counts.resize(index + 1, 0.0);
        }
        counts[index] += c;
    }
    Ok(Trace::Counts {
        bucket_us: bucket,
        counts,
    })
}

fn parse_azure(text: &str) -> Result<Trace, TraceError> {
    let mut rows: Vec<(i128, f64)> = Vec::new();
    for (line, content) in data_lines(text).skip(1) {
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let [time, context, generated] = fields.as_slice() else {
            return Err(TraceError::new(
                line,
                format!("expected 3 columns, found {}", fields.len()),
                Some(AZURE_HINT),
            ));
        };
        let Some(time) = parse_timestamp(time) else {
            return Err(TraceError::new(
                line,
                format!("{:?} is not a timestamp", truncate(time)),
                Some(AZURE_HINT),
            ));
        };
        let tokens = |t: &str| t.parse::<u64>().ok().map(|n| n as f64);
        let (Some(context), Some(generated)) = (tokens(context), tokens(generated)) else {
            return Err(TraceError::new(
                line,
                "the token counts must be whole numbers, 0 or more",
                Some(AZURE_HINT),
            ));
        };
        rows.push((time, context + GENERATED_TOKEN_WEIGHT * generated));
    }
    if rows.is_empty() {
        return Err(TraceError::new(
            0,
            "the trace has no requests",
            Some(AZURE_HINT),
        ));
    }
    rows.sort_by_key(|(t, _)| *t);
    let t0 = rows[0].0;
    let mean = rows.iter().map(|(_, w)| w).sum::<f64>() / rows.len() as f64;
    let requests: Vec<TracedRequest> = rows
        .iter()
        .map(|(t, w)| TracedRequest {
            at_us: u64::try_from(t - t0).unwrap_or(u64::MAX),
            size: if mean > 0.0 { w / mean } else { 1.0 },
        })
        .collect();
    let last = requests.last().map_or(0, |r| r.at_us);
    Ok(Trace::Requests {
        // The trace lasts to the end of the second of its last request.
        duration_us: (last / SECOND_US + 1) * SECOND_US,
        requests,
    })
}

/// A time in microseconds: seconds as a number, or a timestamp.
fn parse_time(text: &str) -> Option<i128> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds.abs() < 1e12 {
            return Some((seconds * 1e6).round() as i128);
        }
        return None;
    }
    parse_timestamp(text)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` (or with `T`, optionally ending in `Z`) as microseconds since
/// the epoch.
fn parse_timestamp(text: &str) -> Option<i128> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (clock, fraction) = match time.split_once('.') {
        Some((c, f)) => (c, f),
        None => (time, ""),
    };
    let mut c = clock.splitn(3, ':');
    let hour: u32 = c.next()?.parse().ok()?;
    let minute: u32 = c.next()?.parse().ok()?;
    let second: u32 = c.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || !(0..=9999).contains(&year)
        || !fraction.chars().all(|ch| ch.is_ascii_digit())
    {
        return None;
    }
    let mut micros: i128 = 0;
    for (i, digit) in fraction.chars().take(6).enumerate() {
        micros += i128::from(digit.to_digit(10)?) * 10i128.pow(5 - i as u32);
    }
    let days = days_from_civil(year, month, day);
    let seconds = i128::from(days) * 86_400
        + i128::from(hour) * 3600
        + i128::from(minute) * 60
        + i128::from(second);
    Some(seconds * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected = match self {
            Trace::Counts { .. } => " expected",
            Trace::Requests { .. } => "",
        };
        write!(
            f,
            "{} requests{expected} over {}, peak {:.1}/s",
            self.total().round(),
            humantime::format_duration(Duration::from_secs(self.duration().as_secs())),
            self.peak()
        )
    }
}

/// A seeded random source for one stream of a simulation (`stream` keeps streams apart).
pub(crate) fn rng(seed: u64, stream: u64) -> StdRng {
    // SplitMix64 of the pair, so that neighbouring seeds give unrelated streams.
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Trace, TraceError> {
        Trace::parse(text, &ParseOptions::default())
    }

    fn counts(trace: &Trace) -> (u64, Vec<f64>) {
        match trace {
            Trace::Counts { bucket_us, counts } => (*bucket_us, counts.clone()),
            other => panic!("expected counts, got {other:?}"),
        }
    }

    #[test]
    fn numbers_one_per_line_or_on_one_line() {
        assert_eq!(
            counts(&parse("1\n2\n\n# a comment\n3.5\n").unwrap()),
            (SECOND_US, vec![1.0, 2.0, 3.5])
        );
        assert_eq!(
            counts(&parse("4 5\t6").unwrap()),
            (SECOND_US, vec![4.0, 5.0, 6.0])
        );
        let trace = Trace::parse(
            "1 2",
            &ParseOptions {
                bucket: Some(Duration::from_secs(60)),
            },
        )
        .unwrap();
        assert_eq!(counts(&trace).0, 60 * SECOND_US);
        assert_eq!(trace.duration(), Duration::from_secs(120));
    }

    #[test]
    fn bad_numbers_are_located() {
        let e = parse("1\n2\nthree\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("\"three\" is not a count"), "{e}");
        assert_eq!(
            e.in_file("t.txt").lines().next().unwrap(),
            "t.txt:3: \"three\" is not a count of requests"
        );
        let e = parse("1 2 -3\n").unwrap_err();
        assert!(e.to_string().contains("value 3 of the line"), "{e}");
        assert_eq!(parse("\n# nothing\n").unwrap_err().line, 0);
    }

    #[test]
    fn csv_with_seconds_and_a_header() {
        let trace = parse("time,count\n0,10\n10,20\n30,5\n").unwrap();
        assert_eq!(counts(&trace), (10 * SECOND_US, vec![10.0, 20.0, 0.0, 5.0]));
        assert_eq!(trace.peak(), 2.0);
    }

    #[test]
    fn csv_with_timestamps_infers_the_bucket_and_fills_gaps() {
        let text =
            "period,count\n1998-04-30 21:30:00,2\n1998-04-30 21:31:00,11\n1998-04-30 21:34:00,7\n";
        let trace = parse(text).unwrap();
        assert_eq!(
            counts(&trace),
            (60 * SECOND_US, vec![2.0, 11.0, 0.0, 0.0, 7.0])
        );
        assert_eq!(trace.duration(), Duration::from_secs(300));
    }

    #[test]
    fn bad_csv_rows_are_located() {
        let e = parse("period,count\n0,1\n1,x\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("\"x\" is not a count"), "{e}");
        let e = parse("0,1\n1,2,3\n").unwrap_err();
        assert!(
            e.line == 2 && e.message.contains("expected 2 columns"),
            "{e}"
        );
        let e = parse("0,1\n5,2\n3,1\n").unwrap_err();
        assert!(
            e.line == 3 && e.message.contains("does not come after"),
            "{e}"
        );
        let e = parse("0,1\nsoon,2\n").unwrap_err();
        assert!(e.line == 2 && e.message.contains("not a time"), "{e}");
        let e = parse("1998-13-01 00:00:00,1\n").unwrap_err();
        assert_eq!(
            e.line, 0,
            "a lone unreadable row is a header, then nothing is left: {e}"
        );
    }

    #[test]
    fn azure_rows_become_requests_with_sizes() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.5000000,100,0\n\
                    2023-11-16 18:17:04.2500000,80,1\n";
        let trace = parse(text).unwrap();
        let Trace::Requests {
            duration_us,
            requests,
        } = &trace
        else {
            panic!("{trace:?}")
        };
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].at_us, 0);
        assert_eq!(requests[1].at_us, 750_000);
        // Work 100 and 80 + 20 = 100: both the mean.
        assert!((requests[0].size - 1.0).abs() < 1e-12);
        assert!((requests[1].size - 1.0).abs() < 1e-12);
        assert_eq!(*duration_us, SECOND_US);
        let e = parse("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,x\n")
            .unwrap_err();
        assert!(e.line == 2 && e.message.contains("token counts"), "{e}");
        let e = parse("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n").unwrap_err();
        assert!(e.line == 2 && e.message.contains("timestamp"), "{e}");
    }

    #[test]
    fn timestamps_are_exact() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("1970-01-02T00:00:01.5Z"),
            Some(86_401_500_000)
        );
        assert_eq!(
            parse_timestamp("2000-03-01 00:00:00"),
            Some(951_868_800_000_000)
        );
        assert_eq!(parse_timestamp("2000-03-01"), None);
    }

    #[test]
    fn operations_keep_the_shape() {
        let trace = Trace::Counts {
            bucket_us: 10 * SECOND_US,
            counts: vec![10.0, 20.0, 30.0, 40.0],
        };
        assert_eq!(counts(&trace.scale(2.0)).1, vec![20.0, 40.0, 60.0, 80.0]);
        let fast = trace.speedup(10.0);
        assert_eq!(counts(&fast), (SECOND_US, vec![10.0, 20.0, 30.0, 40.0]));
        assert_eq!(fast.peak(), 40.0);
        assert_eq!(fast.duration(), Duration::from_secs(4));
        let part = trace.window(Duration::from_secs(10), Duration::from_secs(15));
        assert_eq!(counts(&part).1, vec![20.0, 30.0]);
        assert_eq!(trace.peak(), 4.0);
        assert_eq!(trace.total(), 100.0);
    }

    #[test]
    fn explicit_requests_scale_and_window() {
        let requests = (0..10)
            .map(|i| TracedRequest {
                at_us: i * 100_000,
                size: 1.0,
            })
            .collect();
        let trace = Trace::Requests {
            duration_us: SECOND_US,
            requests,
        };
        assert_eq!(trace.scale(2.5).total(), 25.0);
        assert_eq!(trace.scale(0.5).total(), 5.0);
        assert_eq!(trace.peak(), 10.0);
        let part = trace.window(Duration::from_millis(200), Duration::from_millis(300));
        assert_eq!(part.total(), 3.0);
        assert_eq!(part.duration(), Duration::from_millis(300));
        assert_eq!(trace.speedup(2.0).duration(), Duration::from_millis(500));
    }

    #[test]
    fn poisson_arrivals_follow_the_counts() {
        let trace = Trace::Counts {
            bucket_us: SECOND_US,
            counts: vec![1000.0, 0.0, 3000.0],
        };
        let arrivals: Vec<(u64, f64)> = trace.arrivals(7).collect();
        let in_second = |s: u64| arrivals.iter().filter(|(t, _)| t / SECOND_US == s).count() as f64;
        assert!((in_second(0) - 1000.0).abs() < 150.0, "{}", in_second(0));
        assert_eq!(in_second(1), 0.0);
        assert!((in_second(2) - 3000.0).abs() < 250.0, "{}", in_second(2));
        assert!(arrivals.windows(2).all(|w| w[0].0 <= w[1].0));
        let again: Vec<(u64, f64)> = trace.arrivals(7).collect();
        assert_eq!(arrivals, again);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn parsing_csv_like_input_never_panics(
            rows in proptest::collection::vec("[0-9:. TZ-]{0,25},[0-9.e-]{0,8}(,[0-9]{0,5})?", 0..8),
            azure in any::<bool>(),
        ) {
            let header = if azure { "TIMESTAMP,ContextTokens,GeneratedTokens\n" } else { "" };
            let text = format!("{header}{}", rows.join("\n"));
            if let Ok(trace) = parse(&text) {
                let _ = trace.peak();
                let _ = trace.scale(1.5).window(Duration::from_secs(1), Duration::from_secs(3));
            }
        }
    }
}
