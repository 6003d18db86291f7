//! Pull-mode registration, hub side.
//!
//! The member's API server need not be reachable from the hub; an agent in the member dials
//! out. Built only from Kubernetes primitives, so it works against any Kubernetes hub:
//!
//! 1. `atoll token create` makes a **bootstrap identity**: a ServiceAccount
//!    `atoll-bootstrap-<id>` in the manager namespace, allowed to do one thing: create
//!    CertificateSigningRequests and read back the one named `atoll-bootstrap-<id>`. Its
//!    token is a TokenRequest token; the token string handed out is `<id>.<jwt>`. A token is
//!    revoked by deleting the ServiceAccount, which invalidates it at once (the API server
//!    checks that the account still exists): by [`accept`] as soon as it approves or denies
//!    the token's request, by `atoll token revoke`, and by the registrar's sweep of expired,
//!    used and denied tokens.
//! 2. The agent sends a CSR for `CN=system:atoll:agent:<cluster>` with the organizations
//!    `system:atoll:agents` and `system:atoll:agent:<cluster>:<generation>` (a random
//!    generation per certificate), labelled with the cluster's name and annotated with its
//!    cluster ID and ClusterSet. It watches its CSR from before it sends it, so the approval
//!    and certificate reach it over that watch after the token is gone.
//! 3. [`accept`] (by `atoll accept NAME`, or the registrar under auto-accept) checks the CSR
//!    (the subject must be exactly the agent identity of that cluster and nothing more, the
//!    requester must be that token's live bootstrap identity, the name and cluster ID must be
//!    free, unless the operator replaces the cluster), creates the cluster's namespace, the
//!    agent's RBAC and the ClusterProfile, and approves the CSR; the hub's
//!    `kubernetes.io/kube-apiserver-client` signer (kube-controller-manager's, or `atoll hub`'s
//!    own) issues the certificate. The bootstrap identity is deleted at once: a token registers
//!    one cluster.
//! 4. The agent's certificate is its long-lived credential. RBAC confines it to its cluster's
//!    namespace (Works, MCS objects, its Lease and status report) plus renewing itself, and is
//!    bound to the certificate's **generation group**, not to the user name: replacing the
//!    cluster binds the new generation only, so the old certificate loses every permission at
//!    once, on any hub (no custom authenticator, no revocation list). Renewal: the agent sends
//!    a CSR named `atoll-agent-<cluster>-renewal` with a new generation; the registrar
//!    approves it when its requester is that cluster's agent in a bound generation and binds
//!    both; once the agent's Lease carries the new generation (written with the new
//!    certificate), the registrar unbinds the old one.

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
/// Annotation on a bootstrap ServiceAccount: the cluster the token was made for.
pub const ANNOTATION_TOKEN_CLUSTER: &str = "atoll.io/cluster";
/// Annotation on an agent's Lease: the generation of the certificate that renewed it.
pub const ANNOTATION_GENERATION: &str = "atoll.io/agent-generation";
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
/// Key of what the member lacks of the MCS CRDs, as a sentence; empty when it serves them.
/// Absent from agents that do not check.
pub const STATUS_KEY_MCS_CRDS_MISSING: &str = "mcs-crds-missing";
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

/// The group naming one certificate generation of a cluster's agent; RBAC binds only this.
pub fn agent_generation_group(cluster: &str, generation: &str) -> String {
    format!("system:atoll:agent:{cluster}:{generation}")
}

/// The generation named by `group`, when it is a generation group of `cluster`'s agent.
pub fn generation_of<'a>(cluster: &str, group: &'a str) -> Option<&'a str> {
    let generation = group
        .strip_prefix("system:atoll:agent:")?
        .strip_prefix(cluster)?
        .strip_prefix(':')?;
    valid_generation(generation).then_some(generation)
}

