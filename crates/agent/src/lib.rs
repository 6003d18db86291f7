//! The member-cluster agent of pull mode: it registers its cluster with the hub, keeps its
//! credentials fresh, reports the cluster's health and properties, and runs the per-cluster
//! controllers (the Work applier, MCS export) against its own hub namespace.
//!
//! Only the agent dials out; the hub never reaches the member. The agent's hub identity is a
//! client certificate (`CN=system:atoll:agent:<cluster>`) confined by RBAC to its cluster's
//! namespace on the hub (see `atoll_controllers::inventory::pull`).
//!
//! Lifecycle, level-triggered and restart-safe:
//! 1. The member's About API is installed and its cluster ID settled (kept when it has one).
//! 2. Credentials come from the member Secret `atoll-system/atoll-agent-hub`; without them the
//!    agent registers with the bootstrap token: it stores a fresh key first, then sends a CSR
//!    and waits for `atoll accept` (or auto-accept). A restart mid-way resumes the same CSR.
//! 3. Once accepted, `clusterset.k8s.io` is written: the member is a member.
//! 4. Connected, it renews the Lease `atoll-agent` every period, reports version, readiness,
//!    ClusterProperties and whether the member serves the MCS CRDs (checked every minute) in
//!    the ConfigMap `atoll-agent-status` (on change, from a watch), runs
//!    the cluster tasks, and renews its certificate at 80% of its lifetime or when the hub
//!    asks (annotation `atoll.io/rotate-credentials` on the Lease).
//! 5. When the hub no longer lets it in (its namespace and RBAC are gone: unjoined), it removes
//!    what the cluster's Works applied (as each AppliedWork record's `deleteOption` says) and
//!    what it created in the member, and exits.
//!
//! Must not depend on: the hub API server, the store, DNS. It reuses the inventory library of
//! `atoll-controllers` for names and the member's About API, `atoll-work` to remove what the
//! Works applied at unjoin, and `atoll-mcs` to check the member's MCS CRDs.

pub mod credentials;
pub mod register;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::about::ClusterProperty;
use atoll_controllers::inventory::pull::{
    AGENT_LEASE, AGENT_STATUS_CONFIGMAP, ANNOTATION_GENERATION, ANNOTATION_ROTATE, BootstrapToken,
    STATUS_KEY_MCS_CRDS_MISSING, STATUS_KEY_PROPERTIES, STATUS_KEY_READY, STATUS_KEY_VERSION,
    bootstrap_name, new_generation, renewal_csr_name,
};
use atoll_controllers::inventory::status::{Probe, probe_client};
use atoll_controllers::inventory::{
    self, JoinError, LABEL_CLUSTER_NAME, cluster_namespace, validate_cluster_name,
};
use atoll_controllers::kubeutil;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

pub use credentials::{Credentials, HubEndpoint};
pub use register::RegistrationFacts;

