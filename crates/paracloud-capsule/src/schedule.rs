//! Cron schedules of scheduled capsules: the standard five fields (minute, hour, day of month,
//! month, day of week) or a nickname such as `@hourly`, always in UTC.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed cron expression. Time is passed in as seconds since the epoch: this type reads no
/// clock.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

/// Why a cron expression cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {text:?}: {reason}")]
pub struct ScheduleError {
    pub text: String,
    /// The parser's reason, as it says it.
    pub reason: String,
}

impl ScheduleError {
    /// How to write a schedule.
    pub fn hint(&self) -> &'static str {
        "write five fields, minute hour day-of-month month day-of-week (UTC), such as \"*/5 * * * *\" (every five minutes) or \"0 3 * * *\" (at 03:00), or one of @hourly, @daily, @weekly, @monthly, @yearly"
    }
}

impl Schedule {
    /// Parses a five-field cron expression or a nickname (`@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`, `@annually`, `@midnight`).
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let error = |reason: String| ScheduleError {
            text: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(error("it is empty".into()));
        }
        // The library takes "@every", seconds and years in other modes; keep to standard cron.
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(error(format!(
                "it has {} fields, not 5",
                trimmed.split_whitespace().count()
            )));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(trimmed)
            .map_err(|e| error(e.to_string().trim_end_matches('.').to_owned()))?;
        Ok(Schedule {
            text: trimmed.to_owned(),
            cron,
        })
    }

    /// The expression as written (without surrounding spaces).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time the schedule fires strictly after `unix_seconds` (seconds since the
    /// epoch, UTC); `None` when it never fires again (such as February 30th) or the time is out
    /// of range.
    pub fn next_after(&self, unix_seconds: i64) -> Option<i64> {
        let after: DateTime<Utc> = DateTime::from_timestamp(unix_seconds, 0)?;
        self.cron
            .find_next_occurrence(&after, false)
            .ok()
            .map(|t| t.timestamp())
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.text).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Schedule {}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Schedule::parse(text)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Schedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z, a Thursday.
    const NEW_YEAR: i64 = 1_767_225_600;

    #[test]
    fn five_fields_in_utc() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(NEW_YEAR), Some(NEW_YEAR + 300));
        assert_eq!(every5.next_after(NEW_YEAR + 1), Some(NEW_YEAR + 300));
        assert_eq!(every5.next_after(NEW_YEAR + 299), Some(NEW_YEAR + 300));
        let three = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(three.next_after(NEW_YEAR), Some(NEW_YEAR + 3 * 3600));
        assert_eq!(
            three.next_after(NEW_YEAR + 3 * 3600),
            Some(NEW_YEAR + 27 * 3600)
        );
        // Monday 2026-01-05 at 00:30.
        let monday = Schedule::parse("30 0 * * MON").unwrap();
        assert_eq!(
            monday.next_after(NEW_YEAR),
            Some(NEW_YEAR + 4 * 86400 + 1800)
        );
    }

    #[test]
    fn nicknames() {
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(hourly.next_after(NEW_YEAR + 10), Some(NEW_YEAR + 3600));
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(daily.next_after(NEW_YEAR), Some(NEW_YEAR + 86400));
        assert_eq!(daily.to_string(), "@daily");
    }

    #[test]
    fn never_again_is_none() {
        let feb30 = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(feb30.next_after(NEW_YEAR), None);
    }

    #[test]
    fn bad_expressions_say_why() {
        for (text, reason) in [
            ("", "it is empty"),
            ("* * * *", "it has 4 fields, not 5"),
            ("0 * * * * *", "it has 6 fields, not 5"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert_eq!(e.reason, reason, "{text}");
        }
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid cron expression \"61 * * * *\": "),
            "{e}"
        );
        assert!(Schedule::parse("@sometimes").is_err());
    }

    #[test]
    fn serde_is_the_text() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"*/5 * * * *\"");
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
    }
}
