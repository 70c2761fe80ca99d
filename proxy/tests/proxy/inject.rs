//! `zen-proxy inject` run as a user runs it, against golden files in
//! tests/golden/: `NAME.in.yaml` (or `.in.json`) → `NAME.out.yaml` on stdout;
//! `refuse-NAME.in.yaml` → `refuse-NAME.err` on stderr, nothing on stdout,
//! exit 1. `ZEN_UPDATE_GOLDEN=1` rewrites the expected files: read the diff
//! before committing it. The crate version in outputs is written `<version>`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::{Mapping, Value};

const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn inject(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zen-proxy"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn inject_file(path: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["-f", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    inject(&args, b"")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn normalize(s: &str) -> String {
    s.replace(VERSION, "<version>")
}

/// (name, input path) of every sample that injects successfully, including
/// the shipped example manifest.
fn samples() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?.to_string();
            let name = file
                .strip_suffix(".in.yaml")
                .or_else(|| file.strip_suffix(".in.json"))?;
            (!name.starts_with("refuse-")).then(|| (name.to_string(), p.clone()))
        })
        .collect();
    out.push((
        "example-app".into(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/k8s/example-app.yaml"),
    ));
    out.sort();
    assert!(out.len() >= 6, "samples missing: {out:?}");
    out
}

fn refusal_samples() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?.to_string();
            let name = file.strip_suffix(".in.yaml")?;
            name.starts_with("refuse-")
                .then(|| (name.to_string(), p.clone()))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "refusal samples missing: {out:?}");
    out
}

/// Compares with (or, with ZEN_UPDATE_GOLDEN=1, rewrites) a golden file.
fn check_golden(file: &str, actual: &str) -> Result<(), String> {
    let path = golden_dir().join(file);
    if std::env::var("ZEN_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path)
        .map_err(|e| format!("{file}: {e} (ZEN_UPDATE_GOLDEN=1 writes it)"))?;
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "{file} differs:\n{}",
        similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("expected", "actual")
    ))
}

