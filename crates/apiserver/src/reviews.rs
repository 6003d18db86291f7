//! Access reviews and identity: SelfSubjectAccessReview and SubjectAccessReview
//! (`kubectl auth can-i`), SelfSubjectReview (`kubectl auth whoami`), and impersonation
//! (`Impersonate-User`/`Impersonate-Group`, `kubectl --as`), each authorized as upstream.

use std::collections::BTreeMap;

use http::HeaderMap;
use serde_json::{Value, json};

use crate::auth::{SYSTEM_AUTHENTICATED, UserInfo};
use crate::error::ApiError;
use crate::rbac;
use crate::registry::{GroupResource, ResourceDef};
use crate::request::{RequestTarget, ResourceRequest, static_verb};
use crate::storage::{Storage, string_list};

fn target_of(spec: &Value) -> Result<RequestTarget, ApiError> {
    if let Some(attrs) = spec.get("resourceAttributes") {
        let s = |k: &str| {
            attrs
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let non_empty = |v: String| (!v.is_empty()).then_some(v);
        return Ok(RequestTarget::Resource(ResourceRequest {
            group: s("group"),
            version: s("version"),
            namespace: non_empty(s("namespace")),
            resource: s("resource"),
            name: non_empty(s("name")),
            subresource: non_empty(s("subresource")),
            verb: static_verb(&s("verb")),
        }));
    }
    if let Some(attrs) = spec.get("nonResourceAttributes") {
        let s = |k: &str| attrs.get(k).and_then(Value::as_str).unwrap_or_default();
        return Ok(RequestTarget::NonResource {
            path: s("path").to_string(),
            verb: static_verb(s("verb")),
        });
    }
    Err(ApiError::invalid(
        "SelfSubjectAccessReview",
        "authorization.k8s.io",
        "",
        vec![crate::error::Cause::required(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )],
    ))
}

/// Answers a review kind's create.
pub async fn answer(
    storage: &Storage,
    def: &ResourceDef,
    user: &UserInfo,
    mut body: Value,
) -> Result<Value, ApiError> {
    body["apiVersion"] = json!(def.api_version());
    body["kind"] = json!(def.kind);
    match def.kind.as_str() {
        "SelfSubjectReview" => {
            let mut info = json!({
                "username": user.name,
                "groups": user.all_groups(),
            });
            if !user.uid.is_empty() {
                info["uid"] = json!(user.uid);
            }
            if !user.extra.is_empty() {
                info["extra"] = json!(user.extra);
            }
            body["status"] = json!({ "userInfo": info });
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let spec = body.get("spec").cloned().unwrap_or(json!({}));
            let subject = if def.kind == "SubjectAccessReview" {
                UserInfo {
                    name: spec
                        .get("user")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    groups: string_list(spec.get("groups")),
                    uid: spec
                        .get("uid")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    extra: BTreeMap::new(),
                }
            } else {
                user.clone()
            };
            let allowed = rbac::authorize(storage, &subject, &target_of(&spec)?).await?;
            body["status"] = if allowed {
                json!({"allowed": true, "reason": "RBAC: allowed"})
            } else {
                json!({"allowed": false})
            };
        }
        _ => return Err(ApiError::method_not_allowed()),
    }
    Ok(body)
}

/// The prefix of `Impersonate-Extra-<key>` headers (lower case, as header names are read).
const IMPERSONATE_EXTRA_PREFIX: &str = "impersonate-extra-";

/// A header's values as text; a value that is not text is 400 (upstream would read its bytes,
/// which no RBAC rule names).
fn header_values(headers: &HeaderMap, name: &str) -> Result<Vec<String>, ApiError> {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request(format!("invalid {name} header")))
        })
        .collect()
}

/// A `system:serviceaccount:<namespace>:<name>` user name's namespace and name, as upstream's
/// `serviceaccount.SplitUsername`: exactly two non-empty parts.
fn split_service_account(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .then(|| (ns.to_string(), sa.to_string()))
}

