//! Where each kind keeps its pod spec, and the injection into one object.
//! Every check runs before the first change, so a refused object is untouched.

use super::sidecar::{self, Sidecar};
use super::yaml::{EmitError, Node, ParseError};

/// Why an object cannot be injected. `field` is a path inside the object
/// (`spec.template.spec.containers[1].ports`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("not valid YAML: {0}")]
    Yaml(#[from] ParseError),
    #[error("{0}")]
    Emit(#[from] EmitError),
    #[error("is {0}, not a Kubernetes object (a mapping)")]
    NotAnObject(&'static str),
    #[error("has no kind")]
    NoKind,
    #[error("{field} is missing")]
    Missing { field: String },
    #[error("{field} is {found}, not a mapping")]
    NotAMapping { field: String, found: &'static str },
    #[error("{field} is {found}, not a list")]
    NotAList { field: String, found: &'static str },
    #[error("{field} is {found}, not a string")]
    NotAString { field: String, found: &'static str },
    #[error("{field} is empty")]
    Empty { field: String },
    #[error("{field} already has a volume named {name:?} but no {container} container; rename that volume", container = sidecar::CONTAINER)]
    VolumeTaken { field: String, name: &'static str },
    #[error("{field} is {port}, a port the zen-proxy sidecar listens on (container {container:?}; a pod's containers share one network namespace)")]
    PortTaken {
        field: String,
        container: String,
        port: u16,
    },
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    AlreadyInjected,
    /// `zen.mesh/inject: disabled`.
    Disabled,
    /// Not a workload (Service, ConfigMap, …): passed through.
    NotAWorkload,
    /// A workload kind inject does not handle (Job, CronJob, …): passed through.
    Unsupported,
}

impl Outcome {
    pub fn changed(self) -> bool {
        self == Outcome::Injected
    }

    pub fn describe(self, kind: &str) -> String {
        match self {
            Outcome::Injected => "injected".into(),
            Outcome::AlreadyInjected => {
                format!("already has a {} container; left as is", sidecar::CONTAINER)
            }
            Outcome::Disabled => format!("{}: disabled; left as is", sidecar::INJECT_ANNOTATION),
            Outcome::NotAWorkload => "not a workload; passed through".into(),
            Outcome::Unsupported => format!(
                "kind {kind} is not injected (only Deployment, StatefulSet, DaemonSet, Pod); passed through"
            ),
        }
    }
}

/// Paths of the pod spec and the pod metadata for a kind inject handles.
fn pod_paths(kind: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    match kind {
        "Pod" => Some((&["spec"], &["metadata"])),
        "Deployment" | "StatefulSet" | "DaemonSet" => Some((
            &["spec", "template", "spec"],
            &["spec", "template", "metadata"],
        )),
        _ => None,
    }
}

/// Workload kinds that carry a pod template but are left alone: a sidecar
/// that never exits would keep a Job from completing; ReplicaSets and
/// ReplicationControllers are owned by something that should be injected instead.
fn unsupported_workload(kind: &str) -> bool {
    matches!(
        kind,
        "Job" | "CronJob" | "ReplicaSet" | "ReplicationController" | "PodTemplate"
    )
}

pub fn kind_of(obj: &Node) -> Result<&str, Reason> {
    match obj.get("kind") {
        None => Err(Reason::NoKind),
        Some(k) if k.is_null() => Err(Reason::NoKind),
        Some(k) => k.as_str().ok_or(Reason::NotAString {
            field: "kind".into(),
            found: k.shape(),
        }),
    }
}

/// `metadata.name`, else `metadata.generateName`, for messages.
pub fn name_of(obj: &Node) -> Option<String> {
    let meta = obj.get("metadata")?;
    ["name", "generateName"]
        .iter()
        .find_map(|k| meta.get(k).and_then(Node::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn join(path: &[&str]) -> String {
    path.join(".")
}

/// The mapping at `path`, which must be there.
fn mapping_at<'a>(obj: &'a Node, path: &[&str]) -> Result<&'a Node, Reason> {
    let mut cur = obj;
    for (i, key) in path.iter().enumerate() {
        cur = match cur.get(key) {
            Some(n @ Node::Map(..)) => n,
            None => {
                return Err(Reason::Missing {
                    field: join(&path[..=i]),
                })
            }
            Some(n) => {
                return Err(Reason::NotAMapping {
                    field: join(&path[..=i]),
                    found: n.shape(),
                })
            }
        };
    }
    Ok(cur)
}

/// The mapping at `path` if there is one (missing or null: None).
fn optional_mapping_at<'a>(obj: &'a Node, path: &[&str]) -> Result<Option<&'a Node>, Reason> {
    let mut cur = obj;
    for (i, key) in path.iter().enumerate() {
        cur = match cur.get(key) {
            Some(n @ Node::Map(..)) => n,
            None => return Ok(None),
            Some(n) if n.is_null() => return Ok(None),
            Some(n) => {
                return Err(Reason::NotAMapping {
                    field: join(&path[..=i]),
                    found: n.shape(),
                })
            }
        };
    }
    Ok(Some(cur))
}

/// Items of the list under `key` of `map`; a missing or null list is empty.
fn list<'a>(map: &'a Node, key: &str, field: &str) -> Result<&'a [Node], Reason> {
    match map.get(key) {
        None => Ok(&[]),
        Some(n) if n.is_null() => Ok(&[]),
        Some(Node::Seq(items, _)) => Ok(items),
        Some(n) => Err(Reason::NotAList {
            field: field.to_string(),
            found: n.shape(),
        }),
    }
}

fn annotations<'a>(obj: &'a Node, meta_path: &[&str]) -> Result<Option<&'a Node>, Reason> {
    let Some(meta) = optional_mapping_at(obj, meta_path)? else {
        return Ok(None);
    };
    let field = format!("{}.annotations", join(meta_path));
    match meta.get("annotations") {
        None => Ok(None),
        Some(n) if n.is_null() => Ok(None),
        Some(n @ Node::Map(..)) => Ok(Some(n)),
        Some(n) => Err(Reason::NotAMapping {
            field,
            found: n.shape(),
        }),
    }
}

fn disabled(annotations: Option<&Node>) -> bool {
    annotations
        .and_then(|a| a.get(sidecar::INJECT_ANNOTATION))
        .and_then(Node::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case("disabled"))
}

/// The containers of one list, each checked to be a mapping with a string name.
fn named_containers<'a>(
    spec: &'a Node,
    key: &str,
    base: &str,
) -> Result<Vec<(String, &'a Node)>, Reason> {
    let field = format!("{base}.{key}");
    let mut out = Vec::new();
    for (i, c) in list(spec, key, &field)?.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if !matches!(c, Node::Map(..)) {
            return Err(Reason::NotAMapping {
                field: at,
                found: c.shape(),
            });
        }
        let name = match c.get("name") {
            None => {
                return Err(Reason::Missing {
                    field: format!("{at}.name"),
                })
            }
            Some(n) => n.as_str().ok_or(Reason::NotAString {
                field: format!("{at}.name"),
                found: n.shape(),
            })?,
        };
        out.push((name.to_string(), c));
    }
    Ok(out)
}

