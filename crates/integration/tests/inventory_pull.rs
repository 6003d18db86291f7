//! Pull-mode registration against both kinds of hub: a test-bed kube-apiserver (with Atoll's
//! CRDs, its controller manager signing certificates) and `atoll hub` (its own TokenRequest,
//! CSR approval and signer), with real kube-apiservers as members whose agents dial the hub.

mod common;

use common::hub::{Fleet, HubKind};

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use atoll_agent::{AgentError, AgentOptions, Exit, HubEndpoint, credentials};
use atoll_api::about::{
    CLUSTER_ID_PROPERTY, CLUSTER_SET_PROPERTY, ClusterProperty, ClusterPropertySpec,
};
use atoll_api::cluster_profile::{
    CONDITION_CONTROL_PLANE_HEALTHY, CONDITION_JOINED, ClusterProfile, LABEL_MODE, MODE_PULL,
    TAINT_UNREACHABLE,
};
use atoll_api::work::Work;
use atoll_controllers::inventory::pull::{self, AGENT_LEASE, ANNOTATION_ROTATE, BootstrapToken};
use atoll_controllers::inventory::status::{self, HealthConfig};
use atoll_controllers::inventory::{self, DEFAULT_MANAGER_NAMESPACE, UnjoinOptions};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use tokio::task::JoinHandle;

const SET: &str = "fleet-p";

crate::on_both_hubs!(
    agents_register_report_rotate_and_unjoin_confined_to_their_namespace,
    forged_and_expired_tokens_are_refused_and_leave_nothing_behind,
);

fn hub_endpoint(fleet: &Fleet) -> Result<HubEndpoint> {
    Ok(HubEndpoint {
        server: fleet.hub_url()?,
        ca_pem: fleet.hub_ca_pem()?.into_bytes(),
    })
}

fn agent_options(
    name: &str,
    member: Client,
    hub: &HubEndpoint,
    token: Option<BootstrapToken>,
) -> AgentOptions {
    let mut options = AgentOptions::new(name, member);
    options.hub = Some(hub.clone());
    options.bootstrap_token = token;
    options.cluster_set = SET.into();
    options.labels = [("region".to_owned(), "eu".to_owned())].into();
    options.lease_period = Duration::from_millis(500);
    options
}

