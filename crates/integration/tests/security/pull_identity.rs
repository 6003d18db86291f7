//! Pull mode's tokens and agent identities, attacked: a used bootstrap token replayed from
//! another member, a new token taking over a joined cluster's name or cluster ID, and CSRs
//! pre-created under names that belong to other tokens and agents. Each attack runs against
//! both kinds of hub (a test-bed kube-apiserver 1.20 with its controller manager as signer,
//! and `atoll hub` in process); members are `atoll hub` API servers in process.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use atoll_agent::{AgentError, AgentOptions, Exit, HubEndpoint, credentials};
use atoll_api::about::CLUSTER_ID_PROPERTY;
use atoll_api::cluster_profile::ClusterProfile;
use atoll_api::work::Work;
use atoll_controllers::inventory::pull::{self, BootstrapToken, CLIENT_SIGNER};
use atoll_controllers::inventory::{DEFAULT_MANAGER_NAMESPACE, LABEL_CLUSTER_NAME};
use atoll_integration::eventually;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, verbs};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HubKind {
    KubeApiserver,
    Atoll,
}

/// `atoll hub` in process over a temporary directory and an in-memory store.
struct InProcess {
    _server: atoll_apiserver::Hub,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

impl InProcess {
    async fn start() -> Result<InProcess> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn atoll_store::Store> = Arc::new(atoll_store::memory::MemoryStore::new());
        let server = atoll_apiserver::Hub::start(
            store,
            atoll_apiserver::HubConfig {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse()?,
                token_file: None,
                extra_sans: vec![],
                compaction_interval: None,
                max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
            },
        )
        .await?;
        Ok(InProcess {
            addr: server.addr,
            _server: server,
            dir,
        })
    }

    async fn client(&self) -> Result<Client> {
        client_from(&self.dir.path().join("admin.kubeconfig")).await
    }
}

async fn client_from(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A hub with Atoll's CRDs, and `members` in-process member API servers.
struct Setup {
    _testbed: Option<atoll_testbed::Testbed>,
    _atoll_hub: Option<InProcess>,
    hub: Client,
    endpoint: HubEndpoint,
    members: Vec<(InProcess, Client)>,
}

impl Setup {
    async fn start(kind: HubKind, members: usize) -> Result<Setup> {
        let (testbed, atoll_hub, hub, endpoint) = match kind {
            HubKind::KubeApiserver => {
                let testbed =
                    atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig::with_clusters(1))
                        .await?;
                let cluster = testbed.clusters().first().context("the hub cluster")?;
                let hub = cluster.client().await?;
                let endpoint = HubEndpoint {
                    server: cluster.url(),
                    ca_pem: cluster.ca_cert_pem().into_bytes(),
                };
                (Some(testbed), None, hub, endpoint)
            }
            HubKind::Atoll => {
                let server = InProcess::start().await?;
                let hub = server.client().await?;
                let endpoint = HubEndpoint {
                    server: format!("https://{}", server.addr),
                    ca_pem: std::fs::read(server.dir.path().join("pki/ca.crt"))?,
                };
                (None, Some(server), hub, endpoint)
            }
        };
        atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
        let mut started = Vec::new();
        for _ in 0..members {
            let member = InProcess::start().await?;
            let client = member.client().await?;
            started.push((member, client));
        }
        Ok(Setup {
            _testbed: testbed,
            _atoll_hub: atoll_hub,
            hub,
            endpoint,
            members: started,
        })
    }

    fn member(&self, index: usize) -> Result<Client> {
        Ok(self.members.get(index).context("no such member")?.1.clone())
    }

    async fn token(&self) -> Result<BootstrapToken> {
        Ok(pull::create_bootstrap_token(
            &self.hub,
            DEFAULT_MANAGER_NAMESPACE,
            Duration::from_secs(3600),
        )
        .await?
        .token)
    }

    fn options(&self, name: &str, member: Client, token: Option<BootstrapToken>) -> AgentOptions {
        let mut options = AgentOptions::new(name, member);
        options.hub = Some(self.endpoint.clone());
        options.bootstrap_token = token;
        options.cluster_set = "attacked".into();
        options.lease_period = Duration::from_millis(500);
        options
    }
}

type Agent = (
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<Result<Exit, AgentError>>,
);