fn valid_generation(generation: &str) -> bool {
    (8..=32).contains(&generation.len())
        && generation
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A fresh certificate generation: 12 random lowercase letters and digits.
pub fn new_generation() -> String {
    random_string(12)
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

/// What a bootstrap token is made for (`atoll token create --cluster --clusterset --labels`):
/// recorded on its identity, shown by `atoll token list`, and checked on acceptance (a token
/// made for a cluster registers only that name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenIntent {
    /// The cluster name the token is for.
    pub cluster: Option<String>,
    /// The ClusterSet the agent is told to join.
    pub cluster_set: Option<String>,
    /// The profile labels the agent is told to ask for.
    pub labels: BTreeMap<String, String>,
}

/// Creates a bootstrap token valid for `ttl`.
pub async fn create_bootstrap_token(
    hub: &Client,
    manager_namespace: &str,
    ttl: Duration,
) -> Result<CreatedToken, PullError> {
    create_bootstrap_token_for(hub, manager_namespace, ttl, &TokenIntent::default()).await
}

/// Creates a bootstrap token valid for `ttl`, made for `intent`.
pub async fn create_bootstrap_token_for(
    hub: &Client,
    manager_namespace: &str,
    ttl: Duration,
    intent: &TokenIntent,
) -> Result<CreatedToken, PullError> {
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 24 * 3600) {
        return Err(PullError::InvalidTtl(ttl));
    }
    if let Some(cluster) = &intent.cluster {
        validate_cluster_name(cluster).map_err(PullError::InvalidName)?;
    }
    if let Some(set) = &intent.cluster_set {
        check_cluster_set(set).map_err(PullError::InvalidName)?;
    }
    check_labels(&intent.labels).map_err(PullError::InvalidName)?;
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

    // Create a CSR, and read and watch the one named after the token (a list or watch with
    // `fieldSelector=metadata.name=<name>` is authorized as that name, as upstream does).
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
            &["get", "list", "watch"],
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
    let mut annotations =
        BTreeMap::from([(ANNOTATION_EXPIRES_AT.to_owned(), expires_at.to_string())]);
    if let Some(cluster) = &intent.cluster {
        annotations.insert(ANNOTATION_TOKEN_CLUSTER.to_owned(), cluster.clone());
    }
    if let Some(set) = &intent.cluster_set {
        annotations.insert(ANNOTATION_CLUSTER_SET.to_owned(), set.clone());
    }
    if !intent.labels.is_empty() {
        annotations.insert(
            ANNOTATION_LABELS.to_owned(),
            serde_json::to_string(&intent.labels).unwrap_or_default(),
        );
    }
    sa.metadata.annotations = Some(annotations);
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
    random_string(6)
}

fn random_string(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| {
            let i = rand::random_range(0..ALPHABET.len());
            ALPHABET.get(i).copied().map(char::from).unwrap_or('a')
        })
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

/// Where a bootstrap token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Not used yet.
    Active,
    /// Its agent's request waits to be accepted.
    Waiting,
    /// Its request was approved (the token is revoked at once; seen only in a race).
    Used,
    /// Its request was denied (revoked at once likewise).
    Denied,
    /// Its time is up.
    Expired,
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenState::Active => "Active",
            TokenState::Waiting => "Waiting",
            TokenState::Used => "Used",
            TokenState::Denied => "Denied",
            TokenState::Expired => "Expired",
        })
    }
}

/// A live bootstrap token, as `atoll token list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's public id.
    pub id: String,
    /// The cluster it was made for, or the one its agent asks for.
    pub cluster: Option<String>,
    /// When it stops working.
    pub expires_at: Option<Timestamp>,
    /// Where it stands.
    pub state: TokenState,
}

/// The bootstrap tokens that still exist, oldest expiry first.
pub async fn list_bootstrap_tokens(
    hub: &Client,
    manager_namespace: &str,
    now: Timestamp,
) -> Result<Vec<TokenInfo>, PullError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(hub.clone(), manager_namespace);
    let list = accounts
        .list(&ListParams::default().labels(LABEL_BOOTSTRAP_TOKEN))
        .await
        .map_err(on_hub("listing bootstrap ServiceAccounts"))?;
    let requests = token_requests(hub, manager_namespace).await?;
    let mut tokens: Vec<TokenInfo> = list
        .items
        .iter()
        .filter(|sa| is_managed(*sa))
        .filter_map(|sa| {
            let id = sa.labels().get(LABEL_BOOTSTRAP_TOKEN)?.clone();
            let expires_at = expiry(sa);
            let request = requests.get(&id);
            let state = token_state(expires_at, request, now);
            let cluster = sa
                .annotations()
                .get(ANNOTATION_TOKEN_CLUSTER)
                .cloned()
                .or_else(|| request?.labels().get(LABEL_CLUSTER_NAME).cloned());
            Some(TokenInfo {
                id,
                cluster,
                expires_at,
                state,
            })
        })
        .collect();
    tokens.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
    Ok(tokens)
}