fn assert_all(results: Vec<Result<(), String>>) {
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn golden_outputs() {
    let mut results = Vec::new();
    for (name, input) in samples() {
        let run = inject_file(&input, &[]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        results.push(check_golden(
            &format!("{name}.out.yaml"),
            &normalize(&run.stdout),
        ));
    }
    assert_all(results);
}

#[test]
fn injecting_twice_is_injecting_once() {
    for (name, input) in samples() {
        let once = inject_file(&input, &[]);
        assert_eq!(once.code, 0, "{name}: {}", once.stderr);
        let twice = inject(&[], once.stdout.as_bytes());
        assert_eq!(twice.code, 0, "{name}: {}", twice.stderr);
        assert_eq!(
            twice.stdout, once.stdout,
            "{name}: second injection changed the output"
        );
        assert!(
            !twice.stderr.contains(": injected"),
            "{name}: second run injected again:\n{}",
            twice.stderr
        );
        // And a dry run over injected output has nothing to show.
        let dry = inject(&["--dry-run"], once.stdout.as_bytes());
        assert_eq!((dry.code, dry.stdout.as_str()), (0, ""), "{name}");
    }
}

#[test]
fn dry_run_prints_a_unified_diff_and_not_the_result() {
    let input = golden_dir().join("deployment.in.yaml");
    let run = inject_file(&input, &["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let shown = normalize(
        &run.stdout
            .replace(input.to_str().unwrap(), "deployment.in.yaml"),
    );
    assert!(shown.starts_with("--- deployment.in.yaml\n+++ deployment.in.yaml (injected)\n"));
    assert!(shown.contains("\n+      - name: zen-proxy\n"), "{shown}");
    assert_all(vec![check_golden("deployment.diff", &shown)]);
    // The diff applies: every '-' line is in the input, every '+' line in the output.
    let out = inject_file(&input, &[]).stdout;
    let before = std::fs::read_to_string(&input).unwrap();
    for l in run.stdout.lines().skip(2) {
        if let Some(rem) = l.strip_prefix('-') {
            assert!(before.lines().any(|b| b == rem), "{l}");
        } else if let Some(add) = l.strip_prefix('+') {
            assert!(out.lines().any(|o| o == add), "{l}");
        }
    }
}

#[test]
fn documents_that_do_not_change_pass_through_byte_for_byte() {
    let skipped = golden_dir().join("skipped.in.yaml");
    let run = inject_file(&skipped, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, std::fs::read_to_string(&skipped).unwrap());
    assert!(run
        .stderr
        .contains("document 1 (Job migrate): kind Job is not injected"));
    assert!(run
        .stderr
        .contains("document 2 (Deployment opted-out): zen.mesh/inject: disabled"));
    assert!(run
        .stderr
        .contains("document 3 (Widget w): not a workload; passed through"));

    let input = std::fs::read_to_string(golden_dir().join("deployment.in.yaml")).unwrap();
    let out = inject(&[], input.as_bytes()).stdout;
    let docs: Vec<&str> = input.split("\n---\n").collect();
    // The ConfigMap (with its comments and `0644`) and the Service, verbatim.
    assert!(out.contains(docs[1]), "ConfigMap changed");
    assert!(out.contains(docs[3]), "Service changed");
    // Comments before the injected Deployment's content survive too.
    assert!(out.contains("# The Deployment: this header comment is kept"));
}

/// The output minus what inject adds equals the input: no field lost,
/// changed or reordered (compared as parsed trees, so only meaning counts).
#[test]
fn nothing_but_the_sidecar_changes() {
    for (name, input) in samples() {
        let text = std::fs::read_to_string(&input).unwrap();
        let run = inject(&[], text.as_bytes());
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let before = docs(&text);
        let mut after = docs(&run.stdout);
        assert_eq!(before.len(), after.len(), "{name}: document count");
        let mut injected = 0;
        for doc in &mut after {
            injected += strip_injection(doc);
        }
        let mut before = before;
        for doc in &mut before {
            strip_injection(doc);
        }
        assert_eq!(
            after, before,
            "{name}: something besides the sidecar changed"
        );
        let expected = run.stderr.matches(": injected").count();
        assert_eq!(injected, expected, "{name}: injected objects");
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Removes the sidecar, its volumes and the annotation from every pod spec
/// that has the sidecar; normalizes empty lists and maps inject may have
/// created. Returns how many objects had a sidecar *with* this version's
/// annotation.
fn strip_injection(doc: &mut Value) -> usize {
    let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_string) else {
        return 0;
    };
    if kind == "List" {
        return doc
            .get_mut("items")
            .and_then(Value::as_sequence_mut)
            .map(|items| items.iter_mut().map(strip_injection).sum())
            .unwrap_or(0);
    }
    let (spec, meta): (&[&str], &[&str]) = match kind.as_str() {
        "Pod" => (&["spec"], &["metadata"]),
        "Deployment" | "StatefulSet" | "DaemonSet" => (
            &["spec", "template", "spec"],
            &["spec", "template", "metadata"],
        ),
        _ => return 0,
    };
    let mut ours = false;
    if let Some(spec) = at(doc, spec) {
        if let Some(cs) = spec.get_mut("containers").and_then(Value::as_sequence_mut) {
            let n = cs.len();
            cs.retain(|c| c.get("name").and_then(Value::as_str) != Some("zen-proxy"));
            ours = cs.len() < n;
        }
        if let Some(vs) = spec.get_mut("volumes").and_then(Value::as_sequence_mut) {
            if ours {
                vs.retain(|v| {
                    !v.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.starts_with("zen-proxy-"))
                });
            }
        }
        drop_empty(spec, "volumes");
    }
    let mut annotated = 0;
    for m in [&["metadata"][..], meta] {
        if let Some(meta) = at(doc, m) {
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_mapping_mut) {
                if a.get("zen.mesh/injected").and_then(Value::as_str) == Some(VERSION) {
                    a.remove("zen.mesh/injected");
                    annotated = 1;
                }
            }
            drop_empty(meta, "annotations");
        }
    }
    if ours {
        annotated
    } else {
        0
    }
}

fn at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    let mut cur = v;
    for k in path {
        cur = cur.get_mut(*k)?;
    }
    cur.as_mapping_mut()
}

fn drop_empty(m: &mut Mapping, key: &str) {
    let empty = match m.get(key) {
        Some(Value::Null) => true,
        Some(Value::Sequence(s)) => s.is_empty(),
        Some(Value::Mapping(x)) => x.is_empty(),
        _ => false,
    };
    if empty {
        m.remove(key);
    }
}

#[test]
fn the_sidecar_has_what_kubernetes_needs() {
    let run = inject_file(&golden_dir().join("pod.in.json"), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pod: Value = serde_yaml::from_str(&run.stdout).unwrap();
    let spec = &pod["spec"];
    let c = spec["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "zen-proxy")
        .unwrap();
    assert_eq!(c["image"], format!("zen-mesh/zen-proxy:{VERSION}").as_str());
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/zen-proxy/proxy.yaml"]);
    let ports: Vec<(String, u64)> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("zen-agent".into(), 9443),
            ("zen-bootstrap".into(), 8443),
            ("zen-admin".into(), 9901)
        ]
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "zen-admin");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert!(sc["runAsUser"].as_u64().unwrap() > 0);
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(mounts.contains(&("zen-proxy-svid", "/var/run/secrets/zen-proxy/svid")));
    assert!(mounts.contains(&("zen-proxy-config", "/etc/zen-proxy")));
    assert!(mounts.contains(&("zen-proxy-state", "/var/lib/zen-proxy")));
    let vols = spec["volumes"].as_sequence().unwrap();
    let svid = vols.iter().find(|v| v["name"] == "zen-proxy-svid").unwrap();
    assert_eq!(svid["csi"]["driver"], "spiffe.csi.cert-manager.io");
    assert_eq!(svid["csi"]["readOnly"], true);
    let cfg = vols
        .iter()
        .find(|v| v["name"] == "zen-proxy-config")
        .unwrap();
    assert_eq!(cfg["configMap"]["name"], "zen-proxy-config");
    assert!(vols
        .iter()
        .any(|v| v["name"] == "zen-proxy-state" && v["emptyDir"].is_mapping()));
    assert_eq!(pod["metadata"]["annotations"]["zen.mesh/injected"], VERSION);
}

#[test]
fn options_set_image_config_map_resources_and_uid() {
    let run = inject_file(
        &golden_dir().join("pod.in.json"),
        &[
            "--image",
            "registry.local/zen-proxy:dev",
            "--image-pull-policy",
            "Always",
            "--config-map",
            "edge-proxy",
            "--cpu-request",
            "250m",
            "--memory-request",
            "128Mi",
            "--cpu-limit",
            "1",
            "--memory-limit",
            "256Mi",
            "--uid",
            "10001",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pod: Value = serde_yaml::from_str(&run.stdout).unwrap();
    let c = &pod["spec"]["containers"][1];
    assert_eq!(c["image"], "registry.local/zen-proxy:dev");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"]["requests"]["cpu"], "250m");
    assert_eq!(c["resources"]["requests"]["memory"], "128Mi");
    assert_eq!(c["resources"]["limits"]["cpu"], "1");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(c["securityContext"]["runAsUser"], 10001);
    let vols = pod["spec"]["volumes"].as_sequence().unwrap();
    assert!(vols.iter().any(|v| v["configMap"]["name"] == "edge-proxy"));

    for bad in [
        &["--uid", "0"][..],
        &["--cpu-request", "lots"],
        &["--config-map", "Not_A_Name"],
        &["--image-pull-policy", "sometimes"],
    ] {
        let run = inject_file(&golden_dir().join("pod.in.json"), bad);
        assert_eq!(run.code, 2, "{bad:?} accepted");
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn refusals_name_the_document_kind_and_field_and_print_nothing() {
    let mut results = Vec::new();
    for (name, input) in refusal_samples() {
        let run = inject_file(&input, &[]);
        assert_eq!(run.code, 1, "{name} was not refused: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{name}: stdout not empty");
        assert!(
            run.stderr.ends_with("nothing written\n"),
            "{name}: {}",
            run.stderr
        );
        results.push(check_golden(&format!("{name}.err"), &run.stderr));
        // --dry-run refuses the same way.
        let dry = inject_file(&input, &["--dry-run"]);
        assert_eq!((dry.code, dry.stdout.as_str()), (1, ""), "{name} --dry-run");
    }
    assert_all(results);
}

#[test]
fn unreadable_input_is_refused() {
    let run = inject(&["-f", "/nonexistent/zen/manifest.yaml"], b"");
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
    assert!(run
        .stderr
        .contains("cannot read /nonexistent/zen/manifest.yaml"));
}
