//! Splits a YAML stream into its documents' texts, so a document that is not
//! changed is copied byte for byte (comments and formatting included).
//!
//! A line starting with `---` or `...` (followed by a space, a tab or the end
//! of the line) is a document marker wherever it appears: YAML forbids such a
//! line inside any scalar, block or quoted, so splitting on lines is exact.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The document's text: comments and directives before it, its `---`
    /// line (if any) and everything up to the next document.
    pub text: &'a str,
    /// 1-based line number of its first line in the whole input.
    pub first_line: usize,
}

fn is_marker(line: &str, marker: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.strip_prefix(marker) {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t']),
        None => false,
    }
}

/// What a line is, as far as where documents begin is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// Blank or a comment.
    Blank,
    /// `%YAML` / `%TAG` (only before a document's `---`).
    Directive,
    /// `---`, alone or followed by a comment.
    Start,
    /// `---` followed by content on the same line.
    StartWithContent,
    /// `...`
    End,
    Content,
}

pub fn classify(line: &str, before_start: bool) -> Line {
    let t = line.trim();
    if is_marker(line, "---") {
        let rest = t[3..].trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            Line::Start
        } else {
            Line::StartWithContent
        }
    } else if is_marker(line, "...") {
        Line::End
    } else if t.is_empty() || t.starts_with('#') {
        Line::Blank
    } else if before_start && line.starts_with('%') {
        Line::Directive
    } else {
        Line::Content
    }
}

pub fn split(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut pos = 0;
    // The current chunk has a `---` line / a content line.
    let (mut started, mut content) = (false, false);
    for (n, line) in input.split_inclusive('\n').enumerate() {
        let kind = classify(line, !started && !content);
        // A `---` begins a new document, unless all before it in this chunk
        // were comments and directives, which belong to the document it starts.
        if matches!(kind, Line::Start | Line::StartWithContent) && (started || content) {
            chunks.push(Chunk {
                text: &input[start..pos],
                first_line: start_line,
            });
            start = pos;
            start_line = n + 1;
            content = false;
        }
        pos += line.len();
        match kind {
            Line::Start => started = true,
            Line::StartWithContent => (started, content) = (true, true),
            Line::Content => content = true,
            Line::Blank | Line::Directive => {}
            Line::End => {
                chunks.push(Chunk {
                    text: &input[start..pos],
                    first_line: start_line,
                });
                start = pos;
                start_line = n + 2;
                (started, content) = (false, false);
            }
        }
    }
    if pos > start {
        chunks.push(Chunk {
            text: &input[start..pos],
            first_line: start_line,
        });
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<&str> {
        split(input).iter().map(|c| c.text).collect()
    }

    #[test]
    fn splits_on_marker_lines_only_and_loses_no_byte() {
        let input = "# head\n---\na: 1\n--- # second\nb: |\n  ---not a marker\n  x\n# trailing\n---\n...\n%YAML 1.2\n---\nc: 3\n--- {d: 4}\n---\ne: 5";
        let chunks = split(input);
        assert_eq!(
            texts(input),
            vec![
                "# head\n---\na: 1\n",
                "--- # second\nb: |\n  ---not a marker\n  x\n# trailing\n",
                "---\n...\n",
                "%YAML 1.2\n---\nc: 3\n",
                "--- {d: 4}\n",
                "---\ne: 5",
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.text).collect::<String>(), input);
        assert_eq!(
            chunks.iter().map(|c| c.first_line).collect::<Vec<_>>(),
            vec![1, 4, 9, 11, 14, 15]
        );
    }

    #[test]
    fn crlf_and_lookalikes() {
        assert_eq!(
            texts("a: 1\r\n---\r\nb: 2\r\n"),
            vec!["a: 1\r\n", "---\r\nb: 2\r\n"]
        );
        assert_eq!(texts("----\nx: ---\n"), vec!["----\nx: ---\n"]);
        assert_eq!(texts("---\n---\na: 1\n"), vec!["---\n", "---\na: 1\n"]);
        assert!(split("").is_empty());
    }
}
