//! The Containerfile (Dockerfile) language builds take, parsed without I/O, as BuildKit's
//! Dockerfile frontend reads it: stages (`FROM IMAGE [AS NAME]`, `FROM --platform=`), ARG
//! before and after FROM with the predefined platform arguments, ENV, WORKDIR, USER, COPY and
//! ADD (`--from`, `--chown`, `--chmod`, `--link`, heredocs), RUN (`--mount` of caches, binds,
//! secrets and tmpfs; `--network`; heredocs), LABEL, EXPOSE, CMD, ENTRYPOINT, SHELL,
//! HEALTHCHECK, STOPSIGNAL, VOLUME and MAINTAINER; comments, line continuations, exec (JSON)
//! and shell forms, and `$VAR` / `${VAR}` / `${VAR:-default}` substitution from ARG and ENV
//! where Docker does it. Every flag is parsed or refused, never passed to a shell. The stage
//! graph (`Containerfile::waves`) says which stages a target needs and which can build at once.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::config::Healthcheck;

/// How a command is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    /// `["prog", "arg"]`: run as is.
    Exec(Vec<String>),
    /// `prog arg && more`: run by the image's SHELL (`/bin/sh -c` by default).
    Shell(String),
}

impl CommandForm {
    pub fn argv(&self) -> Vec<String> {
        self.argv_with(&[])
    }

    /// The argv with `shell` (SHELL's value; empty: `/bin/sh -c`) for the shell form.
    pub fn argv_with(&self, shell: &[String]) -> Vec<String> {
        match self {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => {
                let mut argv: Vec<String> = if shell.is_empty() {
                    vec!["/bin/sh".into(), "-c".into()]
                } else {
                    shell.to_vec()
                };
                argv.push(s.clone());
                argv
            }
        }
    }
}

/// An OS and architecture, as `--platform` writes them (`linux/amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl Platform {
    /// The platform this program was built for: builds run here, never emulated.
    pub fn this_machine() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".into(),
            arch: arch.into(),
            variant: String::new(),
        }
    }

    pub fn name(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.arch)
        } else {
            format!("{}/{}/{}", self.os, self.arch, self.variant)
        }
    }

    /// Whether `text` (`linux`, `linux/amd64`, `linux/amd64/v1`) names this platform.
    pub fn matches(&self, text: &str) -> bool {
        let mut parts = text.split('/');
        let os = parts.next().unwrap_or_default();
        let arch = parts.next();
        let variant = parts.next();
        os == self.os
            && arch.is_none_or(|a| a == self.arch)
            && variant.is_none_or(|v| v == self.variant || (v == "v1" && self.variant.is_empty()))
            && parts.next().is_none()
    }

    /// BuildKit's predefined platform arguments: the build and the target platform are one.
    pub fn args(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for side in ["BUILD", "TARGET"] {
            out.insert(format!("{side}PLATFORM"), self.name());
            out.insert(format!("{side}OS"), self.os.clone());
            out.insert(format!("{side}ARCH"), self.arch.clone());
            out.insert(format!("{side}VARIANT"), self.variant.clone());
        }
        out
    }
}

/// What `FROM`, `COPY --from` or a mount's `from=` names: an earlier stage (by index) or an
/// image of the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageRef {
    Stage(usize),
    Image(String),
}

/// A file written inline (`COPY <<EOF /path`): its name (the delimiter) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    pub name: String,
    pub content: String,
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// Paths of the build context, or of `from` when given.
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub inline: Vec<InlineFile>,
    pub dest: String,
    pub from: Option<StageRef>,
    /// `UID[:GID]` or `USER[:GROUP]` (names from the image's /etc/passwd and /etc/group).
    pub chown: Option<String>,
    /// Octal permission bits for every file and directory copied.
    pub chmod: Option<u32>,
    /// `--link`: accepted; every layer of ours stands on its own already.
    pub link: bool,
}

/// How a cache mount is shared between concurrent RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// A directory kept across builds, keyed by `id` (default: the target); never in a layer.
    Cache {
        id: String,
        target: String,
        sharing: Sharing,
        /// Seeds a new cache with `source` of a stage or an image.
        from: Option<StageRef>,
        source: String,
        mode: u32,
        uid: u32,
        gid: u32,
        read_only: bool,
    },
    /// `source` of the context (or of `from`) at `target`; writes are discarded.
    Bind {
        target: String,
        from: Option<StageRef>,
        source: String,
        read_write: bool,
    },
    /// A secret given to the build (`--secret id=ID,src=FILE`), read-only at `target`.
    Secret {
        id: String,
        target: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// An empty tmpfs.
    Tmpfs { target: String, size: Option<u64> },
}

impl RunMount {
    pub fn target(&self) -> &str {
        match self {
            RunMount::Cache { target, .. }
            | RunMount::Bind { target, .. }
            | RunMount::Secret { target, .. }
            | RunMount::Tmpfs { target, .. } => target,
        }
    }

    fn from(&self) -> Option<&StageRef> {
        match self {
            RunMount::Cache { from, .. } | RunMount::Bind { from, .. } => from.as_ref(),
            _ => None,
        }
    }
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub command: CommandForm,
    pub mounts: Vec<RunMount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `ARG NAME[=default]`, with the value it has in this build (`None`: unset).
    Arg {
        name: String,
        value: Option<String>,
    },
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Copy(CopyArgs),
    Add(CopyArgs),
    Run(RunArgs),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    /// `None`: `HEALTHCHECK NONE`, which turns off the base image's.
    Healthcheck(Option<Healthcheck>),
    StopSignal(String),
    Volume(Vec<String>),
}

/// One instruction and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (continuations joined), for messages and the cache key.
    pub text: String,
    pub instruction: Instruction,
}

/// One `FROM` and the steps after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    /// `AS NAME`, lower case.
    pub name: Option<String>,
    /// The FROM line.
    pub line: usize,
    pub text: String,
    /// An image of the store (`scratch` included) or an earlier stage.
    pub base: StageRef,
    pub steps: Vec<Step>,
}

