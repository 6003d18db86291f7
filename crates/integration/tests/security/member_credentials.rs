//! Attacks: see the suite's module list in main.rs.
//!
//! The attacker is a tenant of a cluster's hub namespace (`atoll-cluster-<name>`): the
//! bootstrap `edit` role there lets it write Secrets. Member kubeconfigs used to live in that
//! namespace, and kube's loader runs whatever a kubeconfig asks for (an `exec` plugin, files),
//! as the hub's user. The hub now keeps them in the manager namespace and loads only inline
//! credentials, everywhere (join, status, Work, MCS).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, ClusterManager, ClusterProfile, ClusterProfileSpec,
    LABEL_CLUSTER_MANAGER, LABEL_MODE, MODE_PUSH,
};
use atoll_controllers::inventory::{
    self, DEFAULT_MANAGER_NAMESPACE, JoinError, JoinOptions, MEMBER_KUBECONFIG_KEY,
    MEMBER_KUBECONFIG_SECRET, cluster_namespace, member_from_secret, member_http_from_secret,
    member_kubeconfig_secret, work_member_from_secret,
};
use atoll_integration::eventually;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, Config};

use crate::support::start_hub;

const TENANT: &str = "tenant-of-victim";

async fn namespace(hub: &Client, name: &str) -> Result<()> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// A push-mode cluster `victim` as the hub records it, and its tenant with the bootstrap
/// `edit` role in the cluster's namespace.
async fn victim_with_tenant(hub: &Client) -> Result<()> {
    namespace(hub, DEFAULT_MANAGER_NAMESPACE).await?;
    let cluster_ns = cluster_namespace("victim");
    namespace(hub, &cluster_ns).await?;
    let mut profile = ClusterProfile::new(
        "victim",
        ClusterProfileSpec {
            display_name: None,
            cluster_manager: ClusterManager {
                name: ATOLL_CLUSTER_MANAGER.into(),
            },
            taints: vec![],
        },
    );
    profile.metadata.labels = Some(BTreeMap::from([
        (
            LABEL_CLUSTER_MANAGER.to_owned(),
            ATOLL_CLUSTER_MANAGER.to_owned(),
        ),
        (LABEL_MODE.to_owned(), MODE_PUSH.to_owned()),
    ]));
    Api::<ClusterProfile>::namespaced(hub.clone(), DEFAULT_MANAGER_NAMESPACE)
        .create(&PostParams::default(), &profile)
        .await?;
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some("tenant-edit".into());
    binding.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: "edit".into(),
    };
    binding.subjects = Some(vec![Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "User".into(),
        name: TENANT.into(),
        ..Default::default()
    }]);
    Api::<RoleBinding>::namespaced(hub.clone(), &cluster_ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

fn kubeconfig_yaml(server: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: m\n\
         clusters:\n- name: m\n  cluster:\n    server: {server}\n\
         users:\n- name: u\n  user:\n{user}\n\
         contexts:\n- name: m\n  context: {{cluster: m, user: u}}\n"
    )
}

/// A user entry whose exec plugin creates `marker`: the attacker's payload.
fn exec_user(marker: &Path) -> String {
    format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: /bin/sh\n      args: [\"-c\", \"touch {}\"]\n",
        marker.display()
    )
}

fn kubeconfig_secret(name: &str, namespace: &str, yaml: &str) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = Some(namespace.to_owned());
    secret.data = Some(BTreeMap::from([(
        MEMBER_KUBECONFIG_KEY.to_owned(),
        ByteString(yaml.as_bytes().to_vec()),
    )]));
    secret
}

fn refused_naming(result: Result<impl Sized, JoinError>, field: &str) -> Result<()> {
    match result {
        Err(error @ JoinError::UnsafeKubeconfig(_)) => {
            let text = error.to_string();
            ensure!(text.contains(&format!("`{field}`")), "{text}");
            Ok(())
        }
        Err(other) => bail!("expected a refusal naming {field}, got {other}"),
        Ok(_) => bail!("a kubeconfig with {field} was loaded"),
    }
}

