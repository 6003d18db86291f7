//! Access reviews and identity: SelfSubjectAccessReview and SubjectAccessReview
//! (`kubectl auth can-i`), SelfSubjectReview (`kubectl auth whoami`), and impersonation
//! (`Impersonate-User`/`Impersonate-Group`, `kubectl --as`), each authorized as upstream.

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
            body["status"] = json!({"userInfo": {
                "username": user.name,
                "groups": user.all_groups(),
            }});
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

/// Applies `Impersonate-User` and `Impersonate-Group` when present and allowed.
pub async fn impersonate(
    storage: &Storage,
    user: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let as_user = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let as_groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let Some(name) = as_user else {
        if as_groups.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups without a user",
        ));
    };
    let requester = &user;
    let check = |target: ResourceRequest| async move {
        let gr = GroupResource::new(&target.group, &target.resource);
        let name = target.name.clone().unwrap_or_default();
        let ns = target.namespace.clone();
        if rbac::authorize(storage, requester, &RequestTarget::Resource(target)).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden_resource(
                &requester.name,
                "impersonate",
                &gr,
                None,
                &name,
                ns.as_deref(),
            ))
        }
    };
    let service_account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, sa)| (ns.to_string(), sa.to_string()));
    let request = |resource: &str, namespace: Option<String>, name: &str| ResourceRequest {
        group: String::new(),
        version: "v1".into(),
        namespace,
        resource: resource.into(),
        name: Some(name.to_string()),
        subresource: None,
        verb: "impersonate",
    };
    match &service_account {
        Some((ns, sa)) => check(request("serviceaccounts", Some(ns.clone()), sa)).await?,
        None => check(request("users", None, &name)).await?,
    }
    for group in &as_groups {
        check(request("groups", None, group)).await?;
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
    Ok(UserInfo { name, groups })
}
