//! Authentication (client certificates, bearer tokens, anonymous) and RBAC authorization,
//! with kube-apiserver's 401 and 403 wording.

mod common;

use std::sync::Arc;

use anyhow::Context;
use atoll_apiserver::pki::Pki;
use atoll_store::memory::MemoryStore;
use common::TestHub;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A hub on an in-memory store that also accepts the static bearer tokens of `tokens_csv`
/// (kube-apiserver's `--token-auth-file` format).
async fn hub_with_tokens(tokens_csv: &str) -> anyhow::Result<TestHub> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, tokens_csv)?;
    TestHub::start_in(dir, Arc::new(MemoryStore::new()), Some(tokens)).await
}

async fn token_client(hub: &TestHub, token: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(hub.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key_data = None;
    config.auth_info.token = Some(token.to_string().into());
    Ok(kube::Client::try_from(config)?)
}

fn status_of(
    result: Result<impl std::fmt::Debug, kube::Error>,
) -> anyhow::Result<Box<kube::core::Status>> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status),
        other => anyhow::bail!("expected an API error, got {other:?}"),
    }
}

async fn apply(client: &kube::Client, objects: &[serde_json::Value]) -> anyhow::Result<()> {
    for obj in objects {
        let obj: kube::api::DynamicObject = serde_json::from_value(obj.clone())?;
        let types = obj.types.clone().context("types")?;
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
        let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.create(&PostParams::default(), &obj).await?;
    }
    Ok(())
}

