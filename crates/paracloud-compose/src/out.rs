//! The generated `paracloud.toml`: its lines, each with the place in the Compose file it came
//! from, so that the manifest's diagnostics can be pointed back there.

/// TOML text being written, one line per value.
#[derive(Debug, Default)]
pub(crate) struct Out {
    lines: Vec<String>,
    /// For each line: the byte offset in the Compose file and the Compose field.
    places: Vec<(usize, String)>,
}

impl Out {
    pub(crate) fn line(&mut self, text: String, offset: usize, field: &str) {
        self.lines.push(text);
        self.places.push((offset, field.to_owned()));
    }

    pub(crate) fn comment(&mut self, text: &str) {
        self.line(text.to_owned(), 0, "");
    }

    /// A `[HEADER]` table of labels, `KEY = "VALUE"` lines (a key without a value is empty),
    /// each line pointing where it was written: the table at `offset`, its entries under
    /// `field`.
    pub(crate) fn labels(
        &mut self,
        header: String,
        labels: Vec<(String, Option<String>, usize)>,
        offset: usize,
        field: &str,
    ) {
        self.blank();
        self.line(header, offset, field);
        for (k, v, at) in labels {
            let entry = crate::child(field, &k);
            self.line(
                format!("{} = {}", key(&k), string(&v.unwrap_or_default())),
                at,
                &entry,
            );
        }
    }

    pub(crate) fn blank(&mut self) {
        self.line(String::new(), 0, "");
    }

    pub(crate) fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }

    /// Where the 1-based `line` of the text came from.
    pub(crate) fn place(&self, line: usize) -> (usize, String) {
        line.checked_sub(1)
            .and_then(|i| self.places.get(i))
            .cloned()
            .unwrap_or_default()
    }
}

/// A TOML basic string, always on one line (so the line map holds).
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key, quoted unless bare.
pub(crate) fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_owned()
    } else {
        string(k)
    }
}

/// A TOML array of strings on one line.
pub(crate) fn strings(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| string(s)).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_keys_are_quoted_as_toml_wants() {
        assert_eq!(string("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(key("web"), "web");
        assert_eq!(key("com.example"), "\"com.example\"");
        assert_eq!(strings(&["a".into(), "b c".into()]), r#"["a", "b c"]"#);
    }
}
