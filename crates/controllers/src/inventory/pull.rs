//! Pull-mode registration, hub side.
//!
//! The member's API server need not be reachable from the hub; an agent in the member dials
//! out. Built only from Kubernetes primitives, so it works against any Kubernetes hub:
//!
//! 1. `atoll token create` makes a **bootstrap identity**: a ServiceAccount
//!    `atoll-bootstrap-<id>` in the manager namespace, allowed to do one thing: create
//!    CertificateSigningRequests and read back the one named `atoll-bootstrap-<id>`. Its
//!    token is a TokenRequest token; the token string handed out is `<id>.<jwt>`. When the
//!    token's time is up, the registrar deletes the ServiceAccount, which invalidates the
//!    token at once (the API server checks that the account still exists).
//! 2. The agent sends a CSR for `CN=system:atoll:agent:<cluster>, O=system:atoll:agents`,
//!    labelled with the cluster's name and annotated with its cluster ID and ClusterSet.
//! 3. [`accept`] (by `atoll accept NAME`, or the registrar under auto-accept) checks the CSR
//!    (the subject must be exactly the agent identity of that cluster and nothing more, the
//!    requester must be that token's live bootstrap identity, the name and cluster ID must be
//!    free), creates the cluster's namespace, the agent's RBAC and the ClusterProfile, and
//!    approves the CSR; the hub's `kubernetes.io/kube-apiserver-client` signer
//!    (kube-controller-manager's, or `atoll hub`'s own) issues the certificate. The bootstrap identity
//!    is deleted: a token registers one cluster.
//! 4. The agent's certificate is its long-lived credential. RBAC confines it to its cluster's
//!    namespace (Works, MCS objects, its Lease and status report) plus renewing itself: the
//!    agent sends a CSR named `atoll-agent-<cluster>-renewal` for the same subject, and the
//!    registrar approves renewals whose requester is that same agent.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_api::about::{CLUSTER_ID_PROPERTY, CLUSTER_SET_PROPERTY};
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, AccessProvider, CONDITION_JOINED, ClusterManager, ClusterProfile,
    ClusterProfileSpec, ClusterProfileStatus, LABEL_CLUSTER_MANAGER, LABEL_CLUSTER_SET, LABEL_MODE,
    MODE_PULL, Property,
};
use atoll_api::conditions;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::join::profile_cluster_id;
use super::names::*;
use crate::kubeutil::{self, delete_if_exists, ensure, is_managed};

/// Prefix of bootstrap ServiceAccounts, ClusterRoles and CSRs.
pub const BOOTSTRAP_PREFIX: &str = "atoll-bootstrap-";
/// Label on every bootstrap object.
pub const LABEL_BOOTSTRAP_TOKEN: &str = "atoll.io/bootstrap-token";
/// Annotation on a bootstrap ServiceAccount: when its token stops working (RFC 3339).
pub const ANNOTATION_EXPIRES_AT: &str = "atoll.io/expires-at";
/// Annotation on an agent's CSR: the member's cluster ID.
pub const ANNOTATION_CLUSTER_ID: &str = "atoll.io/cluster-id";
/// Annotation on an agent's CSR: the ClusterSet the member asks to join.
pub const ANNOTATION_CLUSTER_SET: &str = "atoll.io/clusterset";
/// Annotation on an agent's CSR: the profile labels the member asks for (JSON object).
pub const ANNOTATION_LABELS: &str = "atoll.io/labels";
/// Annotation on an agent's CSR: the member's Kubernetes version.
pub const ANNOTATION_KUBERNETES_VERSION: &str = "atoll.io/kubernetes-version";
/// Group of every agent identity.
pub const AGENT_GROUP: &str = "system:atoll:agents";
/// Role (in the cluster namespace) and its binding that confine an agent.
pub const AGENT_ROLE: &str = "atoll:agent";
/// The Lease an agent renews in its cluster namespace.
pub const AGENT_LEASE: &str = "atoll-agent";
/// The ConfigMap in which an agent reports its member (version, properties).
pub const AGENT_STATUS_CONFIGMAP: &str = "atoll-agent-status";
/// Key of the member's Kubernetes version in [`AGENT_STATUS_CONFIGMAP`].
pub const STATUS_KEY_VERSION: &str = "kubernetes-version";
/// Key of the member API server's readiness: `ok`, or why not.
pub const STATUS_KEY_READY: &str = "ready";
/// Key of the member's ClusterProperties (a JSON object of name to value).
pub const STATUS_KEY_PROPERTIES: &str = "properties";
/// Annotation an operator sets on the agent's Lease to ask for new credentials now.
pub const ANNOTATION_ROTATE: &str = "atoll.io/rotate-credentials";
/// The signer that issues agent certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The access provider recorded for pull-mode clusters: the hub reaches them via the agent.
pub const PULL_ACCESS_PROVIDER: &str = "atoll-agent";
/// Shortest lifetime of the TokenRequest token behind a bootstrap token (the API server's
/// minimum); shorter lifetimes are enforced by the registrar.
const MIN_TOKEN_REQUEST: Duration = Duration::from_secs(600);