#[tokio::test]
async fn rbac_confines_an_identity_to_its_namespace() -> anyhow::Result<()> {
    let hub = hub_with_tokens("alice-token,alice,1\nbob-token,bob,2,\"dev\"\n").await?;
    let admin = hub.client().await?;
    apply(
        &admin,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "y"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "allowed", "namespace": "x"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "x"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "reader", "namespace": "x"},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["allowed"]}
                ]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "alice-reads", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "ns-status"},
                "rules": [{"apiGroups": [""], "resources": ["namespaces/status"], "verbs": ["get"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "dev-ns-status"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ns-status"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "dev"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "ops-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}]}),
        ],
    )
    .await?;

    // alice (bearer token) reads configmaps in x, not in y.
    let alice = token_client(&hub, "alice-token").await?;
    let in_x: Api<ConfigMap> = Api::namespaced(alice.clone(), "x");
    assert_eq!(in_x.list(&ListParams::default()).await?.items.len(), 1);
    in_x.get("c").await?;
    let in_y: Api<ConfigMap> = Api::namespaced(alice.clone(), "y");
    let denied = status_of(in_y.list(&ListParams::default()).await)?;
    assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        denied.message,
        r#"configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "y""#
    );
    let denied = status_of(in_y.get("c").await)?;
    assert_eq!(
        denied.message,
        r#"configmaps "c" is forbidden: User "alice" cannot get resource "configmaps" in API group "" in the namespace "y""#
    );
    // Writes are not granted either.
    let denied = status_of(
        in_x.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n"}}))?,
        )
        .await,
    )?;
    assert_eq!(denied.code, 403);

    // resourceNames.
    let secrets: Api<Secret> = Api::namespaced(alice.clone(), "x");
    secrets.get("allowed").await?;
    assert_eq!(status_of(secrets.get("other").await)?.code, 403);
    assert_eq!(
        status_of(secrets.list(&ListParams::default()).await)?.code,
        403
    );

    // Subresources, granted to a group.
    let bob = token_client(&hub, "bob-token").await?;
    let namespaces: Api<Namespace> = Api::all(bob.clone());
    namespaces.get_status("x").await?;
    let denied = status_of(namespaces.get("x").await)?;
    assert_eq!(
        denied.message,
        r#"namespaces "x" is forbidden: User "bob" cannot get resource "namespaces" in API group "" in the namespace "x""#
    );

    // An unknown token is 401 Unauthorized.
    let nobody = token_client(&hub, "wrong").await?;
    let unauthorized = status_of(
        Api::<ConfigMap>::namespaced(nobody, "x")
            .list(&ListParams::default())
            .await,
    )?;
    assert_eq!(
        (
            unauthorized.code,
            unauthorized.reason.as_str(),
            unauthorized.message.as_str()
        ),
        (401, "Unauthorized", "Unauthorized")
    );

    // A client certificate names user and groups (CN, O).
    let pki = Pki::load_or_create(&hub.dir.path().join("pki"), &[])?;
    let carol_config = hub.dir.path().join("carol.kubeconfig");
    pki.write_kubeconfig(
        &carol_config,
        &format!("https://{}", hub.hub.addr),
        "carol",
        &["ops"],
    )?;
    let carol = common::client_from(&carol_config).await?;
    assert_eq!(
        Api::<ConfigMap>::namespaced(carol.clone(), "y")
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    let denied = status_of(
        Api::<Secret>::namespaced(carol, "y")
            .list(&ListParams::default())
            .await,
    )?;
    assert!(
        denied
            .message
            .contains(r#"User "carol" cannot list resource "secrets""#),
        "{}",
        denied.message
    );
    Ok(())
}

#[tokio::test]
async fn anonymous_requests_reach_health_but_not_the_api() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let kc = kube::config::Kubeconfig::read_from(hub.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.auth_info = Default::default();
    let anonymous = kube::Client::try_from(config)?;
    let health = anonymous
        .request_text(http::Request::get("/readyz").body(Vec::new())?)
        .await?;
    assert_eq!(health, "ok");
    anonymous.apiserver_version().await?;
    let denied = status_of(
        Api::<Namespace>::all(anonymous)
            .list(&ListParams::default())
            .await,
    )?;
    assert_eq!(
        denied.message,
        r#"namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" in API group "" at the cluster scope"#
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_whoami_and_impersonation() -> anyhow::Result<()> {
    let hub = hub_with_tokens("alice-token,alice,1\n").await?;
    hub.kubectl_ok(&["create", "namespace", "x"])?;
    hub.kubectl_ok(&["create", "namespace", "y"])?;
    hub.kubectl_ok(&[
        "-n",
        "x",
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=configmaps",
    ])?;
    hub.kubectl_ok(&[
        "-n",
        "x",
        "create",
        "rolebinding",
        "alice",
        "--role=reader",
        "--user=alice",
    ])?;

    assert_eq!(
        hub.kubectl_ok(&[
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            "x",
            "--as=alice"
        ])?
        .trim(),
        "yes"
    );
    let no = hub.kubectl(&[
        "auth",
        "can-i",
        "list",
        "configmaps",
        "-n",
        "y",
        "--as=alice",
    ])?;
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    assert!(!no.status.success());
    let denied = hub.kubectl(&["get", "configmaps", "-n", "y", "--as=alice"])?;
    assert_eq!(
        String::from_utf8_lossy(&denied.stderr).trim(),
        r#"Error from server (Forbidden): configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "y""#
    );
    assert_eq!(
        hub.kubectl_ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ])?,
        "atoll-admin"
    );

    // alice may not impersonate.
    let alice = token_client(&hub, "alice-token").await?;
    let req = http::Request::get("/api/v1/namespaces/x/configmaps")
        .header("Impersonate-User", "bob")
        .body(Vec::new())?;
    let status = status_of(alice.request_text(req).await)?;
    assert_eq!(
        status.message,
        r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#
    );
    Ok(())
}

fn role(name: &str, rules: serde_json::Value) -> anyhow::Result<Role> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": rules,
    }))?)
}

fn binding(name: &str, kind: &str, role: &str, user: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    })
}

fn not_held(resource: &str, name: &str, missing: &[&str]) -> String {
    format!(
        "{resource}.rbac.authorization.k8s.io {name:?} is forbidden: user \"dev\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{}",
        missing.join("\n")
    )
}