/// The tenant plants an exec-plugin kubeconfig where older hubs kept the member's
/// credentials (as on a hub just upgraded, before they moved). Every loader the controllers
/// use refuses it naming `exec`, the command never runs, and it is not moved to the manager
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_planted_exec_plugin_never_runs_on_the_hub() -> Result<()> {
    let hub = start_hub().await?;
    let admin = hub.client.clone();
    victim_with_tenant(&admin).await?;
    let tenant = hub.as_user(TENANT).await?;
    let scratch = tempfile::tempdir()?;
    let marker = scratch.path().join("pwned");
    let planted = kubeconfig_secret(
        MEMBER_KUBECONFIG_SECRET,
        &cluster_namespace("victim"),
        &kubeconfig_yaml("https://127.0.0.1:1", &exec_user(&marker)),
    );
    Api::<Secret>::namespaced(tenant.clone(), &cluster_namespace("victim"))
        .create(&PostParams::default(), &planted)
        .await
        .context("the bootstrap edit role lets the tenant write Secrets in its namespace")?;

    refused_naming(
        member_from_secret(&admin, DEFAULT_MANAGER_NAMESPACE, "victim").await,
        "exec",
    )?;
    refused_naming(
        member_http_from_secret(&admin, DEFAULT_MANAGER_NAMESPACE, "victim").await,
        "exec",
    )?;
    refused_naming(
        work_member_from_secret(&admin, DEFAULT_MANAGER_NAMESPACE, "victim").await,
        "exec",
    )?;
    ensure!(!marker.exists(), "the planted command ran on the hub");
    ensure!(
        Api::<Secret>::namespaced(admin.clone(), DEFAULT_MANAGER_NAMESPACE)
            .get_opt(&member_kubeconfig_secret("victim"))
            .await?
            .is_none(),
        "a refused kubeconfig is not moved to the manager namespace"
    );

    // The same with a file the hub would read as its token.
    let file = kubeconfig_secret(
        MEMBER_KUBECONFIG_SECRET,
        &cluster_namespace("victim"),
        &kubeconfig_yaml("https://127.0.0.1:1", "    tokenFile: /etc/hostname\n"),
    );
    Api::<Secret>::namespaced(tenant.clone(), &cluster_namespace("victim"))
        .replace(MEMBER_KUBECONFIG_SECRET, &PostParams::default(), &{
            let mut current =
                Api::<Secret>::namespaced(tenant.clone(), &cluster_namespace("victim"))
                    .get(MEMBER_KUBECONFIG_SECRET)
                    .await?;
            current.data = file.data;
            current
        })
        .await?;
    refused_naming(
        member_from_secret(&admin, DEFAULT_MANAGER_NAMESPACE, "victim").await,
        "tokenFile",
    )?;
    Ok(())
}

/// `atoll join --cluster-kubeconfig` with an exec plugin: refused before anything runs or is
/// written, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_a_member_kubeconfig_that_runs_a_command() -> Result<()> {
    let hub = start_hub().await?;
    let scratch = tempfile::tempdir()?;
    let marker = scratch.path().join("pwned");
    let member_kubeconfig =
        Kubeconfig::from_yaml(&kubeconfig_yaml("https://127.0.0.1:1", &exec_user(&marker)))?;
    let result = inventory::join(
        &hub.client,
        &JoinOptions {
            name: "victim".into(),
            member_kubeconfig,
            member_context: None,
            labels: Default::default(),
            cluster_set: "default".into(),
            cluster_id: None,
            manager_namespace: DEFAULT_MANAGER_NAMESPACE.into(),
            token_timeout: Duration::from_secs(5),
        },
    )
    .await;
    refused_naming(result, "exec")?;
    ensure!(!marker.exists(), "join ran the kubeconfig's command");
    ensure!(
        Api::<Namespace>::all(hub.client.clone())
            .get_opt(&cluster_namespace("victim"))
            .await?
            .is_none(),
        "a refused join wrote nothing on the hub"
    );
    Ok(())
}