fn expiry(sa: &ServiceAccount) -> Option<Timestamp> {
    sa.annotations()
        .get(ANNOTATION_EXPIRES_AT)
        .and_then(|t| t.parse::<Timestamp>().ok())
}

fn token_state(
    expires_at: Option<Timestamp>,
    request: Option<&CertificateSigningRequest>,
    now: Timestamp,
) -> TokenState {
    if let Some(csr) = request {
        if csr_condition(csr, "Approved") {
            return TokenState::Used;
        }
        if csr_condition(csr, "Denied") || csr_condition(csr, "Failed") {
            return TokenState::Denied;
        }
    }
    if expires_at.is_none_or(|at| at <= now) {
        return TokenState::Expired;
    }
    if request.is_some() {
        TokenState::Waiting
    } else {
        TokenState::Active
    }
}

/// Each token's own registration request (named after it and sent by its identity), by token
/// id. A request squatting a token's name, sent by someone else, is not that token's.
async fn token_requests(
    hub: &Client,
    manager_namespace: &str,
) -> Result<BTreeMap<String, CertificateSigningRequest>, PullError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    // Only agents' requests (labelled with their cluster) are ever decided by Atoll.
    let list = csrs
        .list(&ListParams::default().labels(LABEL_CLUSTER_NAME))
        .await
        .map_err(on_hub("listing CertificateSigningRequests"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|csr| {
            let id = csr.name_any().strip_prefix(BOOTSTRAP_PREFIX)?.to_owned();
            let sender = format!(
                "system:serviceaccount:{manager_namespace}:{}",
                bootstrap_name(&id)
            );
            (csr.spec.username.as_deref() == Some(sender.as_str())).then_some((id, csr))
        })
        .collect())
}

/// Revokes bootstrap tokens: with `token_id`, that one at once; without, every token whose
/// time is up or whose request has been approved or denied (the registrar's sweep). Returns
/// how many were revoked.
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
    let requests = if token_id.is_none() && !list.items.is_empty() {
        token_requests(hub, manager_namespace).await?
    } else {
        BTreeMap::new()
    };
    let mut revoked = 0;
    for sa in list.items.into_iter().filter(is_managed) {
        let id = sa
            .labels()
            .get(LABEL_BOOTSTRAP_TOKEN)
            .cloned()
            .unwrap_or_default();
        let state = token_state(expiry(&sa), requests.get(&id), now);
        let revoke =
            token_id.is_some() || !matches!(state, TokenState::Active | TokenState::Waiting);
        if !revoke {
            continue;
        }
        revoke_identity(hub, manager_namespace, &sa.name_any()).await?;
        revoked += 1;
    }
    Ok(revoked)
}

/// Revokes every token made for `cluster` or whose request asks for it. Returns how many.
pub async fn revoke_cluster_tokens(
    hub: &Client,
    manager_namespace: &str,
    cluster: &str,
) -> Result<usize, PullError> {
    let tokens = list_bootstrap_tokens(hub, manager_namespace, Timestamp::now()).await?;
    let mut revoked = 0;
    for token in tokens
        .iter()
        .filter(|t| t.cluster.as_deref() == Some(cluster))
    {
        revoked += revoke_bootstrap_tokens(
            hub,
            manager_namespace,
            Some(token.id.as_str()),
            Timestamp::now(),
        )
        .await?;
    }
    Ok(revoked)
}