/// The user name of a cluster's agent.
pub fn agent_user(cluster: &str) -> String {
    format!("system:atoll:agent:{cluster}")
}

/// The ClusterRole (and binding) letting a cluster's agent renew its certificate.
pub fn agent_cluster_role(cluster: &str) -> String {
    format!("atoll:agent:{cluster}")
}

/// The name of an agent's renewal CSR.
pub fn renewal_csr_name(cluster: &str) -> String {
    format!("atoll-agent-{cluster}-renewal")
}

/// The bootstrap ServiceAccount, ClusterRole and CSR of a token.
pub fn bootstrap_name(token_id: &str) -> String {
    format!("{BOOTSTRAP_PREFIX}{token_id}")
}

/// Why a pull-mode operation failed. Messages never carry a token or key.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A request to the hub failed.
    #[error("hub: {action}: {source}")]
    Hub {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
    /// The token lifetime is not usable.
    #[error("the token lifetime must be between 1 second and 1 year, not {0:?}")]
    InvalidTtl(Duration),
    /// The hub issued no token.
    #[error("the hub returned an empty token for the bootstrap ServiceAccount")]
    NoToken,
    /// Nothing waits for acceptance under that name.
    #[error("no agent of a cluster named {name:?} is waiting to be accepted{pending}")]
    NoRequest {
        /// The name.
        name: String,
        /// Names that are waiting, if any.
        pending: String,
    },
    /// The registration request cannot be accepted.
    #[error("cannot accept cluster {name:?}: {reason}")]
    Refused {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A cluster name that cannot name a namespace.
    #[error("{0}")]
    InvalidName(String),
}

fn on_hub(action: impl Into<String>) -> impl FnOnce(kube::Error) -> PullError {
    let action = action.into();
    move |source| PullError::Hub { action, source }
}

/// A bootstrap token: `<id>.<secret>`. Its `Display` prints the whole token; `Debug` hides
/// the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public id, naming the bootstrap objects.
    pub id: String,
    /// The bearer token.
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl std::fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl std::str::FromStr for BootstrapToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (id, secret) = text.trim().split_once('.').ok_or(
            "a bootstrap token has the form <id>.<secret>, as `atoll token create` prints it",
        )?;
        let id_ok = id.len() == 6
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !id_ok || secret.is_empty() {
            return Err(
                "a bootstrap token has the form <id>.<secret>, with a 6-character id of lowercase letters and digits".into(),
            );
        }
        Ok(BootstrapToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// A new bootstrap token and when it expires.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The token.
    pub token: BootstrapToken,
    /// When it stops working.
    pub expires_at: Timestamp,
}

/// Creates a bootstrap token valid for `ttl`.
pub async fn create_bootstrap_token(
    hub: &Client,
    manager_namespace: &str,
    ttl: Duration,
) -> Result<CreatedToken, PullError> {
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 24 * 3600) {
        return Err(PullError::InvalidTtl(ttl));
    }
    let id = random_id();
    let name = bootstrap_name(&id);
    let expires_at = Timestamp::now()
        .checked_add(SignedDuration::try_from(ttl).map_err(|_| PullError::InvalidTtl(ttl))?)
        .map_err(|_| PullError::InvalidTtl(ttl))?;
    let labels = BTreeMap::from([(LABEL_BOOTSTRAP_TOKEN.to_owned(), id.clone())]);

    let namespaces: Api<Namespace> = Api::all(hub.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(manager_namespace.to_owned());
    ensure(&namespaces, &ns)
        .await
        .map_err(on_hub(format!("creating namespace {manager_namespace}")))?;

    let renew_only = vec![
        rule(
            "certificates.k8s.io",
            "certificatesigningrequests",
            &[],
            &["create"],
        ),
        rule(
            "certificates.k8s.io",
            "certificatesigningrequests",
            &[&name],
            &["get"],
        ),
    ];
    let bootstrap_identity = Subject {
        kind: "ServiceAccount".into(),
        name: name.clone(),
        namespace: Some(manager_namespace.to_owned()),
        ..Default::default()
    };
    ensure_cluster_role(hub, &name, renew_only, bootstrap_identity, &labels)
        .await
        .map_err(on_hub("creating the bootstrap ClusterRole and its binding"))?;

    let mut sa = ServiceAccount {
        metadata: meta(&name, Some(manager_namespace)),
        ..Default::default()
    };
    kubeutil::mark_managed(&mut sa, &labels);
    sa.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_EXPIRES_AT.to_owned(),
        expires_at.to_string(),
    )]));
    let accounts: Api<ServiceAccount> = Api::namespaced(hub.clone(), manager_namespace);
    ensure(&accounts, &sa)
        .await
        .map_err(on_hub("creating the bootstrap ServiceAccount"))?;

    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(
                i64::try_from(ttl.max(MIN_TOKEN_REQUEST).as_secs()).unwrap_or(i64::MAX),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(&name, &PostParams::default(), &request)
        .await
        .map_err(on_hub("requesting the bootstrap token"))?;
    let secret = issued.status.and_then(|s| s.token).unwrap_or_default();
    if secret.is_empty() {
        return Err(PullError::NoToken);
    }
    info!(token_id = %id, %expires_at, "bootstrap token created");
    Ok(CreatedToken {
        token: BootstrapToken { id, secret },
        expires_at,
    })
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..Default::default()
    }
}

