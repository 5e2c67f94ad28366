//! The Containerfile (Dockerfile) subset builds take, parsed without I/O: FROM, ARG, ENV,
//! WORKDIR, USER, COPY, ADD, RUN, LABEL, EXPOSE, CMD, ENTRYPOINT; comments, line
//! continuations, exec (JSON) and shell forms, and `$VAR` / `${VAR}` / `${VAR:-default}`
//! substitution from ARG and ENV where Docker does it.

use std::collections::BTreeMap;

/// How a command is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    /// `["prog", "arg"]`: run as is.
    Exec(Vec<String>),
    /// `prog arg && more`: run by `/bin/sh -c`.
    Shell(String),
}

impl CommandForm {
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
    },
    Arg {
        name: String,
        default: Option<String>,
    },
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
    },
    Add {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
    },
    Run(CommandForm),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
}

/// One instruction and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (continuations joined), for messages and the cache key.
    pub text: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}\n  hint: {hint}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
    pub hint: String,
}

fn error(line: usize, message: impl Into<String>, hint: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
        hint: hint.into(),
    }
}

/// Joins continued lines and drops comments and blank lines: (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (continued, body) = match trimmed.strip_suffix('\\') {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        match &mut current {
            Some((_, acc)) => {
                acc.push(' ');
                acc.push_str(body.trim());
            }
            None => current = Some((i + 1, body.trim().to_owned())),
        }
        if !continued {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

/// Substitutes `$NAME`, `${NAME}` and `${NAME:-default}`; `\$` stays a literal `$`.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            if let Some(end) = chars[i + 2..].iter().position(|c| *c == '}') {
                let inner: String = chars[i + 2..i + 2 + end].iter().collect();
                let value = match inner.split_once(":-") {
                    Some((name, default)) => vars
                        .get(name)
                        .filter(|v| !v.is_empty())
                        .cloned()
                        .unwrap_or_else(|| default.to_owned()),
                    None => vars.get(&inner).cloned().unwrap_or_default(),
                };
                out.push_str(&value);
                i += end + 3;
                continue;
            }
        }
        let name: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        if name.is_empty() {
            out.push('$');
            i += 1;
        } else {
            out.push_str(vars.get(&name).map_or("", String::as_str));
            i += 1 + name.chars().count();
        }
    }
    out
}

/// `["a", "b"]` when the argument is a JSON array of strings.
fn json_array(args: &str) -> Option<Vec<String>> {
    if !args.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(args).ok()
}

fn command_form(line: usize, keyword: &str, args: &str) -> Result<CommandForm, ParseError> {
    if args.trim_start().starts_with('[') {
        return json_array(args).map(CommandForm::Exec).ok_or_else(|| {
            error(
                line,
                format!("{keyword} starts like an exec form but is not a JSON array of strings"),
                format!("write {keyword} [\"prog\", \"arg\"] with double quotes, or {keyword} prog arg for the shell form"),
            )
        });
    }
    if args.trim().is_empty() {
        return Err(error(
            line,
            format!("{keyword} has no command"),
            format!("write {keyword} prog arg"),
        ));
    }
    Ok(CommandForm::Shell(args.trim().to_owned()))
}

/// Splits on whitespace, keeping double-quoted parts together (quotes removed).
fn words(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in args.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            c => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(current);
    }
    out
}

