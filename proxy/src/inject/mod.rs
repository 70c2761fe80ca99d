//! `zen-proxy inject`: adds the zen-proxy sidecar to the workloads of a
//! Kubernetes manifest (Deployment, StatefulSet, DaemonSet, Pod, and those
//! inside a `List`), like `linkerd inject` / `istioctl kube-inject`.
//!
//! Documents that do not change are copied byte for byte; a changed document
//! is written back from a tree that keeps key order, unknown fields and each
//! scalar's style (see yaml.rs for why the style matters). Injecting twice
//! changes nothing the second time. Any document that cannot be handled
//! refuses the whole run: errors on stderr, nothing on stdout.

mod sidecar;
mod stream;
mod workload;
mod yaml;

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

pub use sidecar::Sidecar;
use workload::Reason;
use yaml::Node;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Manifest to read (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: PathBuf,
    /// Print a unified diff of what would change instead of the result.
    #[arg(long)]
    pub dry_run: bool,
    /// Sidecar image.
    #[arg(long, default_value = concat!("zen-mesh/zen-proxy:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// ConfigMap holding the proxy's `proxy.yaml` (config/k8s/zen-proxy-config.yaml).
    #[arg(long, default_value = "zen-proxy-config", value_parser = dns_subdomain)]
    pub config_map: String,
    #[arg(long, default_value = "100m", value_parser = quantity)]
    pub cpu_request: String,
    #[arg(long, default_value = "64Mi", value_parser = quantity)]
    pub memory_request: String,
    #[arg(long, value_parser = quantity)]
    pub cpu_limit: Option<String>,
    #[arg(long, value_parser = quantity)]
    pub memory_limit: Option<String>,
    /// User and group id the sidecar runs as (never 0: runAsNonRoot); the
    /// project's Dockerfile creates user 10001.
    #[arg(long, default_value_t = 10001, value_parser = clap::value_parser!(u32).range(1..))]
    pub uid: u32,
}

impl Args {
    pub fn sidecar(&self) -> Sidecar {
        Sidecar {
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            config_map: self.config_map.clone(),
            cpu_request: self.cpu_request.clone(),
            memory_request: self.memory_request.clone(),
            cpu_limit: self.cpu_limit.clone(),
            memory_limit: self.memory_limit.clone(),
            uid: self.uid,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `0.5`, `1e3`).
fn quantity(s: &str) -> Result<String, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    if number_ok && suffix_ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)"
        ))
    }
}

/// A DNS subdomain name (RFC 1123), as Kubernetes requires for ConfigMap names.
fn dns_subdomain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a valid ConfigMap name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// Which object a message is about: `document 2 (Deployment web)`, and for
/// a `List`, `document 1 (List), items[3] (Pod db)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Where {
    /// 1-based, counting documents with content.
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub item: Option<(usize, Option<String>, Option<String>)>,
}

fn label(f: &mut fmt::Formatter<'_>, kind: &Option<String>, name: &Option<String>) -> fmt::Result {
    match (kind, name) {
        (Some(k), Some(n)) => write!(f, " ({k} {n})"),
        (Some(k), None) => write!(f, " ({k})"),
        (None, Some(n)) => write!(f, " ({n})"),
        (None, None) => Ok(()),
    }
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        label(f, &self.kind, &self.name)?;
        if let Some((i, kind, name)) = &self.item {
            write!(f, ", items[{i}]")?;
            label(f, kind, name)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct InjectError {
    pub at: Where,
    pub reason: Reason,
}

/// The result of a run: the new stream and one line per object for stderr.
#[derive(Debug)]
pub struct Injected {
    pub output: String,
    pub report: Vec<String>,
}

/// Injects every workload of a YAML stream. All errors, or the whole result.
pub fn inject_stream(input: &str, sidecar: &Sidecar) -> Result<Injected, Vec<InjectError>> {
    let mut output = String::with_capacity(input.len() * 2);
    // A byte order mark (editors on Windows write one) is kept, and not read as part of a key.
    let input = match input.strip_prefix('\u{feff}') {
        Some(rest) => {
            output.push('\u{feff}');
            rest
        }
        None => input,
    };
    let mut report = Vec::new();
    let mut errors = Vec::new();
    let mut document = 0;
    for chunk in stream::split(input) {
        let root = match yaml::parse_document(chunk.text, chunk.first_line) {
            Ok(None) => {
                output.push_str(chunk.text);
                continue;
            }
            Ok(Some(root)) => Ok(root),
            Err(e) => Err(Reason::Yaml(e)),
        };
        document += 1;
        let mut at = Where {
            document,
            kind: None,
            name: None,
            item: None,
        };
        let result = root.and_then(|mut root| {
            at.kind = workload::kind_of(&root).ok().map(str::to_string);
            at.name = workload::name_of(&root);
            let changed = inject_document(&mut root, &mut at, sidecar, &mut report)?;
            Ok((root, changed))
        });
        match result {
            Ok((root, true)) => match yaml::emit(&root) {
                Ok(text) => {
                    output.push_str(&head(&chunk));
                    output.push_str(&text);
                    output.push_str(end_marker(&chunk));
                }
                Err(e) => errors.push(InjectError {
                    at,
                    reason: Reason::Emit(e),
                }),
            },
            Ok((_, false)) => output.push_str(chunk.text),
            Err(reason) => errors.push(InjectError { at, reason }),
        }
    }
    if errors.is_empty() {
        Ok(Injected { output, report })
    } else {
        Err(errors)
    }
}

/// What comes before a document's content — comments, directives, its `---`
/// line — kept when the document is rewritten (the rewrite has no comments).
fn head(chunk: &stream::Chunk<'_>) -> String {
    let mut head = String::new();
    let mut started = false;
    for line in chunk.text.split_inclusive('\n') {
        match stream::classify(line, !started) {
            stream::Line::Blank | stream::Line::Directive => head.push_str(line),
            stream::Line::Start if !started => {
                started = true;
                head.push_str(line);
            }
            stream::Line::StartWithContent => {
                head.push_str("---\n");
                break;
            }
            _ => break,
        }
    }
    head
}

/// The `...` line that ends a document, kept when the document is rewritten:
/// without it a bare document after it would run on into the rewritten one.
fn end_marker<'a>(chunk: &stream::Chunk<'a>) -> &'a str {
    match chunk.text.split_inclusive('\n').next_back() {
        Some(line) if stream::classify(line, false) == stream::Line::End => line,
        _ => "",
    }
}