async fn revoke_identity(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
) -> Result<(), PullError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(hub.clone(), manager_namespace);
    // The account first: its tokens stop working with it.
    delete_if_exists(&accounts, name)
        .await
        .map_err(on_hub(format!("deleting ServiceAccount {name}")))?;
    delete_if_exists(&Api::<ClusterRole>::all(hub.clone()), name)
        .await
        .map_err(on_hub(format!("deleting ClusterRole {name}")))?;
    // Owned by the role, but a hub without a garbage collector would keep it.
    delete_if_exists(&Api::<ClusterRoleBinding>::all(hub.clone()), name)
        .await
        .map_err(on_hub(format!("deleting ClusterRoleBinding {name}")))?;
    info!(%name, "bootstrap token revoked");
    Ok(())
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
    ["Approved", "Denied", "Failed"]
        .iter()
        .any(|type_| csr_condition(csr, type_))
}

fn csr_condition(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == type_ && c.status == "True")
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

/// How [`accept_with`] accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptOptions {
    /// Give a joined pull-mode cluster's name to this new agent: the current agent's identity
    /// is revoked. Never done without the operator asking (`atoll accept NAME --replace`).
    pub replace: bool,
}

/// Accepts the waiting agent of cluster `name` (never replacing a joined cluster): see
/// [`accept_with`].
pub async fn accept(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
) -> Result<Accepted, PullError> {
    accept_with(hub, manager_namespace, name, AcceptOptions::default()).await
}

/// Accepts the waiting agent of cluster `name`: checks its request, creates the cluster's
/// namespace, the agent's RBAC (bound to the new certificate's generation only) and the
/// ClusterProfile, approves its certificate and revokes the bootstrap token before returning.
/// A request that can never be accepted is denied (and its token revoked); one that only
/// the operator may accept (`replace`) is left waiting.
pub async fn accept_with(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
    options: AcceptOptions,
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
    let token_id = registration
        .csr
        .strip_prefix(BOOTSTRAP_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let (generation, replacing) =
        match check_registration(hub, manager_namespace, name, &registration, &csr, options).await?
        {
            Verdict::Accept {
                generation,
                replacing,
            } => (generation, replacing),
            Verdict::Hold(reason) => return Err(refuse(reason)),
            Verdict::Deny(reason) => {
                // Denied, so that the waiting agent stops with the reason instead of waiting
                // on; the token is spent either way. A request squatting another token's name
                // is denied without revoking that token.
                decide(&csrs, &registration.csr, "Denied", "AtollRefused", &reason).await?;
                if registration.requested_by == bootstrap_user(manager_namespace, &token_id) {
                    revoke_bootstrap_tokens(
                        hub,
                        manager_namespace,
                        Some(token_id.as_str()),
                        Timestamp::now(),
                    )
                    .await?;
                }
                return Err(refuse(reason));
            }
        };

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
    // Binding the new generation alone revokes a replaced agent's certificate.
    install_agent_rbac(
        hub,
        name,
        &namespace,
        &cluster_labels,
        &[agent_generation_group(name, &generation)],
    )
    .await?;
    if replacing {
        register_replacement(hub, manager_namespace, &registration).await?;
    }
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
    // A token registers one cluster: revoked now. The agent receives its certificate over
    // the watch of its CSR it opened before sending it.
    revoke_bootstrap_tokens(
        hub,
        manager_namespace,
        Some(token_id.as_str()),
        Timestamp::now(),
    )
    .await?;
    info!(cluster = %name, cluster_id = %registration.cluster_id, replaced = replacing, "pull-mode cluster accepted");
    Ok(Accepted {
        registration,
        namespace,
    })
}

/// What the checks decided.
enum Verdict {
    /// Accept, binding this certificate generation; `replacing` a joined cluster.
    Accept { generation: String, replacing: bool },
    /// Never acceptable: deny the request.
    Deny(String),
    /// Acceptable only if the operator asks for more (`--replace`): leave it waiting.
    Hold(String),
}

fn bootstrap_user(manager_namespace: &str, token_id: &str) -> String {
    format!(
        "system:serviceaccount:{manager_namespace}:{}",
        bootstrap_name(token_id)
    )
}

/// A ClusterSet name: it becomes a label value.
fn check_cluster_set(set: &str) -> Result<(), String> {
    let bytes = set.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "ClusterSet {set:?} must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// Labels an agent may ask for: valid, and none of those Atoll sets on every profile.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    const RESERVED: &[&str] = &[
        LABEL_CLUSTER_MANAGER,
        LABEL_CLUSTER_SET,
        LABEL_MODE,
        LABEL_CLUSTER_NAME,
        kubeutil::MANAGED_BY.0,
    ];
    for (key, value) in labels {
        if RESERVED.contains(&key.as_str()) {
            return Err(format!(
                "label {key:?} is set by Atoll on every ClusterProfile and cannot be asked for"
            ));
        }
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        let name_ok = check_cluster_set(name).is_ok();
        let prefix_ok = prefix.is_empty()
            || (prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                }));
        if !name_ok || !prefix_ok {
            return Err(format!("{key:?} is not a valid label key"));
        }
        if !value.is_empty() && check_cluster_set(value).is_err() {
            return Err(format!("label {key:?} has an invalid value {value:?}"));
        }
    }
    Ok(())
}