/// The stored credentials live where the tenant has no binding: it can neither read nor
/// replace them, and a kubeconfig it plants in its own namespace (pointing at its own server)
/// is never used while the hub's is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_replace_or_shadow_the_stored_credentials() -> Result<()> {
    let hub = start_hub().await?;
    let admin = hub.client.clone();
    victim_with_tenant(&admin).await?;
    let tenant = hub.as_user(TENANT).await?;

    // Two listeners: the member the hub stored, and the tenant's own server.
    let member = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rogue = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let member_url = format!("http://{}", member.local_addr()?);
    let rogue_url = format!("http://{}", rogue.local_addr()?);
    let dialled = |listener: tokio::net::TcpListener| {
        let hit = Arc::new(AtomicBool::new(false));
        let flag = hit.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                flag.store(true, Ordering::SeqCst);
                drop(stream);
            }
        });
        hit
    };
    let member_hit = dialled(member);
    let rogue_hit = dialled(rogue);

    // What join stores.
    let stored = kubeconfig_secret(
        &member_kubeconfig_secret("victim"),
        DEFAULT_MANAGER_NAMESPACE,
        &kubeconfig_yaml(&member_url, "    token: the-hubs-member-token\n"),
    );
    Api::<Secret>::namespaced(admin.clone(), DEFAULT_MANAGER_NAMESPACE)
        .create(&PostParams::default(), &stored)
        .await?;

    let tenant_secrets: Api<Secret> = Api::namespaced(tenant.clone(), DEFAULT_MANAGER_NAMESPACE);
    let forbidden = |result: Result<_, kube::Error>, what: &str| -> Result<()> {
        match result {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            Err(other) => bail!("{what}: expected 403, got {other}"),
            Ok(_) => bail!("{what}: the tenant reached the stored credentials"),
        }
    };
    forbidden(
        tenant_secrets
            .get(&member_kubeconfig_secret("victim"))
            .await
            .map(|_| ()),
        "get",
    )?;
    forbidden(
        tenant_secrets
            .list(&ListParams::default())
            .await
            .map(|_| ()),
        "list",
    )?;
    let mut replacement = stored.clone();
    replacement.metadata.name = Some(member_kubeconfig_secret("victim"));
    forbidden(
        tenant_secrets
            .replace(
                &member_kubeconfig_secret("victim"),
                &PostParams::default(),
                &replacement,
            )
            .await
            .map(|_| ()),
        "replace",
    )?;
    forbidden(
        tenant_secrets
            .delete(&member_kubeconfig_secret("victim"), &Default::default())
            .await
            .map(|_| ()),
        "delete",
    )?;

    // The tenant plants an inline kubeconfig for its own server in the old place.
    Api::<Secret>::namespaced(tenant.clone(), &cluster_namespace("victim"))
        .create(
            &PostParams::default(),
            &kubeconfig_secret(
                MEMBER_KUBECONFIG_SECRET,
                &cluster_namespace("victim"),
                &kubeconfig_yaml(&rogue_url, "    token: rogue\n"),
            ),
        )
        .await?;
    let client = member_from_secret(&admin, DEFAULT_MANAGER_NAMESPACE, "victim")
        .await?
        .context("the stored credentials")?;
    let version = tokio::spawn(async move { client.apiserver_version().await });
    eventually(
        Duration::from_secs(10),
        "the hub dialling the member it stored",
        async || Ok(member_hit.load(Ordering::SeqCst).then_some(())),
    )
    .await?;
    version.abort();
    ensure!(
        !rogue_hit.load(Ordering::SeqCst),
        "the hub dialled the tenant's server"
    );
    Ok(())
}

