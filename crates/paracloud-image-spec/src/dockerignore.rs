//! `.dockerignore`, as Docker reads it: one pattern a line, `#` comments, `!` exceptions, the
//! last matching line deciding; `*`, `?` and `[...]` within one path component, `**` across any
//! number of them; a path is excluded when it or a directory above it matches.

/// One line of a `.dockerignore`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// `!pattern`: matching paths are included again.
    exception: bool,
    components: Vec<String>,
}

/// The patterns of a `.dockerignore` (none: nothing is excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dockerignore {
    patterns: Vec<Pattern>,
}

/// A path cleaned as Go's `filepath.Clean` would, split into components.
fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other.to_owned()),
        }
    }
    out
}

impl Dockerignore {
    pub fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (exception, body) = match l.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, l),
                };
                let components = clean(body);
                (!components.is_empty()).then_some(Pattern {
                    exception,
                    components,
                })
            })
            .collect();
        Self { patterns }
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out of the build.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        if path.is_empty() {
            return false;
        }
        let mut excluded = false;
        for p in &self.patterns {
            let matched = (1..=path.len()).any(|n| matches(&p.components, &path[..n]));
            if matched {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some exception could include a path below the directory `dir` again (so an
    /// excluded directory must still be walked).
    pub fn may_include_below(&self, dir: &str) -> bool {
        let dir = clean(dir);
        self.patterns.iter().any(|p| {
            p.exception
                && (p.components.iter().any(|c| c.contains("**"))
                    || (p.components.len() > dir.len()
                        && (0..dir.len()).all(|i| component(&p.components[i], &dir[i]))))
        })
    }
}

/// Pattern components against path components; `**` takes any number of them.
fn matches(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            matches(rest, path) || (!path.is_empty() && matches(pattern, &path[1..]))
        }
        Some((first, rest)) => {
            !path.is_empty() && component(first, &path[0]) && matches(rest, &path[1..])
        }
    }
}

/// One component: `*` (any run), `?` (one character), `[a-z]` / `[^a-z]`, `\` escapes.
fn component(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(2).position(|c| *c == ']').map(|e| e + 2) else {
                    return !n.is_empty() && n[0] == '[' && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else {
                    return false;
                };
                let class = &p[1..end];
                let (negated, class) = match class.first() {
                    Some('^') | Some('!') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut found = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        found |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        found |= class[i] == c;
                        i += 1;
                    }
                }
                found != negated && go(&p[end + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => !n.is_empty() && n[0] == p[1] && go(&p[2..], &n[1..]),
            Some(c) => !n.is_empty() && n[0] == *c && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // `**` inside a component (`a**b`) is as `*` there.
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(ignore: &str, paths: &[&str]) -> Vec<bool> {
        let d = Dockerignore::parse(ignore);
        paths.iter().map(|p| d.excludes(p)).collect()
    }

    #[test]
    fn patterns_match_as_docker_matches_them() {
        assert_eq!(
            excluded(
                "# comment\n*.log\n/build\n",
                &["a.log", "dir/a.log", "build/x", "src/build"]
            ),
            [true, false, true, false]
        );
        assert_eq!(
            excluded("**/*.log\n", &["a.log", "dir/deep/a.log", "a.txt"]),
            [true, true, false]
        );
        assert_eq!(
            excluded(
                "node_modules\ndocs/**/*.md\n",
                &[
                    "node_modules/x/y",
                    "docs/a.md",
                    "docs/x/y/b.md",
                    "docs/a.txt"
                ]
            ),
            [true, true, true, false]
        );
        assert_eq!(
            excluded(
                "temp?\n[a-c]*.txt\n[^a-c]*.bin\n",
                &["temp1", "temp12", "b.txt", "d.txt", "d.bin", "a.bin"]
            ),
            [true, false, true, false, true, false]
        );
        assert_eq!(excluded("./a/../b\n", &["b", "a"]), [true, false]);
    }

    #[test]
    fn the_last_matching_line_decides() {
        assert_eq!(
            excluded("*.md\n!README.md\n", &["a.md", "README.md"]),
            [true, false]
        );
        assert_eq!(excluded("!README.md\n*.md\n", &["README.md"]), [true]);
        assert_eq!(
            excluded(
                "secrets\n!secrets/public.pem\n",
                &["secrets/key", "secrets/public.pem"]
            ),
            [true, false]
        );
        let d = Dockerignore::parse("secrets\n!secrets/public.pem\n");
        assert!(d.may_include_below("secrets"));
        assert!(!Dockerignore::parse("secrets\n").may_include_below("secrets"));
    }

    proptest::proptest! {
        #[test]
        fn matching_never_panics(pattern in "[a-z*?\\[\\]\\\\!/.^-]{0,12}", path in "[a-z/.]{0,12}") {
            let _ = Dockerignore::parse(&pattern).excludes(&path);
        }
    }
}
