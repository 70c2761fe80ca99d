//! Routes: listener + methods + path template → upstream and auth policy.

use std::sync::Arc;

use super::SpiffePattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    Agent,
    Bootstrap,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Agent => "agent",
            Listener::Bootstrap => "bootstrap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSeg {
    Literal(String),
    Var(String),
}

/// `/agent/v1/clusters/{cid}/desired-state`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segs: Vec<PathSeg>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("empty, '.' or '..' segment")]
    BadSegment,
    #[error("bad variable segment {0:?} (use {{name}} with letters, digits, '_')")]
    BadVar(String),
    #[error("variable {0:?} appears twice")]
    DuplicateVar(String),
}

impl PathTemplate {
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let rest = s.strip_prefix('/').ok_or(TemplateError::NoLeadingSlash)?;
        let mut segs: Vec<PathSeg> = Vec::new();
        for part in rest.split('/') {
            let seg = match part {
                "" | "." | ".." => return Err(TemplateError::BadSegment),
                v if v.starts_with('{') => {
                    let name = v
                        .strip_prefix('{')
                        .and_then(|v| v.strip_suffix('}'))
                        .filter(|n| {
                            !n.is_empty()
                                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        })
                        .ok_or_else(|| TemplateError::BadVar(v.into()))?;
                    if segs
                        .iter()
                        .any(|s| matches!(s, PathSeg::Var(n) if n == name))
                    {
                        return Err(TemplateError::DuplicateVar(name.into()));
                    }
                    PathSeg::Var(name.into())
                }
                v if v.contains(['{', '}']) => return Err(TemplateError::BadVar(v.into())),
                v => PathSeg::Literal(v.into()),
            };
            segs.push(seg);
        }
        Ok(PathTemplate {
            source: s.into(),
            segs,
        })
    }

    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            PathSeg::Var(v) => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Match a request path (no query). Returns the bound variables.
    fn matches<'p>(&'p self, path: &'p str) -> Option<Vec<(&'p str, &'p str)>> {
        let rest = path.strip_prefix('/')?;
        let mut vars = Vec::new();
        let mut parts = rest.split('/');
        for seg in &self.segs {
            let part = parts.next()?;
            // Dot segments and empty segments never match: the upstream must see
            // the same path the policy was decided on.
            if part.is_empty() || part == "." || part == ".." {
                return None;
            }
            match seg {
                PathSeg::Literal(l) if l == part => {}
                PathSeg::Literal(_) => return None,
                PathSeg::Var(name) => vars.push((name.as_str(), part)),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(vars)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hmac {
    Required,
    Off,
}

/// A validated route. Built only by config validation.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub listener: Listener,
    /// Upper-case method names.
    pub methods: Vec<String>,
    pub path: PathTemplate,
    pub upstream: String,
    /// Empty = any peer (only allowed on the bootstrap listener).
    pub spiffe: Vec<SpiffePattern>,
    pub hmac: Hmac,
    pub max_body_bytes: usize,
}

pub struct RouteMatch<'r> {
    pub route: &'r Arc<Route>,
    pub vars: Vec<(&'r str, &'r str)>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// First route of `listener` whose method and path template match.
    pub fn find<'a>(
        &'a self,
        listener: Listener,
        method: &str,
        path: &'a str,
    ) -> Option<RouteMatch<'a>> {
        self.routes
            .iter()
            .filter(|r| r.listener == listener && r.methods.iter().any(|m| m == method))
            .find_map(|r| {
                r.path
                    .matches(path)
                    .map(|vars| RouteMatch { route: r, vars })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(listener: Listener, method: &str, path: &str) -> Route {
        Route {
            name: path.into(),
            listener,
            methods: vec![method.into()],
            path: PathTemplate::parse(path).unwrap(),
            upstream: "control".into(),
            spiffe: vec![],
            hmac: Hmac::Required,
            max_body_bytes: 1024,
        }
    }

    #[test]
    fn matches_template_and_binds_vars() {
        let t = RouteTable::new(vec![
            route(
                Listener::Agent,
                "GET",
                "/agent/v1/clusters/{cid}/desired-state",
            ),
            route(Listener::Bootstrap, "POST", "/enroll/v1/request"),
        ]);
        let m = t
            .find(
                Listener::Agent,
                "GET",
                "/agent/v1/clusters/c1/desired-state",
            )
            .unwrap();
        assert_eq!(m.vars, vec![("cid", "c1")]);
        assert!(t
            .find(
                Listener::Agent,
                "POST",
                "/agent/v1/clusters/c1/desired-state"
            )
            .is_none());
        assert!(t
            .find(
                Listener::Agent,
                "GET",
                "/agent/v1/clusters/c1/desired-state/x"
            )
            .is_none());
        assert!(t
            .find(Listener::Agent, "GET", "/agent/v1/clusters//desired-state")
            .is_none());
        assert!(t
            .find(
                Listener::Agent,
                "GET",
                "/agent/v1/clusters/../desired-state"
            )
            .is_none());
        // Bootstrap routes are not served on the agent listener and vice versa.
        assert!(t
            .find(Listener::Agent, "POST", "/enroll/v1/request")
            .is_none());
        assert!(t
            .find(Listener::Bootstrap, "POST", "/enroll/v1/request")
            .is_some());
    }

    #[test]
    fn template_errors() {
        assert_eq!(
            PathTemplate::parse("a/b"),
            Err(TemplateError::NoLeadingSlash)
        );
        assert_eq!(PathTemplate::parse("/a//b"), Err(TemplateError::BadSegment));
        assert!(matches!(
            PathTemplate::parse("/a/{x"),
            Err(TemplateError::BadVar(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/{x}/{x}"),
            Err(TemplateError::DuplicateVar(_))
        ));
    }
}