impl Stage {
    /// The earlier stages this one reads: its base, `COPY --from` and mounts' `from`.
    pub fn dependencies(&self) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut add = |r: Option<&StageRef>| {
            if let Some(StageRef::Stage(i)) = r {
                out.insert(*i);
            }
        };
        add(Some(&self.base));
        for step in &self.steps {
            match &step.instruction {
                Instruction::Copy(c) | Instruction::Add(c) => add(c.from.as_ref()),
                Instruction::Run(r) => r.mounts.iter().for_each(|m| add(m.from())),
                _ => {}
            }
        }
        out
    }

    /// How messages name it: `NAME` or its index.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.index.to_string())
    }
}

/// A parsed Containerfile: its stages in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containerfile {
    pub stages: Vec<Stage>,
}

impl Containerfile {
    /// The stage `--target` names (default: the last).
    pub fn target(&self, name: Option<&str>) -> Result<usize, String> {
        let Some(name) = name else {
            return Ok(self.stages.len().saturating_sub(1));
        };
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(&name.to_ascii_lowercase()))
            .map(|s| s.index)
            .ok_or_else(|| {
                let names: Vec<&str> = self.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                if names.is_empty() {
                    format!("--target {name}: the Containerfile names no stage; name one with FROM IMAGE AS {name}")
                } else {
                    format!("--target {name}: no stage is named so; the stages are {}", names.join(", "))
                }
            })
    }

    /// The stages `target` needs, in waves: each wave's stages depend only on earlier waves,
    /// so a wave's stages build at once. Stages the target does not need are in none.
    pub fn waves(&self, target: usize) -> Vec<Vec<usize>> {
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if i < self.stages.len() && needed.insert(i) {
                todo.extend(self.stages[i].dependencies());
            }
        }
        let mut depth: BTreeMap<usize, usize> = BTreeMap::new();
        // Dependencies are always earlier stages, so one pass in order settles every depth.
        for &i in &needed {
            let d = self.stages[i]
                .dependencies()
                .iter()
                .map(|dep| depth.get(dep).map_or(0, |d| d + 1))
                .max()
                .unwrap_or(0);
            depth.insert(i, d);
        }
        let mut waves: Vec<Vec<usize>> = Vec::new();
        for (i, d) in depth {
            if waves.len() <= d {
                waves.resize(d + 1, Vec::new());
            }
            waves[d].push(i);
        }
        waves
    }
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

/// A heredoc as written: `<<[-]["']NAME["']`, its body lines and the line that ends it.
#[derive(Debug, Clone)]
struct RawHeredoc {
    name: String,
    /// The delimiter was quoted: no substitution in the body.
    quoted: bool,
    /// `<<-`: leading tabs are removed from the body.
    strip_tabs: bool,
    body: Vec<String>,
    terminator: String,
}

impl RawHeredoc {
    /// The body as a file's content (every line ends with a newline).
    fn content(&self) -> String {
        self.body
            .iter()
            .map(|l| {
                let l = if self.strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                format!("{l}\n")
            })
            .collect()
    }
}

/// One instruction: its first line, its text (continuations joined) and its heredocs.
struct Logical {
    line: usize,
    text: String,
    heredocs: Vec<RawHeredoc>,
}

/// The heredoc markers of an instruction's text, in order: (marker as written, name, quoted,
/// strip tabs).
fn heredoc_markers(text: &str) -> Vec<(String, String, bool, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < chars.len() + 1 {
        if chars.get(i) == Some(&'<')
            && chars.get(i + 1) == Some(&'<')
            && chars.get(i + 2) != Some(&'<')
        {
            let start = i;
            let mut j = i + 2;
            let strip = chars.get(j) == Some(&'-');
            if strip {
                j += 1;
            }
            let quote = chars.get(j).copied().filter(|c| *c == '"' || *c == '\'');
            if quote.is_some() {
                j += 1;
            }
            let name: String = chars[j.min(chars.len())..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == '-' || **c == '.')
                .collect();
            j += name.chars().count();
            let closed = match quote {
                Some(q) => chars.get(j) == Some(&q),
                None => true,
            };
            // A delimiter starts with a letter or `_`: `$((1<<2))` is a shift, not a heredoc.
            let word = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
            if word && closed {
                if quote.is_some() {
                    j += 1;
                }
                out.push((
                    chars[start..j].iter().collect(),
                    name,
                    quote.is_some(),
                    strip,
                ));
                i = j;
                continue;
            }
            i += 2;
            continue;
        }
        i += 1;
    }
    out
}

/// Joins continued lines, drops comments and blank lines, and takes the heredoc bodies of RUN,
/// COPY and ADD.
fn logical_lines(text: &str) -> Result<Vec<Logical>, ParseError> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
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
        if continued {
            continue;
        }
        let Some((line, text)) = current.take() else {
            continue;
        };
        let keyword = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for (_, name, quoted, strip_tabs) in heredoc_markers(&text) {
                let mut body = Vec::new();
                let terminator = loop {
                    let Some((_, raw)) = lines.next() else {
                        return Err(error(
                            line,
                            format!("the heredoc <<{name} has no line {name} that ends it"),
                            format!("end the heredoc with a line holding only {name}"),
                        ));
                    };
                    let candidate = if strip_tabs {
                        raw.trim_start_matches('\t')
                    } else {
                        raw
                    };
                    if candidate.trim_end() == name {
                        break raw.to_owned();
                    }
                    body.push(raw.to_owned());
                };
                heredocs.push(RawHeredoc {
                    name,
                    quoted,
                    strip_tabs,
                    body,
                    terminator,
                });
            }
        }
        out.push(Logical {
            line,
            text,
            heredocs,
        });
    }
    if let Some((line, text)) = current {
        out.push(Logical {
            line,
            text,
            heredocs: Vec::new(),
        });
    }
    Ok(out)
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

/// The `--flag[=value]` words that start `args`, and the rest as written.
fn leading_flags(args: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while rest.starts_with("--") {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        flags.push(rest[..end].to_owned());
        rest = rest[end..].trim_start();
    }
    (flags, rest)
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

/// Octal permission bits (`755`, `0644`).
fn octal(line: usize, what: &str, value: &str) -> Result<u32, ParseError> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            error(
                line,
                format!("{what}={value} is not an octal mode"),
                format!("write {what}=755 or {what}=0644"),
            )
        })
}