fn rule(group: &str, resource: &str, names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: (!names.is_empty())
            .then(|| names.iter().map(|n| (*n).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

/// Creates (or keeps) a ClusterRole and a ClusterRoleBinding of the same name granting it to
/// `subject`. The role owns the binding, so deleting the role removes both.
async fn ensure_cluster_role(
    hub: &Client,
    name: &str,
    rules: Vec<PolicyRule>,
    subject: Subject,
    labels: &BTreeMap<String, String>,
) -> Result<ClusterRole, kube::Error> {
    let mut role = ClusterRole {
        metadata: meta(name, None),
        rules: Some(rules),
        ..Default::default()
    };
    kubeutil::mark_managed(&mut role, labels);
    let (role, _) = ensure(&Api::<ClusterRole>::all(hub.clone()), &role).await?;
    let mut binding = ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.to_owned(),
        },
        subjects: Some(vec![subject]),
    };
    kubeutil::mark_managed(&mut binding, labels);
    binding.metadata.owner_references = Some(vec![owned_by_cluster_role(&role)]);
    ensure(&Api::<ClusterRoleBinding>::all(hub.clone()), &binding).await?;
    Ok(role)
}

fn owned_by_cluster_role(role: &ClusterRole) -> OwnerReference {
    OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRole".into(),
        name: role.name_any(),
        uid: role.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Deletes the bootstrap identities whose time is up (and, with `token_id`, that one at
/// once). Returns how many were deleted.
pub async fn revoke_bootstrap_tokens(
    hub: &Client,
    manager_namespace: &str,
    token_id: Option<&str>,
    now: Timestamp,
) -> Result<usize, PullError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(hub.clone(), manager_namespace);
    let selector = match token_id {
        Some(id) => format!("{LABEL_BOOTSTRAP_TOKEN}={id}"),
        None => LABEL_BOOTSTRAP_TOKEN.to_owned(),
    };
    let list = accounts
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(on_hub("listing bootstrap ServiceAccounts"))?;
    let mut revoked = 0;
    for sa in list.items.into_iter().filter(is_managed) {
        let expired = token_id.is_some()
            || sa
                .annotations()
                .get(ANNOTATION_EXPIRES_AT)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_none_or(|at| at <= now);
        if !expired {
            continue;
        }
        let name = sa.name_any();
        delete_if_exists(&accounts, &name)
            .await
            .map_err(on_hub(format!("deleting ServiceAccount {name}")))?;
        delete_if_exists(&Api::<ClusterRole>::all(hub.clone()), &name)
            .await
            .map_err(on_hub(format!("deleting ClusterRole {name}")))?;
        info!(%name, "bootstrap token revoked");
        revoked += 1;
    }
    Ok(revoked)
}

/// The earliest expiry among live bootstrap tokens.
async fn next_expiry(hub: &Client, manager_namespace: &str) -> Option<Timestamp> {
    let accounts: Api<ServiceAccount> = Api::namespaced(hub.clone(), manager_namespace);
    let list = accounts
        .list(&ListParams::default().labels(LABEL_BOOTSTRAP_TOKEN))
        .await
        .ok()?;
    list.items
        .iter()
        .filter_map(|sa| sa.annotations().get(ANNOTATION_EXPIRES_AT)?.parse().ok())
        .min()
}

/// An agent waiting to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The cluster name the agent asks for.
    pub cluster: String,
    /// The member's cluster ID.
    pub cluster_id: String,
    /// The ClusterSet it asks to join.
    pub cluster_set: String,
    /// The profile labels it asks for.
    pub labels: BTreeMap<String, String>,
    /// The member's Kubernetes version.
    pub kubernetes_version: String,
    /// The CSR carrying the request.
    pub csr: String,
    /// Who sent it.
    pub requested_by: String,
}

impl Registration {
    fn from_csr(csr: &CertificateSigningRequest) -> Option<Registration> {
        let name = csr.name_any();
        name.strip_prefix(BOOTSTRAP_PREFIX)?;
        let annotations = csr.annotations();
        Some(Registration {
            cluster: csr.labels().get(LABEL_CLUSTER_NAME)?.clone(),
            cluster_id: annotations.get(ANNOTATION_CLUSTER_ID)?.clone(),
            cluster_set: annotations.get(ANNOTATION_CLUSTER_SET)?.clone(),
            labels: annotations
                .get(ANNOTATION_LABELS)
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_default(),
            kubernetes_version: annotations
                .get(ANNOTATION_KUBERNETES_VERSION)
                .cloned()
                .unwrap_or_default(),
            csr: name,
            requested_by: csr.spec.username.clone().unwrap_or_default(),
        })
    }
}

fn csr_decided(csr: &CertificateSigningRequest) -> bool {
    csr.status.as_ref().is_some_and(|s| {
        s.conditions.iter().flatten().any(|c| {
            matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed") && c.status == "True"
        })
    })
}

/// The agents waiting to be accepted.
pub async fn pending_registrations(hub: &Client) -> Result<Vec<Registration>, PullError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let list = csrs
        .list(&ListParams::default().labels(LABEL_CLUSTER_NAME))
        .await
        .map_err(on_hub("listing CertificateSigningRequests"))?;
    Ok(list
        .items
        .iter()
        .filter(|csr| !csr_decided(csr))
        .filter_map(Registration::from_csr)
        .collect())
}