/// Checks `obj` (of a kind with a pod spec) and injects the sidecar.
pub fn inject(obj: &mut Node, kind: &str, sidecar: &Sidecar) -> Result<Outcome, Reason> {
    let Some((spec_path, pod_meta_path)) = pod_paths(kind) else {
        return Ok(if unsupported_workload(kind) {
            Outcome::Unsupported
        } else {
            Outcome::NotAWorkload
        });
    };
    let object_meta: &[&str] = &["metadata"];
    let own = annotations(obj, object_meta)?;
    let pod = annotations(obj, pod_meta_path)?;
    if disabled(own) || disabled(pod) {
        return Ok(Outcome::Disabled);
    }

    let spec = mapping_at(obj, spec_path)?;
    let base = join(spec_path);
    let containers = named_containers(spec, "containers", &base)?;
    if containers.is_empty() {
        return Err(match spec.get("containers") {
            None => Reason::Missing {
                field: format!("{base}.containers"),
            },
            Some(_) => Reason::Empty {
                field: format!("{base}.containers"),
            },
        });
    }
    let init = named_containers(spec, "initContainers", &base)?;
    if containers
        .iter()
        .chain(&init)
        .any(|(name, _)| name == sidecar::CONTAINER)
    {
        return Ok(Outcome::AlreadyInjected);
    }

    let volumes_field = format!("{base}.volumes");
    for (i, v) in list(spec, "volumes", &volumes_field)?.iter().enumerate() {
        if !matches!(v, Node::Map(..)) {
            return Err(Reason::NotAMapping {
                field: format!("{volumes_field}[{i}]"),
                found: v.shape(),
            });
        }
        let Some(name) = v.get("name").and_then(Node::as_str) else {
            return Err(Reason::Missing {
                field: format!("{volumes_field}[{i}].name"),
            });
        };
        if let Some(taken) = sidecar::VOLUMES.iter().find(|t| **t == name) {
            return Err(Reason::VolumeTaken {
                field: volumes_field,
                name: taken,
            });
        }
    }

    for (key, list_of) in [("containers", &containers), ("initContainers", &init)] {
        for (i, (name, c)) in list_of.iter().enumerate() {
            let ports = format!("{base}.{key}[{i}].ports");
            for (j, p) in list(c, "ports", &ports)?.iter().enumerate() {
                let port = p
                    .get("containerPort")
                    .and_then(Node::as_str)
                    .and_then(yaml11_port);
                if let Some((_, taken)) = sidecar::PORTS.iter().find(|(_, n)| Some(*n) == port) {
                    return Err(Reason::PortTaken {
                        field: format!("{ports}[{j}].containerPort"),
                        container: name.clone(),
                        port: *taken,
                    });
                }
            }
        }
    }

    // Checked; now change.
    let spec = node_at_mut(obj, spec_path);
    spec.entry("containers", Node::seq([]))
        .push(sidecar.container());
    let volumes = spec.entry("volumes", Node::seq([]));
    for v in sidecar.volumes() {
        volumes.push(v);
    }
    annotate(obj, object_meta, &sidecar.version);
    if pod_meta_path != object_meta {
        annotate(obj, pod_meta_path, &sidecar.version);
    }
    Ok(Outcome::Injected)
}