/// A Go duration as HEALTHCHECK takes it (`30s`, `1m30s`, `500ms`), in nanoseconds.
pub fn duration_ns(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add((number * scale) as u64)?;
    }
    Some(total)
}

/// What `--from=` or `from=` names: an earlier stage by name or index, else an image.
fn stage_ref(
    line: usize,
    what: &str,
    name: &str,
    stages: &[Stage],
) -> Result<StageRef, ParseError> {
    if name.is_empty() {
        return Err(error(
            line,
            format!("{what} names nothing"),
            format!("write {what}STAGE or {what}IMAGE:TAG"),
        ));
    }
    if let Ok(i) = name.parse::<usize>() {
        return if i < stages.len() {
            Ok(StageRef::Stage(i))
        } else {
            Err(error(
                line,
                format!("{what}{name}: there is no stage {name} before this line"),
                "a stage can read only the stages before it: name one by its index (0 is the first) or its AS name",
            ))
        };
    }
    let lower = name.to_ascii_lowercase();
    Ok(stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
        .map_or_else(
            || StageRef::Image(name.to_owned()),
            |s| StageRef::Stage(s.index),
        ))
}

fn copy_args(
    line: usize,
    keyword: &str,
    args: &str,
    heredocs: &[RawHeredoc],
    vars: &BTreeMap<String, String>,
    stages: &[Stage],
) -> Result<CopyArgs, ParseError> {
    let (flags, rest) = leading_flags(args);
    let mut out = CopyArgs::default();
    for flag in flags {
        let flag = substitute(&flag, vars);
        let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
        match (name, keyword) {
            ("--from", "COPY") => out.from = Some(stage_ref(line, "--from=", value, stages)?),
            ("--chown", _) if !value.is_empty() => out.chown = Some(value.to_owned()),
            ("--chmod", _) => out.chmod = Some(octal(line, "--chmod", value)?),
            ("--link", _) if matches!(value, "" | "true") => out.link = true,
            ("--link", _) if value == "false" => {}
            _ => {
                return Err(error(
                    line,
                    format!("{keyword} does not take {flag}"),
                    format!(
                        "{keyword} takes {}--chown=USER[:GROUP], --chmod=MODE and --link",
                        if keyword == "COPY" {
                            "--from=STAGE|IMAGE, "
                        } else {
                            ""
                        }
                    ),
                ))
            }
        }
    }
    let rest = substitute(rest, vars);
    let mut list = json_array(&rest).unwrap_or_else(|| words(&rest));
    if list.len() < 2 {
        return Err(error(
            line,
            format!("{keyword} needs at least a source and a destination"),
            format!("write {keyword} SRC... DEST"),
        ));
    }
    out.dest = list.pop().unwrap_or_default();
    let mut docs = heredocs.iter();
    for word in list {
        if word.starts_with("<<") {
            let doc = docs.next().ok_or_else(|| {
                error(line, format!("{keyword} {word}: no heredoc follows"), "write the file's lines after the instruction, then a line with the delimiter alone")
            })?;
            let content = if doc.quoted {
                doc.content()
            } else {
                substitute(&doc.content(), vars)
            };
            out.inline.push(InlineFile {
                name: doc.name.clone(),
                content,
            });
        } else {
            out.sources.push(word);
        }
    }
    if out.from.is_some() && !out.inline.is_empty() {
        return Err(error(
            line,
            "COPY --from with a heredoc",
            "a heredoc is written here: drop --from, or copy files of the stage",
        ));
    }
    Ok(out)
}