/// What [`accept`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The registration accepted.
    pub registration: Registration,
    /// The cluster's hub namespace.
    pub namespace: String,
}

/// Accepts the waiting agent of cluster `name`: checks its request, creates the cluster's
/// namespace, the agent's RBAC and the ClusterProfile, approves its certificate and revokes the
/// bootstrap token. Safe to repeat.
pub async fn accept(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
) -> Result<Accepted, PullError> {
    validate_cluster_name(name).map_err(PullError::InvalidName)?;
    let pending = pending_registrations(hub).await?;
    let Some(registration) = pending.iter().find(|r| r.cluster == name).cloned() else {
        let names: Vec<&str> = pending.iter().map(|r| r.cluster.as_str()).collect();
        return Err(PullError::NoRequest {
            name: name.to_owned(),
            pending: if names.is_empty() {
                String::new()
            } else {
                format!("; waiting: {}", names.join(", "))
            },
        });
    };
    let refuse = |reason: String| PullError::Refused {
        name: name.to_owned(),
        reason,
    };
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let csr = csrs
        .get(&registration.csr)
        .await
        .map_err(on_hub("reading the agent's CSR"))?;
    match check_registration(hub, manager_namespace, name, &registration, &csr).await? {
        Ok(()) => {}
        Err(reason) => {
            // Denied, so that the waiting agent stops with the reason instead of waiting on.
            decide(&csrs, &registration.csr, "Denied", "AtollRefused", &reason).await?;
            return Err(refuse(reason));
        }
    }
    let token_id = registration
        .csr
        .strip_prefix(BOOTSTRAP_PREFIX)
        .unwrap_or_default();

    let namespace = cluster_namespace(name);
    let cluster_labels = BTreeMap::from([(LABEL_CLUSTER_NAME.to_owned(), name.to_owned())]);
    let mut ns = Namespace {
        metadata: meta(&namespace, None),
        ..Default::default()
    };
    kubeutil::mark_managed(&mut ns, &cluster_labels);
    // A namespace left terminating by an earlier unjoin of this name is waited out.
    kubeutil::ensure_namespace(
        &Api::<Namespace>::all(hub.clone()),
        &ns,
        Duration::from_secs(60),
    )
    .await
    .map_err(on_hub(format!("creating namespace {namespace}")))?;
    install_agent_rbac(hub, name, &namespace, &cluster_labels).await?;
    upsert_profile(hub, manager_namespace, &registration).await?;

    decide(
        &csrs,
        &registration.csr,
        "Approved",
        "AtollAccepted",
        &format!(
            "cluster {name} accepted into ClusterSet {}",
            registration.cluster_set
        ),
    )
    .await?;
    // A token registers one cluster. The agent reads its certificate with its own CSR's
    // name, which the bootstrap role allows, so give it a moment before revoking.
    let hub_for_revoke = hub.clone();
    let manager = manager_namespace.to_owned();
    let id = token_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Err(error) =
            revoke_bootstrap_tokens(&hub_for_revoke, &manager, Some(&id), Timestamp::now()).await
        {
            warn!(%error, "revoking a used bootstrap token; it expires on its own");
        }
    });
    info!(cluster = %name, cluster_id = %registration.cluster_id, "pull-mode cluster accepted");
    Ok(Accepted {
        registration,
        namespace,
    })
}