/// Applies the impersonation headers when present and allowed, as upstream's impersonation
/// filter: `Impersonate-User` (a user, or a ServiceAccount by its user name), each
/// `Impersonate-Group`, each `Impersonate-Extra-<key>` value and `Impersonate-Uid`, each
/// authorized by `impersonate` on `users`, `serviceaccounts`, `groups`,
/// `userextras/<key>` (authentication.k8s.io) or `uids` (authentication.k8s.io) named after
/// the value. Any of the others without a user is 400.
pub async fn impersonate(
    storage: &Storage,
    user: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let as_user = header_values(headers, "impersonate-user")?
        .into_iter()
        .next()
        .filter(|u| !u.is_empty());
    let as_groups = header_values(headers, "impersonate-group")?;
    let as_uid = header_values(headers, "impersonate-uid")?
        .into_iter()
        .next()
        .filter(|u| !u.is_empty());
    let mut as_extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in headers.keys() {
        let Some(key) = name.as_str().strip_prefix(IMPERSONATE_EXTRA_PREFIX) else {
            continue;
        };
        // Header names cannot hold every key, so keys come percent-encoded, as upstream.
        let key = percent_decode(key);
        as_extra
            .entry(key)
            .or_default()
            .extend(header_values(headers, name.as_str())?);
    }
    let Some(name) = as_user else {
        if as_groups.is_empty() && as_uid.is_none() && as_extra.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, user extras or a uid without impersonating a user",
        ));
    };
    let requester = &user;
    let check = |target: ResourceRequest| async move {
        let gr = GroupResource::new(&target.group, &target.resource);
        let name = target.name.clone().unwrap_or_default();
        let ns = target.namespace.clone();
        let subresource = target.subresource.clone();
        if rbac::authorize(storage, requester, &RequestTarget::Resource(target)).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden_resource(
                &requester.name,
                "impersonate",
                &gr,
                subresource.as_deref(),
                &name,
                ns.as_deref(),
            ))
        }
    };
    let service_account = split_service_account(&name);
    let request =
        |group: &str, resource: &str, namespace: Option<String>, name: &str| ResourceRequest {
            group: group.to_string(),
            version: "v1".into(),
            namespace,
            resource: resource.into(),
            name: Some(name.to_string()),
            subresource: None,
            verb: "impersonate",
        };
    match &service_account {
        Some((ns, sa)) => check(request("", "serviceaccounts", Some(ns.clone()), sa)).await?,
        None => check(request("", "users", None, &name)).await?,
    }
    for group in &as_groups {
        check(request("", "groups", None, group)).await?;
    }
    for (key, values) in &as_extra {
        for value in values {
            let mut target = request(AUTHENTICATION_GROUP, "userextras", None, value);
            target.subresource = Some(key.clone());
            check(target).await?;
        }
    }
    if let Some(uid) = &as_uid {
        check(request(AUTHENTICATION_GROUP, "uids", None, uid)).await?;
    }
    let mut groups = as_groups;
    if groups.is_empty()
        && let Some((ns, _)) = &service_account
    {
        groups = vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ];
    }
    groups.retain(|g| g != SYSTEM_AUTHENTICATED);
    Ok(UserInfo {
        name,
        groups,
        uid: as_uid.unwrap_or_default(),
        extra: as_extra,
    })
}

/// The API group of `userextras` and `uids` in impersonation checks.
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// Percent-decodes an extra key as Go's `url.PathUnescape`; a key that does not decode (or
/// not to UTF-8) is kept as it came, as upstream keeps it.
fn percent_decode(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i.saturating_add(1)..i.saturating_add(3))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => {
                    out.push(v);
                    i = i.saturating_add(3);
                    continue;
                }
                None => return key.to_string(),
            }
        }
        out.push(b);
        i = i.saturating_add(1);
    }
    String::from_utf8(out).unwrap_or_else(|_| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_and_service_account_names_read_as_upstream() {
        assert_eq!(percent_decode("scopes"), "scopes");
        assert_eq!(
            percent_decode("example.com%2fteam"),
            "example.com/team".to_string()
        );
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("cut%2"), "cut%2");
        assert_eq!(
            split_service_account("system:serviceaccount:ns:sa"),
            Some(("ns".to_string(), "sa".to_string()))
        );
        assert_eq!(split_service_account("system:serviceaccount:ns:sa:x"), None);
        assert_eq!(split_service_account("system:serviceaccount::sa"), None);
        assert_eq!(split_service_account("alice"), None);
    }
}