/// `KEY=value KEY2="two words"`, or the old `KEY value` form.
fn pairs(line: usize, keyword: &str, args: &str) -> Result<Vec<(String, String)>, ParseError> {
    let list = words(args);
    if list.is_empty() {
        return Err(error(
            line,
            format!("{keyword} sets nothing"),
            format!("write {keyword} KEY=value"),
        ));
    }
    if !list[0].contains('=') {
        let (key, value) = args.trim().split_once(char::is_whitespace).ok_or_else(|| {
            error(
                line,
                format!("{keyword} {} has no value", list[0]),
                format!("write {keyword} KEY=value"),
            )
        })?;
        return Ok(vec![(key.to_owned(), value.trim().to_owned())]);
    }
    list.into_iter()
        .map(|w| {
            let (k, v) = w.split_once('=').ok_or_else(|| {
                error(
                    line,
                    format!("{keyword}: {w:?} is not KEY=value"),
                    format!("write {keyword} KEY=value KEY2=value2"),
                )
            })?;
            if k.is_empty() {
                return Err(error(
                    line,
                    format!("{keyword}: a key is empty"),
                    format!("write {keyword} KEY=value"),
                ));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn copy_args(
    line: usize,
    keyword: &str,
    args: &str,
) -> Result<(Vec<String>, String, Option<String>), ParseError> {
    let mut list = json_array(args).unwrap_or_else(|| words(args));
    let mut chown = None;
    while list.first().is_some_and(|w| w.starts_with("--")) {
        let flag = list.remove(0);
        if let Some(owner) = flag.strip_prefix("--chown=") {
            chown = Some(owner.to_owned());
        } else if flag.starts_with("--from") {
            return Err(error(
                line,
                format!("{keyword} --from (multi-stage builds) is not supported"),
                "build the other stage as an image of its own, then COPY its files from a directory",
            ));
        } else {
            return Err(error(
                line,
                format!("{keyword} does not take {flag}"),
                "only --chown=UID[:GID] is supported",
            ));
        }
    }
    if list.len() < 2 {
        return Err(error(
            line,
            format!("{keyword} needs at least a source and a destination"),
            format!("write {keyword} SRC... DEST"),
        ));
    }
    let dest = list.pop().unwrap_or_default();
    Ok((list, dest, chown))
}

/// Parses a Containerfile; `build_args` (`--build-arg`) override ARG defaults. Every problem
/// names its line and how to fix it.
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_from = false;
    for (line, logical) in logical_lines(text) {
        let (keyword, args) = match logical.split_once(char::is_whitespace) {
            Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_owned()),
            None => (logical.to_ascii_uppercase(), String::new()),
        };
        if !seen_from && keyword != "FROM" && keyword != "ARG" {
            return Err(error(
                line,
                format!("{keyword} before FROM"),
                "start with FROM scratch or FROM NAME:TAG",
            ));
        }
        let sub = |s: &str| substitute(s, &vars);
        let instruction = match keyword.as_str() {
            "FROM" => {
                if seen_from {
                    return Err(error(
                        line,
                        "a second FROM (multi-stage builds) is not supported",
                        "build each stage as an image of its own",
                    ));
                }
                seen_from = true;
                let parts = words(&sub(&args));
                match parts.as_slice() {
                    [image] => Instruction::From { image: image.clone() },
                    [_, as_kw, _] if as_kw.eq_ignore_ascii_case("as") => {
                        return Err(error(line, "FROM ... AS (multi-stage builds) is not supported", "remove `AS NAME`"))
                    }
                    _ => return Err(error(line, "FROM takes one image", "write FROM scratch or FROM NAME:TAG")),
                }
            }
            "ARG" => {
                let (name, default) = match args.split_once('=') {
                    Some((n, d)) => (n.trim().to_owned(), Some(sub(d.trim().trim_matches('"')))),
                    None => (args.trim().to_owned(), None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(error(line, format!("ARG name {name:?} is not a name"), "write ARG NAME or ARG NAME=default"));
                }
                let value = build_args.get(&name).cloned().or(default.clone()).unwrap_or_default();
                vars.insert(name.clone(), value);
                Instruction::Arg { name, default }
            }
            "ENV" => {
                let list = pairs(line, "ENV", &args)?;
                let list: Vec<(String, String)> = list.into_iter().map(|(k, v)| (k, sub(&v))).collect();
                for (k, v) in &list {
                    vars.insert(k.clone(), v.clone());
                }
                Instruction::Env(list)
            }
            "LABEL" => Instruction::Label(
                pairs(line, "LABEL", &args)?
                    .into_iter()
                    .map(|(k, v)| (sub(&k), sub(&v)))
                    .collect(),
            ),
            "WORKDIR" if !args.is_empty() => Instruction::Workdir(sub(&args)),
            "USER" if !args.is_empty() => Instruction::User(sub(&args)),
            "WORKDIR" | "USER" => {
                return Err(error(line, format!("{keyword} needs a value"), format!("write {keyword} VALUE")))
            }
            "EXPOSE" => {
                let ports: Vec<String> = words(&sub(&args))
                    .into_iter()
                    .map(|p| if p.contains('/') { p } else { format!("{p}/tcp") })
                    .collect();
                for p in &ports {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    if port.parse::<u16>().map_or(true, |n| n == 0) || !matches!(proto, "tcp" | "udp") {
                        return Err(error(line, format!("EXPOSE {p} is not PORT[/tcp|/udp]"), "write EXPOSE 8080 or EXPOSE 53/udp"));
                    }
                }
                if ports.is_empty() {
                    return Err(error(line, "EXPOSE names no port", "write EXPOSE 8080"));
                }
                Instruction::Expose(ports)
            }
            "COPY" | "ADD" => {
                let (sources, dest, chown) = copy_args(line, &keyword, &sub(&args))?;
                if keyword == "COPY" {
                    Instruction::Copy { sources, dest, chown }
                } else {
                    Instruction::Add { sources, dest, chown }
                }
            }
            "RUN" => Instruction::Run(command_form(line, "RUN", &args)?),
            "CMD" => Instruction::Cmd(command_form(line, "CMD", &args)?),
            "ENTRYPOINT" => Instruction::Entrypoint(command_form(line, "ENTRYPOINT", &args)?),
            "HEALTHCHECK" | "VOLUME" | "SHELL" | "ONBUILD" | "STOPSIGNAL" | "MAINTAINER" => {
                return Err(error(
                    line,
                    format!("{keyword} is not supported by paracloud build"),
                    "set health checks, volumes and the stop signal in the service's manifest instead",
                ))
            }
            other => {
                return Err(error(
                    line,
                    format!("unknown instruction {other:?}"),
                    "use FROM, ARG, ENV, WORKDIR, USER, COPY, ADD, RUN, LABEL, EXPOSE, CMD or ENTRYPOINT",
                ))
            }
        };
        steps.push(Step {
            line,
            text: logical,
            instruction,
        });
    }
    if !seen_from {
        return Err(error(
            1,
            "no FROM",
            "start with FROM scratch or FROM NAME:TAG",
        ));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let steps = parse(&format!("FROM scratch\n{text}\n"), &BTreeMap::new()).unwrap();
        steps[1].instruction.clone()
    }

    fn fails(text: &str) -> String {
        parse(text, &BTreeMap::new()).unwrap_err().to_string()
    }

    #[test]
    fn instructions_parse_in_both_forms() {
        assert_eq!(
            one("RUN [\"/bin/echo\", \"hi\"]"),
            Instruction::Run(CommandForm::Exec(vec!["/bin/echo".into(), "hi".into()]))
        );
        assert_eq!(
            one("run echo hi && \\\n  echo there"),
            Instruction::Run(CommandForm::Shell("echo hi && echo there".into()))
        );
        assert_eq!(
            one("ENV A=1 B=\"two words\""),
            Instruction::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(
            one("ENV A one two"),
            Instruction::Env(vec![("A".into(), "one two".into())])
        );
        assert_eq!(
            one("EXPOSE 80 53/udp"),
            Instruction::Expose(vec!["80/tcp".into(), "53/udp".into()])
        );
        assert_eq!(
            one("COPY --chown=1:2 a b /dst/"),
            Instruction::Copy {
                sources: vec!["a".into(), "b".into()],
                dest: "/dst/".into(),
                chown: Some("1:2".into())
            }
        );
    }

    #[test]
    fn arguments_and_environment_substitute() {
        let mut args = BTreeMap::new();
        args.insert("V".to_owned(), "2".to_owned());
        let steps = parse(
            "ARG V=1\nARG W\nFROM base:$V\nENV HOME=/home/u\nWORKDIR ${HOME}/app\nCOPY x ${W:-default}/\n",
            &args,
        )
        .unwrap();
        assert_eq!(
            steps[2].instruction,
            Instruction::From {
                image: "base:2".into()
            }
        );
        assert_eq!(
            steps[4].instruction,
            Instruction::Workdir("/home/u/app".into())
        );
        assert_eq!(
            steps[5].instruction,
            Instruction::Copy {
                sources: vec!["x".into()],
                dest: "default/".into(),
                chown: None
            }
        );
        assert_eq!(
            substitute(
                "\\$HOME $HOME",
                &BTreeMap::from([("HOME".into(), "/h".into())])
            ),
            "$HOME /h"
        );
    }

    #[test]
    fn problems_name_their_line_and_a_fix() {
        assert_eq!(
            fails("RUN x\n"),
            "line 1: RUN before FROM\n  hint: start with FROM scratch or FROM NAME:TAG"
        );
        assert_eq!(
            fails("FROM a\n\n# c\nHEALTHCHECK CMD x\n"),
            "line 4: HEALTHCHECK is not supported by paracloud build\n  hint: set health checks, volumes and the stop signal in the service's manifest instead"
        );
        assert!(fails("FROM a\nCOPY --from=b x y\n").starts_with("line 2: COPY --from"));
        assert!(fails("FROM a\nFROM b\n").starts_with("line 2: a second FROM"));
        assert!(
            fails("FROM a\nRUN [\"x\", 1]\n").starts_with("line 2: RUN starts like an exec form")
        );
        assert!(fails("FROM a\nEXPOSE http\n").starts_with("line 2: EXPOSE http/tcp"));
        assert!(fails("FROM a\nCOPY x\n").starts_with("line 2: COPY needs"));
        assert!(fails("FROM a\nFETCH x\n").starts_with("line 2: unknown instruction"));
        assert_eq!(
            fails("# only\n"),
            "line 1: no FROM\n  hint: start with FROM scratch or FROM NAME:TAG"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text, &BTreeMap::new());
        }

        #[test]
        fn substitution_never_panics(text in "[a-z$\\{\\}:\\-\\\\]{0,40}") {
            let _ = substitute(&text, &BTreeMap::from([("a".into(), "x".into())]));
        }
    }
}