/// Everything that must hold before a registration is accepted; `Err(reason)` refuses it.
async fn check_registration(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
    registration: &Registration,
    csr: &CertificateSigningRequest,
) -> Result<Result<(), String>, PullError> {
    if let Err(reason) = check_agent_csr(csr, name) {
        return Ok(Err(reason));
    }
    // The requester must be the live bootstrap identity of the token this CSR is named after.
    let token_id = registration
        .csr
        .strip_prefix(BOOTSTRAP_PREFIX)
        .unwrap_or_default();
    let expected = format!(
        "system:serviceaccount:{manager_namespace}:{}",
        bootstrap_name(token_id)
    );
    if registration.requested_by != expected {
        return Ok(Err(format!(
            "the request was sent by {:?}, not by bootstrap token {token_id}",
            registration.requested_by
        )));
    }
    if let Err(e) = atoll_api::about::validate_cluster_id(&registration.cluster_id) {
        return Ok(Err(e.to_string()));
    }
    Ok(
        check_unique(hub, manager_namespace, name, &registration.cluster_id)
            .await?
            .map_or(Ok(()), Err),
    )
}

/// Approves or denies a CSR.
async fn decide(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    decision: &str,
    reason: &str,
    message: &str,
) -> Result<(), PullError> {
    let approval = serde_json::json!({"status": {"conditions": [CertificateSigningRequestCondition {
        type_: decision.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }]}});
    csrs.patch_approval(name, &PatchParams::default(), &Patch::Merge(&approval))
        .await
        .map_err(on_hub(format!("recording the decision on request {name}")))?;
    Ok(())
}

/// Checks that a CSR asks for exactly the agent identity of `cluster`, for client auth.
pub fn check_agent_csr(csr: &CertificateSigningRequest, cluster: &str) -> Result<(), String> {
    if csr.spec.signer_name != CLIENT_SIGNER {
        return Err(format!(
            "the CSR asks for signer {:?}, not {CLIENT_SIGNER}",
            csr.spec.signer_name
        ));
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    if usages
        .iter()
        .any(|u| u != "client auth" && u != "digital signature" && u != "key encipherment")
    {
        return Err(format!(
            "the CSR asks for usages {usages:?}; only client auth is granted"
        ));
    }
    let (common_name, organizations) = csr_subject(&csr.spec.request.0)?;
    let expected = agent_user(cluster);
    if common_name != expected {
        return Err(format!(
            "the CSR asks for common name {common_name:?}, not {expected:?}"
        ));
    }
    if organizations != [AGENT_GROUP] {
        return Err(format!(
            "the CSR asks for groups {organizations:?}; an agent gets exactly [{AGENT_GROUP:?}]"
        ));
    }
    Ok(())
}

/// The subject common name and organizations of a PEM CSR.
fn csr_subject(pem: &[u8]) -> Result<(String, Vec<String>), String> {
    use x509_parser::prelude::FromDer;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("the CSR is not PEM: {e}"))?;
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| format!("the CSR does not parse: {e}"))?;
    request
        .verify_signature()
        .map_err(|e| format!("the CSR's signature does not verify: {e}"))?;
    let subject = &request.certification_request_info.subject;
    let text = |attribute: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attribute
            .as_str()
            .map(str::to_owned)
            .map_err(|e| format!("the CSR's subject is not text: {e}"))
    };
    let mut common_names = Vec::new();
    for attribute in subject.iter_common_name() {
        common_names.push(text(attribute)?);
    }
    let mut organizations = Vec::new();
    for attribute in subject.iter_organization() {
        organizations.push(text(attribute)?);
    }
    match common_names.as_slice() {
        [one] => Ok((one.clone(), organizations)),
        _ => Err(format!(
            "the CSR must name exactly one common name, not {}",
            common_names.len()
        )),
    }
}