fn spawn_agent(options: AgentOptions) -> Agent {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(atoll_agent::run(options, Vec::new(), async {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn wait_pending(hub: &Client, cluster: &str) -> Result<pull::Registration> {
    eventually(
        Duration::from_secs(30),
        &format!("{cluster} waiting to be accepted"),
        async || {
            Ok(pull::pending_registrations(hub)
                .await?
                .into_iter()
                .find(|r| r.cluster == cluster))
        },
    )
    .await
}

/// Registers `cluster` from `member` and returns once its agent holds its certificate.
async fn register(setup: &Setup, cluster: &str, member: Client) -> Result<Agent> {
    let token = setup.token().await?;
    let agent = spawn_agent(setup.options(cluster, member.clone(), Some(token)));
    wait_pending(&setup.hub, cluster).await?;
    pull::accept(&setup.hub, DEFAULT_MANAGER_NAMESPACE, cluster).await?;
    eventually(
        Duration::from_secs(30),
        "the agent's certificate stored",
        async || {
            Ok(credentials::load(&member)
                .await?
                .filter(|c| !c.cert_pem.is_empty())
                .map(|_| ()))
        },
    )
    .await?;
    Ok(agent)
}

/// Every object of the member (but events and leases), with its uid and resourceVersion: a
/// write of any kind shows.
async fn member_state(client: &Client) -> Result<BTreeSet<String>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut objects = BTreeSet::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST)
                || ["events", "leases"].contains(&resource.plural.as_str())
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            for object in api.list(&ListParams::default()).await?.items {
                objects.insert(format!(
                    "{}/{} {}/{} uid={} rv={}",
                    resource.group,
                    resource.plural,
                    object.namespace().unwrap_or_default(),
                    object.name_any(),
                    object.uid().unwrap_or_default(),
                    object.resource_version().unwrap_or_default(),
                ));
            }
        }
    }
    Ok(objects)
}

fn status_code<T>(result: &Result<T, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

macro_rules! on_both_hubs {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kube_apiserver() -> anyhow::Result<()> {
                super::$scenario(super::HubKind::KubeApiserver).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn atoll_hub() -> anyhow::Result<()> {
                super::$scenario(super::HubKind::Atoll).await
            }
        }
    )*};
}

on_both_hubs!(
    a_used_token_replayed_from_another_member_is_401_and_changes_nothing,
    a_new_token_cannot_take_over_a_joined_name_or_id_and_replace_revokes_the_old_certificate,
    csrs_precreated_under_other_names_are_never_taken_or_approved,
);

/// The walkthrough's bug: `atoll accept` exited before its deferred revocation ran, so the used
/// token registered again and left a member half-registered.
async fn a_used_token_replayed_from_another_member_is_401_and_changes_nothing(
    kind: HubKind,
) -> Result<()> {
    let setup = Setup::start(kind, 2).await?;
    let (victim, attacker) = (setup.member(0)?, setup.member(1)?);
    let token = setup.token().await?;
    let (_stop, _agent) = spawn_agent(setup.options("edge-9", victim.clone(), Some(token.clone())));
    wait_pending(&setup.hub, "edge-9").await?;
    pull::accept(&setup.hub, DEFAULT_MANAGER_NAMESPACE, "edge-9").await?;

    // Revoked when `accept` returns, not later.
    let accounts: Api<ServiceAccount> =
        Api::namespaced(setup.hub.clone(), DEFAULT_MANAGER_NAMESPACE);
    ensure!(
        accounts
            .get_opt(&pull::bootstrap_name(&token.id))
            .await?
            .is_none(),
        "the used token's identity is gone when accept returns"
    );
    // The agent still receives its certificate (over the watch it opened before sending).
    eventually(
        Duration::from_secs(30),
        "the victim's certificate",
        async || {
            Ok(credentials::load(&victim)
                .await?
                .filter(|c| !c.cert_pem.is_empty())
                .map(|_| ()))
        },
    )
    .await?;

    // The attacker replays the used token: straight at the hub, a 401 (kube-apiserver reads
    // ServiceAccounts from its cache, so for a moment the token may still authenticate, with
    // no rights left: a 403) ...
    let replay = credentials::token_client(&setup.endpoint, &token.secret).await?;
    let replayed = Api::<CertificateSigningRequest>::all(replay);
    eventually(
        Duration::from_secs(10),
        "the used token refused with 401",
        async || {
            let direct = replayed.get(&pull::bootstrap_name(&token.id)).await;
            match status_code(&direct) {
                Some(401) => Ok(Some(())),
                Some(403) => Ok(None),
                _ => bail!("the used token still works: {direct:?}"),
            }
        },
    )
    .await?;

    // ... and through an agent in another member: a 401, the member exactly as it was.
    let before = member_state(&attacker).await?;
    let outcome = atoll_agent::run(
        setup.options("edge-9", attacker.clone(), Some(token)),
        Vec::new(),
        std::future::pending(),
    )
    .await;
    ensure!(
        matches!(&outcome, Err(AgentError::Unauthorized(m)) if m.contains("401")),
        "{outcome:?}"
    );
    let after = member_state(&attacker).await?;
    ensure!(
        before == after,
        "the member changed:\nadded {:#?}\nremoved {:#?}",
        after.difference(&before).collect::<Vec<_>>(),
        before.difference(&after).collect::<Vec<_>>()
    );
    Ok(())
}

