//! Splits a YAML stream into its documents' texts, so a document that is not
//! changed is copied byte for byte (comments and formatting included).
//!
//! A line starting with `---` or `...` (followed by a space, a tab or the end
//! of the line) is a document marker wherever it appears: YAML forbids such a
//! line inside any scalar, block or quoted, so splitting on lines is exact.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The document's text, its `---` line (if any) included.
    pub text: &'a str,
    /// It begins with a `---` line.
    pub explicit_start: bool,
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

pub fn split(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut explicit = false;
    let mut pos = 0;
    for (n, line) in input.split_inclusive('\n').enumerate() {
        let line_no = n + 1;
        if is_marker(line, "---") {
            if pos > start {
                chunks.push(Chunk {
                    text: &input[start..pos],
                    explicit_start: explicit,
                    first_line: start_line,
                });
            }
            start = pos;
            start_line = line_no;
            explicit = true;
        }
        pos += line.len();
        if is_marker(line, "...") {
            chunks.push(Chunk {
                text: &input[start..pos],
                explicit_start: explicit,
                first_line: start_line,
            });
            start = pos;
            start_line = line_no + 1;
            explicit = false;
        }
    }
    if pos > start {
        chunks.push(Chunk {
            text: &input[start..pos],
            explicit_start: explicit,
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
        let input = "# head\n---\na: 1\n--- # second\nb: |\n  ---not a marker\n  x\n---\n...\nc: 3";
        let chunks = split(input);
        assert_eq!(
            texts(input),
            vec![
                "# head\n",
                "---\na: 1\n",
                "--- # second\nb: |\n  ---not a marker\n  x\n",
                "---\n...\n",
                "c: 3"
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.text).collect::<String>(), input);
        assert_eq!(
            chunks.iter().map(|c| c.first_line).collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 10]
        );
        assert_eq!(
            chunks.iter().map(|c| c.explicit_start).collect::<Vec<_>>(),
            vec![false, true, true, true, false]
        );
    }

    #[test]
    fn crlf_and_lookalikes() {
        assert_eq!(
            texts("a: 1\r\n---\r\nb: 2\r\n"),
            vec!["a: 1\r\n", "---\r\nb: 2\r\n"]
        );
        assert_eq!(texts("----\nx: ---\n"), vec!["----\nx: ---\n"]);
        assert!(split("").is_empty());
    }
}