#[tokio::test]
async fn rbac_writes_cannot_grant_what_the_writer_does_not_hold() -> anyhow::Result<()> {
    let hub = hub_with_tokens("dev-token,dev,1\n").await?;
    let admin = hub.client().await?;
    // dev administers namespace x (the bootstrap `admin` role: explicit verbs on configmaps,
    // secrets and the like, and writes to Roles and RoleBindings), and may only write
    // RoleBindings in y.
    apply(
        &admin,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "dev-admin", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "binding-writer", "namespace": "y"},
                "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create", "update"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "dev-binding-writer", "namespace": "y"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binding-writer"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}),
        ],
    )
    .await?;
    let dev = token_client(&hub, "dev-token").await?;
    let dev_roles_x: Api<Role> = Api::namespaced(dev.clone(), "x");
    let dev_bindings_x: Api<RoleBinding> = Api::namespaced(dev.clone(), "x");
    let dev_bindings_y: Api<RoleBinding> = Api::namespaced(dev.clone(), "y");
    let secrets_star = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}]);

    // A Role granting more than dev holds, even as a dry run, is refused and not stored.
    let broad = role("broad", secrets_star.clone())?;
    for params in [
        PostParams::default(),
        PostParams {
            dry_run: true,
            ..Default::default()
        },
    ] {
        let denied = status_of(dev_roles_x.create(&params, &broad).await)?;
        assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            denied.message,
            not_held(
                "roles",
                "broad",
                &[r#"{APIGroups:[""], Resources:["secrets"], Verbs:["*"]}"#]
            )
        );
    }
    let admin_roles_x: Api<Role> = Api::namespaced(admin.clone(), "x");
    assert!(admin_roles_x.get_opt("broad").await?.is_none());

    // A RoleBinding to cluster-admin is refused: dev holds none of it.
    let to_cluster_admin: RoleBinding = serde_json::from_value(binding(
        "dev-cluster-admin",
        "ClusterRole",
        "cluster-admin",
        "dev",
    ))?;
    let denied = status_of(
        dev_bindings_x
            .create(&PostParams::default(), &to_cluster_admin)
            .await,
    )?;
    assert_eq!(
        denied.message,
        not_held(
            "rolebindings",
            "dev-cluster-admin",
            &[
                r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#,
                r#"{NonResourceURLs:["*"], Verbs:["*"]}"#
            ]
        )
    );

    // A Role within dev's rights is fine, and so is binding it.
    let reader = role(
        "reader",
        json!([{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list"], "resourceNames": ["a"]}]),
    )?;
    dev_roles_x.create(&PostParams::default(), &reader).await?;
    let to_reader: RoleBinding =
        serde_json::from_value(binding("someone-reads", "Role", "reader", "someone"))?;
    dev_bindings_x
        .create(&PostParams::default(), &to_reader)
        .await?;
    // Widening it by update or patch is refused; relabelling it is not.
    let mut widened = dev_roles_x.get("reader").await?;
    widened.rules = serde_json::from_value(secrets_star.clone())?;
    let denied = status_of(
        dev_roles_x
            .replace("reader", &PostParams::default(), &widened)
            .await,
    )?;
    assert_eq!(
        denied.message,
        not_held(
            "roles",
            "reader",
            &[r#"{APIGroups:[""], Resources:["secrets"], Verbs:["*"]}"#]
        )
    );
    let denied = status_of(
        dev_roles_x
            .patch(
                "reader",
                &PatchParams::default(),
                &Patch::Merge(json!({"rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]})),
            )
            .await,
    )?;
    assert_eq!(
        denied.message,
        not_held(
            "roles",
            "reader",
            &[r#"{APIGroups:["apps"], Resources:["deployments"], Verbs:["get"]}"#]
        )
    );
    dev_roles_x
        .patch(
            "reader",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "dev"}}})),
        )
        .await?;

    // In y dev holds nothing but writes to RoleBindings: binding `view` needs `bind` on it.
    let to_view: RoleBinding =
        serde_json::from_value(binding("dev-view", "ClusterRole", "view", "dev"))?;
    let denied = status_of(
        dev_bindings_y
            .create(&PostParams::default(), &to_view)
            .await,
    )?;
    assert_eq!(denied.code, 403);
    assert!(
        denied
            .message
            .starts_with(r#"rolebindings.rbac.authorization.k8s.io "dev-view" is forbidden: user "dev" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
        "{}",
        denied.message
    );
    apply(
        &admin,
        &[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "view-binder"},
                "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["view"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "dev-view-binder", "namespace": "y"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view-binder"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}),
        ],
    )
    .await?;
    dev_bindings_y
        .create(&PostParams::default(), &to_view)
        .await?;
    // The grant names `view` only.
    let to_edit: RoleBinding =
        serde_json::from_value(binding("dev-edit", "ClusterRole", "edit", "dev"))?;
    assert_eq!(
        status_of(
            dev_bindings_y
                .create(&PostParams::default(), &to_edit)
                .await
        )?
        .code,
        403
    );
    // A binding to a role that does not exist, by someone who may not bind it, is 404 for
    // the role, as upstream answers.
    let to_nothing: RoleBinding =
        serde_json::from_value(binding("dev-nothing", "Role", "nothing", "dev"))?;
    let missing = status_of(
        dev_bindings_x
            .create(&PostParams::default(), &to_nothing)
            .await,
    )?;
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (
            404,
            r#"roles.rbac.authorization.k8s.io "nothing" not found"#
        )
    );

    // `escalate` on roles in x lets dev write the broader Role.
    apply(
        &admin,
        &[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "escalator", "namespace": "x"},
                "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "dev-escalator", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "escalator"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}),
        ],
    )
    .await?;
    dev_roles_x.create(&PostParams::default(), &broad).await?;
    // ... but not bind cluster-admin.
    assert_eq!(
        status_of(
            dev_bindings_x
                .create(&PostParams::default(), &to_cluster_admin)
                .await
        )?
        .code,
        403
    );

    // system:masters may grant anything.
    let admin_bindings_x: Api<RoleBinding> = Api::namespaced(admin.clone(), "x");
    admin_bindings_x
        .create(&PostParams::default(), &to_cluster_admin)
        .await?;
    let admin_cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    admin_cluster_roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "everything"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}))?,
        )
        .await?;
    Ok(())
}