async fn a_new_token_cannot_take_over_a_joined_name_or_id_and_replace_revokes_the_old_certificate(
    kind: HubKind,
) -> Result<()> {
    let setup = Setup::start(kind, 4).await?;
    let hub = &setup.hub;
    let (owner, usurper, id_thief, bystander) = (
        setup.member(0)?,
        setup.member(1)?,
        setup.member(2)?,
        setup.member(3)?,
    );
    let (_stop_owner, owner_agent) = register(&setup, "east", owner.clone()).await?;
    let owner_creds = credentials::load(&owner)
        .await?
        .context("east's credentials")?;
    let old_certificate = owner_creds.hub_client().await?;
    let east_works = Api::<Work>::namespaced(old_certificate.clone(), "atoll-cluster-east");
    east_works.list(&ListParams::default()).await?;
    let east_id = Api::<atoll_api::about::ClusterProperty>::all(owner.clone())
        .get(CLUSTER_ID_PROPERTY)
        .await?
        .spec
        .value;

    // A new token asks for the joined name from another member.
    let (_stop_usurper, _usurper_agent) =
        spawn_agent(setup.options("east", usurper.clone(), Some(setup.token().await?)));
    let takeover = wait_pending(hub, "east").await?;
    let refused = pull::accept(hub, DEFAULT_MANAGER_NAMESPACE, "east").await;
    ensure!(
        matches!(&refused, Err(e) if e.to_string().contains("--replace")),
        "{refused:?}"
    );

    // Auto-accept never replaces: the registrar accepts a fresh cluster and leaves the
    // take-over waiting.
    let (stop_registrar, registrar_stopped) = tokio::sync::oneshot::channel::<()>();
    let registrar = tokio::spawn(pull::run_registrar(
        hub.clone(),
        DEFAULT_MANAGER_NAMESPACE.into(),
        true,
        async {
            let _ = registrar_stopped.await;
        },
    ));
    let (_stop_bystander, _bystander_agent) =
        spawn_agent(setup.options("north", bystander.clone(), Some(setup.token().await?)));
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), DEFAULT_MANAGER_NAMESPACE);
    eventually(Duration::from_secs(30), "north auto-accepted", async || {
        Ok(profiles.get_opt("north").await?.map(|_| ()))
    })
    .await?;
    // The registrar has run its passes over every pending request (north's acceptance shows
    // it); stopped, the take-over still waits for the operator, and east is untouched.
    stop_registrar.send(()).ok();
    registrar.await?;
    ensure!(
        pull::pending_registrations(hub)
            .await?
            .iter()
            .any(|r| r.csr == takeover.csr),
        "the take-over still waits for the operator"
    );
    east_works.list(&ListParams::default()).await?;

    // The joined cluster ID under another name is denied outright.
    let mut thief = setup.options("west", id_thief.clone(), Some(setup.token().await?));
    thief.cluster_id = Some(east_id.clone());
    let (_stop_thief, thief_agent) = spawn_agent(thief);
    wait_pending(hub, "west").await?;
    let refused = pull::accept(hub, DEFAULT_MANAGER_NAMESPACE, "west").await;
    ensure!(
        matches!(&refused, Err(e) if e.to_string().contains("already used by joined cluster \"east\"")),
        "{refused:?}"
    );
    let thief_outcome = tokio::time::timeout(Duration::from_secs(30), thief_agent).await??;
    ensure!(
        matches!(&thief_outcome, Err(AgentError::Refused(_))),
        "{thief_outcome:?}"
    );

    // The operator replaces east: the old certificate loses every right at once ...
    pull::accept_with(
        hub,
        DEFAULT_MANAGER_NAMESPACE,
        "east",
        pull::AcceptOptions { replace: true },
    )
    .await?;
    eventually(
        Duration::from_secs(15),
        "the replaced certificate refused",
        async || {
            let works = east_works.list(&ListParams::default()).await;
            let renew = Api::<CertificateSigningRequest>::all(old_certificate.clone())
                .get(&pull::renewal_csr_name("east"))
                .await;
            Ok(
                (status_code(&works) == Some(403) && matches!(status_code(&renew), Some(403)))
                    .then_some(()),
            )
        },
    )
    .await?;
    // ... the new agent works in the namespace, and the old agent, refused, cleans up and exits.
    let new_creds = eventually(Duration::from_secs(30), "the new certificate", async || {
        Ok(credentials::load(&usurper)
            .await?
            .filter(|c| !c.cert_pem.is_empty()))
    })
    .await?;
    Api::<Work>::namespaced(new_creds.hub_client().await?, "atoll-cluster-east")
        .list(&ListParams::default())
        .await?;
    let exit = tokio::time::timeout(Duration::from_secs(60), owner_agent).await??;
    ensure!(matches!(exit, Ok(Exit::Unjoined)), "{exit:?}");
    Ok(())
}