/// `Some(reason)` when the name or the cluster ID is taken by another cluster.
async fn check_unique(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
    cluster_id: &str,
) -> Result<Option<String>, PullError> {
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), manager_namespace);
    let all = profiles
        .list(&ListParams::default())
        .await
        .map_err(on_hub("listing ClusterProfiles"))?;
    for profile in all.items {
        let other = profile.name_any();
        let Some(id) = profile_cluster_id(&profile) else {
            continue;
        };
        if other == name && id != cluster_id {
            return Ok(Some(format!(
                "a cluster named {name:?} is already joined with cluster ID {id:?}, but this agent's member has ID {cluster_id:?}; choose another name or unjoin the other cluster first"
            )));
        }
        if other != name && id == cluster_id {
            return Ok(Some(format!(
                "cluster ID {cluster_id:?} is already used by joined cluster {other:?}; cluster IDs must be unique within the ClusterSet"
            )));
        }
    }
    Ok(None)
}

/// What a cluster's agent may do on the hub: its own namespace's Works, MCS objects, Lease,
/// status report and events, and renewing its own certificate. Nothing else.
pub fn agent_namespace_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        rule(
            atoll_api::work::GROUP,
            "works",
            &[],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            atoll_api::work::GROUP,
            "works/status",
            &[],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule("coordination.k8s.io", "leases", &[], &["create"]),
        rule(
            "coordination.k8s.io",
            "leases",
            &[AGENT_LEASE],
            &["get", "update", "patch"],
        ),
        rule("", "configmaps", &[], &["create"]),
        rule(
            "",
            "configmaps",
            &[AGENT_STATUS_CONFIGMAP],
            &["get", "update", "patch"],
        ),
        rule("", "events", &[], &["create", "patch"]),
    ];
    // The MCS member syncer publishes exports and reads imports in the same namespace.
    rules.extend(atoll_mcs::rbac::hub_namespace_rules());
    rules
}