/// Everything that must hold before a registration is accepted.
async fn check_registration(
    hub: &Client,
    manager_namespace: &str,
    name: &str,
    registration: &Registration,
    csr: &CertificateSigningRequest,
    options: AcceptOptions,
) -> Result<Verdict, PullError> {
    let generation = match check_agent_csr(csr, name) {
        Ok(generation) => generation,
        Err(reason) => return Ok(Verdict::Deny(reason)),
    };
    // The requester must be the live bootstrap identity of the token this CSR is named after.
    let token_id = registration
        .csr
        .strip_prefix(BOOTSTRAP_PREFIX)
        .unwrap_or_default();
    if registration.requested_by != bootstrap_user(manager_namespace, token_id) {
        return Ok(Verdict::Deny(format!(
            "the request was sent by {:?}, not by bootstrap token {token_id}",
            registration.requested_by
        )));
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(hub.clone(), manager_namespace);
    let Some(account) = kubeutil::get_opt(&accounts, &bootstrap_name(token_id))
        .await
        .map_err(on_hub("reading the bootstrap ServiceAccount"))?
        .filter(|sa| expiry(sa).is_some_and(|at| at > Timestamp::now()))
    else {
        return Ok(Verdict::Deny(format!(
            "bootstrap token {token_id} has expired or been revoked"
        )));
    };
    if let Some(intended) = account.annotations().get(ANNOTATION_TOKEN_CLUSTER)
        && intended != name
    {
        return Ok(Verdict::Deny(format!(
            "bootstrap token {token_id} was made for cluster {intended:?}, not {name:?}"
        )));
    }
    if let Err(e) = atoll_api::about::validate_cluster_id(&registration.cluster_id) {
        return Ok(Verdict::Deny(e.to_string()));
    }
    if let Err(reason) = check_cluster_set(&registration.cluster_set) {
        return Ok(Verdict::Deny(reason));
    }
    if let Err(reason) = check_labels(&registration.labels) {
        return Ok(Verdict::Deny(reason));
    }
    if registration.labels.len() > 64 {
        return Ok(Verdict::Deny("at most 64 labels may be asked for".into()));
    }
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), manager_namespace);
    let all = profiles
        .list(&ListParams::default())
        .await
        .map_err(on_hub("listing ClusterProfiles"))?;
    let mut replacing = false;
    for profile in &all.items {
        let other = profile.name_any();
        let id = profile_cluster_id(profile).unwrap_or_default();
        if other != name {
            if id == registration.cluster_id {
                return Ok(Verdict::Deny(format!(
                    "cluster ID {:?} is already used by joined cluster {other:?}; cluster IDs must be unique within the ClusterSet",
                    registration.cluster_id
                )));
            }
            continue;
        }
        // The name is joined.
        if !is_pull_mode(profile) {
            return Ok(Verdict::Deny(format!(
                "a cluster named {name:?} is joined in push mode; unjoin it first (`atoll unjoin {name}`)"
            )));
        }
        let joined_set = profile
            .labels()
            .get(LABEL_CLUSTER_SET)
            .cloned()
            .unwrap_or_default();
        if !options.replace {
            return Ok(Verdict::Hold(format!(
                "a cluster named {name:?} is already joined (cluster ID {id:?}, ClusterSet {joined_set:?}); accepting this agent (cluster ID {:?}) would give it that cluster's identity. To replace the cluster, revoking its current agent's certificate, run `atoll accept {name} --replace`; otherwise choose another name",
                registration.cluster_id
            )));
        }
        if joined_set != registration.cluster_set {
            return Ok(Verdict::Hold(format!(
                "cluster {name:?} is joined in ClusterSet {joined_set:?}, but this agent asks for ClusterSet {:?}; a replacement stays in its ClusterSet: unjoin {name} first to move it",
                registration.cluster_set
            )));
        }
        replacing = true;
    }
    Ok(Verdict::Accept {
        generation,
        replacing,
    })
}