/// The authorizer keeps the parsed policy between requests; an acknowledged RBAC write is
/// never followed by a decision on the policy before it.
#[tokio::test]
async fn the_next_request_after_an_rbac_write_sees_it() -> anyhow::Result<()> {
    let hub = hub_with_tokens("dev-token,dev,1\n").await?;
    let admin = hub.client().await?;
    apply(
        &admin,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}}),
        ],
    )
    .await?;
    let dev_configmaps: Api<ConfigMap> =
        Api::namespaced(token_client(&hub, "dev-token").await?, "x");
    let admin_bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "x");
    let admin_cluster_bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let view: RoleBinding =
        serde_json::from_value(binding("dev-view", "ClusterRole", "view", "dev"))?;
    let cluster_view: ClusterRoleBinding =
        serde_json::from_value(binding("dev-view", "ClusterRole", "view", "dev"))?;
    assert_eq!(status_of(dev_configmaps.get("c").await)?.code, 403);
    for _ in 0..20 {
        admin_bindings.create(&PostParams::default(), &view).await?;
        dev_configmaps.get("c").await?;
        admin_bindings
            .delete("dev-view", &DeleteParams::default())
            .await?;
        assert_eq!(status_of(dev_configmaps.get("c").await)?.code, 403);
        admin_cluster_bindings
            .create(&PostParams::default(), &cluster_view)
            .await?;
        dev_configmaps.get("c").await?;
        admin_cluster_bindings
            .delete("dev-view", &DeleteParams::default())
            .await?;
        assert_eq!(status_of(dev_configmaps.get("c").await)?.code, 403);
    }

    // A write that bypasses this server (another server sharing the store) is seen too, once
    // the watch delivers it.
    let key = "/registry/rbac.authorization.k8s.io/rolebindings/x/dev-view-elsewhere";
    let value = serde_json::to_vec(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dev-view-elsewhere", "namespace": "x", "uid": "u"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}],
    }))?;
    hub.store
        .txn(atoll_store::Txn {
            compares: vec![],
            success: vec![atoll_store::Op::Put {
                key: key.into(),
                value: value.into(),
            }],
            failure: vec![],
        })
        .await?;
    common::eventually(std::time::Duration::from_secs(30), || async {
        Ok(dev_configmaps.get("c").await.ok())
    })
    .await?;
    Ok(())
}