async fn install_agent_rbac(
    hub: &Client,
    cluster: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), PullError> {
    let agent = Subject {
        kind: "User".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        name: agent_user(cluster),
        ..Default::default()
    };
    let mut role = Role {
        metadata: meta(AGENT_ROLE, Some(namespace)),
        rules: Some(agent_namespace_rules()),
    };
    kubeutil::mark_managed(&mut role, labels);
    let roles: Api<Role> = Api::namespaced(hub.clone(), namespace);
    // Apply, not create-or-keep: an upgrade that changes what agents need reaches every agent.
    roles
        .patch(
            AGENT_ROLE,
            &PatchParams::apply(ATOLL_CLUSTER_MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await
        .map_err(on_hub("writing the agent's Role"))?;
    let mut binding = RoleBinding {
        metadata: meta(AGENT_ROLE, Some(namespace)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: AGENT_ROLE.into(),
        },
        subjects: Some(vec![agent.clone()]),
    };
    kubeutil::mark_managed(&mut binding, labels);
    ensure(
        &Api::<RoleBinding>::namespaced(hub.clone(), namespace),
        &binding,
    )
    .await
    .map_err(on_hub("binding the agent's Role"))?;

    let renewal = renewal_csr_name(cluster);
    let renew_own = vec![
        rule(
            "certificates.k8s.io",
            "certificatesigningrequests",
            &[],
            &["create"],
        ),
        rule(
            "certificates.k8s.io",
            "certificatesigningrequests",
            &[&renewal],
            &["get", "delete"],
        ),
    ];
    ensure_cluster_role(hub, &agent_cluster_role(cluster), renew_own, agent, labels)
        .await
        .map_err(on_hub("creating the agent's ClusterRole and its binding"))?;
    Ok(())
}

async fn upsert_profile(
    hub: &Client,
    manager_namespace: &str,
    registration: &Registration,
) -> Result<(), PullError> {
    let name = &registration.cluster;
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), manager_namespace);
    let mut profile = ClusterProfile::new(
        name,
        ClusterProfileSpec {
            display_name: Some(name.clone()),
            cluster_manager: ClusterManager {
                name: ATOLL_CLUSTER_MANAGER.to_owned(),
            },
            taints: Vec::new(),
        },
    );
    let mut labels = registration.labels.clone();
    labels.insert(
        LABEL_CLUSTER_MANAGER.to_owned(),
        ATOLL_CLUSTER_MANAGER.to_owned(),
    );
    labels.insert(
        LABEL_CLUSTER_SET.to_owned(),
        registration.cluster_set.clone(),
    );
    labels.insert(LABEL_MODE.to_owned(), MODE_PULL.to_owned());
    labels.insert(LABEL_CLUSTER_NAME.to_owned(), name.clone());
    kubeutil::mark_managed(&mut profile, &labels);
    let (stored, _) = ensure(&profiles, &profile)
        .await
        .map_err(on_hub("creating the ClusterProfile"))?;
    let now = Time(Timestamp::now());
    let mut status = stored.status.unwrap_or_default();
    conditions::set(
        &mut status.conditions,
        conditions::condition(
            CONDITION_JOINED,
            conditions::TRUE,
            "Accepted",
            format!(
                "joined in pull mode as cluster ID {}; its agent dials the hub",
                registration.cluster_id
            ),
            stored.metadata.generation,
            now.clone(),
        ),
    );
    let mut properties: Vec<Property> = status
        .properties
        .into_iter()
        .filter(|p| p.name != CLUSTER_ID_PROPERTY && p.name != CLUSTER_SET_PROPERTY)
        .collect();
    properties.extend([
        Property {
            name: CLUSTER_ID_PROPERTY.to_owned(),
            value: registration.cluster_id.clone(),
            last_observed_time: Some(now.clone()),
        },
        Property {
            name: CLUSTER_SET_PROPERTY.to_owned(),
            value: registration.cluster_set.clone(),
            last_observed_time: Some(now.clone()),
        },
    ]);
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    let status = ClusterProfileStatus {
        access_providers: vec![AccessProvider {
            name: PULL_ACCESS_PROVIDER.to_owned(),
            cluster: None,
        }],
        properties,
        version: (!registration.kubernetes_version.is_empty()).then(|| {
            atoll_api::cluster_profile::ClusterVersion {
                kubernetes: Some(registration.kubernetes_version.clone()),
            }
        }),
        ..status
    };
    profiles
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map_err(on_hub("writing the ClusterProfile status"))?;
    Ok(())
}

/// Removes the hub-side objects of a pull-mode agent that live outside its namespace.
pub async fn remove_agent_rbac(hub: &Client, cluster: &str) -> Result<(), kube::Error> {
    let roles: Api<ClusterRole> = Api::all(hub.clone());
    let name = agent_cluster_role(cluster);
    if let Some(role) = kubeutil::get_opt(&roles, &name).await?
        && is_managed(&role)
    {
        delete_if_exists(&roles, &name).await?;
        // The binding is owned by the role, but a hub without a garbage collector would keep
        // it, so it goes explicitly too.
        delete_if_exists(&Api::<ClusterRoleBinding>::all(hub.clone()), &name).await?;
    }
    Ok(())
}

/// Approves the renewal CSRs that agents send for their own identity.
pub async fn approve_renewals(hub: &Client, manager_namespace: &str) -> Result<usize, PullError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let list = csrs
        .list(&ListParams::default().labels(LABEL_CLUSTER_NAME))
        .await
        .map_err(on_hub("listing CertificateSigningRequests"))?;
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), manager_namespace);
    let mut approved = 0;
    for csr in list.items.iter().filter(|c| !csr_decided(c)) {
        let Some(cluster) = csr.labels().get(LABEL_CLUSTER_NAME) else {
            continue;
        };
        if csr.name_any() != renewal_csr_name(cluster) {
            continue;
        }
        // Renewals come only from the agent itself, of a cluster that is still joined.
        if csr.spec.username.as_deref() != Some(agent_user(cluster).as_str()) {
            continue;
        }
        if let Err(reason) = check_agent_csr(csr, cluster) {
            warn!(%cluster, %reason, "renewal CSR not approved");
            continue;
        }
        if kubeutil::get_opt(&profiles, cluster)
            .await
            .map_err(on_hub("reading the ClusterProfile"))?
            .is_none()
        {
            continue;
        }
        decide(
            &csrs,
            &csr.name_any(),
            "Approved",
            "AtollRenewal",
            &format!("renewal of the agent credentials of cluster {cluster}"),
        )
        .await?;
        info!(%cluster, "agent credentials renewed");
        approved += 1;
    }
    Ok(approved)
}