/// One `--mount=...` of RUN: comma-separated `key=value` and bare flags, as BuildKit takes them.
fn run_mount(line: usize, spec: &str, stages: &[Stage]) -> Result<RunMount, ParseError> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, "true"));
        let k = match k.to_ascii_lowercase().as_str() {
            "dst" | "destination" => "target".to_owned(),
            "src" => "source".to_owned(),
            "readonly" => "ro".to_owned(),
            "readwrite" => "rw".to_owned(),
            other => other.to_owned(),
        };
        fields.insert(k, v.to_owned());
    }
    let kind = fields.remove("type").unwrap_or_else(|| "bind".into());
    let allowed: &[&str] = match kind.as_str() {
        "cache" => &["target", "id", "sharing", "from", "source", "mode", "uid", "gid", "ro", "rw"],
        "bind" => &["target", "from", "source", "ro", "rw"],
        "secret" => &["id", "target", "required", "mode", "uid", "gid", "env"],
        "tmpfs" => &["target", "size"],
        "ssh" => {
            return Err(error(
                line,
                "RUN --mount=type=ssh: builds have no SSH agent (and RUN steps no network)",
                "bring what the step fetches into the build context, or give a key as --mount=type=secret",
            ))
        }
        other => {
            return Err(error(
                line,
                format!("RUN --mount=type={other} is not a mount type"),
                "use type=cache, type=bind, type=secret or type=tmpfs",
            ))
        }
    };
    if let Some(k) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(
            line,
            format!("RUN --mount=type={kind} does not take {k}"),
            format!("type={kind} takes {}", allowed.join(", ")),
        ));
    }
    if fields.contains_key("env") {
        return Err(error(
            line,
            "RUN --mount=type=secret,env= is not supported",
            "mount the secret as a file (target=PATH, default /run/secrets/ID) and read it there",
        ));
    }
    let flag = |name: &str| -> Result<bool, ParseError> {
        match fields.get(name).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(v) => Err(error(
                line,
                format!("RUN --mount {name}={v} is not true or false"),
                format!("write {name} or {name}=false"),
            )),
        }
    };
    let id_number = |name: &str| -> Result<u32, ParseError> {
        fields.get(name).map_or(Ok(0), |v| {
            v.parse().map_err(|_| {
                error(
                    line,
                    format!("RUN --mount {name}={v} is not a number"),
                    format!("write {name}=1000"),
                )
            })
        })
    };
    let mode = |default: u32| -> Result<u32, ParseError> {
        fields
            .get("mode")
            .map_or(Ok(default), |v| octal(line, "mode", v))
    };
    let target = fields.get("target").cloned().unwrap_or_default();
    let from = fields
        .get("from")
        .map(|f| stage_ref(line, "from=", f, stages))
        .transpose()?;
    let needs_target = || {
        if target.is_empty() {
            Err(error(
                line,
                format!("RUN --mount=type={kind} has no target"),
                format!("write --mount=type={kind},target=/PATH"),
            ))
        } else {
            Ok(target.clone())
        }
    };
    Ok(match kind.as_str() {
        "cache" => {
            let target = needs_target()?;
            RunMount::Cache {
                id: fields.get("id").cloned().unwrap_or_else(|| target.clone()),
                sharing: match fields.get("sharing").map(String::as_str) {
                    None | Some("shared") => Sharing::Shared,
                    Some("private") => Sharing::Private,
                    Some("locked") => Sharing::Locked,
                    Some(other) => {
                        return Err(error(
                            line,
                            format!("RUN --mount sharing={other} is not a way to share"),
                            "write sharing=shared, private or locked",
                        ))
                    }
                },
                source: fields.get("source").cloned().unwrap_or_default(),
                from,
                mode: mode(0o755)?,
                uid: id_number("uid")?,
                gid: id_number("gid")?,
                read_only: flag("ro")?,
                target,
            }
        }
        "bind" => RunMount::Bind {
            target: needs_target()?,
            from,
            source: fields.get("source").cloned().unwrap_or_default(),
            read_write: flag("rw")?,
        },
        "secret" => {
            let id = match (fields.get("id"), target.is_empty()) {
                (Some(id), _) => id.clone(),
                (None, false) => target.rsplit('/').next().unwrap_or_default().to_owned(),
                (None, true) => return Err(error(
                    line,
                    "RUN --mount=type=secret names no secret",
                    "write --mount=type=secret,id=NAME and build with --secret id=NAME,src=FILE",
                )),
            };
            RunMount::Secret {
                target: if target.is_empty() {
                    format!("/run/secrets/{id}")
                } else {
                    target
                },
                required: flag("required")?,
                mode: mode(0o400)?,
                uid: id_number("uid")?,
                gid: id_number("gid")?,
                id,
            }
        }
        _ => RunMount::Tmpfs {
            target: needs_target()?,
            size: fields
                .get("size")
                .map(|s| {
                    s.parse().map_err(|_| {
                        error(
                            line,
                            format!("RUN --mount size={s} is not a number of bytes"),
                            "write size=67108864",
                        )
                    })
                })
                .transpose()?,
        },
    })
}

fn run_args(
    line: usize,
    args: &str,
    heredocs: &[RawHeredoc],
    vars: &BTreeMap<String, String>,
    stages: &[Stage],
) -> Result<RunArgs, ParseError> {
    let (flags, rest) = leading_flags(args);
    let mut mounts = Vec::new();
    for flag in flags {
        let flag = substitute(&flag, vars);
        let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
        match name {
            "--mount" => mounts.push(run_mount(line, value, stages)?),
            // RUN steps never have a network: `none` says so, `default` is that default.
            "--network" if matches!(value, "none" | "default") => {}
            "--network" => {
                return Err(error(
                    line,
                    format!("RUN --network={value}: RUN steps run without network"),
                    "write --network=none or --network=default (both: no network), and bring downloads into the build context",
                ))
            }
            _ => {
                return Err(error(
                    line,
                    format!("RUN does not take {flag}"),
                    "RUN takes --mount=type=cache|bind|secret|tmpfs,... and --network=none|default",
                ))
            }
        }
    }
    for m in &mounts {
        let target = m.target();
        if mounts.iter().filter(|o| o.target() == target).count() > 1 {
            return Err(error(
                line,
                format!("RUN mounts two things at {target}"),
                "give each mount a target of its own",
            ));
        }
    }
    let command = if heredocs.is_empty() {
        command_form(line, "RUN", rest)?
    } else {
        if rest.trim_start().starts_with('[') {
            return Err(error(
                line,
                "RUN with a heredoc in the exec form",
                "write the shell form: RUN <<EOF or RUN prog <<EOF",
            ));
        }
        let markers = heredoc_markers(rest);
        if heredocs.len() == 1 && markers.len() == 1 && rest.trim() == markers[0].0 {
            // The heredoc is the script.
            let script = heredocs[0].content();
            if script.starts_with("#!") {
                return Err(error(
                    line,
                    "RUN <<EOF with a #! line is not supported",
                    "name the interpreter on the RUN line instead, such as RUN python3 <<EOF",
                ));
            }
            CommandForm::Shell(script)
        } else {
            // The shell reads the heredocs itself, quoting and `<<-` included.
            let mut text = rest.trim().to_owned();
            for doc in heredocs {
                for l in &doc.body {
                    text.push('\n');
                    text.push_str(l);
                }
                text.push('\n');
                text.push_str(&doc.terminator);
            }
            CommandForm::Shell(text)
        }
    };
    Ok(RunArgs { command, mounts })
}

fn healthcheck(line: usize, args: &str) -> Result<Option<Healthcheck>, ParseError> {
    if args.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (flags, rest) = leading_flags(args);
    let mut check = Healthcheck::default();
    for flag in flags {
        let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
        let duration = || {
            duration_ns(value).ok_or_else(|| {
                error(
                    line,
                    format!("HEALTHCHECK {flag}: {value:?} is not a duration"),
                    format!("write {name}=30s, 1m30s or 500ms"),
                )
            })
        };
        match name {
            "--interval" => check.interval = duration()?,
            "--timeout" => check.timeout = duration()?,
            "--start-period" => check.start_period = duration()?,
            "--start-interval" => check.start_interval = duration()?,
            "--retries" => {
                check.retries = value.parse().map_err(|_| error(line, format!("HEALTHCHECK --retries={value} is not a number"), "write --retries=3"))?
            }
            _ => {
                return Err(error(line, format!("HEALTHCHECK does not take {flag}"), "HEALTHCHECK takes --interval, --timeout, --start-period, --start-interval and --retries"))
            }
        }
    }
    let (cmd, command) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if !cmd.eq_ignore_ascii_case("CMD") {
        return Err(error(
            line,
            "HEALTHCHECK without CMD",
            "write HEALTHCHECK [--interval=30s] CMD prog arg, or HEALTHCHECK NONE",
        ));
    }
    check.test = match command_form(line, "HEALTHCHECK CMD", command)? {
        CommandForm::Exec(v) => std::iter::once("CMD".to_owned()).chain(v).collect(),
        CommandForm::Shell(s) => vec!["CMD-SHELL".into(), s],
    };
    Ok(Some(check))
}