/// A port as Kubernetes' YAML 1.1 reader takes the integer: `9443`, `+9443`, `9_443`,
/// `0x24e3`, `0b…` and `022343` (octal) are all 9443.
fn yaml11_port(text: &str) -> Option<u16> {
    let digits: String = text.trim_start_matches('+').replace('_', "");
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(bin) = digits.strip_prefix("0b") {
        (2, bin)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits.as_str())
    };
    u16::from_str_radix(digits, radix).ok()
}

fn node_at_mut<'a>(obj: &'a mut Node, path: &[&str]) -> &'a mut Node {
    let mut cur = obj;
    for key in path {
        cur = cur.entry(key, Node::map([]));
    }
    cur
}

fn annotate(obj: &mut Node, meta_path: &[&str], version: &str) {
    let meta = node_at_mut(obj, meta_path);
    let annotations = meta.entry("annotations", Node::map([]));
    match annotations.get_mut(sidecar::INJECTED_ANNOTATION) {
        Some(v) => *v = Node::str(version),
        None => {
            if let Node::Map(entries, _) = annotations {
                entries.push((Node::str(sidecar::INJECTED_ANNOTATION), Node::str(version)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hex_or_octal_container_port_on_a_sidecar_port_is_refused() {
        let sidecar = Sidecar::for_tests();
        for port in ["0x24e3", "022343"] {
            let text = format!(
                "kind: Pod\nspec:\n  containers:\n  - name: app\n    ports:\n    - containerPort: {port}\n"
            );
            let mut pod = super::super::yaml::parse_document(&text, 1)
                .unwrap()
                .unwrap();
            let refused = inject(&mut pod, "Pod", &sidecar);
            assert!(
                matches!(refused, Err(Reason::PortTaken { port: 9443, .. })),
                "{port}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_sidecar_port_is_found_in_every_form_a_yaml_1_1_reader_takes_as_it() {
        for text in [
            "9443",
            "+9443",
            "9_443",
            "0x24e3",
            "0b10010011100011",
            "022343",
        ] {
            assert_eq!(yaml11_port(text), Some(9443), "{text}");
        }
        assert_eq!(yaml11_port("8080"), Some(8080));
        assert_eq!(yaml11_port("0"), Some(0));
        assert_eq!(yaml11_port("http"), None);
        assert_eq!(yaml11_port("70000"), None);
    }
}