/// Why the agent stopped. Messages never carry a token or key.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The options are not usable.
    #[error("{0}")]
    Invalid(String),
    /// Credentials could not be built or read.
    #[error("agent credentials: {0}")]
    Credentials(String),
    /// The hub refused the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The hub refused the request.
    #[error("the hub refused: {0}")]
    Refused(String),
    /// A request to the hub failed.
    #[error(
        "hub: {action}: {source}. Check that the hub is reachable from the member and that --hub-ca matches the hub's certificate"
    )]
    Hub {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
    /// A request to the member failed.
    #[error("member: {action}: {source}")]
    Member {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
    /// Settling the member's About API failed.
    #[error(transparent)]
    Inventory(#[from] JoinError),
    /// What the cluster's Works applied could not be removed from the member after unjoin.
    #[error("removing what the cluster's Works applied: {0}")]
    Workloads(#[from] atoll_work::RemovalError),
}

/// How the agent is run.
#[derive(Clone)]
pub struct AgentOptions {
    /// The cluster's name on the hub.
    pub cluster: String,
    /// An admin-enough client for the member.
    pub member: Client,
    /// The hub, needed only to register (afterwards it is in the stored credentials).
    pub hub: Option<HubEndpoint>,
    /// The bootstrap token (`<id>.<secret>`), needed only to register.
    pub bootstrap_token: Option<BootstrapToken>,
    /// The cluster ID to use when the member has none; the UID of `kube-system` otherwise.
    pub cluster_id: Option<String>,
    /// The ClusterSet to join.
    pub cluster_set: String,
    /// Labels asked for on the ClusterProfile.
    pub labels: BTreeMap<String, String>,
    /// Time between Lease renewals (and readiness probes).
    pub lease_period: Duration,
    /// Renew the certificate once this fraction of its lifetime has passed.
    pub renew_at_fraction: f64,
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("cluster", &self.cluster)
            .field("hub", &self.hub)
            .field("bootstrap_token", &self.bootstrap_token)
            .field("cluster_set", &self.cluster_set)
            .finish_non_exhaustive()
    }
}

impl AgentOptions {
    /// Options with the defaults: 10 s lease period, renewal at 80% of the lifetime.
    pub fn new(cluster: impl Into<String>, member: Client) -> AgentOptions {
        AgentOptions {
            cluster: cluster.into(),
            member,
            hub: None,
            bootstrap_token: None,
            cluster_id: None,
            cluster_set: "default".into(),
            labels: BTreeMap::new(),
            lease_period: Duration::from_secs(10),
            renew_at_fraction: 0.8,
        }
    }
}

/// What a cluster task gets: clients for the hub (confined to `namespace`) and the member.
#[derive(Clone)]
pub struct Connected {
    /// The hub, with the agent's credentials.
    pub hub: Client,
    /// The member.
    pub member: Client,
    /// The cluster's name.
    pub cluster: String,
    /// The cluster's hub namespace: the only one the agent may use.
    pub namespace: String,
    /// The member's cluster ID.
    pub cluster_id: String,
}

/// A per-cluster controller the agent runs while connected (the Work applier, MCS export).
/// It is restarted with fresh clients after a credential rotation, so it must be
/// level-triggered.
pub type ClusterTask = Arc<dyn Fn(Connected) -> BoxFuture<'static, ()> + Send + Sync>;

/// Why [`run`] returned without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down on request.
    Shutdown,
    /// The cluster was unjoined on the hub; the agent removed its footprint in the member.
    Unjoined,
}

/// Consecutive refusals of the agent's own namespace that mean it was unjoined.
const UNJOINED_AFTER: u32 = 3;
/// How soon a refusal is checked again (not a whole lease period later).
const UNJOINED_RECHECK: Duration = Duration::from_secs(1);

/// Runs the agent until `shutdown`, or until the cluster is unjoined.
pub async fn run(
    options: AgentOptions,
    tasks: Vec<ClusterTask>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Exit, AgentError> {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(500);
    loop {
        let outcome = tokio::select! {
            () = &mut shutdown => return Ok(Exit::Shutdown),
            outcome = run_until_unjoined(&options, &tasks) => outcome,
        };
        match outcome {
            Err(error) if !error.is_permanent() => {
                warn!(cluster = %options.cluster, %error, retry_in = ?backoff, "agent failed; retrying");
                tokio::select! {
                    () = &mut shutdown => return Ok(Exit::Shutdown),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

impl AgentError {
    /// Whether retrying cannot help: bad options, credentials the hub refuses, a request the
    /// hub denied, or a member whose identity conflicts. Everything else (an unreachable hub
    /// or member, a namespace still terminating) is retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            AgentError::Invalid(_)
            | AgentError::Credentials(_)
            | AgentError::Unauthorized(_)
            | AgentError::Refused(_) => true,
            AgentError::Inventory(error) => !matches!(
                error,
                JoinError::Member { .. }
                    | JoinError::Hub { .. }
                    | JoinError::MemberUnreachable { .. }
            ),
            AgentError::Hub { .. } | AgentError::Member { .. } | AgentError::Workloads(_) => false,
        }
    }
}

async fn run_until_unjoined(
    options: &AgentOptions,
    tasks: &[ClusterTask],
) -> Result<Exit, AgentError> {
    validate_cluster_name(&options.cluster).map_err(AgentError::Invalid)?;
    let member = &options.member;
    let version = member
        .apiserver_version()
        .await
        .map_err(|source| AgentError::Member {
            action: "reading /version".into(),
            source,
        })?
        .git_version;
    let stored = credentials::load(member).await?;
    let registered = stored.as_ref().is_some_and(|c| !c.cert_pem.is_empty());
    if !registered && (options.hub.is_none() || options.bootstrap_token.is_none()) {
        return Err(AgentError::Invalid(
            "this member is not registered yet: pass the hub (--hub-server, --hub-ca-data) and a bootstrap token (--token), as `atoll token create` prints them".into(),
        ));
    }
    if let Some(stored) = &stored
        && !stored.cluster.is_empty()
        && stored.cluster != options.cluster
    {
        return Err(AgentError::Invalid(format!(
            "this member is registered as cluster {:?}, not {:?}; run the agent with --name {:?}, or clear the member's registration with `atoll agent --kubeconfig MEMBER_KUBECONFIG --reset` (and `atoll unjoin {}` on the hub if it is still joined there)",
            stored.cluster, options.cluster, stored.cluster, stored.cluster
        )));
    }
    if !registered && let (Some(hub), Some(token)) = (&options.hub, &options.bootstrap_token) {
        // An expired, used, revoked or forged token is refused before the member is touched.
        let bootstrap = credentials::token_client(hub, &token.secret).await?;
        if let Err(error) = register::check_token(&bootstrap, &bootstrap_name(&token.id)).await {
            if stored.is_some()
                && matches!(error, AgentError::Unauthorized(_) | AgentError::Refused(_))
            {
                // An earlier attempt with this token left a pending registration: undo it.
                warn!(cluster = %options.cluster, %error, "registration refused; removing what the agent created in the member");
                inventory::leave_member(member).await?;
                credentials::forget(member).await?;
            }
            return Err(error);
        }
    }
    let cluster_id = inventory::resolve_cluster_id(member, options.cluster_id.as_deref()).await?;
    inventory::install_about_api(member, &cluster_id, None).await?;

    let mut creds = match stored {
        Some(stored) if !stored.cert_pem.is_empty() => stored,
        pending => {
            let facts = RegistrationFacts {
                cluster_id: cluster_id.clone(),
                cluster_set: options.cluster_set.clone(),
                labels: options.labels.clone(),
                kubernetes_version: version.clone(),
            };
            match register(options, pending, &facts).await {
                Ok(creds) => creds,
                Err(error @ (AgentError::Unauthorized(_) | AgentError::Refused(_))) => {
                    // Refused for good: leave the member as it was before this attempt.
                    warn!(cluster = %options.cluster, %error, "registration refused; removing what the agent created in the member");
                    inventory::leave_member(member).await?;
                    credentials::forget(member).await?;
                    return Err(error);
                }
                Err(error) => return Err(error),
            }
        }
    };
    inventory::install_about_api(member, &cluster_id, Some(&options.cluster_set)).await?;
    info!(cluster = %options.cluster, %cluster_id, "member of ClusterSet {}", options.cluster_set);

    loop {
        let hub = creds.hub_client().await?;
        let connected = Connected {
            hub: hub.clone(),
            member: member.clone(),
            cluster: options.cluster.clone(),
            namespace: cluster_namespace(&options.cluster),
            cluster_id: cluster_id.clone(),
        };
        match session(options, &creds, connected, &version, tasks).await? {
            SessionEnd::Rotate(requested) => {
                creds = renew(&hub, &creds, requested).await?;
                credentials::store(member, &creds).await?;
                info!(cluster = %options.cluster, serial = %creds.serial().unwrap_or_default(), "credentials rotated");
            }
            SessionEnd::Unjoined => {
                info!(cluster = %options.cluster, "unjoined by the hub; removing the agent's footprint in the member");
                remove_workloads(member, &options.cluster).await?;
                inventory::leave_member(member).await?;
                credentials::forget(member).await?;
                return Ok(Exit::Unjoined);
            }
        }
    }
}

/// How long the agent waits for the foreground deletion of what its Works applied.
const WORKLOAD_REMOVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// After unjoin: removes what the cluster's Works applied, as the member's AppliedWork records
/// say (each carries its Work's last `deleteOption`; `atoll unjoin --keep-workloads` set them
/// all to Orphan before the hub let go), then the records. Before the AppliedWork CRD goes.
async fn remove_workloads(member: &Client, cluster: &str) -> Result<(), AgentError> {
    let namespace = cluster_namespace(cluster);
    let records = atoll_work::removal::applied_records(member, &namespace)
        .await
        .map_err(atoll_work::RemovalError::from)?;
    let removed = atoll_work::remove_applied(
        member,
        &atoll_work::Removal {
            namespace,
            keep_all: false,
            timeout: WORKLOAD_REMOVAL_TIMEOUT,
        },
        &BTreeMap::new(),
        records,
    )
    .await?;
    let listed = |objects: &std::collections::BTreeSet<String>| {
        objects.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    info!(
        %cluster,
        deleted = %listed(&removed.deleted),
        kept = %listed(&removed.kept),
        "removed what the cluster's Works applied (kept what they orphan)"
    );
    Ok(())
}

/// Clears a member's pull-mode registration: the stored hub credentials, the namespace the
/// agent created, and the About API footprint Atoll wrote (`atoll agent --reset`). It does
/// not tell the hub: unjoin the cluster there, or accept its next registration with
/// `--replace`. Returns the cluster the member was registered as, if any.
pub async fn reset(member: &Client) -> Result<Option<String>, AgentError> {
    let stored = credentials::load(member).await?;
    inventory::leave_member(member).await?;
    credentials::forget(member).await?;
    Ok(stored.map(|c| c.cluster).filter(|c| !c.is_empty()))
}

async fn register(
    options: &AgentOptions,
    pending: Option<Credentials>,
    facts: &RegistrationFacts,
) -> Result<Credentials, AgentError> {
    let (Some(hub), Some(token)) = (&options.hub, &options.bootstrap_token) else {
        return Err(AgentError::Invalid(
            "a bootstrap token and the hub are needed to register".into(),
        ));
    };
    // The key and generation are stored before the CSR is sent, so that a restart waits for
    // the same CSR.
    let resumed = pending
        .as_ref()
        .filter(|p| !p.key_pem.is_empty() && !p.pending_generation.is_empty());
    let (key, generation) = match resumed {
        Some(stored) => (
            rcgen::KeyPair::from_pem(&String::from_utf8_lossy(&stored.key_pem))
                .map_err(|e| AgentError::Credentials(format!("the stored key: {e}")))?,
            stored.pending_generation.clone(),
        ),
        None => (register::new_key()?, new_generation()),
    };
    let mut creds = Credentials {
        cluster: options.cluster.clone(),
        hub: hub.clone(),
        cert_pem: Vec::new(),
        key_pem: key.serialize_pem().into_bytes(),
        rotated_for: String::new(),
        pending_generation: generation.clone(),
    };
    credentials::store(&options.member, &creds).await?;
    let bootstrap = credentials::token_client(hub, &token.secret).await?;
    info!(cluster = %options.cluster, token_id = %token.id, "registering with the hub");
    creds.cert_pem = register::request_certificate(
        &bootstrap,
        &register::CertificateRequest {
            name: &bootstrap_name(&token.id),
            cluster: &options.cluster,
            generation: &generation,
            key: &key,
            facts: Some(facts),
            kind: register::RequestKind::Registration,
            wait_hint: &format!("run `atoll accept {}` on the hub", options.cluster),
        },
    )
    .await?;
    creds.pending_generation = String::new();
    credentials::store(&options.member, &creds).await?;
    info!(cluster = %options.cluster, "accepted by the hub");
    Ok(creds)
}

async fn renew(
    hub: &Client,
    creds: &Credentials,
    requested: String,
) -> Result<Credentials, AgentError> {
    let key = register::new_key()?;
    let generation = new_generation();
    let name = renewal_csr_name(&creds.cluster);
    register::delete_request(hub, &name).await?;
    let cert_pem = register::request_certificate(
        hub,
        &register::CertificateRequest {
            name: &name,
            cluster: &creds.cluster,
            generation: &generation,
            key: &key,
            facts: None,
            kind: register::RequestKind::Renewal,
            wait_hint: "renewals are approved by the hub's `atoll controller`",
        },
    )
    .await?;
    Ok(Credentials {
        cert_pem,
        key_pem: key.serialize_pem().into_bytes(),
        rotated_for: requested,
        ..creds.clone()
    })
}

enum SessionEnd {
    /// Get new credentials; the string is the rotation request being honoured.
    Rotate(String),
    Unjoined,
}

async fn session(
    options: &AgentOptions,
    creds: &Credentials,
    connected: Connected,
    version: &str,
    tasks: &[ClusterTask],
) -> Result<SessionEnd, AgentError> {
    let _tasks: Vec<AbortOnDropHandle<()>> = tasks
        .iter()
        .map(|task| AbortOnDropHandle::new(tokio::spawn(task(connected.clone()))))
        .collect();
    let (not_before, not_after) = creds.validity()?;
    let lifetime = not_after.duration_since(not_before);
    let renew_at = not_before
        .checked_add(lifetime.mul_f64(options.renew_at_fraction.clamp(0.1, 0.95)))
        .unwrap_or(not_after);

    let (properties, properties_changed, _watch) = watch_properties(connected.member.clone());
    let leases: Api<Lease> = Api::namespaced(connected.hub.clone(), &connected.namespace);
    let reports: Api<ConfigMap> = Api::namespaced(connected.hub.clone(), &connected.namespace);
    let mut ticker = tokio::time::interval(options.lease_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let generation = creds.generation().unwrap_or_default();
    let mut renewal_cleared = false;
    let mut refusals = 0;
    let mut ready = String::new();
    let mut reported: Option<BTreeMap<String, String>> = None;
    let mut mcs_crds = McsCrdCheck::default();
    loop {
        // After a refusal, ask again within a second: the cluster's tasks fail meanwhile.
        let refused = refusals > 0;
        let recheck = async move {
            if refused {
                tokio::time::sleep(UNJOINED_RECHECK).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let tick = tokio::select! {
            _ = ticker.tick() => true,
            () = recheck => true,
            () = properties_changed.notified() => false,
        };
        if tick {
            match renew_lease(&leases, &connected.cluster, &generation).await {
                Ok(rotation) => {
                    refusals = 0;
                    if !renewal_cleared {
                        // The Lease now names this certificate's generation; removing the
                        // renewal request wakes the hub's registrar, which then revokes the
                        // previous certificate.
                        match register::delete_request(
                            &connected.hub,
                            &renewal_csr_name(&connected.cluster),
                        )
                        .await
                        {
                            Ok(()) => renewal_cleared = true,
                            Err(error) => {
                                warn!(cluster = %connected.cluster, %error, "removing the answered renewal request");
                            }
                        }
                    }
                    if let Some(requested) = rotation.filter(|r| *r != creds.rotated_for) {
                        info!(cluster = %connected.cluster, "the hub asked for new credentials");
                        return Ok(SessionEnd::Rotate(requested));
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
                    refusals += 1;
                    if refusals == 1 {
                        info!(cluster = %connected.cluster, "the hub refuses the agent's namespace ({}); checking whether the cluster was unjoined", status.message);
                    } else {
                        debug!(cluster = %connected.cluster, refusals, "the hub refuses the agent's namespace: {}", status.message);
                    }
                    if refusals >= UNJOINED_AFTER {
                        return Ok(SessionEnd::Unjoined);
                    }
                    continue;
                }
                Err(kube::Error::Api(status)) if status.code == 401 => {
                    return Err(AgentError::Unauthorized(format!(
                        "the hub no longer accepts this agent's certificate (401: {}); unjoin and register the cluster again",
                        status.message
                    )));
                }
                Err(error) => {
                    warn!(cluster = %connected.cluster, %error, "renewing the lease");
                    continue;
                }
            }
            if Timestamp::now() >= renew_at {
                info!(cluster = %connected.cluster, "certificate past {:.0}% of its lifetime", options.renew_at_fraction * 100.0);
                return Ok(SessionEnd::Rotate(creds.rotated_for.clone()));
            }
            ready = match probe_client(&connected.member, Duration::from_secs(3)).await {
                Probe::Ready => "ok".into(),
                Probe::NotReady(why) | Probe::Unreachable(why) => why,
            };
            mcs_crds.check_if_due(&connected.member).await;
        }
        let mut data = BTreeMap::from([
            (STATUS_KEY_VERSION.to_owned(), version.to_owned()),
            (STATUS_KEY_READY.to_owned(), ready.clone()),
        ]);
        data.insert(
            STATUS_KEY_PROPERTIES.to_owned(),
            properties_map(&properties),
        );
        if let Some(missing) = &mcs_crds.missing {
            data.insert(STATUS_KEY_MCS_CRDS_MISSING.to_owned(), missing.clone());
        }
        if reported.as_ref() != Some(&data) {
            match write_report(&reports, &connected.cluster, &data).await {
                Ok(()) => reported = Some(data),
                // Refused: the lease renewal (checked again within a second) tells whether
                // the cluster was unjoined; no warning per refused report meanwhile.
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
                    debug!(cluster = %connected.cluster, "reporting status refused: {}", status.message);
                    refusals = refusals.max(1);
                }
                Err(error) => warn!(cluster = %connected.cluster, %error, "reporting status"),
            }
        }
    }
}

/// Whether the member serves the MCS CRDs, for the status report (the hub turns it into the
/// profile's `MultiClusterServicesReady` condition, as in push mode). Checked at the first
/// tick of a session, then every [`atoll_mcs::member::CRD_RECHECK`]: one discovery request.
#[derive(Default)]
struct McsCrdCheck {
    /// What the member lacks, as a sentence; empty when it serves them; `None` until known.
    missing: Option<String>,
    next: Option<tokio::time::Instant>,
}

impl McsCrdCheck {
    async fn check_if_due(&mut self, member: &Client) {
        let now = tokio::time::Instant::now();
        if self.next.is_some_and(|next| now < next) {
            return;
        }
        match atoll_mcs::member::missing_crds(member).await {
            Ok(missing) => {
                self.missing = Some(missing.unwrap_or_default());
                self.next = Some(now + atoll_mcs::member::CRD_RECHECK);
            }
            Err(error) => {
                debug!(%error, "checking the member's MCS CRDs; again at the next tick");
            }
        }
    }
}

/// Renews the agent's Lease (creating it when missing); returns the rotation request on it.
async fn renew_lease(
    leases: &Api<Lease>,
    cluster: &str,
    generation: &str,
) -> Result<Option<String>, kube::Error> {
    let now = MicroTime(Timestamp::now());
    match leases.get_opt(AGENT_LEASE).await? {
        Some(lease) => {
            let patch = serde_json::json!({
                "metadata": {"annotations": {ANNOTATION_GENERATION: generation}},
                "spec": {"renewTime": now, "holderIdentity": format!("atoll-agent-{cluster}")},
            });
            leases
                .patch(AGENT_LEASE, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(lease.annotations().get(ANNOTATION_ROTATE).cloned())
        }
        None => {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(AGENT_LEASE.to_owned()),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_GENERATION.to_owned(),
                        generation.to_owned(),
                    )])),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(format!("atoll-agent-{cluster}")),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            kubeutil::mark_managed(
                &mut lease,
                &BTreeMap::from([(LABEL_CLUSTER_NAME.to_owned(), cluster.to_owned())]),
            );
            leases.create(&PostParams::default(), &lease).await?;
            Ok(None)
        }
    }
}

async fn write_report(
    reports: &Api<ConfigMap>,
    cluster: &str,
    data: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let mut report = ConfigMap {
        metadata: ObjectMeta {
            name: Some(AGENT_STATUS_CONFIGMAP.to_owned()),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    kubeutil::mark_managed(
        &mut report,
        &BTreeMap::from([(LABEL_CLUSTER_NAME.to_owned(), cluster.to_owned())]),
    );
    match reports.create(&PostParams::default(), &report).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Every key is always present (properties are one JSON value), so a merge patch
            // replaces the whole report, and a deleted property disappears with it.
            reports
                .patch(
                    AGENT_STATUS_CONFIGMAP,
                    &PatchParams::default(),
                    &Patch::Merge(&serde_json::json!({"data": data})),
                )
                .await?;
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// The member's ClusterProperties as a JSON object of name to value.
fn properties_map(store: &reflector::Store<ClusterProperty>) -> String {
    let properties: BTreeMap<String, String> = store
        .state()
        .iter()
        .map(|p| (p.name_any(), p.spec.value.clone()))
        .collect();
    serde_json::Value::from(serde_json::Map::from_iter(
        properties
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v))),
    ))
    .to_string()
}

fn watch_properties(
    member: Client,
) -> (
    reflector::Store<ClusterProperty>,
    Arc<Notify>,
    AbortOnDropHandle<()>,
) {
    let changed = Arc::new(Notify::new());
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(
        Api::<ClusterProperty>::all(member),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    let notify = changed.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                notify.notify_one();
            }
        }
    });
    (reader, changed, AbortOnDropHandle::new(task))
}