async fn cluster_role_rules(
    roles: &Api<ClusterRole>,
    name: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let role = roles.get(name).await?;
    Ok(serde_json::to_value(role.rules.unwrap_or_default())?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Polls until the ClusterRole `name`'s rules are `expected` (compared as JSON).
async fn wait_for_rules(
    roles: &Api<ClusterRole>,
    name: &str,
    expected: serde_json::Value,
) -> anyhow::Result<()> {
    let expected: Vec<k8s_openapi::api::rbac::v1::PolicyRule> = serde_json::from_value(expected)?;
    let expected = serde_json::to_value(expected)?;
    common::eventually(std::time::Duration::from_secs(30), || {
        let expected = expected.clone();
        async move {
            let rules = serde_json::Value::Array(cluster_role_rules(roles, name).await?);
            Ok((rules == expected).then_some(()))
        }
    })
    .await
    .with_context(|| format!("waiting for the rules of {name} to become {expected}"))
}

/// Whether `client`'s user may `verb` `resource` in `group`, namespace `x`, by
/// SelfSubjectAccessReview.
async fn can_i(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
) -> anyhow::Result<bool> {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "namespace": "x", "verb": verb, "group": group, "resource": resource
        }}
    }))?;
    let answer = reviews.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// kube-controller-manager's ClusterRole aggregation: an aggregated role's rules follow the
