//! `.env` and `env_file` files: `KEY=VALUE` lines, as Compose reads them.

use std::collections::BTreeMap;

use crate::interpolate::{interpolate, InterpolationError};

/// A line that is not a variable, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DotenvError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// The variables of an env file, in order. `# comments`, blank lines and an `export ` prefix are
/// allowed; values may be single-quoted (literal), double-quoted (with `\n`, `\t`, `\"` and `\\`
/// escapes) or bare (trimmed, ` #` starting a comment). Double-quoted and bare values are
/// interpolated with the variables above them, then `lookup`.
pub(crate) fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, DotenvError> {
    let mut vars = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let error = |message: String| DotenvError {
            line: i + 1,
            message,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(error(format!("expected KEY=VALUE, found {line:?}")));
        };
        let key = key.trim();
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(error(format!("{key:?} is not a variable name")));
        }
        let value = value.trim();
        let interpolated = |v: &str| -> Result<String, DotenvError> {
            let known = |name: &str| vars.get(name).cloned().or_else(|| lookup(name));
            interpolate(v, &known).map_err(|InterpolationError { message, .. }| error(message))
        };
        let value = if let Some(inner) = value.strip_prefix('\'') {
            let Some(end) = inner.find('\'') else {
                return Err(error("the single quote is not closed".into()));
            };
            inner[..end].to_owned()
        } else if let Some(inner) = value.strip_prefix('"') {
            let Some((body, _)) = double_quoted(inner) else {
                return Err(error("the double quote is not closed".into()));
            };
            interpolated(&body)?
        } else {
            let bare = match value.find(" #") {
                Some(at) => value[..at].trim_end(),
                None => value,
            };
            interpolated(bare)?
        };
        vars.insert(key.to_owned(), value);
    }
    Ok(vars)
}

/// The body of a double-quoted value with its escapes applied, and what follows the closing
/// quote.
fn double_quoted(inner: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &inner[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, other)) => out.push(other),
                None => return None,
            },
            _ => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<BTreeMap<String, String>, DotenvError> {
        parse(text, &|name| {
            (name == "HOME").then(|| "/home/me".to_owned())
        })
    }

    #[test]
    fn reads_the_forms_compose_reads() {
        let vars = read(
            "# comment\n\nA=1\nexport B = two words \nC='lit $HOME'\nD=\"a\\nb $HOME\"\nE=x # note\nF=${A}-$HOME\nG=\n",
        )
        .unwrap();
        let get = |k: &str| vars.get(k).map(String::as_str);
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("lit $HOME"));
        assert_eq!(get("D"), Some("a\nb /home/me"));
        assert_eq!(get("E"), Some("x"));
        assert_eq!(get("F"), Some("1-/home/me"));
        assert_eq!(get("G"), Some(""));
    }

    #[test]
    fn bad_lines_say_which() {
        assert_eq!(read("A=1\nnonsense\n").unwrap_err().line, 2);
        assert_eq!(read("A=\"open\n").unwrap_err().line, 1);
        assert_eq!(read("1A=x\n").unwrap_err().line, 1);
    }
}
