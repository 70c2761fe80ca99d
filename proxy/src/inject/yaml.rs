//! A YAML tree that keeps what Kubernetes' reader needs to see the same
//! values again: every scalar's text *and style*, and the key order.
//!
//! Kubernetes reads manifests as YAML 1.1, where plain `0644` is octal 420
//! and plain `on` is a boolean, while the quoted forms are strings. A tree of
//! resolved values (serde_yaml's `Value`) cannot tell `0644` from `'0644'`
//! or `on` from `"on"`, so writing it back could change a `defaultMode` or
//! turn an env value into a boolean. This tree re-emits a plain scalar as the
//! same plain text and a quoted one quoted, so both readers see what they saw.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Nesting deeper than this is refused instead of recursing further.
const MAX_DEPTH: usize = 256;
/// Nodes a document may hold beyond two per byte of its text. Every alias is a copy of what its
/// anchor names, so without a bound a few hundred bytes of nested aliases ("billion laughs") would
/// expand to billions of nodes; a document without aliases never comes near it.
const ALIAS_ALLOWANCE: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub value: String,
    pub style: TScalarStyle,
    pub tag: Option<Tag>,
}

/// Tag and style of a mapping or list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Props {
    pub tag: Option<Tag>,
    /// Written `{…}` / `[…]` on one line; kept so, unless inject adds to it.
    pub flow: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>, Props),
    Map(Vec<(Node, Node)>, Props),
}

impl Node {
    /// A string: plain when every YAML reader takes the plain text as that
    /// same string, double-quoted otherwise.
    pub fn str(s: &str) -> Node {
        let style = if plain_is_string(s) {
            TScalarStyle::Plain
        } else {
            TScalarStyle::DoubleQuoted
        };
        Node::Scalar(Scalar {
            value: s.to_string(),
            style,
            tag: None,
        })
    }

    pub fn int(i: i64) -> Node {
        Node::Scalar(Scalar {
            value: i.to_string(),
            style: TScalarStyle::Plain,
            tag: None,
        })
    }

    pub fn bool(b: bool) -> Node {
        Node::Scalar(Scalar {
            value: b.to_string(),
            style: TScalarStyle::Plain,
            tag: None,
        })
    }