/// Before a replacement is approved: the old agent's pending renewal goes, and the profile
/// takes the new registration's labels.
async fn register_replacement(
    hub: &Client,
    manager_namespace: &str,
    registration: &Registration,
) -> Result<(), PullError> {
    let name = &registration.cluster;
    delete_if_exists(
        &Api::<CertificateSigningRequest>::all(hub.clone()),
        &renewal_csr_name(name),
    )
    .await
    .map_err(on_hub("deleting the replaced agent's renewal request"))?;
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), manager_namespace);
    if let Some(profile) = kubeutil::get_opt(&profiles, name)
        .await
        .map_err(on_hub("reading the ClusterProfile"))?
    {
        // Labels the old registration asked for and the new one does not are removed.
        let atoll_keys = [
            LABEL_CLUSTER_MANAGER,
            LABEL_CLUSTER_SET,
            LABEL_MODE,
            LABEL_CLUSTER_NAME,
            kubeutil::MANAGED_BY.0,
        ];
        let mut labels = serde_json::Map::new();
        for key in profile.labels().keys() {
            if !atoll_keys.contains(&key.as_str()) {
                labels.insert(key.clone(), serde_json::Value::Null);
            }
        }
        for (key, value) in &registration.labels {
            labels.insert(key.clone(), serde_json::Value::String(value.clone()));
        }
        profiles
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": labels}})),
            )
            .await
            .map_err(on_hub("relabelling the replaced ClusterProfile"))?;
    }
    Ok(())
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

/// Checks that a CSR asks for exactly the agent identity of `cluster` (its user, the agents'
/// group and one generation group of that cluster), for client auth; returns the generation.
pub fn check_agent_csr(csr: &CertificateSigningRequest, cluster: &str) -> Result<String, String> {
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
    let generations: Vec<&str> = organizations
        .iter()
        .filter_map(|o| generation_of(cluster, o))
        .collect();
    match (generations.as_slice(), organizations.len()) {
        ([generation], 2) if organizations.iter().any(|o| o == AGENT_GROUP) => {
            Ok((*generation).to_owned())
        }
        _ => Err(format!(
            "the CSR asks for groups {organizations:?}; an agent gets exactly [{AGENT_GROUP:?}, \"{}\"]",
            agent_generation_group(cluster, "<generation>")
        )),
    }
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

fn group_subject(group: &str) -> Subject {
    Subject {
        kind: "Group".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        name: group.to_owned(),
        ..Default::default()
    }
}

/// Creates (or updates) the agent's Role, ClusterRole and their bindings, binding exactly
/// `groups` (generation groups): any certificate of another generation loses its rights.
async fn install_agent_rbac(
    hub: &Client,
    cluster: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    groups: &[String],
) -> Result<(), PullError> {
    let agent = groups
        .first()
        .map(|g| group_subject(g))
        .unwrap_or_else(|| group_subject(&agent_generation_group(cluster, "none")));
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
            &["get", "list", "watch", "delete"],
        ),
    ];
    ensure_cluster_role(hub, &agent_cluster_role(cluster), renew_own, agent, labels)
        .await
        .map_err(on_hub("creating the agent's ClusterRole and its binding"))?;
    set_agent_groups(hub, cluster, groups).await
}

/// The generation groups bound to `cluster`'s agent (from its ClusterRoleBinding); empty
/// when it has none.
async fn agent_groups(hub: &Client, cluster: &str) -> Result<Vec<String>, PullError> {
    let binding = kubeutil::get_opt(
        &Api::<ClusterRoleBinding>::all(hub.clone()),
        &agent_cluster_role(cluster),
    )
    .await
    .map_err(on_hub("reading the agent's ClusterRoleBinding"))?;
    Ok(binding
        .and_then(|b| b.subjects)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.kind == "Group" && generation_of(cluster, &s.name).is_some())
        .map(|s| s.name)
        .collect())
}