/// Parses a Containerfile; `build_args` (`--build-arg`) override ARG defaults. Every problem
/// names its line and how to fix it.
pub fn parse(
    text: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<Containerfile, ParseError> {
    let platform = Platform::this_machine();
    let predefined = platform.args();
    // What FROM lines see: the predefined arguments and the ARGs before the first FROM.
    let mut global = predefined.clone();
    let mut stages: Vec<Stage> = Vec::new();
    // Each stage's ENV, for the stages built FROM it.
    let mut stage_env: Vec<BTreeMap<String, String>> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for Logical {
        line,
        text: logical,
        heredocs,
    } in logical_lines(text)?
    {
        let (keyword, args) = match logical.split_once(char::is_whitespace) {
            Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_owned()),
            None => (logical.to_ascii_uppercase(), String::new()),
        };
        if stages.is_empty() && keyword != "FROM" && keyword != "ARG" {
            return Err(error(
                line,
                format!("{keyword} before FROM"),
                "start with FROM scratch or FROM NAME:TAG (only ARG may come before it)",
            ));
        }
        if keyword == "FROM" {
            let (flags, rest) = leading_flags(&args);
            for flag in flags {
                let flag = substitute(&flag, &global);
                match flag.split_once('=') {
                    Some(("--platform", p)) if platform.matches(p) => {}
                    Some(("--platform", p)) => {
                        return Err(error(
                            line,
                            format!("FROM --platform={p}: builds run on this machine's platform, {}, and do not emulate others", platform.name()),
                            format!("remove --platform, or write --platform=$BUILDPLATFORM ({})", platform.name()),
                        ))
                    }
                    _ => return Err(error(line, format!("FROM does not take {flag}"), "FROM takes --platform=PLATFORM")),
                }
            }
            let parts = words(&substitute(rest, &global));
            let (image, name) = match parts.as_slice() {
                [image] => (image.clone(), None),
                [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (image.clone(), Some(name.to_ascii_lowercase()))
                }
                [] => {
                    return Err(error(
                        line,
                        "FROM names no image (is the ARG it uses unset?)",
                        "write FROM scratch or FROM NAME:TAG, or give the ARG a default",
                    ))
                }
                _ => {
                    return Err(error(
                        line,
                        "FROM takes one image and an optional AS NAME",
                        "write FROM NAME:TAG or FROM NAME:TAG AS STAGE",
                    ))
                }
            };
            if let Some(n) = &name {
                let valid = n.starts_with(|c: char| c.is_ascii_lowercase())
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    return Err(error(
                        line,
                        format!("stage name {n:?} is not a name"),
                        "start it with a letter and use letters, digits, '-', '_' and '.'",
                    ));
                }
                if stages.iter().any(|s| s.name.as_ref() == Some(n)) {
                    return Err(error(
                        line,
                        format!("a stage named {n} comes before"),
                        "give each stage a name of its own",
                    ));
                }
            }
            let base = if image.parse::<usize>().is_ok() {
                StageRef::Image(image)
            } else {
                stage_ref(line, "FROM ", &image, &stages)?
            };
            vars = match &base {
                StageRef::Stage(i) => stage_env[*i].clone(),
                StageRef::Image(_) => BTreeMap::new(),
            };
            stage_env.push(vars.clone());
            stages.push(Stage {
                index: stages.len(),
                name,
                line,
                text: logical,
                base,
                steps: Vec::new(),
            });
            continue;
        }
        if keyword == "ARG" {
            let mut declared = Vec::new();
            for word in words(&args) {
                let (name, default) = match word.split_once('=') {
                    Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                    None => (word.clone(), None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(error(
                        line,
                        format!("ARG name {name:?} is not a name"),
                        "write ARG NAME or ARG NAME=default",
                    ));
                }
                declared.push((name, default));
            }
            if declared.is_empty() {
                return Err(error(
                    line,
                    "ARG declares nothing",
                    "write ARG NAME or ARG NAME=default",
                ));
            }
            if stages.is_empty() {
                for (name, default) in declared {
                    let value = build_args
                        .get(&name)
                        .cloned()
                        .or_else(|| default.map(|d| substitute(&d, &global)));
                    match value {
                        Some(v) => global.insert(name, v),
                        None => global.remove(&name),
                    };
                }
                continue;
            }
            for (name, default) in declared {
                let value = build_args
                    .get(&name)
                    .cloned()
                    .or_else(|| default.map(|d| substitute(&d, &vars)))
                    .or_else(|| global.get(&name).cloned());
                if let Some(v) = &value {
                    vars.insert(name.clone(), v.clone());
                }
                if let Some(stage) = stages.last_mut() {
                    stage.steps.push(Step {
                        line,
                        text: logical.clone(),
                        instruction: Instruction::Arg { name, value },
                    });
                }
            }
            continue;
        }
        let sub = |s: &str| substitute(s, &vars);
        if !heredocs.is_empty() && !matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            return Err(error(
                line,
                format!("{keyword} takes no heredoc"),
                "heredocs are for RUN, COPY and ADD",
            ));
        }
        let instruction = match keyword.as_str() {
            "ENV" => {
                let list = pairs(line, "ENV", &args)?;
                let list: Vec<(String, String)> = list.into_iter().map(|(k, v)| (k, sub(&v))).collect();
                for (k, v) in &list {
                    vars.insert(k.clone(), v.clone());
                    if let Some(env) = stage_env.last_mut() {
                        env.insert(k.clone(), v.clone());
                    }
                }
                Instruction::Env(list)
            }
            "LABEL" => Instruction::Label(
                pairs(line, "LABEL", &args)?
                    .into_iter()
                    .map(|(k, v)| (sub(&k), sub(&v)))
                    .collect(),
            ),
            // Deprecated by Docker, still accepted by it: the label its documentation suggests.
            "MAINTAINER" if !args.is_empty() => Instruction::Label(vec![("maintainer".into(), sub(&args))]),
            "WORKDIR" if !args.is_empty() => Instruction::Workdir(sub(&args)),
            "USER" if !args.is_empty() => Instruction::User(sub(&args)),
            "STOPSIGNAL" if !args.is_empty() => {
                let signal = sub(&args);
                let valid = signal.parse::<u8>().is_ok()
                    || (signal.starts_with("SIG") && signal.len() > 3 && signal[3..].chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'));
                if !valid {
                    return Err(error(line, format!("STOPSIGNAL {signal} is not a signal"), "write STOPSIGNAL SIGTERM, SIGINT, SIGQUIT or a number"));
                }
                Instruction::StopSignal(signal)
            }
            "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
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
            "VOLUME" => {
                let list = json_array(&args).unwrap_or_else(|| words(&args));
                let list: Vec<String> = list.iter().map(|v| sub(v)).collect();
                if list.is_empty() || list.iter().any(|v| v.is_empty()) {
                    return Err(error(line, "VOLUME names no path", "write VOLUME /data or VOLUME [\"/data\"]"));
                }
                Instruction::Volume(list)
            }
            "SHELL" => match json_array(&args) {
                Some(shell) if !shell.is_empty() => Instruction::Shell(shell),
                _ => return Err(error(line, "SHELL takes a JSON array", "write SHELL [\"/bin/bash\", \"-c\"]")),
            },
            "HEALTHCHECK" => Instruction::Healthcheck(healthcheck(line, &args)?),
            "COPY" | "ADD" => {
                let copy = copy_args(line, &keyword, &args, &heredocs, &vars, &stages)?;
                if keyword == "COPY" {
                    Instruction::Copy(copy)
                } else {
                    Instruction::Add(copy)
                }
            }
            "RUN" => Instruction::Run(run_args(line, &args, &heredocs, &vars, &stages)?),
            "CMD" => Instruction::Cmd(command_form(line, "CMD", &args)?),
            "ENTRYPOINT" => Instruction::Entrypoint(command_form(line, "ENTRYPOINT", &args)?),
            "ONBUILD" => {
                return Err(error(
                    line,
                    "ONBUILD is not supported by paracloud build",
                    "write the steps into the Containerfiles of the images built FROM this one",
                ))
            }
            other => {
                return Err(error(
                    line,
                    format!("unknown instruction {other:?}"),
                    "use FROM, ARG, ENV, WORKDIR, USER, COPY, ADD, RUN, LABEL, EXPOSE, CMD, ENTRYPOINT, SHELL, HEALTHCHECK, STOPSIGNAL or VOLUME",
                ))
            }
        };
        if let Some(stage) = stages.last_mut() {
            stage.steps.push(Step {
                line,
                text: logical,
                instruction,
            });
        }
    }
    if stages.is_empty() {
        return Err(error(
            1,
            "no FROM",
            "start with FROM scratch or FROM NAME:TAG",
        ));
    }
    Ok(Containerfile { stages })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Containerfile {
        parse(text, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn one(text: &str) -> Instruction {
        let cf = parse_ok(&format!("FROM scratch\n{text}\n"));
        cf.stages[0].steps[0].instruction.clone()
    }

    fn fails(text: &str) -> String {
        parse(text, &BTreeMap::new()).unwrap_err().to_string()
    }

    fn run(text: &str) -> RunArgs {
        match one(text) {
            Instruction::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn copy(text: &str) -> CopyArgs {
        match one(text) {
            Instruction::Copy(c) | Instruction::Add(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn instructions_parse_in_both_forms() {
        assert_eq!(
            run("RUN [\"/bin/echo\", \"hi\"]").command,
            CommandForm::Exec(vec!["/bin/echo".into(), "hi".into()])
        );
        assert_eq!(
            run("run echo hi && \\\n  echo there").command,
            CommandForm::Shell("echo hi && echo there".into())
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
            copy("COPY --chown=app:staff --chmod=640 --link a b /dst/"),
            CopyArgs {
                sources: vec!["a".into(), "b".into()],
                dest: "/dst/".into(),
                chown: Some("app:staff".into()),
                chmod: Some(0o640),
                link: true,
                ..CopyArgs::default()
            }
        );
        assert_eq!(
            one("SHELL [\"/bin/bash\", \"-c\"]"),
            Instruction::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        assert_eq!(
            CommandForm::Shell("x".into()).argv_with(&["/bin/bash".into(), "-c".into()]),
            ["/bin/bash", "-c", "x"]
        );
        assert_eq!(
            one("STOPSIGNAL SIGQUIT"),
            Instruction::StopSignal("SIGQUIT".into())
        );
        assert_eq!(
            one("VOLUME /data /logs"),
            Instruction::Volume(vec!["/data".into(), "/logs".into()])
        );
        assert_eq!(
            one("VOLUME [\"/data\"]"),
            Instruction::Volume(vec!["/data".into()])
        );
        assert_eq!(
            one("MAINTAINER Ann <ann@example.com>"),
            Instruction::Label(vec![("maintainer".into(), "Ann <ann@example.com>".into())])
        );
        assert_eq!(
            one("HEALTHCHECK --interval=1m30s --timeout=500ms --retries=2 CMD wget -q -O- http://localhost/"),
            Instruction::Healthcheck(Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "wget -q -O- http://localhost/".into()],
                interval: 90_000_000_000,
                timeout: 500_000_000,
                retries: 2,
                ..Healthcheck::default()
            }))
        );
        assert_eq!(
            one("HEALTHCHECK CMD [\"/bin/check\"]"),
            Instruction::Healthcheck(Some(Healthcheck {
                test: vec!["CMD".into(), "/bin/check".into()],
                ..Healthcheck::default()
            }))
        );
        assert_eq!(one("HEALTHCHECK NONE"), Instruction::Healthcheck(None));
    }

    #[test]
    fn stages_name_their_bases_and_sources() {
        let cf = parse_ok(
            "FROM busybox:1 AS Base\nRUN x\nFROM scratch AS tools\nFROM base\nCOPY --from=tools /a /a\nCOPY --from=0 /b /b\nCOPY --from=alpine:3 /c /c\n",
        );
        assert_eq!(cf.stages.len(), 3);
        assert_eq!(cf.stages[0].name.as_deref(), Some("base"));
        assert_eq!(cf.stages[0].base, StageRef::Image("busybox:1".into()));
        assert_eq!(cf.stages[2].base, StageRef::Stage(0));
        let froms: Vec<Option<StageRef>> = cf.stages[2]
            .steps
            .iter()
            .map(|s| match &s.instruction {
                Instruction::Copy(c) => c.from.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(
            froms,
            [
                Some(StageRef::Stage(1)),
                Some(StageRef::Stage(0)),
                Some(StageRef::Image("alpine:3".into()))
            ]
        );
        assert_eq!(cf.stages[2].dependencies(), BTreeSet::from([0, 1]));
        assert_eq!(cf.target(None), Ok(2));
        assert_eq!(cf.target(Some("TOOLS")), Ok(1));
        assert!(cf
            .target(Some("nope"))
            .unwrap_err()
            .contains("the stages are base, tools"));
    }

    #[test]
    fn a_target_builds_only_the_stages_it_needs_in_waves() {
        let cf = parse_ok(
            "FROM scratch AS a\nFROM scratch AS b\nFROM scratch AS unused\nFROM a AS c\nRUN --mount=type=bind,from=b,target=/b x\nFROM scratch AS d\nCOPY --from=c /x /x\n",
        );
        assert_eq!(cf.waves(4), vec![vec![0, 1], vec![3], vec![4]]);
        assert_eq!(cf.waves(1), vec![vec![1]]);
        assert_eq!(cf.waves(2), vec![vec![2]]);
    }

    #[test]
    fn arguments_before_from_and_the_platform_substitute_in_from_lines() {
        let args = BTreeMap::from([("V".to_owned(), "2".to_owned())]);
        let cf = parse(
            "ARG V=1\nARG W\nARG BASE=base\nFROM --platform=$BUILDPLATFORM $BASE:$V AS one\nARG V\nARG TARGETARCH\nARG W\nENV HOME=/home/u\nWORKDIR ${HOME}/app\nCOPY x ${W:-default}/\nFROM one\nWORKDIR $HOME/two\n",
            &args,
        )
        .unwrap();
        assert_eq!(cf.stages[0].base, StageRef::Image("base:2".into()));
        let steps: Vec<&Instruction> = cf.stages[0].steps.iter().map(|s| &s.instruction).collect();
        assert_eq!(
            steps[0],
            &Instruction::Arg {
                name: "V".into(),
                value: Some("2".into())
            }
        );
        assert_eq!(
            steps[1],
            &Instruction::Arg {
                name: "TARGETARCH".into(),
                value: Some(Platform::this_machine().arch)
            }
        );
        assert_eq!(
            steps[2],
            &Instruction::Arg {
                name: "W".into(),
                value: None
            }
        );
        assert_eq!(steps[4], &Instruction::Workdir("/home/u/app".into()));
        match steps[5] {
            Instruction::Copy(c) => assert_eq!(c.dest, "default/"),
            other => panic!("{other:?}"),
        }
        // A stage built FROM another has its ENV.
        assert_eq!(
            cf.stages[1].steps[0].instruction,
            Instruction::Workdir("/home/u/two".into())
        );
        assert_eq!(
            substitute(
                "\\$HOME $HOME",
                &BTreeMap::from([("HOME".into(), "/h".into())])
            ),
            "$HOME /h"
        );
        let p = Platform::this_machine();
        assert!(p.matches(&p.name()) && p.matches("linux") && !p.matches("windows/amd64"));
        assert_eq!(p.args()["TARGETOS"], "linux");
    }

    #[test]
    fn run_mounts_parse_with_their_defaults() {
        let r = run("RUN --mount=type=cache,target=/root/.cache,sharing=locked,uid=1000 --mount=type=bind,source=src,dst=/src,rw --mount=type=secret,id=token --mount=type=tmpfs,target=/scratch,size=1024 --network=none make");
        assert_eq!(r.command, CommandForm::Shell("make".into()));
        assert_eq!(
            r.mounts,
            [
                RunMount::Cache {
                    id: "/root/.cache".into(),
                    target: "/root/.cache".into(),
                    sharing: Sharing::Locked,
                    from: None,
                    source: String::new(),
                    mode: 0o755,
                    uid: 1000,
                    gid: 0,
                    read_only: false
                },
                RunMount::Bind {
                    target: "/src".into(),
                    from: None,
                    source: "src".into(),
                    read_write: true
                },
                RunMount::Secret {
                    id: "token".into(),
                    target: "/run/secrets/token".into(),
                    required: false,
                    mode: 0o400,
                    uid: 0,
                    gid: 0
                },
                RunMount::Tmpfs {
                    target: "/scratch".into(),
                    size: Some(1024)
                },
            ]
        );
        // The default type is bind; a secret's id defaults to its target's name.
        assert!(matches!(
            &run("RUN --mount=target=/x true").mounts[0],
            RunMount::Bind { .. }
        ));
        assert!(
            matches!(&run("RUN --mount=type=secret,target=/etc/key,required true").mounts[0],
            RunMount::Secret { id, required: true, .. } if id == "key")
        );
    }

    #[test]
    fn heredocs_are_scripts_files_and_shell_input() {
        assert_eq!(
            run("RUN <<EOF\necho one\n# not a comment here\necho two\nEOF").command,
            CommandForm::Shell("echo one\n# not a comment here\necho two\n".into())
        );
        assert_eq!(
            run("RUN echo $((1<<2))").command,
            CommandForm::Shell("echo $((1<<2))".into())
        );
        assert_eq!(
            run("RUN cat <<-'EOF' > /x\n\t$HOME\n\tEOF").command,
            CommandForm::Shell("cat <<-'EOF' > /x\n\t$HOME\n\tEOF".into())
        );
        let cf = parse_ok("FROM scratch\nARG WHO=world\nCOPY <<EOF <<'RAW' /etc/\nhello $WHO\nEOF\nhello $WHO\nRAW\nCOPY <<-EOF /greeting\n\t\tindented\n\tEOF\nRUN true\n");
        let steps = &cf.stages[0].steps;
        match &steps[1].instruction {
            Instruction::Copy(c) => assert_eq!(
                c.inline,
                [
                    InlineFile {
                        name: "EOF".into(),
                        content: "hello world\n".into()
                    },
                    InlineFile {
                        name: "RAW".into(),
                        content: "hello $WHO\n".into()
                    }
                ]
            ),
            other => panic!("{other:?}"),
        }
        match &steps[2].instruction {
            Instruction::Copy(c) => assert_eq!(c.inline[0].content, "indented\n"),
            other => panic!("{other:?}"),
        }
        assert_eq!(steps[2].line, 8);
        assert_eq!(steps[3].line, 11);
    }

    #[test]
    fn problems_name_their_line_and_a_fix() {
        assert_eq!(
            fails("RUN x\n"),
            "line 1: RUN before FROM\n  hint: start with FROM scratch or FROM NAME:TAG (only ARG may come before it)"
        );
        assert_eq!(
            fails("FROM a\n\n# c\nONBUILD RUN x\n"),
            "line 4: ONBUILD is not supported by paracloud build\n  hint: write the steps into the Containerfiles of the images built FROM this one"
        );
        assert!(fails("FROM a\nCOPY --from=3 x y\n")
            .starts_with("line 2: --from=3: there is no stage 3"));
        assert!(fails("FROM a AS x\nFROM b AS X\n").starts_with("line 2: a stage named x"));
        assert!(fails("FROM --platform=linux/s390x a\n").contains("do not emulate"));
        assert!(fails("FROM --squash a\n").starts_with("line 1: FROM does not take --squash"));
        assert!(fails("FROM a\nRUN --security=insecure x\n")
            .starts_with("line 2: RUN does not take --security"));
        assert!(fails("FROM a\nRUN --network=host x\n").contains("without network"));
        assert!(fails("FROM a\nRUN --mount=type=ssh x\n").contains("no SSH agent"));
        assert!(fails("FROM a\nRUN --mount=type=cache x\n").contains("has no target"));
        assert!(
            fails("FROM a\nRUN --mount=type=cache,target=/x,colour=red x\n")
                .contains("does not take colour")
        );
        assert!(
            fails("FROM a\nRUN --mount=type=bind,target=/x --mount=type=tmpfs,target=/x x\n")
                .contains("two things at /x")
        );
        assert!(fails("FROM a\nCOPY --parents x y\n")
            .starts_with("line 2: COPY does not take --parents"));
        assert!(fails("FROM a\nADD --from=a x y\n").starts_with("line 2: ADD does not take --from"));
        assert!(fails("FROM a\nCOPY --chmod=999 x y\n").contains("not an octal mode"));
        assert!(fails("FROM a\nRUN <<EOF\necho\n")
            .starts_with("line 2: the heredoc <<EOF has no line EOF"));
        assert!(fails("FROM a\nRUN <<EOF\n#!/usr/bin/python3\nEOF\n").contains("#! line"));
        assert!(fails("FROM a\nHEALTHCHECK --interval=soon CMD x\n").contains("not a duration"));
        assert!(fails("FROM a\nHEALTHCHECK x\n").contains("without CMD"));
        assert!(fails("FROM a\nSHELL bash\n").contains("JSON array"));
        assert!(fails("FROM a\nSTOPSIGNAL TERM\n").contains("not a signal"));
        assert!(fails("ARG X\nFROM $X\n").contains("names no image"));
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

    #[test]
    fn the_fuzz_seeds_parse() {
        let cf = parse_ok(include_str!("../../../fuzz/seeds/containerfile/stages"));
        assert_eq!(cf.waves(1), vec![vec![0], vec![1]]);
        parse_ok(include_str!("../../../fuzz/seeds/containerfile/basic"));
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1h2m"), Some(3_720_000_000_000));
        assert_eq!(duration_ns("1.5s"), Some(1_500_000_000));
        assert_eq!(duration_ns("5"), None);
        assert_eq!(duration_ns(""), None);
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

        #[test]
        fn heredoc_lines_never_panic(text in "(FROM a\n)?(RUN|COPY) [<a-zA-Z'\"\\- /]{0,20}\n[a-zA-Z\t\n ]{0,40}") {
            let _ = parse(&text, &BTreeMap::new());
        }

        /// Every needed stage comes in a wave after all the stages it reads.
        #[test]
        fn waves_follow_dependencies(deps in proptest::collection::vec(proptest::collection::vec(0usize..8, 0..3), 1..8)) {
            let mut text = String::new();
            for (i, d) in deps.iter().enumerate() {
                text.push_str(&format!("FROM scratch AS s{i}\n"));
                for dep in d.iter().filter(|dep| **dep < i) {
                    text.push_str(&format!("COPY --from=s{dep} /x /x\n"));
                }
            }
            let cf = parse(&text, &BTreeMap::new()).unwrap();
            let target = cf.stages.len() - 1;
            let waves = cf.waves(target);
            let wave_of = |s: usize| waves.iter().position(|w| w.contains(&s));
            proptest::prop_assert!(wave_of(target).is_some());
            for w in &waves {
                for s in w {
                    for dep in cf.stages[*s].dependencies() {
                        proptest::prop_assert!(wave_of(dep) < wave_of(*s));
                    }
                }
            }
        }
    }
}
