//! Authentication (client certificates, bearer tokens, anonymous) and RBAC authorization,
//! with kube-apiserver's 401 and 403 wording.

mod common;

use std::sync::Arc;

use anyhow::Context;
use atoll_apiserver::pki::Pki;
use atoll_store::memory::MemoryStore;
use common::TestHub;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

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
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "alice-token,alice,1\nbob-token,bob,2,\"dev\"\n")?;
    let hub = TestHub::start_in(dir, Arc::new(MemoryStore::new()), Some(tokens)).await?;
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
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "alice-token,alice,1\n")?;
    let hub = TestHub::start_in(dir, Arc::new(MemoryStore::new()), Some(tokens)).await?;
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
