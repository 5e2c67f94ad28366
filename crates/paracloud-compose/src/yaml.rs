//! A YAML document as a tree whose every node knows where it was written.
//!
//! Scalars keep their text and whether they were plain (unquoted): Compose reads `8080` and
//! `"8080"` alike where it wants a string, and types plain scalars only where a key wants a
//! number or a boolean. Anchors are expanded and `<<` merge keys applied here, so the reader sees
//! plain mappings; depth and expanded size are bounded, so that no input exhausts the stack or
//! memory.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Nesting deeper than this is refused (a Compose file needs about six levels).
const MAX_DEPTH: usize = 64;
/// Nodes after expanding aliases; beyond this the document is refused ("billion laughs").
const MAX_NODES: usize = 200_000;

/// A value of the document and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) offset: usize,
    pub(crate) kind: Kind,
    /// Nodes in this subtree, itself included.
    size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// Why a document is not usable YAML, and where.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct YamlError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

impl Node {
    pub(crate) fn scalar(offset: usize, text: impl Into<String>, plain: bool) -> Node {
        Node {
            offset,
            kind: Kind::Scalar {
                text: text.into(),
                plain,
            },
            size: 1,
        }
    }

    pub(crate) fn seq(offset: usize, items: Vec<Node>) -> Node {
        let size = 1 + items.iter().map(|n| n.size).sum::<usize>();
        Node {
            offset,
            kind: Kind::Seq(items),
            size,
        }
    }

    pub(crate) fn map(offset: usize, entries: Vec<(Node, Node)>) -> Node {
        let size = 1 + entries.iter().map(|(k, v)| k.size + v.size).sum::<usize>();
        Node {
            offset,
            kind: Kind::Map(entries),
            size,
        }
    }

    /// Moves the offsets of the whole subtree by `by` (a file read after others).
    pub(crate) fn shift(&mut self, by: usize) {
        let mut stack: Vec<&mut Node> = vec![self];
        while let Some(node) = stack.pop() {
            node.offset += by;
            match &mut node.kind {
                Kind::Scalar { .. } => {}
                Kind::Seq(items) => stack.extend(items.iter_mut()),
                Kind::Map(entries) => {
                    for (k, v) in entries.iter_mut() {
                        stack.push(k);
                        stack.push(v);
                    }
                }
            }
        }
    }

    /// The text of a scalar.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A plain `null`, `~` or nothing at all.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A plain boolean, as YAML 1.2 writes them.
    pub(crate) fn boolean(&self) -> Option<bool> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// What the node is, for "expected ..., found ..." messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            _ if self.is_null() => "nothing (null)".into(),
            Kind::Scalar { text, .. } if text.chars().count() > 40 => {
                let short: String = text.chars().take(40).collect();
                format!("{short:?}...")
            }
            Kind::Scalar { text, .. } => format!("{text:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    /// Applies `f` to the text of every scalar that is a value (mapping keys are left alone),
    /// stopping at the first error.
    pub(crate) fn map_values<E>(&mut self, f: &mut ValueFn<'_, E>) -> Result<(), E> {
        // An explicit stack: the depth is bounded, but recursion is not needed either.
        let mut stack: Vec<&mut Node> = vec![self];
        while let Some(node) = stack.pop() {
            let offset = node.offset;
            match &mut node.kind {
                Kind::Scalar { text, .. } => {
                    if let Some(new) = f(offset, text)? {
                        *text = new;
                    }
                }
                Kind::Seq(items) => stack.extend(items.iter_mut().rev()),
                Kind::Map(entries) => stack.extend(entries.iter_mut().rev().map(|(_, v)| v)),
            }
        }
        Ok(())
    }
}

/// What [`Node::map_values`] applies: from a scalar's offset and text to its new text, if any.
pub(crate) type ValueFn<'f, E> = dyn FnMut(usize, &str) -> Result<Option<String>, E> + 'f;

enum Frame {
    Seq {
        offset: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        offset: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parses one YAML document; an empty one is a null scalar.
pub(crate) fn parse(source: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut total = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            offset: e.marker().index(),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let offset = mark_offset(source, mark);
        let complete = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        offset,
                        message: "a Compose file holds one YAML document, found a second".into(),
                    });
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    return Err(YamlError {
                        offset,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                let mut node = node.clone();
                node.offset = offset;
                node
            }
            Event::Scalar(text, style, anchor, tag) => {
                check_tag(tag.as_ref(), offset)?;
                let node = Node::scalar(offset, text, style == TScalarStyle::Plain);
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                check_tag(tag.as_ref(), offset)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(YamlError {
                        offset,
                        message: format!("nested more than {MAX_DEPTH} levels deep"),
                    });
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        offset,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        offset,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    }
                });
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    offset,
                    anchor,
                    items,
                }) => {
                    let size = 1 + items.iter().map(|n| n.size).sum::<usize>();
                    let node = Node {
                        offset,
                        kind: Kind::Seq(items),
                        size,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    node
                }
                _ => return Err(unbalanced(offset)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    offset,
                    anchor,
                    entries,
                    key: None,
                }) => {
                    let entries = merge(entries)?;
                    let size = 1 + entries.iter().map(|(k, v)| k.size + v.size).sum::<usize>();
                    let node = Node {
                        offset,
                        kind: Kind::Map(entries),
                        size,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    node
                }
                _ => return Err(unbalanced(offset)),
            },
        };
        total = total.saturating_add(complete.size);
        if total > MAX_NODES {
            return Err(YamlError {
                offset,
                message: format!("the document expands to more than {MAX_NODES} values"),
            });
        }
        match stack.last_mut() {
            None => root = Some(complete),
            Some(Frame::Seq { items, .. }) => items.push(complete),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if !matches!(complete.kind, Kind::Scalar { .. }) {
                        return Err(YamlError {
                            offset: complete.offset,
                            message: "a mapping key must be a plain value, not a list or mapping"
                                .into(),
                        });
                    }
                    *key = Some(complete);
                }
                Some(k) => {
                    let name = k.text().unwrap_or_default();
                    if name != "<<" && entries.iter().any(|(e, _)| e.text() == Some(name)) {
                        return Err(YamlError {
                            offset: k.offset,
                            message: format!("duplicate key `{name}`"),
                        });
                    }
                    entries.push((k, complete));
                }
            },
        }
    }
    Ok(root.unwrap_or_else(|| Node::scalar(0, "", true)))
}