    pub fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Node)>) -> Node {
        Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Node::str(k), v))
                .collect(),
            Props::default(),
        )
    }

    pub fn seq(items: impl IntoIterator<Item = Node>) -> Node {
        Node::Seq(items.into_iter().collect(), Props::default())
    }

    /// The scalar's text (for keys, names and kinds; style does not matter there).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(&s.value),
            _ => None,
        }
    }

    /// `~`, `null`, or nothing at all, written plain and untagged.
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar(Scalar { value, style: TScalarStyle::Plain, tag: None })
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// "a mapping", "a list", "a scalar": for error messages.
    pub fn shape(&self) -> &'static str {
        match self {
            Node::Scalar(_) if self.is_null() => "null",
            Node::Scalar(_) => "a scalar",
            Node::Seq(..) => "a list",
            Node::Map(..) => "a mapping",
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries, _) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(entries, _) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key` of this mapping; a missing or null value is
    /// first set to `empty`. Callers have checked that `self` is a mapping;
    /// it is written in block style from now on, as it is being changed.
    pub fn entry(&mut self, key: &str, empty: Node) -> &mut Node {
        let Node::Map(entries, props) = self else {
            unreachable!("entry() on a checked mapping")
        };
        props.flow = false;
        let at = match entries.iter().position(|(k, _)| k.as_str() == Some(key)) {
            Some(i) => {
                if entries[i].1.is_null() {
                    entries[i].1 = empty;
                }
                i
            }
            None => {
                entries.push((Node::str(key), empty));
                entries.len() - 1
            }
        };
        &mut entries[at].1
    }

    /// Appends to a list (callers have checked that `self` is one).
    pub fn push(&mut self, item: Node) {
        if let Node::Seq(items, props) = self {
            props.flow = false;
            items.push(item);
        }
    }
}

/// True when a plain scalar with this text is this string to both YAML 1.1
/// and 1.2 readers: no number, boolean, null, timestamp or indicator look-alike.
fn plain_is_string(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !first.is_ascii_alphabetic() && first != '/' {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
    {
        return false;
    }
    if s.ends_with(':') || s.contains(": ") {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    !matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | ".inf" | ".nan"
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {col}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses one document's text. `Ok(None)` for a document with no content
/// (only comments, or an empty `---`). `first_line` numbers error lines as
/// in the whole input.
pub fn parse_document(text: &str, first_line: usize) -> Result<Option<Node>, ParseError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        chars: text.chars().collect(),
        anchors: HashMap::new(),
        first_line,
        nodes: 0,
        max_nodes: ALIAS_ALLOWANCE.saturating_add(text.len().saturating_mul(2)),
    };
    let mut root = None;
    loop {
        let (ev, mark) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                if root.is_some() {
                    return Err(b.error(mark, "more than one document"));
                }
                let (ev, mark) = b.next()?;
                let node = b.node(ev, mark, 0)?;
                root = Some(if node.is_null() { None } else { Some(node) });
            }
            _ => return Err(b.error(mark, "unexpected content outside a document")),
        }
    }
    Ok(root.flatten())
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    /// The text by char (markers count chars), to see `{` / `[` openings.
    chars: Vec<char>,
    /// Each anchor's node and how many nodes a copy of it holds.
    anchors: HashMap<usize, (Node, usize)>,
    first_line: usize,
    /// Nodes built so far, alias copies and stored anchors included.
    nodes: usize,
    max_nodes: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), ParseError> {
        self.parser.next_token().map_err(|e| ParseError {
            line: self.first_line + e.marker().line() - 1,
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })
    }

    fn error(&self, mark: Marker, message: &str) -> ParseError {
        ParseError {
            line: self.first_line + mark.line() - 1,
            col: mark.col() + 1,
            message: message.to_string(),
        }
    }

    /// A collection that opened with `open` and closed on the same line.
    fn one_line_flow(&self, start: Marker, end: Marker, open: char) -> bool {
        self.chars.get(start.index()) == Some(&open) && start.line() == end.line()
    }

    /// Counts `n` more nodes against the document's bound.
    fn count(&mut self, n: usize, mark: Marker) -> Result<(), ParseError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.max_nodes {
            return Err(self.error(
                mark,
                &format!(
                    "aliases expand the document to more than {} nodes",
                    self.max_nodes
                ),
            ));
        }
        Ok(())
    }

    fn node(&mut self, ev: Event, mark: Marker, depth: usize) -> Result<Node, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error(mark, "nested too deeply"));
        }
        let before = self.nodes;
        if !matches!(ev, Event::Alias(_)) {
            self.count(1, mark)?;
        }
        let (node, anchor) = match ev {
            Event::Scalar(value, style, anchor, tag) => {
                (Node::Scalar(Scalar { value, style, tag }), anchor)
            }
            Event::SequenceStart(anchor, tag) => {
                let mut items = Vec::new();
                let end = loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break m;
                    }
                    items.push(self.node(ev, m, depth + 1)?);
                };
                let flow = self.one_line_flow(mark, end, '[');
                (Node::Seq(items, Props { tag, flow }), anchor)
            }
            Event::MappingStart(anchor, tag) => {
                let mut entries = Vec::new();
                let mut keys = std::collections::HashSet::new();
                let end = loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::MappingEnd {
                        break m;
                    }
                    let key = self.node(ev, m, depth + 1)?;
                    // Lookups take the first of two equal keys, Kubernetes' lenient
                    // reader the last: a sidecar added to one `containers` would be
                    // dropped with the other. YAML forbids duplicates; so do we.
                    if let Some(k) = key.as_str() {
                        if !keys.insert(k.to_owned()) {
                            return Err(self.error(m, &format!("duplicate key {k:?}")));
                        }
                    }
                    let (ev, m) = self.next()?;
                    let value = self.node(ev, m, depth + 1)?;
                    entries.push((key, value));
                };
                let flow = self.one_line_flow(mark, end, '{');
                (Node::Map(entries, Props { tag, flow }), anchor)
            }
            // An alias stands for a copy of what its anchor names; Kubernetes
            // reads it the same way.
            Event::Alias(id) => {
                let size = match self.anchors.get(&id) {
                    Some((_, size)) => *size,
                    None => return Err(self.error(mark, "alias to an unknown anchor")),
                };
                self.count(size, mark)?;
                return Ok(self.anchors[&id].0.clone());
            }
            _ => return Err(self.error(mark, "unexpected YAML event")),
        };
        if anchor != 0 {
            // The stored copy counts too: nested anchors each keep one.
            let size = self.nodes - before;
            self.count(size, mark)?;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        Ok(node)
    }
}

/// Why a tree cannot be written back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("{0}: a tag on a mapping or list is not supported in a document to inject")]
    CollectionTag(String),
    #[error("{0}: a mapping or list used as a key is not supported in a document to inject")]
    ComplexKey(String),
}

/// Writes `node` as a YAML document (no `---`), ending in a newline: block
/// style, except collections that were written on one line in flow style.
pub fn emit(node: &Node) -> Result<String, EmitError> {
    let mut out = String::new();
    match node {
        Node::Map(entries, props) if !entries.is_empty() && !props.flow => {
            no_tag(props, "")?;
            emit_map(entries, 0, false, "", &mut out)?;
        }
        Node::Seq(items, props) if !items.is_empty() && !props.flow => {
            no_tag(props, "")?;
            emit_seq(items, 0, false, "", &mut out)?;
        }
        other => {
            let mut text = String::new();
            emit_inline(other, 2, "", &mut text)?;
            out.push_str(text.trim_start_matches(' '));
            out.push('\n');
        }
    }
    Ok(out)
}

fn no_tag(props: &Props, path: &str) -> Result<(), EmitError> {
    match props.tag {
        None => Ok(()),
        Some(_) => Err(EmitError::CollectionTag(display_path(path))),
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "the document".to_string()
    } else {
        path.to_string()
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A mapping key: plain when that reads as the same string, else as written.
fn key_text(key: &Node, path: &str) -> Result<String, EmitError> {
    let Node::Scalar(key) = key else {
        return Err(EmitError::ComplexKey(display_path(path)));
    };
    Ok(if key.tag.is_none() && plain_is_string(&key.value) {
        key.value.clone()
    } else if key.value.contains('\n') || key.value.is_empty() {
        double_quoted(&key.value)
    } else {
        scalar_text(key, 0, true)
    })
}

fn child_path(path: &str, key: &Node) -> String {
    let key = key.as_str().unwrap_or("?");
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `first_padded`: the caller already wrote the first line's indentation
/// (a `- ` of the enclosing list).
fn emit_map(
    entries: &[(Node, Node)],
    indent: usize,
    first_padded: bool,
    path: &str,
    out: &mut String,
) -> Result<(), EmitError> {
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 || !first_padded {
            pad(out, indent);
        }
        out.push_str(&key_text(k, path)?);
        out.push(':');
        let child = child_path(path, k);
        match v {
            Node::Map(m, props) if !m.is_empty() && !props.flow => {
                no_tag(props, &child)?;
                out.push('\n');
                emit_map(m, indent + 2, false, &child, out)?;
            }
            Node::Seq(s, props) if !s.is_empty() && !props.flow => {
                no_tag(props, &child)?;
                out.push('\n');
                emit_seq(s, indent, false, &child, out)?;
            }
            other => {
                emit_inline(other, indent + 2, &child, out)?;
                out.push('\n');
            }
        }
    }
    Ok(())
}

fn emit_seq(
    items: &[Node],
    indent: usize,
    first_padded: bool,
    path: &str,
    out: &mut String,
) -> Result<(), EmitError> {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first_padded {
            pad(out, indent);
        }
        out.push('-');
        let child = format!("{path}[{i}]");
        match item {
            Node::Map(m, props) if !m.is_empty() && !props.flow => {
                no_tag(props, &child)?;
                out.push(' ');
                emit_map(m, indent + 2, true, &child, out)?;
            }
            Node::Seq(s, props) if !s.is_empty() && !props.flow => {
                no_tag(props, &child)?;
                out.push(' ');
                emit_seq(s, indent + 2, true, &child, out)?;
            }
            other => {
                emit_inline(other, indent + 2, &child, out)?;
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// A scalar or a flow collection after `key:` or `-` (writes the leading
/// space itself; nothing at all for an untagged empty plain scalar).
fn emit_inline(node: &Node, indent: usize, path: &str, out: &mut String) -> Result<(), EmitError> {
    let text = match node {
        Node::Scalar(s) => scalar_text(s, indent, false),
        other => flow_text(other, path)?,
    };
    if !text.is_empty() {
        out.push(' ');
        out.push_str(&text);
    }
    Ok(())
}

/// A node in flow style: `{k: v, …}`, `[a, …]`, or a one-line scalar.
fn flow_text(node: &Node, path: &str) -> Result<String, EmitError> {
    Ok(match node {
        Node::Scalar(s) => match scalar_text(s, 0, true) {
            t if t.is_empty() => "null".to_string(),
            t => t,
        },
        Node::Seq(items, props) => {
            no_tag(props, path)?;
            let parts = items
                .iter()
                .enumerate()
                .map(|(i, n)| flow_text(n, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            format!("[{}]", parts.join(", "))
        }
        Node::Map(entries, props) => {
            no_tag(props, path)?;
            let parts = entries
                .iter()
                .map(|(k, v)| {
                    Ok(format!(
                        "{}: {}",
                        key_text(k, path)?,
                        flow_text(v, &child_path(path, k))?
                    ))
                })
                .collect::<Result<Vec<_>, EmitError>>()?;
            format!("{{{}}}", parts.join(", "))
        }
    })
}

fn tag_text(tag: &Tag) -> String {
    match tag.handle.as_str() {
        "tag:yaml.org,2002:" => format!("!!{}", tag.suffix),
        "!" => format!("!{}", tag.suffix),
        "" if tag.suffix == "!" => "!".to_string(),
        h => format!("!<{h}{}>", tag.suffix),
    }
}

/// The scalar as written after `key: ` or `- `; block scalars continue on
/// following lines indented by `indent`. `one_line`: no block scalar.
fn scalar_text(s: &Scalar, indent: usize, one_line: bool) -> String {
    let body = match s.style {
        TScalarStyle::Plain if s.value.is_empty() => {
            if s.tag.is_some() {
                "\"\"".to_string()
            } else {
                String::new()
            }
        }
        // Same plain text → same value to every reader. A plain scalar that
        // spanned lines around a blank line holds a newline; it was a string.
        TScalarStyle::Plain if !s.value.contains('\n') => s.value.clone(),
        TScalarStyle::SingleQuoted if printable_line(&s.value) => {
            format!("'{}'", s.value.replace('\'', "''"))
        }
        TScalarStyle::Literal | TScalarStyle::Folded if !one_line => {
            literal(&s.value, indent).unwrap_or_else(|| double_quoted(&s.value))
        }
        _ => double_quoted(&s.value),
    };
    match &s.tag {
        Some(t) if body.is_empty() => tag_text(t),
        Some(t) => format!("{} {body}", tag_text(t)),
        None => body,
    }
}

fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && c != '\u{feff}'
}

fn printable_line(s: &str) -> bool {
    s.chars().all(|c| printable(c) && c != '\n' && c != '\t')
}

/// A literal block (`|`) holding exactly `value`, or None when one cannot.
fn literal(value: &str, indent: usize) -> Option<String> {
    if value.is_empty() || !value.chars().all(printable) {
        return None;
    }
    let content = value.trim_end_matches('\n');
    let trailing = value.len() - content.len();
    if content.is_empty() {
        return None;
    }
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    // Auto-detected indentation would be wrong when the first non-empty line
    // starts with a space, or a blank line holds spaces.
    let lines: Vec<&str> = content.split('\n').collect();
    let explicit = lines
        .iter()
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.starts_with(' '))
        || lines.iter().any(|l| !l.is_empty() && l.trim().is_empty());
    let mut out = String::from("|");
    if explicit {
        out.push('2');
    }
    out.push_str(chomp);
    for l in &lines {
        out.push('\n');
        if !l.is_empty() {
            pad(&mut out, indent);
            out.push_str(l);
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(src: &str) -> String {
        emit(&parse_document(src, 1).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn plain_and_quoted_scalars_keep_their_meaning_for_yaml_1_1_readers() {
        let src = "a: 0644\nb: '0644'\nc: on\nd: \"on\"\ne: yes\nf: 1.0\ng: ~\nh:\ni: 'it''s'\nj: \"tab\\there\"\n";
        assert_eq!(
            roundtrip(src),
            "a: 0644\nb: '0644'\nc: on\nd: \"on\"\ne: yes\nf: 1.0\ng: ~\nh:\ni: 'it''s'\nj: \"tab\\there\"\n"
        );
    }

    #[test]
    fn block_scalars_flow_collections_and_aliases() {
        let src = "script: |\n  set -e\n  echo hi\nkeep: |+\n  x\n\nstrip: >-\n  folded\n  text\nflow: {a: [1, 2], b: []}\nbase: &b {x: 1}\ncopy: *b\nindented: |2\n    lead\n  next\n";
        let out = roundtrip(src);
        assert_eq!(
            out,
            "script: |\n  set -e\n  echo hi\nkeep: |+\n  x\n\nstrip: |-\n  folded text\nflow: {a: [1, 2], b: []}\nbase: {x: 1}\ncopy: {x: 1}\nindented: |2\n    lead\n  next\n"
        );
        // The written text parses back to the same tree (styles aside).
        let again = parse_document(&out, 1).unwrap().unwrap();
        assert_eq!(
            again.get("indented").unwrap().as_str(),
            Some("  lead\nnext\n")
        );
        assert_eq!(again.get("keep").unwrap().as_str(), Some("x\n\n"));
        assert_eq!(again.get("strip").unwrap().as_str(), Some("folded text"));
    }

    #[test]
    fn one_line_flow_stays_flow_multi_line_json_becomes_block_and_changed_collections_block() {
        assert_eq!(
            roundtrip("{\n  \"a\": {\"b\": [1, \"on\"]},\n  \"c\": [\n    \"x\"\n  ]\n}\n"),
            "a: {b: [1, \"on\"]}\nc:\n- \"x\"\n"
        );
        let mut n = parse_document("m: {a: 1}\nl: [x]\n", 1).unwrap().unwrap();
        n.get_mut("m").unwrap().entry("b", Node::int(2));
        n.get_mut("l").unwrap().push(Node::str("z"));
        assert_eq!(emit(&n).unwrap(), "m:\n  a: 1\n  b: 2\nl:\n- x\n- z\n");
    }

    #[test]
    fn nested_lists_and_empty_values() {
        let src = "- - a\n  - b\n- {}\n- []\n-\n- k: v\n  l:\n  - 1\n- |2\n    lead\n  x\n";
        assert_eq!(roundtrip(src), src);
        let again = parse_document(&roundtrip(src), 1).unwrap().unwrap();
        let Node::Seq(items, _) = again else { panic!() };
        assert_eq!(items[5].as_str(), Some("  lead\nx\n"));
    }

    #[test]
    fn tags_on_scalars_are_kept_and_on_collections_refused() {
        assert_eq!(
            roundtrip("a: !!str 12\nb: !custom x\n"),
            "a: !!str 12\nb: !custom x\n"
        );
        let n = parse_document("a: !!map {x: 1}\n", 1).unwrap().unwrap();
        assert_eq!(emit(&n), Err(EmitError::CollectionTag("a".into())));
    }

    #[test]
    fn aliases_that_expand_without_bound_are_refused() {
        // Six levels of ten aliases each: a few hundred bytes, over a million nodes expanded.
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..6 {
            let prev = format!("*a{}", level - 1);
            let items = [prev.as_str(); 10].join(", ");
            src.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let started = std::time::Instant::now();
        let e = parse_document(&src, 3).unwrap_err();
        assert!(e.message.contains("aliases expand"), "{e}");
        assert!((4..=8).contains(&e.line), "names the line of an alias: {e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        // Ordinary use of anchors (shared env, labels) is untouched.
        let ok = "base: &b {x: 1, y: [1, 2]}\none: *b\ntwo: *b\nlist: [*b, *b]\n";
        let n = parse_document(ok, 1).unwrap().unwrap();
        assert_eq!(n.get("two"), n.get("base"));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = parse_document(
            "spec:\n  containers:\n  - name: a\n  containers:\n  - name: b\n",
            10,
        )
        .unwrap_err();
        assert!(e.message.contains("duplicate key \"containers\""), "{e}");
        assert_eq!(e.line, 13, "{e}");
        assert!(parse_document("{a: 1, 'a': 2}\n", 1).is_err());
        // The same key in different mappings is fine.
        assert!(parse_document("a: {x: 1}\nb: {x: 1}\n", 1).is_ok());
    }

    #[test]
    fn empty_documents_and_errors() {
        assert_eq!(parse_document("# only a comment\n", 1), Ok(None));
        assert_eq!(parse_document("---\n", 1), Ok(None));
        let e = parse_document("a: [1,\n", 7).unwrap_err();
        assert!(e.line >= 7, "{e}");
    }

    #[test]
    fn new_strings_are_quoted_when_a_reader_could_take_them_for_something_else() {
        let s = |v: &str| emit(&Node::map([("k", Node::str(v))])).unwrap();
        assert_eq!(s("zen-proxy"), "k: zen-proxy\n");
        assert_eq!(s("/readyz"), "k: /readyz\n");
        assert_eq!(s("0.1.0"), "k: \"0.1.0\"\n");
        assert_eq!(s("on"), "k: \"on\"\n");
        assert_eq!(s("a: b"), "k: \"a: b\"\n");
        assert_eq!(
            s("zen-mesh/zen-proxy:0.1.0"),
            "k: zen-mesh/zen-proxy:0.1.0\n"
        );
    }
}