/// Binds exactly `groups` in both of the agent's bindings: the namespace's first, so that a
/// revoked generation loses its namespace before its renewal rights.
async fn set_agent_groups(hub: &Client, cluster: &str, groups: &[String]) -> Result<(), PullError> {
    let subjects: Vec<Subject> = groups.iter().map(|g| group_subject(g)).collect();
    let patch = Patch::Merge(serde_json::json!({ "subjects": subjects }));
    Api::<RoleBinding>::namespaced(hub.clone(), &cluster_namespace(cluster))
        .patch(AGENT_ROLE, &PatchParams::default(), &patch)
        .await
        .map_err(on_hub("binding the agent's Role"))?;
    Api::<ClusterRoleBinding>::all(hub.clone())
        .patch(
            &agent_cluster_role(cluster),
            &PatchParams::default(),
            &patch,
        )
        .await
        .map_err(on_hub("binding the agent's ClusterRole"))?;
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

/// Approves the renewal CSRs that agents send for their own identity: the requester must be
/// the cluster's agent in a bound generation, the subject that agent with a new generation.
/// Both generations stay bound until the agent's Lease shows the new one
/// ([`retire_old_generations`]).
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
        let generation = match check_agent_csr(csr, cluster) {
            Ok(generation) => generation,
            Err(reason) => {
                warn!(%cluster, %reason, "renewal CSR not approved");
                continue;
            }
        };
        if !kubeutil::get_opt(&profiles, cluster)
            .await
            .map_err(on_hub("reading the ClusterProfile"))?
            .is_some_and(|p| is_pull_mode(&p))
        {
            continue;
        }
        let bound = agent_groups(hub, cluster).await?;
        let requester_groups = csr.spec.groups.clone().unwrap_or_default();
        let Some(current) = bound.iter().find(|g| requester_groups.contains(g)).cloned() else {
            warn!(%cluster, "renewal CSR not approved: its requester holds no bound generation");
            continue;
        };
        let new_group = agent_generation_group(cluster, &generation);
        if new_group != current {
            set_agent_groups(hub, cluster, &[current, new_group]).await?;
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

/// Unbinds every older generation of an agent whose Lease was last renewed with its newest
/// bound generation: a rotated certificate stops working once its successor is in use.
pub async fn retire_old_generations(
    hub: &Client,
    manager_namespace: &str,
) -> Result<usize, PullError> {
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), manager_namespace);
    let list = profiles
        .list(&ListParams::default().labels(&format!("{LABEL_MODE}={MODE_PULL}")))
        .await
        .map_err(on_hub("listing ClusterProfiles"))?;
    let mut retired = 0;
    for profile in list.items.iter().filter(|p| is_managed(*p)) {
        let cluster = profile.name_any();
        let bound = agent_groups(hub, &cluster).await?;
        let Some(newest) = bound.last().filter(|_| bound.len() > 1).cloned() else {
            continue;
        };
        let lease = kubeutil::get_opt(
            &Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                hub.clone(),
                &cluster_namespace(&cluster),
            ),
            AGENT_LEASE,
        )
        .await
        .map_err(on_hub("reading the agent's Lease"))?;
        let in_use = lease
            .as_ref()
            .and_then(|l| l.annotations().get(ANNOTATION_GENERATION))
            .map(|g| agent_generation_group(&cluster, g));
        if in_use.as_deref() == Some(newest.as_str()) {
            set_agent_groups(hub, &cluster, std::slice::from_ref(&newest)).await?;
            info!(%cluster, "the agent's previous certificate revoked");
            retired += 1;
        }
    }
    Ok(retired)
}