/// Runs an agent until the returned sender is dropped or fired.
fn spawn_agent(
    options: AgentOptions,
) -> (
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<Result<Exit, AgentError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(atoll_agent::run(options, Vec::new(), async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Waits until `cluster`'s agent is waiting to be accepted, and returns its registration. When
/// it never gets there, the error also says how the agent ended, if it did, so a refused or
/// failed registration explains itself instead of only timing out.
async fn wait_until_pending(
    hub: &Client,
    cluster: &str,
    what: &str,
    agent: &mut JoinHandle<Result<Exit, AgentError>>,
) -> Result<pull::Registration> {
    let waiting = common::eventually(Duration::from_secs(30), what, async || {
        Ok(pull::pending_registrations(hub)
            .await?
            .into_iter()
            .find(|r| r.cluster == cluster))
    })
    .await;
    match waiting {
        Ok(registration) => Ok(registration),
        Err(error) => {
            let outcome = tokio::time::timeout(Duration::from_secs(1), agent).await;
            bail!("{error}; the agent: {outcome:?}")
        }
    }
}

fn profile_condition(profile: &ClusterProfile, type_: &str) -> Option<(String, String)> {
    atoll_api::conditions::find(&profile.status.as_ref()?.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn forbidden<T>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

async fn agents_register_report_rotate_and_unjoin_confined_to_their_namespace(
    kind: HubKind,
) -> Result<()> {
    let fleet = Fleet::start(kind, 2).await?;
    let [east_cluster, west_cluster] = fleet.members() else {
        bail!("two members expected");
    };
    let hub = fleet.hub().await?;
    let hub_cluster = &hub_endpoint(&fleet)?;
    let east = east_cluster.client().await?;
    let west = west_cluster.client().await?;
    let before = common::snapshot(&east).await?;

    // The hub side runs as `atoll controller` runs it: status with a short lease grace, and
    // the registrar (renewals; auto-accept off, so acceptance is explicit).
    let health = HealthConfig {
        lease_grace: Duration::from_secs(4),
        ..HealthConfig::default()
    };
    let (stop_hub, hub_stopped) = tokio::sync::oneshot::channel::<()>();
    let hub_stopped = futures::future::FutureExt::shared(async {
        let _ = hub_stopped.await;
    });
    let status_task = tokio::spawn(status::run(
        hub.clone(),
        DEFAULT_MANAGER_NAMESPACE.into(),
        health,
        hub_stopped.clone(),
    ));
    let registrar = tokio::spawn(pull::run_registrar(
        hub.clone(),
        DEFAULT_MANAGER_NAMESPACE.into(),
        false,
        hub_stopped,
    ));

    // Registration waits for acceptance; nothing exists on the hub for the cluster before.
    let token =
        pull::create_bootstrap_token(&hub, DEFAULT_MANAGER_NAMESPACE, Duration::from_secs(3600))
            .await?;
    let (stop_east, mut east_agent) = spawn_agent(agent_options(
        "east",
        east.clone(),
        hub_cluster,
        Some(token.token.clone()),
    ));
    let waiting =
        wait_until_pending(&hub, "east", "east waiting to be accepted", &mut east_agent).await?;
    ensure!(waiting.cluster_set == SET && !waiting.cluster_id.is_empty());
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), DEFAULT_MANAGER_NAMESPACE);
    ensure!(
        profiles.get_opt("east").await?.is_none(),
        "no profile before acceptance"
    );

    // A bootstrap token can register and nothing else.
    let bootstrap = credentials::token_client(hub_cluster, &token.token.secret).await?;
    ensure!(forbidden(
        Api::<Secret>::namespaced(bootstrap.clone(), DEFAULT_MANAGER_NAMESPACE)
            .list(&ListParams::default())
            .await
    ));
    ensure!(forbidden(
        Api::<ClusterProfile>::namespaced(bootstrap.clone(), DEFAULT_MANAGER_NAMESPACE)
            .list(&ListParams::default())
            .await
    ));
    ensure!(forbidden(
        Api::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>::all(
            bootstrap.clone()
        )
        .list(&ListParams::default())
        .await
    ));

    let accepted = pull::accept(&hub, DEFAULT_MANAGER_NAMESPACE, "east").await?;
    ensure!(accepted.namespace == "atoll-cluster-east");
    let profile = profiles.get("east").await?;
    ensure!(
        profile
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MODE))
            .map(String::as_str)
            == Some(MODE_PULL)
    );
    ensure!(profile_condition(&profile, CONDITION_JOINED).map(|c| c.0) == Some("True".into()));

    // Connected: healthy from the lease, the member's properties and version in the profile.
    let east_id = common::eventually(
        Duration::from_secs(60),
        "east healthy with its properties",
        async || {
            let profile = profiles.get("east").await?;
            let healthy = profile_condition(&profile, CONDITION_CONTROL_PLANE_HEALTHY)
                == Some(("True".into(), "AgentReporting".into()));
            let status = profile.status.unwrap_or_default();
            let id = status
                .property(CLUSTER_ID_PROPERTY)
                .map(|p| p.value.clone());
            let set = status
                .property(CLUSTER_SET_PROPERTY)
                .map(|p| p.value.clone());
            let version = status.version.and_then(|v| v.kubernetes);
            Ok(
                (healthy && set.as_deref() == Some(SET) && version.is_some())
                    .then_some(id)
                    .flatten(),
            )
        },
    )
    .await?;
    let member_set = Api::<ClusterProperty>::all(east.clone())
        .get(CLUSTER_SET_PROPERTY)
        .await?;
    ensure!(
        member_set.spec.value == SET,
        "the member says it is in the ClusterSet"
    );
    Api::<ClusterProperty>::all(east.clone())
        .create(
            &PostParams::default(),
            &ClusterProperty::new(
                "zone.example.com",
                ClusterPropertySpec {
                    value: "eu-1a".into(),
                },
            ),
        )
        .await?;
    common::eventually(
        Duration::from_secs(15),
        "a new member property mirrored",
        async || {
            let status = profiles.get("east").await?.status.unwrap_or_default();
            Ok(status
                .property("zone.example.com")
                .filter(|p| p.value == "eu-1a")
                .map(|_| ()))
        },
    )
    .await?;
    Api::<ClusterProperty>::all(east.clone())
        .delete("zone.example.com", &Default::default())
        .await?;
    common::eventually(
        Duration::from_secs(15),
        "a deleted member property gone",
        async || {
            let status = profiles.get("east").await?.status.unwrap_or_default();
            Ok(status.property("zone.example.com").is_none().then_some(()))
        },
    )
    .await?;

    // A second member with the same cluster ID is refused, and its agent told why.
    let duplicate_token =
        pull::create_bootstrap_token(&hub, DEFAULT_MANAGER_NAMESPACE, Duration::from_secs(3600))
            .await?;
    let mut duplicate = agent_options(
        "west",
        west.clone(),
        hub_cluster,
        Some(duplicate_token.token),
    );
    duplicate.cluster_id = Some(east_id.clone());
    let (_stop_duplicate, mut duplicate_agent) = spawn_agent(duplicate);
    wait_until_pending(&hub, "west", "west waiting", &mut duplicate_agent).await?;
    let refused = pull::accept(&hub, DEFAULT_MANAGER_NAMESPACE, "west").await;
    ensure!(
        matches!(&refused, Err(e) if e.to_string().contains("already used by joined cluster \"east\"")),
        "{refused:?}"
    );
    let agent_error = tokio::time::timeout(Duration::from_secs(30), duplicate_agent).await??;
    ensure!(
        matches!(&agent_error, Err(AgentError::Refused(m)) if m.contains("already used")),
        "the agent stops with the hub's reason: {agent_error:?}"
    );
    ensure!(profiles.get_opt("west").await?.is_none());
    ensure!(
        Api::<ClusterProperty>::all(west.clone())
            .get_opt(CLUSTER_ID_PROPERTY)
            .await
            .ok()
            .flatten()
            .is_none(),
        "a refused agent leaves no cluster ID behind"
    );

    // West registers properly, so there is another cluster namespace to be kept out of.
    let west_token =
        pull::create_bootstrap_token(&hub, DEFAULT_MANAGER_NAMESPACE, Duration::from_secs(3600))
            .await?;
    let (_stop_west, mut west_agent) = spawn_agent(agent_options(
        "west",
        west.clone(),
        hub_cluster,
        Some(west_token.token),
    ));
    wait_until_pending(&hub, "west", "west waiting again", &mut west_agent).await?;
    pull::accept(&hub, DEFAULT_MANAGER_NAMESPACE, "west").await?;

    // Confinement: east's credentials reach east's namespace and nothing else.
    let east_creds = credentials::load(&east)
        .await?
        .context("east's stored credentials")?;
    let agent_hub = east_creds.hub_client().await?;
    Api::<Work>::namespaced(agent_hub.clone(), "atoll-cluster-east")
        .list(&ListParams::default())
        .await
        .context("east reads its own Works")?;
    ensure!(
        forbidden(
            Api::<Work>::namespaced(agent_hub.clone(), "atoll-cluster-west")
                .list(&ListParams::default())
                .await
        ),
        "east cannot read west's Works"
    );
    ensure!(
        forbidden(
            Api::<Lease>::namespaced(agent_hub.clone(), "atoll-cluster-west")
                .get(AGENT_LEASE)
                .await
        ),
        "east cannot read west's lease"
    );
    ensure!(
        forbidden(
            Api::<Secret>::namespaced(agent_hub.clone(), "atoll-cluster-east")
                .list(&ListParams::default())
                .await
        ),
        "no Secrets, even its own"
    );
    ensure!(forbidden(
        Api::<ClusterProfile>::namespaced(agent_hub.clone(), DEFAULT_MANAGER_NAMESPACE)
            .list(&ListParams::default())
            .await
    ));
    ensure!(forbidden(
        Api::<Namespace>::all(agent_hub.clone())
            .list(&ListParams::default())
            .await
    ));

    // The used bootstrap token is revoked.
    common::eventually(
        Duration::from_secs(60),
        "the used token revoked",
        async || {
            let left = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
                hub.clone(),
                DEFAULT_MANAGER_NAMESPACE,
            )
            .get_opt(&pull::bootstrap_name(&token.token.id))
            .await?;
            Ok(left.is_none().then_some(()))
        },
    )
    .await?;

    // Rotation on request: a new certificate, and the agent keeps renewing with it.
    let old_serial = east_creds.serial()?;
    Api::<Lease>::namespaced(hub.clone(), "atoll-cluster-east")
        .patch(
            AGENT_LEASE,
            &PatchParams::default(),
            &Patch::Merge(
                &serde_json::json!({"metadata": {"annotations": {ANNOTATION_ROTATE: "now"}}}),
            ),
        )
        .await?;
    let rotated = common::eventually(Duration::from_secs(60), "credentials rotated", async || {
        let creds = credentials::load(&east).await?.context("credentials")?;
        Ok((creds.serial()? != old_serial).then_some(creds))
    })
    .await?;
    ensure!(rotated.rotated_for == "now");
    let renewed_before = lease_renewed(&hub, "east").await?;
    common::eventually(
        Duration::from_secs(20),
        "the lease renewed with the new certificate",
        async || Ok((lease_renewed(&hub, "east").await? > renewed_before).then_some(())),
    )
    .await?;
    // Once the new certificate is in use, the old one has no rights left.
    common::eventually(
        Duration::from_secs(30),
        "the rotated-out certificate refused",
        async || {
            let works = Api::<Work>::namespaced(agent_hub.clone(), "atoll-cluster-east")
                .list(&ListParams::default())
                .await;
            Ok(forbidden(works).then_some(()))
        },
    )
    .await?;

    // The agent stops: Unknown after the grace, tainted; it comes back: healthy, untainted.
    stop_east.send(()).ok();
    ensure!(matches!(east_agent.await?, Ok(Exit::Shutdown)));
    common::eventually(
        Duration::from_secs(30),
        "east Unknown and tainted",
        async || {
            let profile = profiles.get("east").await?;
            let unknown = profile_condition(&profile, CONDITION_CONTROL_PLANE_HEALTHY)
                == Some(("Unknown".into(), "AgentLeaseExpired".into()));
            Ok((unknown
                && profile
                    .spec
                    .taints
                    .iter()
                    .any(|t| t.key == TAINT_UNREACHABLE))
            .then_some(()))
        },
    )
    .await?;
    // Restarted without a token: it reconnects with its stored credentials.
    let (_stop_east, east_agent) =
        spawn_agent(agent_options("east", east.clone(), hub_cluster, None));
    common::eventually(Duration::from_secs(30), "east healthy again", async || {
        let profile = profiles.get("east").await?;
        let healthy = profile_condition(&profile, CONDITION_CONTROL_PLANE_HEALTHY).map(|c| c.0)
            == Some("True".into());
        Ok((healthy && profile.spec.taints.is_empty()).then_some(()))
    })
    .await?;

    // The hub restarts: its CA and signing keys persist, so the agent's certificate still
    // works and it goes on renewing its lease (the hub-side loops reconnect by themselves).
    fleet.restart_hub().await?;
    let renewed_before = common::eventually(
        Duration::from_secs(30),
        "the hub serving again",
        async || Ok(lease_renewed(&hub, "east").await.ok()),
    )
    .await?;
    common::eventually(
        Duration::from_secs(30),
        "the lease renewed after the hub restarted",
        async || {
            Ok(lease_renewed(&hub, "east")
                .await
                .ok()
                .filter(|renewed| *renewed > renewed_before))
        },
    )
    .await?;

    // Unjoin: the hub forgets the cluster, the agent notices, cleans its member and exits.
    let unjoined = inventory::unjoin(
        &hub,
        &UnjoinOptions {
            name: "east".into(),
            manager_namespace: DEFAULT_MANAGER_NAMESPACE.into(),
            force: false,
            keep_workloads: false,
        },
    )
    .await?;
    ensure!(unjoined.pull);
    let exit = tokio::time::timeout(Duration::from_secs(90), east_agent).await??;
    ensure!(matches!(exit, Ok(Exit::Unjoined)), "{exit:?}");
    common::converges_to(&east, &before).await?;
    ensure!(
        Api::<ClusterRole>::all(hub.clone())
            .get_opt(&pull::agent_cluster_role("east"))
            .await?
            .is_none()
    );

    stop_hub.send(()).ok();
    status_task.await?;
    registrar.await?;
    Ok(())
}