/// The registrar: revokes expired bootstrap tokens, approves agents' renewals and, with
/// `auto_accept`, accepts every valid registration. Driven by a watch on Atoll's CSRs plus a
/// timer for the next token expiry; runs until `shutdown`.
pub async fn run_registrar(
    hub: Client,
    manager_namespace: String,
    auto_accept: bool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let mut events = watcher::watcher(csrs, watcher::Config::default().labels(LABEL_CLUSTER_NAME))
        .default_backoff()
        .boxed();
    tokio::pin!(shutdown);
    loop {
        if let Err(error) =
            revoke_bootstrap_tokens(&hub, &manager_namespace, None, Timestamp::now()).await
        {
            warn!(%error, "revoking expired bootstrap tokens");
        }
        if let Err(error) = approve_renewals(&hub, &manager_namespace).await {
            warn!(%error, "approving renewals");
        }
        if auto_accept {
            match pending_registrations(&hub).await {
                Ok(pending) => {
                    for registration in pending {
                        if let Err(error) =
                            accept(&hub, &manager_namespace, &registration.cluster).await
                        {
                            warn!(cluster = %registration.cluster, %error, "not auto-accepted");
                        }
                    }
                }
                Err(error) => warn!(%error, "listing registrations"),
            }
        }
        let wake = match next_expiry(&hub, &manager_namespace).await {
            Some(at) => Duration::try_from(at.duration_since(Timestamp::now()))
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(60)),
            None => Duration::from_secs(60),
        };
        tokio::select! {
            () = &mut shutdown => break,
            event = events.next() => {
                if event.is_none() {
                    break;
                }
            }
            () = tokio::time::sleep(wake + Duration::from_millis(50)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_parse_and_never_print_their_secret_in_debug() {
        let token: BootstrapToken = "abc123.eyJhbGciOi.x.y"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.id, "abc123");
        assert_eq!(token.secret, "eyJhbGciOi.x.y");
        assert_eq!(token.to_string(), "abc123.eyJhbGciOi.x.y");
        assert!(!format!("{token:?}").contains("eyJ"));
        for bad in ["", "abc123", "ABC123.x", "abc12.x", "abc123.", "abc_23.x"] {
            assert!(bad.parse::<BootstrapToken>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_token_ids() {
        let id = random_id();
        assert!(format!("{id}.x").parse::<BootstrapToken>().is_ok());
        assert_ne!(random_id(), random_id());
    }

    fn csr_with(common_name: &str, organization: &str) -> CertificateSigningRequest {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, organization);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let pem = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut csr = CertificateSigningRequest::default();
        csr.spec.request = k8s_openapi::ByteString(pem.into_bytes());
        csr.spec.signer_name = CLIENT_SIGNER.into();
        csr.spec.usages = Some(vec!["client auth".into()]);
        csr
    }

    #[test]
    fn only_the_exact_agent_identity_is_accepted() {
        assert_eq!(
            check_agent_csr(&csr_with("system:atoll:agent:east", AGENT_GROUP), "east"),
            Ok(())
        );
        let wrong_cluster =
            check_agent_csr(&csr_with("system:atoll:agent:west", AGENT_GROUP), "east");
        assert!(wrong_cluster.is_err_and(|e| e.contains("common name")));
        let escalation = check_agent_csr(
            &csr_with("system:atoll:agent:east", "system:masters"),
            "east",
        );
        assert!(escalation.is_err_and(|e| e.contains("groups")));
        let mut server_cert = csr_with("system:atoll:agent:east", AGENT_GROUP);
        server_cert.spec.usages = Some(vec!["server auth".into()]);
        assert!(check_agent_csr(&server_cert, "east").is_err());
        let mut other_signer = csr_with("system:atoll:agent:east", AGENT_GROUP);
        other_signer.spec.signer_name = "kubernetes.io/kubelet-serving".into();
        assert!(check_agent_csr(&other_signer, "east").is_err());
        let mut garbage = csr_with("system:atoll:agent:east", AGENT_GROUP);
        garbage.spec.request = k8s_openapi::ByteString(b"not a csr".to_vec());
        assert!(check_agent_csr(&garbage, "east").is_err());
    }
}