/// The registrar: revokes expired, used and denied bootstrap tokens, approves agents'
/// renewals, retires rotated certificates and, with `auto_accept`, accepts every valid
/// registration that replaces no joined cluster (replacing is the operator's call). Driven by
/// a watch on Atoll's CSRs (an agent deletes its renewal CSR once its Lease carries the new
/// generation, which wakes the retirement) plus a timer for the next token expiry; runs until
/// `shutdown`.
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
        if let Err(error) = retire_old_generations(&hub, &manager_namespace).await {
            warn!(%error, "retiring rotated agent certificates");
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

    fn csr_with(common_name: &str, organizations: &[&str]) -> CertificateSigningRequest {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        // rcgen keeps one value per attribute type: a second O goes in by its OID.
        for (i, organization) in organizations.iter().enumerate() {
            let type_ = if i == 0 {
                rcgen::DnType::OrganizationName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
            };
            params.distinguished_name.push(type_, *organization);
        }
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
        let east_gen = agent_generation_group("east", "abcdefgh1234");
        let ok = &[AGENT_GROUP, east_gen.as_str()];
        assert_eq!(
            check_agent_csr(&csr_with("system:atoll:agent:east", ok), "east"),
            Ok("abcdefgh1234".to_owned())
        );
        let wrong_cluster = check_agent_csr(&csr_with("system:atoll:agent:west", ok), "east");
        assert!(wrong_cluster.is_err_and(|e| e.contains("common name")));
        let escalation = check_agent_csr(
            &csr_with(
                "system:atoll:agent:east",
                &[east_gen.as_str(), "system:masters"],
            ),
            "east",
        );
        assert!(escalation.is_err_and(|e| e.contains("groups")));
        let no_generation =
            check_agent_csr(&csr_with("system:atoll:agent:east", &[AGENT_GROUP]), "east");
        assert!(no_generation.is_err_and(|e| e.contains("groups")));
        // Another cluster's generation group is not this cluster's.
        let west_gen = agent_generation_group("west", "abcdefgh1234");
        let foreign = check_agent_csr(
            &csr_with("system:atoll:agent:east", &[AGENT_GROUP, west_gen.as_str()]),
            "east",
        );
        assert!(foreign.is_err());
        let two = agent_generation_group("east", "zzzzzzzz9999");
        let doubled = check_agent_csr(
            &csr_with(
                "system:atoll:agent:east",
                &[east_gen.as_str(), two.as_str()],
            ),
            "east",
        );
        assert!(doubled.is_err());
        let mut server_cert = csr_with("system:atoll:agent:east", ok);
        server_cert.spec.usages = Some(vec!["server auth".into()]);
        assert!(check_agent_csr(&server_cert, "east").is_err());
        let mut other_signer = csr_with("system:atoll:agent:east", ok);
        other_signer.spec.signer_name = "kubernetes.io/kubelet-serving".into();
        assert!(check_agent_csr(&other_signer, "east").is_err());
        let mut garbage = csr_with("system:atoll:agent:east", ok);
        garbage.spec.request = k8s_openapi::ByteString(b"not a csr".to_vec());
        assert!(check_agent_csr(&garbage, "east").is_err());
    }

    #[test]
    fn generation_groups_belong_to_one_cluster() {
        assert_eq!(
            generation_of("east", "system:atoll:agent:east:abcdefgh1234"),
            Some("abcdefgh1234")
        );
        // "east-2"'s groups are not "east"'s, and short or odd generations are none.
        assert_eq!(
            generation_of("east", "system:atoll:agent:east-2:abcdefgh1234"),
            None
        );
        assert_eq!(generation_of("east", "system:atoll:agent:east:short"), None);
        assert_eq!(
            generation_of("east", "system:atoll:agent:east:ABCDEFGH1234"),
            None
        );
        assert!(valid_generation(&new_generation()));
    }

    #[test]
    fn labels_atoll_sets_itself_cannot_be_asked_for() {
        let ask = |k: &str, v: &str| check_labels(&BTreeMap::from([(k.to_owned(), v.to_owned())]));
        assert!(ask("region", "eu").is_ok());
        assert!(ask("example.com/tier", "gold").is_ok());
        for reserved in [
            LABEL_CLUSTER_SET,
            LABEL_MODE,
            LABEL_CLUSTER_NAME,
            LABEL_CLUSTER_MANAGER,
        ] {
            assert!(ask(reserved, "x").is_err(), "{reserved}");
        }
        assert!(ask("bad key!", "x").is_err());
        assert!(ask("region", "not valid!").is_err());
        assert!(check_cluster_set("prod").is_ok());
        assert!(check_cluster_set("").is_err());
    }
}