async fn lease_renewed(hub: &Client, cluster: &str) -> Result<k8s_openapi::jiff::Timestamp> {
    let lease = Api::<Lease>::namespaced(hub.clone(), &inventory::cluster_namespace(cluster))
        .get(AGENT_LEASE)
        .await?;
    lease
        .spec
        .and_then(|s| s.renew_time)
        .map(|t| t.0)
        .context("a renewed lease")
}

async fn forged_and_expired_tokens_are_refused_and_leave_nothing_behind(
    kind: HubKind,
) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let [member_cluster] = fleet.members() else {
        bail!("one member expected");
    };
    let hub = fleet.hub().await?;
    let hub_cluster = &hub_endpoint(&fleet)?;
    let member = member_cluster.client().await?;
    let before = common::snapshot(&member).await?;

    let forged: BootstrapToken = "abcdef.this-is-not-a-token"
        .parse()
        .map_err(anyhow::Error::msg)?;
    let outcome = atoll_agent::run(
        agent_options("m", member.clone(), hub_cluster, Some(forged)),
        Vec::new(),
        std::future::pending(),
    )
    .await;
    ensure!(
        matches!(&outcome, Err(AgentError::Unauthorized(m)) if m.contains("atoll token create")),
        "{outcome:?}"
    );
    common::converges_to(&member, &before).await?;

    let expiring =
        pull::create_bootstrap_token(&hub, DEFAULT_MANAGER_NAMESPACE, Duration::from_secs(1))
            .await?;
    // The registrar's sweep as it runs two seconds from now (an injected clock, no sleep).
    let later = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(2))?;
    let revoked =
        pull::revoke_bootstrap_tokens(&hub, DEFAULT_MANAGER_NAMESPACE, None, later).await?;
    ensure!(revoked == 1, "the expired token is revoked ({revoked})");
    let outcome = atoll_agent::run(
        agent_options("m", member.clone(), hub_cluster, Some(expiring.token)),
        Vec::new(),
        std::future::pending(),
    )
    .await;
    ensure!(
        matches!(&outcome, Err(AgentError::Unauthorized(_))),
        "{outcome:?}"
    );
    common::converges_to(&member, &before).await?;

    // Without credentials or a token the agent says what it needs.
    let outcome = atoll_agent::run(
        AgentOptions::new("m", member.clone()),
        Vec::new(),
        std::future::pending(),
    )
    .await;
    ensure!(
        matches!(&outcome, Err(AgentError::Invalid(m)) if m.contains("--token")),
        "{outcome:?}"
    );
    Ok(())
}