/// roles its selectors match (added, changed, unlabelled), authorization follows its rules,
/// unrelated roles are never written, and the bootstrap `edit` role is aggregated as upstream's.
#[tokio::test]
async fn aggregated_cluster_roles_follow_their_sources() -> anyhow::Result<()> {
    let hub = hub_with_tokens("dev-token,dev,1\n").await?;
    let admin = hub.client().await?;
    let label = "example.com/aggregate-to-monitoring";
    let read_configmaps = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]});
    let read_secrets = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]});
    let read_service_accounts =
        json!({"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]});
    let cluster_role = |name: &str, labels: serde_json::Value, rules: serde_json::Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels}, "rules": rules})
    };
    apply(
        &admin,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "x"}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "watcher", "namespace": "x"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "monitoring"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]}}),
            cluster_role("bystander", json!({"team": "other"}), json!([read_secrets])),
            // Sorted by name, the sources give the aggregate's rule order.
            cluster_role("monitoring-secrets", json!({label: "true"}), json!([read_secrets])),
            cluster_role("monitoring-configmaps", json!({label: "true"}), json!([read_configmaps, read_secrets])),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "dev-monitoring"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "monitoring"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}),
        ],
    )
    .await?;
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let bystander_version = roles.get("bystander").await?.metadata.resource_version;
    wait_for_rules(&roles, "monitoring", json!([read_configmaps, read_secrets])).await?;

    let dev = token_client(&hub, "dev-token").await?;
    let dev_configmaps: Api<ConfigMap> = Api::namespaced(dev.clone(), "x");
    let dev_secrets: Api<Secret> = Api::namespaced(dev.clone(), "x");
    let dev_service_accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(dev.clone(), "x");
    dev_configmaps.get("c").await?;
    dev_secrets.get("s").await?;
    assert_eq!(
        status_of(dev_service_accounts.get("watcher").await)?.code,
        403
    );
    assert_eq!(
        status_of(dev_configmaps.list(&ListParams::default()).await)?.code,
        403
    );

    // One source changes its rules, the other loses its label: the aggregate follows.
    roles
        .patch(
            "monitoring-configmaps",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [read_service_accounts]})),
        )
        .await?;
    roles
        .patch(
            "monitoring-secrets",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: null}}})),
        )
        .await?;
    wait_for_rules(&roles, "monitoring", json!([read_service_accounts])).await?;
    dev_service_accounts.get("watcher").await?;
    assert_eq!(status_of(dev_configmaps.get("c").await)?.code, 403);
    assert_eq!(status_of(dev_secrets.get("s").await)?.code, 403);

    // The label back on: the aggregate grows again.
    roles
        .patch(
            "monitoring-secrets",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: "true"}}})),
        )
        .await?;
    wait_for_rules(
        &roles,
        "monitoring",
        json!([read_service_accounts, read_secrets]),
    )
    .await?;
    dev_secrets.get("s").await?;

    // The bootstrap `edit` role aggregates as upstream's: a CRD installer's role labelled
    // aggregate-to-edit extends it (and not `view`).
    let read_widgets =
        json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]});
    let edit_before = cluster_role_rules(&roles, "edit").await?;
    assert!(!edit_before.is_empty(), "the bootstrap edit role has rules");
    apply(
        &admin,
        &[
            cluster_role(
                "widgets-edit",
                json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
                json!([read_widgets]),
            ),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "dev-edit", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}),
        ],
    )
    .await?;
    let mut edit_after = edit_before.clone();
    // `widgets-edit` sorts after the `system:aggregate-to-*` sources.
    edit_after.push(read_widgets.clone());
    wait_for_rules(&roles, "edit", serde_json::Value::Array(edit_after)).await?;
    assert!(can_i(&dev, "list", "example.com", "widgets").await?);
    assert!(!can_i(&dev, "delete", "example.com", "widgets").await?);
    assert!(
        !cluster_role_rules(&roles, "view")
            .await?
            .contains(&read_widgets)
    );

    // Unrelated roles and the sources themselves were never written by the aggregation.
    assert_eq!(
        roles.get("bystander").await?.metadata.resource_version,
        bystander_version
    );
    assert_eq!(
        cluster_role_rules(&roles, "monitoring-secrets").await?,
        vec![read_secrets]
    );
    Ok(())
}

/// Aggregation is level-triggered: a source changed while no server ran (written straight
/// into the store) is aggregated by the next server on its start.
#[tokio::test]
async fn aggregation_converges_on_start() -> anyhow::Result<()> {
    let store: Arc<dyn atoll_store::Store> = Arc::new(MemoryStore::new());
    let label = "example.com/aggregate-to-monitoring";
    let read_configmaps = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]});
    let read_secrets = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]});
    let first =
        atoll_apiserver::ApiServer::start(store.clone(), atoll_apiserver::ServerOptions::default())
            .await?;
    apply(
        &first.client(),
        &[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "monitoring"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [
                {"key": label, "operator": "In", "values": ["true"]}
            ]}]}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "monitoring-source", "labels": {label: "true"}},
                "rules": [read_configmaps]}),
        ],
    )
    .await?;
    wait_for_rules(
        &Api::all(first.client()),
        "monitoring",
        json!([read_configmaps]),
    )
    .await?;
    let mut source = serde_json::to_value(
        Api::<ClusterRole>::all(first.client())
            .get("monitoring-source")
            .await?,
    )?;
    first.shutdown().await;

    source["rules"] = json!([read_secrets]);
    store
        .txn(atoll_store::Txn {
            compares: vec![],
            success: vec![atoll_store::Op::Put {
                key: "/registry/rbac.authorization.k8s.io/clusterroles/monitoring-source".into(),
                value: serde_json::to_vec(&source)?.into(),
            }],
            failure: vec![],
        })
        .await?;
    let second =
        atoll_apiserver::ApiServer::start(store, atoll_apiserver::ServerOptions::default()).await?;
    wait_for_rules(
        &Api::all(second.client()),
        "monitoring",
        json!([read_secrets]),
    )
    .await?;
    second.shutdown().await;
    Ok(())
}