/// A hub upgraded from the layout that kept credentials in the cluster namespace: an inline
/// kubeconfig there is moved to the manager namespace (and removed from the tenant's reach)
/// the first time a controller reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_an_upgraded_hub_move_out_of_the_tenants_namespace() -> Result<()> {
    let hub = start_hub().await?;
    let admin = hub.client.clone();
    victim_with_tenant(&admin).await?;
    let yaml = kubeconfig_yaml("https://127.0.0.1:1", "    token: t\n");
    Api::<Secret>::namespaced(admin.clone(), &cluster_namespace("victim"))
        .create(
            &PostParams::default(),
            &kubeconfig_secret(
                MEMBER_KUBECONFIG_SECRET,
                &cluster_namespace("victim"),
                &yaml,
            ),
        )
        .await?;
    ensure!(
        member_from_secret(&admin, DEFAULT_MANAGER_NAMESPACE, "victim")
            .await?
            .is_some()
    );
    let moved = Api::<Secret>::namespaced(admin.clone(), DEFAULT_MANAGER_NAMESPACE)
        .get(&member_kubeconfig_secret("victim"))
        .await?;
    ensure!(
        moved
            .data
            .as_ref()
            .and_then(|d| d.get(MEMBER_KUBECONFIG_KEY))
            .map(|b| b.0.as_slice())
            == Some(yaml.as_bytes())
    );
    ensure!(
        Api::<Secret>::namespaced(admin.clone(), &cluster_namespace("victim"))
            .get_opt(MEMBER_KUBECONFIG_SECRET)
            .await?
            .is_none(),
        "the old copy is gone from the tenant's namespace"
    );
    Ok(())
}

/// Whoever holds the stored member token (it is the hub's, but a leak is the attack) reaches
/// the member's Work identity, which must be broad (a Work may carry any kind; see
/// ARCHITECTURE.md, "The Work identity"), and nothing else: it cannot impersonate an
/// administrator, `system:masters`, another service account or a group, and on its own it
/// cannot read Secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_member_token_impersonates_only_the_work_identity() -> Result<()> {
    let testbed =
        atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig::with_clusters(1)).await?;
    let member_cluster = &testbed.clusters()[0];
    let hub = start_hub().await?;
    inventory::join(
        &hub.client,
        &JoinOptions {
            name: "victim".into(),
            member_kubeconfig: Kubeconfig::read_from(member_cluster.kubeconfig_path())?,
            member_context: None,
            labels: Default::default(),
            cluster_set: "default".into(),
            cluster_id: None,
            manager_namespace: DEFAULT_MANAGER_NAMESPACE.into(),
            token_timeout: Duration::from_secs(60),
        },
    )
    .await?;
    let stored = Api::<Secret>::namespaced(hub.client.clone(), DEFAULT_MANAGER_NAMESPACE)
        .get(&member_kubeconfig_secret("victim"))
        .await?;
    let yaml = stored
        .data
        .and_then(|mut d| d.remove(MEMBER_KUBECONFIG_KEY))
        .context("the stored kubeconfig")?;
    let leaked = Kubeconfig::from_yaml(std::str::from_utf8(&yaml.0)?)?;
    let as_token = |user: Option<&str>, groups: Option<Vec<String>>| {
        let leaked = leaked.clone();
        let user = user.map(str::to_owned);
        async move {
            let mut config = Config::from_custom_kubeconfig(leaked, &Default::default()).await?;
            config.auth_info.impersonate = user;
            config.auth_info.impersonate_groups = groups;
            anyhow::Ok(Client::try_from(config)?)
        }
    };
    let secrets_in_kube_system = |client: Client| async move {
        Api::<Secret>::namespaced(client, "kube-system")
            .list(&ListParams::default())
            .await
    };
    let forbidden = |result: Result<_, kube::Error>, who: &str| -> Result<()> {
        match result {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            Err(other) => bail!("{who}: expected 403, got {other}"),
            Ok(_) => bail!("{who}: the leaked token read kube-system's Secrets"),
        }
    };
    forbidden(
        secrets_in_kube_system(as_token(None, None).await?).await,
        "the token itself",
    )?;
    for user in [
        "system:admin",
        "system:kube-controller-manager",
        "system:serviceaccount:kube-system:default",
        "system:serviceaccount:atoll-system:atoll-hub",
    ] {
        forbidden(
            secrets_in_kube_system(as_token(Some(user), None).await?).await,
            user,
        )?;
    }
    forbidden(
        secrets_in_kube_system(
            as_token(
                Some("system:serviceaccount:atoll-system:atoll-work"),
                Some(vec!["system:masters".into()]),
            )
            .await?,
        )
        .await,
        "the Work identity with group system:masters",
    )?;
    // What the Work applier needs, and all the token reaches.
    secrets_in_kube_system(
        as_token(Some("system:serviceaccount:atoll-system:atoll-work"), None).await?,
    )
    .await
    .context("the Work identity may act on any kind")?;
    Ok(())
}