/// Injects one document (an object or a `List` of them); true when it changed.
/// On error, `at` names the object the reason is about.
fn inject_document(
    root: &mut Node,
    at: &mut Where,
    sidecar: &Sidecar,
    report: &mut Vec<String>,
) -> Result<bool, Reason> {
    if !matches!(root, Node::Map(..)) {
        return Err(Reason::NotAnObject(root.shape()));
    }
    let kind = workload::kind_of(root)?.to_string();
    if kind != "List" {
        let outcome = workload::inject(root, &kind, sidecar)?;
        report.push(format!("{at}: {}", outcome.describe(&kind)));
        return Ok(outcome.changed());
    }
    let items = match root.get_mut("items") {
        None => {
            return Err(Reason::Missing {
                field: "items".into(),
            })
        }
        Some(n) if n.is_null() => return Ok(false),
        Some(Node::Seq(items, _)) => items,
        Some(n) => {
            return Err(Reason::NotAList {
                field: "items".into(),
                found: n.shape(),
            })
        }
    };
    let mut changed = false;
    for (i, item) in items.iter_mut().enumerate() {
        at.item = Some((i, None, None));
        if !matches!(item, Node::Map(..)) {
            return Err(Reason::NotAnObject(item.shape()));
        }
        let kind = workload::kind_of(item)?.to_string();
        at.item = Some((i, Some(kind.clone()), workload::name_of(item)));
        let outcome = workload::inject(item, &kind, sidecar)?;
        report.push(format!("{at}: {}", outcome.describe(&kind)));
        changed |= outcome.changed();
    }
    at.item = None;
    Ok(changed)
}

/// A unified diff from `before` to `after`, headed with `name`.
pub fn diff(name: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(name, &format!("{name} (injected)"))
        .to_string()
}

/// The `inject` subcommand: exit 0 with the result (or diff) on stdout, or
/// exit 1 with every error on stderr and nothing on stdout.
pub fn run(args: &Args) -> ExitCode {
    let (name, input) = match read_input(&args.file) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("zen-proxy inject: {e}");
            return ExitCode::from(1);
        }
    };
    let done = match inject_stream(&input, &args.sidecar()) {
        Ok(d) => d,
        Err(errors) => {
            for e in &errors {
                eprintln!("zen-proxy inject: {e}");
            }
            eprintln!(
                "zen-proxy inject: refused ({} error{}); nothing written",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(1);
        }
    };
    for line in &done.report {
        eprintln!("{line}");
    }
    let text = if args.dry_run {
        diff(&name, &input, &done.output)
    } else {
        done.output
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zen-proxy inject: cannot write the result: {e}");
            ExitCode::from(1)
        }
    }
}

fn read_input(file: &std::path::Path) -> Result<(String, String), String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(("<stdin>".into(), s))
    } else {
        let s = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Ok((file.display().to_string(), s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Sidecar {
        Sidecar::for_tests()
    }

    #[test]
    fn a_byte_order_mark_is_kept_and_not_taken_for_part_of_the_first_key() {
        let input =
            "\u{feff}kind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n";
        let done = inject_stream(input, &sidecar()).unwrap();
        assert_eq!(done.report, ["document 1 (Pod p): injected"]);
        assert!(
            done.output.starts_with("\u{feff}kind: Pod\n"),
            "{}",
            done.output
        );
        let unchanged = "\u{feff}kind: Service\nmetadata:\n  name: s\n";
        assert_eq!(
            inject_stream(unchanged, &sidecar()).unwrap().output,
            unchanged
        );
    }

    #[test]
    fn a_document_ended_by_dots_stays_apart_from_the_bare_document_after_it() {
        let input = "kind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: app\n...\nkind: Service\nmetadata:\n  name: s\n";
        let out = inject_stream(input, &sidecar()).unwrap().output;
        let docs: Vec<Node> = stream::split(&out)
            .iter()
            .filter_map(|c| yaml::parse_document(c.text, c.first_line).unwrap())
            .collect();
        let kinds: Vec<_> = docs.iter().map(|d| workload::kind_of(d).unwrap()).collect();
        assert_eq!(kinds, ["Pod", "Service"], "{out}");
        assert!(
            out.ends_with("...\nkind: Service\nmetadata:\n  name: s\n"),
            "{out}"
        );
        // And injecting the result again changes nothing.
        assert_eq!(inject_stream(&out, &sidecar()).unwrap().output, out);
    }
}
