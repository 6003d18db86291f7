//! What a request asks for, read from its method, path and query as kube-apiserver's
//! RequestInfoFactory reads them; authorization and the handlers both work from this.

use std::collections::HashMap;

use http::Method;

/// A request for an API resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    /// The API group; empty for core.
    pub group: String,
    /// The version.
    pub version: String,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The plural resource.
    pub resource: String,
    /// The object name, if any.
    pub name: Option<String>,
    /// The subresource, such as `status`.
    pub subresource: Option<String>,
    /// The verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
}

/// What the path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// A resource request.
    Resource(ResourceRequest),
    /// Any other path (discovery, health, version); authorized by path and verb.
    NonResource {
        /// The path.
        path: String,
        /// The lower-case HTTP verb: get, post, put, patch, delete.
        verb: &'static str,
    },
}

fn http_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "unknown",
    }
}

/// The verb as a static string; verbs outside Kubernetes' vocabulary read as `unknown`, which
/// only a `*` rule grants.
pub fn static_verb(verb: &str) -> &'static str {
    const VERBS: &[&str] = &[
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "impersonate",
        "bind",
        "escalate",
        "use",
        "approve",
        "sign",
        "post",
        "put",
        "head",
        "options",
        "proxy",
    ];
    VERBS
        .iter()
        .find(|v| **v == verb)
        .copied()
        .unwrap_or("unknown")
}

/// Namespace subresources that are not namespaced resources of their own.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Reads the target of a request.
pub fn parse_target(method: &Method, path: &str, query: &Query) -> RequestTarget {
    let non_resource = || RequestTarget::NonResource {
        path: path.to_string(),
        verb: http_verb(method),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return non_resource(),
    };
    let (namespace, rest) = split_namespace(rest);
    let resource = rest[0].to_string();
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = if rest.len() > 2 {
        Some(rest[2..].join("/"))
    } else {
        None
    };
    let watch = query.flag("watch");
    let verb = match *method {
        Method::GET | Method::HEAD => match (&name, watch) {
            (_, true) => "watch",
            (Some(_), false) => "get",
            (None, false) => "list",
        },
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => {
            if name.is_some() {
                "delete"
            } else {
                "deletecollection"
            }
        }
        _ => "unknown",
    };
    RequestTarget::Resource(ResourceRequest {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource,
        name,
        subresource,
        verb,
    })
}

/// Splits `namespaces/<ns>/<rest>` off a path's tail after the group and version, as
/// RequestInfoFactory does: the namespace, and the parts that name the resource. A Namespace's
/// own path (`namespaces/<name>[/status|/finalize]`) keeps its parts and also names the
/// namespace, as upstream reads it.
fn split_namespace<'p>(rest: &'p [&'p str]) -> (Option<String>, &'p [&'p str]) {
    match rest {
        ["namespaces", ns, tail @ ..] => {
            let namespace = Some(ns.to_string());
            match tail.first() {
                Some(next) if !NAMESPACE_SUBRESOURCES.contains(next) => (namespace, tail),
                _ => (namespace, rest),
            }
        }
        _ => (None, rest),
    }
}

/// Whether a resource path names its resource after a `namespaces/<ns>/` prefix
/// (`/api/v1/namespaces/a/configmaps`), rather than at the top of its group version
/// (`/api/v1/namespaces/a`, `/api/v1/configmaps`). kube-apiserver serves cluster-scoped
/// resources (Namespaces too) only at the top, so such a path to one is 404 there.
pub fn is_namespace_prefixed(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _, rest @ ..] if !rest.is_empty() => rest,
        ["apis", _, _, rest @ ..] if !rest.is_empty() => rest,
        _ => return false,
    };
    let (_, tail) = split_namespace(rest);
    tail.len() < rest.len()
}

/// A request's query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Query {
        let params = raw
            .map(|q| {
                form_urlencoded_pairs(q)
                    .into_iter()
                    .collect::<HashMap<String, String>>()
            })
            .unwrap_or_default();
        Query { params }
    }

    /// A parameter's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// A parameter's value, empty strings read as absent.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|s| !s.is_empty())
    }

    /// A boolean parameter (`true`, `1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1") | Some("True"))
    }
}

fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: Method, path: &str, query: &str) -> RequestTarget {
        parse_target(&method, path, &Query::parse(Some(query)))
    }

    #[test]
    fn paths_read_as_kube_apiserver_reads_them() {
        let RequestTarget::Resource(r) =
            target(Method::GET, "/api/v1/namespaces/ns1/configmaps/cm", "")
        else {
            panic!("not a resource request");
        };
        assert_eq!(
            (
                r.group.as_str(),
                r.namespace.as_deref(),
                r.resource.as_str()
            ),
            ("", Some("ns1"), "configmaps")
        );
        assert_eq!((r.name.as_deref(), r.verb), (Some("cm"), "get"));

        let RequestTarget::Resource(r) = target(Method::PUT, "/api/v1/namespaces/ns1/status", "")
        else {
            panic!("not a resource request");
        };
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("ns1"), Some("status"))
        );
        assert_eq!(r.verb, "update");

        let RequestTarget::Resource(r) = target(
            Method::GET,
            "/apis/coordination.k8s.io/v1/leases",
            "watch=true&labelSelector=a%3Db",
        ) else {
            panic!("not a resource request");
        };
        assert_eq!((r.group.as_str(), r.verb), ("coordination.k8s.io", "watch"));

        let RequestTarget::Resource(r) = target(Method::DELETE, "/api/v1/namespaces/x/secrets", "")
        else {
            panic!("not a resource request");
        };
        assert_eq!(r.verb, "deletecollection");

        assert!(matches!(
            target(Method::GET, "/apis/apps/v1", ""),
            RequestTarget::NonResource { .. }
        ));
        assert_eq!(
            Query::parse(Some("labelSelector=a%3Db%2Cc+in+(x)&x")).get("labelSelector"),
            Some("a=b,c in (x)")
        );
    }

    #[test]
    fn a_resource_after_a_namespace_is_told_from_a_namespace_itself() {
        for path in [
            "/api/v1/namespaces/a/configmaps",
            "/api/v1/namespaces/a/namespaces",
            "/api/v1/namespaces/a/namespaces/b",
            "/api/v1/namespaces/a/namespaces/b/status",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/clusterroles/x",
        ] {
            assert!(is_namespace_prefixed(path), "{path}");
        }
        for path in [
            "/api/v1/namespaces",
            "/api/v1/namespaces/a",
            "/api/v1/namespaces/a/status",
            "/api/v1/namespaces/a/finalize",
            "/api/v1/configmaps",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/x",
            "/version",
        ] {
            assert!(!is_namespace_prefixed(path), "{path}");
        }
        let RequestTarget::Resource(r) =
            target(Method::DELETE, "/api/v1/namespaces/a/namespaces/b", "")
        else {
            panic!("not a resource request");
        };
        // Read as upstream reads it (authorized in `a`); the handler then answers 404.
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref()
            ),
            (Some("a"), "namespaces", Some("b"))
        );
    }
}
