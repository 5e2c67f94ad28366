//! Variable interpolation in values, as Compose does it: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+other}`, `${VAR+other}`, and `$$`
//! for a literal `$`. Defaults and messages may themselves hold variables.

/// Defaults inside defaults deeper than this are refused.
const MAX_NESTING: usize = 16;

/// Why a value cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    pub message: String,
    pub hint: Option<String>,
}

/// Replaces every variable of `text` with its value from `lookup`; an unset variable without a
/// default is the empty string, as in Compose.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    expand(text, lookup, 0)
}

fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    if depth > MAX_NESTING {
        return Err(InterpolationError {
            message: format!("variables nested more than {MAX_NESTING} levels deep"),
            hint: None,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = closing_brace(body) else {
                return Err(invalid(text, "`${` is not closed by `}`"));
            };
            out.push_str(&braced(&body[..end], text, lookup, depth)?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(invalid(text, "`$` is not followed by a variable name"));
            }
            out.push_str(&lookup(&after[..len]).unwrap_or_default());
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of `${body}`.
fn braced(
    body: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    let len = name_len(body);
    if len == 0 {
        return Err(invalid(
            whole,
            "`${...}` does not start with a variable name",
        ));
    }
    let (name, op) = body.split_at(len);
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (operator, arg) = if op.is_empty() {
        return Ok(value.unwrap_or_default());
    } else if let Some(arg) = op
        .strip_prefix(":-")
        .or_else(|| op.strip_prefix(":?"))
        .or_else(|| op.strip_prefix(":+"))
    {
        (&op[..2], arg)
    } else if let Some(arg) = op
        .strip_prefix('-')
        .or_else(|| op.strip_prefix('?'))
        .or_else(|| op.strip_prefix('+'))
    {
        (&op[..1], arg)
    } else {
        return Err(invalid(
            whole,
            &format!("`{op}` after `{name}` is not one of :-, -, :?, ?, :+, +"),
        ));
    };
    let present = if operator.starts_with(':') {
        set_nonempty
    } else {
        value.is_some()
    };
    match operator.trim_start_matches(':') {
        "-" if present => Ok(value.unwrap_or_default()),
        "-" => expand(arg, lookup, depth + 1),
        "+" if present => expand(arg, lookup, depth + 1),
        "+" => Ok(String::new()),
        _ if present => Ok(value.unwrap_or_default()),
        _ => {
            let message = expand(arg, lookup, depth + 1)?;
            let why = if operator.starts_with(':') {
                "is not set or empty"
            } else {
                "is not set"
            };
            Err(InterpolationError {
                message: if message.is_empty() {
                    format!("required variable {name} {why}")
                } else {
                    format!("required variable {name} {why}: {message}")
                },
                hint: Some(format!(
                    "set {name} in the environment or in the project's .env file"
                )),
            })
        }
    }
}

/// The length of the variable name at the start of `s`.
fn name_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return 0,
    }
    chars
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

/// The index of the `}` closing a `${`, counting nested `${ ... }`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut open = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                open += 1;
                i += 1;
            }
            b'}' if open == 0 => return Some(i),
            b'}' => open -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn invalid(text: &str, why: &str) -> InterpolationError {
    InterpolationError {
        message: format!("invalid interpolation in {text:?}: {why}"),
        hint: Some("write `$$` for a literal `$`, and variables as `$NAME` or `${NAME}`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, InterpolationError> {
        let lookup = |name: &str| match name {
            "SET" => Some("value".to_owned()),
            "EMPTY" => Some(String::new()),
            "INNER" => Some("in".to_owned()),
            _ => None,
        };
        interpolate(text, &lookup)
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(run("a $SET b").unwrap(), "a value b");
        assert_eq!(run("${SET}x").unwrap(), "valuex");
        assert_eq!(run("$SET.x").unwrap(), "value.x");
        assert_eq!(run("$UNSET|${UNSET}").unwrap(), "|");
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(run("$$SET $${SET}").unwrap(), "$SET ${SET}");
    }

    #[test]
    fn defaults_with_and_without_colon() {
        assert_eq!(run("${UNSET:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY-d}").unwrap(), "");
        assert_eq!(run("${UNSET-d}").unwrap(), "d");
        assert_eq!(run("${SET:-d}").unwrap(), "value");
        assert_eq!(run("${UNSET:-${INNER}-x}").unwrap(), "in-x");
        assert_eq!(run("${UNSET:-}").unwrap(), "");
    }

    #[test]
    fn alternatives() {
        assert_eq!(run("${SET:+alt}").unwrap(), "alt");
        assert_eq!(run("${EMPTY:+alt}").unwrap(), "");
        assert_eq!(run("${EMPTY+alt}").unwrap(), "alt");
        assert_eq!(run("${UNSET+alt}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        let e = run("${UNSET:?give a token}").unwrap_err();
        assert_eq!(
            e.message,
            "required variable UNSET is not set or empty: give a token"
        );
        assert!(run("${EMPTY:?x}").is_err());
        assert_eq!(run("${EMPTY?x}").unwrap(), "");
        assert_eq!(
            run("${UNSET?}").unwrap_err().message,
            "required variable UNSET is not set"
        );
    }

    #[test]
    fn malformed_templates_are_errors() {
        for bad in [
            "${", "${SET", "${}", "${1A}", "$", "a $ b", "${SET!x}", "$-",
        ] {
            assert!(run(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let text = "${A:-".repeat(5000) + &"}".repeat(5000);
        assert!(run(&text).is_err());
    }
}