/// A well-formed agent CSR for `cluster`, with a key only the attacker holds.
fn forged_csr(name: &str, cluster: &str, generation: &str) -> Result<CertificateSigningRequest> {
    let key = atoll_agent::register::new_key()?;
    let pem = atoll_agent::register::csr_pem(cluster, generation, &key)?;
    let mut csr = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(pem.into_bytes()),
            signer_name: CLIENT_SIGNER.into(),
            usages: Some(vec!["client auth".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    csr.metadata.name = Some(name.to_owned());
    csr.metadata.labels = Some([(LABEL_CLUSTER_NAME.to_owned(), cluster.to_owned())].into());
    csr.metadata.annotations = Some(
        [
            (
                pull::ANNOTATION_CLUSTER_ID.to_owned(),
                format!("{cluster}-forged"),
            ),
            (
                pull::ANNOTATION_CLUSTER_SET.to_owned(),
                "attacked".to_owned(),
            ),
        ]
        .into(),
    );
    Ok(csr)
}

fn approved(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Approved"))
}

async fn csrs_precreated_under_other_names_are_never_taken_or_approved(
    kind: HubKind,
) -> Result<()> {
    let setup = Setup::start(kind, 2).await?;
    let hub = &setup.hub;
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let victim_member = setup.member(0)?;
    let (_stop_east, _east) = register(&setup, "east", setup.member(1)?).await?;

    // An attacker holding one token squats the CSR name of another (the victim's) token.
    let attacker_token = setup.token().await?;
    let victim_token = setup.token().await?;
    let attacker = credentials::token_client(&setup.endpoint, &attacker_token.secret).await?;
    let squat = forged_csr(
        &pull::bootstrap_name(&victim_token.id),
        "victim",
        &pull::new_generation(),
    )?;
    Api::<CertificateSigningRequest>::all(attacker)
        .create(&PostParams::default(), &squat)
        .await?;

    // The victim's agent finds a CSR of its name that it did not send: it refuses to wait for
    // it (it would get a certificate for the attacker's key) and leaves its member as it was.
    let before = member_state(&victim_member).await?;
    let outcome = atoll_agent::run(
        setup.options("victim", victim_member.clone(), Some(victim_token.clone())),
        Vec::new(),
        std::future::pending(),
    )
    .await;
    ensure!(
        matches!(&outcome, Err(AgentError::Refused(m)) if m.contains("did not send")),
        "{outcome:?}"
    );
    eventually(
        Duration::from_secs(30),
        "the victim member as it was",
        async || Ok((member_state(&victim_member).await? == before).then_some(())),
    )
    .await?;

    // The operator accepting "victim" gets the squat denied: it was not sent by the token it
    // names. The victim's token is not spent by someone else's request.
    let refused = pull::accept(hub, DEFAULT_MANAGER_NAMESPACE, "victim").await;
    ensure!(
        matches!(&refused, Err(e) if e.to_string().contains("was sent by")),
        "{refused:?}"
    );
    ensure!(!approved(
        &csrs.get(&pull::bootstrap_name(&victim_token.id)).await?
    ));
    ensure!(
        Api::<ServiceAccount>::namespaced(hub.clone(), DEFAULT_MANAGER_NAMESPACE)
            .get_opt(&pull::bootstrap_name(&victim_token.id))
            .await?
            .is_some(),
        "the victim's token is not revoked by the attacker's request"
    );

    // east's agent pre-creates west's renewal request, and a bootstrap token one for east:
    // the registrar approves neither.
    let east_agent = credentials::load(&setup.member(1)?)
        .await?
        .context("east's credentials")?
        .hub_client()
        .await?;
    let west_renewal = forged_csr(
        &pull::renewal_csr_name("west"),
        "west",
        &pull::new_generation(),
    )?;
    Api::<CertificateSigningRequest>::all(east_agent)
        .create(&PostParams::default(), &west_renewal)
        .await?;
    let token_holder =
        credentials::token_client(&setup.endpoint, &setup.token().await?.secret).await?;
    let east_renewal = forged_csr(
        &pull::renewal_csr_name("east"),
        "east",
        &pull::new_generation(),
    )?;
    Api::<CertificateSigningRequest>::all(token_holder)
        .create(&PostParams::default(), &east_renewal)
        .await?;
    let approved_now = pull::approve_renewals(hub, DEFAULT_MANAGER_NAMESPACE).await?;
    ensure!(approved_now == 0, "{approved_now} forged renewals approved");
    for name in [
        pull::renewal_csr_name("west"),
        pull::renewal_csr_name("east"),
    ] {
        let csr = csrs.get(&name).await?;
        if approved(&csr) {
            bail!("{name} approved");
        }
    }
    Ok(())
}
