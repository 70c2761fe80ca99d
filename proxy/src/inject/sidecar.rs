//! What injection adds to a pod spec: the zen-proxy container and its three
//! volumes. Mount paths match config/k8s/zen-proxy-config.yaml.

use super::yaml::Node;

pub const CONTAINER: &str = "zen-proxy";
/// Annotation recording the zen-proxy version that injected an object.
pub const INJECTED_ANNOTATION: &str = "zen.mesh/injected";
/// `zen.mesh/inject: disabled` on an object or its pod template skips it.
pub const INJECT_ANNOTATION: &str = "zen.mesh/inject";

/// Ports the sidecar listens on (DESIGN §2); pods share one network namespace,
/// so no other container of the pod may use them.
pub const PORTS: [(&str, u16); 3] = [
    ("zen-agent", 9443),
    ("zen-bootstrap", 8443),
    ("zen-admin", 9901),
];

/// The SVID, in cert-manager csi-driver-spiffe layout: tls.crt, tls.key, ca.crt.
pub const SVID_VOLUME: &str = "zen-proxy-svid";
pub const SVID_DIR: &str = "/var/run/secrets/zen-proxy/svid";
pub const SVID_CSI_DRIVER: &str = "spiffe.csi.cert-manager.io";
/// The ConfigMap holding `proxy.yaml`.
pub const CONFIG_VOLUME: &str = "zen-proxy-config";
pub const CONFIG_DIR: &str = "/etc/zen-proxy";
/// Writable state (control's last-known state cache); the root filesystem is read-only.
pub const STATE_VOLUME: &str = "zen-proxy-state";
pub const STATE_DIR: &str = "/var/lib/zen-proxy";

pub const VOLUMES: [&str; 3] = [SVID_VOLUME, CONFIG_VOLUME, STATE_VOLUME];

#[derive(Debug, Clone)]
pub struct Sidecar {
    pub image: String,
    pub image_pull_policy: String,
    pub config_map: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub uid: u32,
    /// Value of the `zen.mesh/injected` annotation.
    pub version: String,
}

impl Sidecar {
    /// The defaults of `zen-proxy inject`, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Sidecar {
        Sidecar {
            image: "zen-mesh/zen-proxy:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            config_map: "zen-proxy-config".into(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: None,
            memory_limit: None,
            uid: 10001,
            version: "test".into(),
        }
    }

    pub fn container(&self) -> Node {
        let probe = |path: &str, period: i64| {
            Node::map([
                (
                    "httpGet",
                    Node::map([("path", Node::str(path)), ("port", Node::str("zen-admin"))]),
                ),
                ("periodSeconds", Node::int(period)),
                ("failureThreshold", Node::int(3)),
            ])
        };
        let mut resources = vec![(
            "requests",
            Node::map([
                ("cpu", Node::str(&self.cpu_request)),
                ("memory", Node::str(&self.memory_request)),
            ]),
        )];
        let limits: Vec<(&str, Node)> = [("cpu", &self.cpu_limit), ("memory", &self.memory_limit)]
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, Node::str(v))))
            .collect();
        if !limits.is_empty() {
            resources.push(("limits", Node::map(limits)));
        }
        Node::map([
            ("name", Node::str(CONTAINER)),
            ("image", Node::str(&self.image)),
            ("imagePullPolicy", Node::str(&self.image_pull_policy)),
            // Explicit, so any image with zen-proxy on its PATH works whatever its entrypoint.
            ("command", Node::seq([Node::str("zen-proxy")])),
            (
                "args",
                Node::seq([
                    Node::str("run"),
                    Node::str("--config"),
                    Node::str(&format!("{CONFIG_DIR}/proxy.yaml")),
                ]),
            ),
            (
                "ports",
                Node::seq(PORTS.iter().map(|(name, port)| {
                    Node::map([
                        ("name", Node::str(name)),
                        ("containerPort", Node::int(i64::from(*port))),
                        ("protocol", Node::str("TCP")),
                    ])
                })),
            ),
            ("readinessProbe", probe("/readyz", 5)),
            ("livenessProbe", probe("/healthz", 10)),
            ("resources", Node::map(resources)),
            (
                "securityContext",
                Node::map([
                    ("runAsNonRoot", Node::bool(true)),
                    ("runAsUser", Node::int(i64::from(self.uid))),
                    ("runAsGroup", Node::int(i64::from(self.uid))),
                    ("readOnlyRootFilesystem", Node::bool(true)),
                    ("allowPrivilegeEscalation", Node::bool(false)),
                    (
                        "capabilities",
                        Node::map([("drop", Node::seq([Node::str("ALL")]))]),
                    ),
                    (
                        "seccompProfile",
                        Node::map([("type", Node::str("RuntimeDefault"))]),
                    ),
                ]),
            ),
            (
                "volumeMounts",
                Node::seq([
                    mount(SVID_VOLUME, SVID_DIR, true),
                    mount(CONFIG_VOLUME, CONFIG_DIR, true),
                    mount(STATE_VOLUME, STATE_DIR, false),
                ]),
            ),
        ])
    }

    pub fn volumes(&self) -> [Node; 3] {
        [
            Node::map([
                ("name", Node::str(SVID_VOLUME)),
                (
                    "csi",
                    Node::map([
                        ("driver", Node::str(SVID_CSI_DRIVER)),
                        ("readOnly", Node::bool(true)),
                    ]),
                ),
            ]),
            Node::map([
                ("name", Node::str(CONFIG_VOLUME)),
                (
                    "configMap",
                    Node::map([("name", Node::str(&self.config_map))]),
                ),
            ]),
            Node::map([
                ("name", Node::str(STATE_VOLUME)),
                ("emptyDir", Node::map([])),
            ]),
        ]
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> Node {
    let mut m = vec![("name", Node::str(name)), ("mountPath", Node::str(path))];
    if read_only {
        m.push(("readOnly", Node::bool(true)));
    }
    Node::map(m)
}