/// Applies `<<` merge keys: the merged mappings' entries come after the mapping's own, and a key
/// written in the mapping wins.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, YamlError> {
    if !entries
        .iter()
        .any(|(k, _)| matches!(&k.kind, Kind::Scalar { text, plain: true } if text == "<<"))
    {
        return Ok(entries);
    }
    let mut own = Vec::new();
    let mut merged = Vec::new();
    for (key, value) in entries {
        if !matches!(&key.kind, Kind::Scalar { text, plain: true } if text == "<<") {
            own.push((key, value));
            continue;
        }
        let sources = match value.kind {
            Kind::Map(_) => vec![value],
            Kind::Seq(items) => items,
            Kind::Scalar { .. } => vec![value],
        };
        for source in sources {
            let Kind::Map(source_entries) = source.kind else {
                return Err(YamlError {
                    offset: source.offset,
                    message: "a `<<` merge key takes a mapping or a list of mappings".into(),
                });
            };
            merged.extend(source_entries);
        }
    }
    for (key, value) in merged {
        let taken = own.iter().any(|(k, _)| k.text() == key.text());
        if !taken {
            own.push((key, value));
        }
    }
    Ok(own)
}

fn check_tag(tag: Option<&Tag>, offset: usize) -> Result<(), YamlError> {
    match tag {
        Some(tag) if tag.handle != "tag:yaml.org,2002:" && tag.handle != "!!" => Err(YamlError {
            offset,
            message: format!(
                "YAML tag `{}{}` is not supported (Compose override tags such as `!reset` belong to override files)",
                tag.handle, tag.suffix
            ),
        }),
        _ => Ok(()),
    }
}

fn unbalanced(offset: usize) -> YamlError {
    YamlError {
        offset,
        message: "invalid YAML: unbalanced collection".into(),
    }
}

/// The byte offset of a parser mark, clamped to the source.
fn mark_offset(source: &str, mark: Marker) -> usize {
    mark.index().min(source.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_at(source: &str, node: &Node) -> String {
        source[node.offset..].chars().take(3).collect()
    }

    #[test]
    fn nodes_know_their_offsets() {
        let src = "a:\n  b: [1, \"two\"]\n  c: x\n";
        let root = parse(src).unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("a mapping")
        };
        let (_, a) = &entries[0];
        let Kind::Map(inner) = &a.kind else {
            panic!("a mapping")
        };
        let (b_key, b) = &inner[0];
        assert_eq!(text_at(src, b_key), "b: ");
        let Kind::Seq(items) = &b.kind else {
            panic!("a list")
        };
        assert_eq!(text_at(src, &items[0]), "1, ");
        assert_eq!(text_at(src, &items[1]), "\"tw");
        assert_eq!(
            items[1].kind,
            Kind::Scalar {
                text: "two".into(),
                plain: false
            }
        );
    }

    #[test]
    fn anchors_and_merge_keys_expand() {
        let src = "x: &base {a: 1, b: 2}\ny:\n  <<: *base\n  b: 3\n";
        let root = parse(src).unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        let Kind::Map(y) = &entries[1].1.kind else {
            panic!()
        };
        let pairs: Vec<_> = y
            .iter()
            .map(|(k, v)| (k.text().unwrap(), v.text().unwrap()))
            .collect();
        assert_eq!(pairs, vec![("b", "3"), ("a", "1")]);
    }

    #[test]
    fn duplicate_keys_and_second_documents_are_refused() {
        assert!(parse("a: 1\na: 2\n")
            .unwrap_err()
            .message
            .contains("duplicate"));
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&src).unwrap_err().message.contains("expands"));
        let deep = "[".repeat(1000);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn scalars_are_typed_only_when_plain() {
        let root = parse("[true, 'true', null, ~, '']").unwrap();
        let Kind::Seq(items) = root.kind else {
            panic!()
        };
        assert_eq!(items[0].boolean(), Some(true));
        assert_eq!(items[1].boolean(), None);
        assert!(items[2].is_null() && items[3].is_null() && !items[4].is_null());
    }
}
