//! The kv line protocol: one command per line in, one reply per line out.

use std::fmt;

/// A request to the kv store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Set { key: String, value: String },
    Get { key: String },
    Del { key: String },
    Incr { key: String },
    Count,
}

/// An answer from the kv store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Value(String),
    NotFound,
    Err(String),
}

/// A line that is not a valid command or reply; the message is sent back as `ERR message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(String);

/// Keys are one non-empty word without whitespace or control characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Values are anything that fits on one line.
pub fn valid_value(value: &str) -> bool {
    !value.contains(['\n', '\r'])
}

fn key_arg(verb: &str, rest: Option<&str>) -> Result<String, ProtocolError> {
    match rest {
        Some(key) if valid_key(key) => Ok(key.to_owned()),
        _ => Err(ProtocolError(format!("usage: {verb} key"))),
    }
}

impl Command {
    /// Parses one line, without its line ending.
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb, Some(rest)),
            None => (line, None),
        };
        match verb.to_ascii_uppercase().as_str() {
            "SET" => match rest.and_then(|r| r.split_once(' ')) {
                Some((key, value)) if valid_key(key) && valid_value(value) => Ok(Self::Set {
                    key: key.to_owned(),
                    value: value.to_owned(),
                }),
                _ => Err(ProtocolError("usage: SET key value".into())),
            },
            "GET" => Ok(Self::Get {
                key: key_arg("GET", rest)?,
            }),
            "DEL" => Ok(Self::Del {
                key: key_arg("DEL", rest)?,
            }),
            "INCR" => Ok(Self::Incr {
                key: key_arg("INCR", rest)?,
            }),
            "COUNT" if rest.is_none() => Ok(Self::Count),
            "COUNT" => Err(ProtocolError("usage: COUNT".into())),
            "" => Err(ProtocolError("empty command".into())),
            _ => Err(ProtocolError(format!(
                "unknown command {verb:?}; use SET, GET, DEL, INCR or COUNT"
            ))),
        }
    }
}

impl fmt::Display for Command {
    /// The wire form, without the line ending.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Set { key, value } => write!(f, "SET {key} {value}"),
            Self::Get { key } => write!(f, "GET {key}"),
            Self::Del { key } => write!(f, "DEL {key}"),
            Self::Incr { key } => write!(f, "INCR {key}"),
            Self::Count => write!(f, "COUNT"),
        }
    }
}

impl Reply {
    /// Parses one reply line, without its line ending.
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match line.split_once(' ') {
            _ if line == "OK" => Ok(Self::Ok),
            _ if line == "NOTFOUND" => Ok(Self::NotFound),
            Some(("VALUE", value)) => Ok(Self::Value(value.to_owned())),
            Some(("ERR", message)) => Ok(Self::Err(message.to_owned())),
            _ => Err(ProtocolError(format!("unexpected reply {line:?}"))),
        }
    }
}

impl fmt::Display for Reply {
    /// The wire form, without the line ending.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => write!(f, "OK"),
            Self::Value(value) => write!(f, "VALUE {value}"),
            Self::NotFound => write!(f, "NOTFOUND"),
            Self::Err(message) => write!(f, "ERR {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Result<Command, &str>) {
        assert_eq!(
            Command::parse(line),
            expected.map_err(|m| ProtocolError(m.into())),
            "{line:?}"
        );
    }

    #[test]
    fn commands_parse() {
        let key = || "k".to_owned();
        check(
            "SET k some value",
            Ok(Command::Set {
                key: key(),
                value: "some value".into(),
            }),
        );
        check(
            "SET k ",
            Ok(Command::Set {
                key: key(),
                value: String::new(),
            }),
        );
        check("get k\r", Ok(Command::Get { key: key() }));
        check("DEL k", Ok(Command::Del { key: key() }));
        check("INCR k", Ok(Command::Incr { key: key() }));
        check("COUNT", Ok(Command::Count));
        check("SET k", Err("usage: SET key value"));
        check("GET a b", Err("usage: GET key"));
        check("GET", Err("usage: GET key"));
        check("COUNT x", Err("usage: COUNT"));
        check("", Err("empty command"));
        check(
            "FLY k",
            Err("unknown command \"FLY\"; use SET, GET, DEL, INCR or COUNT"),
        );
    }

    #[test]
    fn commands_and_replies_round_trip() {
        for command in [
            Command::Set {
                key: "a".into(),
                value: "b c".into(),
            },
            Command::Get { key: "a".into() },
            Command::Del { key: "a".into() },
            Command::Incr { key: "a".into() },
            Command::Count,
        ] {
            assert_eq!(Command::parse(&command.to_string()).unwrap(), command);
        }
        for reply in [
            Reply::Ok,
            Reply::Value("x y".into()),
            Reply::Value(String::new()),
            Reply::NotFound,
            Reply::Err("bad".into()),
        ] {
            assert_eq!(Reply::parse(&reply.to_string()).unwrap(), reply);
        }
        assert!(Reply::parse("WHAT").is_err());
    }
}
