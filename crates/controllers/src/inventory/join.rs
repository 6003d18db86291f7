//! Push-mode join and unjoin.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_api::about::{
    CLUSTER_ID_PROPERTY, CLUSTER_SET_PROPERTY, ClusterProperty, ClusterPropertySpec,
    InvalidClusterId, validate_cluster_id,
};
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, AccessProvider, CONDITION_JOINED, ClusterManager, ClusterProfile,
    ClusterProfileSpec, ClusterProfileStatus, ClusterVersion, KubeconfigCluster,
    LABEL_CLUSTER_MANAGER, LABEL_CLUSTER_SET, LABEL_MODE, MODE_PUSH, Property,
};
use atoll_api::conditions;
use atoll_api::work::{AppliedWork, Work};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions as wait_conditions};
use kube::{Client, Config, CustomResourceExt};
use tracing::{info, warn};

use super::names::*;
use crate::kubeutil::{self, Ensured, delete_if_exists, ensure, is_managed, is_managed_meta};

/// Why a join or unjoin failed. Messages say what to do; none carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The cluster name cannot name a ClusterProfile and a namespace.
    #[error("{0}")]
    InvalidName(String),
    /// The member's kubeconfig could not be read or has no usable context.
    #[error("the member kubeconfig is not usable: {0}")]
    MemberKubeconfig(String),
    /// The member's kubeconfig asks for more than inline credentials (a credential plugin, a
    /// file, a proxy): refused, naming the field.
    #[error(transparent)]
    UnsafeKubeconfig(#[from] super::credentials::UnsafeKubeconfig),
    /// The member's API server did not answer.
    #[error(
        "cannot reach the member's API server at {server}: {source}. Check that it is reachable from here and that the kubeconfig's CA matches the server's certificate"
    )]
    MemberUnreachable {
        /// The URL tried.
        server: String,
        /// What happened.
        source: kube::Error,
    },
    /// The member's cluster ID is not acceptable.
    #[error("{0}; pass a valid --cluster-id")]
    InvalidClusterId(#[from] InvalidClusterId),
    /// A different cluster already uses this name.
    #[error(
        "a cluster named {name:?} is already joined with cluster ID {existing_id:?}, but this member's ID is {id:?}; choose another name or unjoin the other cluster first"
    )]
    NameCollision {
        /// The name.
        name: String,
        /// The ID of the cluster that has it.
        existing_id: String,
        /// The ID of the member being joined.
        id: String,
    },
    /// Another joined cluster has the same cluster ID.
    #[error(
        "cluster ID {id:?} is already used by joined cluster {existing_cluster:?}; cluster IDs must be unique within the ClusterSet (use --cluster-id)"
    )]
    DuplicateClusterId {
        /// The ID.
        id: String,
        /// The cluster that has it.
        existing_cluster: String,
    },
    /// The member already has a different cluster ID.
    #[error(
        "the member's cluster.clusterset.k8s.io ClusterProperty already says {existing:?}, not {wanted:?}; a cluster ID must not change while it is in use (omit --cluster-id to keep it)"
    )]
    ClusterIdMismatch {
        /// The ID the member has.
        existing: String,
        /// The ID asked for.
        wanted: String,
    },
    /// The member belongs to another ClusterSet.
    #[error(
        "the member is already in ClusterSet {existing:?} (its clusterset.k8s.io ClusterProperty says so), not {wanted:?}; unjoin it from that ClusterSet first"
    )]
    OtherClusterSet {
        /// The member's ClusterSet.
        existing: String,
        /// The ClusterSet asked for.
        wanted: String,
    },
    /// The member did not issue a token for Atoll's identity.
    #[error(
        "the member did not issue a token for {MEMBER_NAMESPACE}/{MEMBER_SERVICE_ACCOUNT} within {0:?}; is its controller manager (token controller) running?"
    )]
    TokenTimeout(Duration),
    /// The cluster is not joined.
    #[error("no cluster named {name:?} is joined (no ClusterProfile {namespace}/{name})")]
    NotJoined {
        /// The name.
        name: String,
        /// The manager namespace searched.
        namespace: String,
    },
    /// What the cluster's Works applied could not be removed from the member.
    #[error("removing what the cluster's Works applied: {0}")]
    Workloads(#[from] atoll_work::RemovalError),
    /// A pull-mode cluster's agent did not confirm that it keeps what the Works applied
    /// (`keep_workloads` without `force`).
    #[error(
        "cluster {cluster:?} stays joined: {source}. Is its agent running? Start it and unjoin again, or run `atoll unjoin {cluster} --keep-workloads --force` to remove it from the hub anyway: its agent, once it notices, then deletes what the Works applied as each Work's deleteOption said"
    )]
    WorkloadsNotKept {
        /// The cluster.
        cluster: String,
        /// Why.
        source: atoll_work::RemovalError,
    },
    /// Unjoin could not clean the member (without `force`).
    #[error(
        "cluster {cluster:?} stays joined: the member could not be cleaned: {source}. Fix that and unjoin again, or run `atoll unjoin {cluster} --force` to remove it from the hub anyway, which leaves in the member Atoll's identities (namespace {MEMBER_NAMESPACE}, ClusterRoles {MEMBER_CLUSTER_ROLE} and {MEMBER_WORK_CLUSTER_ROLE}), its ClusterProperties and the CRDs it installed, and everything the cluster's Works applied there"
    )]
    MemberNotCleaned {
        /// The cluster.
        cluster: String,
        /// Why.
        source: Box<JoinError>,
    },
    /// A request to the member failed.
    #[error("member: {action}: {source}")]
    Member {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
    /// A request to the hub failed.
    #[error("hub: {action}: {source}")]
    Hub {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
}

fn on_member(action: impl Into<String>) -> impl FnOnce(kube::Error) -> JoinError {
    let action = action.into();
    move |source| JoinError::Member { action, source }
}

fn on_hub(action: impl Into<String>) -> impl FnOnce(kube::Error) -> JoinError {
    let action = action.into();
    move |source| JoinError::Hub { action, source }
}

/// What `atoll join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The cluster's name on the hub.
    pub name: String,
    /// The member's kubeconfig.
    pub member_kubeconfig: Kubeconfig,
    /// The context to use; the kubeconfig's current context when unset.
    pub member_context: Option<String>,
    /// Labels for the ClusterProfile.
    pub labels: BTreeMap<String, String>,
    /// The ClusterSet to join.
    pub cluster_set: String,
    /// The cluster ID; the UID of the member's kube-system namespace when unset.
    pub cluster_id: Option<String>,
    /// Hub namespace holding ClusterProfiles.
    pub manager_namespace: String,
    /// How long to wait for the member to issue a token.
    pub token_timeout: Duration,
}

/// The result of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The cluster ID recorded.
    pub cluster_id: String,
    /// The member's Kubernetes version.
    pub kubernetes_version: String,
    /// The hub namespace of the cluster.
    pub namespace: String,
    /// Whether this call created the ClusterProfile (false when re-joining).
    pub created: bool,
}

/// How long a join waits for a namespace left terminating by an earlier unjoin or failed join.
const NAMESPACE_WAIT: Duration = Duration::from_secs(60);

/// Something a join created, to be removed if the join fails.
#[derive(Debug)]
enum Undo {
    MemberCrd(String),
    MemberClusterProperty(String),
    MemberNamespace,
    MemberClusterRole,
    MemberClusterRoleBinding,
    HubNamespace(String),
    HubSecret,
    HubProfile,
}

/// Joins a member cluster to the hub in push mode. Safe to repeat: joining a joined cluster
/// again completes anything missing and changes nothing else. On failure, everything this call
/// created is removed again.
pub async fn join(hub: &Client, options: &JoinOptions) -> Result<Joined, JoinError> {
    validate_cluster_name(&options.name).map_err(JoinError::InvalidName)?;
    let (member, member_config) =
        member_client(&options.member_kubeconfig, options.member_context.clone()).await?;
    let server = member_config.cluster_url.to_string();
    let version =
        member
            .apiserver_version()
            .await
            .map_err(|source| JoinError::MemberUnreachable {
                server: server.clone(),
                source,
            })?;
    let cluster_id = match (existing_cluster_id(&member).await?, &options.cluster_id) {
        // The member already knows its ID (set by its operators or an earlier join): it stays.
        (Some(existing), Some(wanted)) if existing != *wanted => {
            return Err(JoinError::ClusterIdMismatch {
                existing,
                wanted: wanted.clone(),
            });
        }
        (Some(existing), _) => existing,
        (None, Some(wanted)) => wanted.clone(),
        (None, None) => kube_system_uid(&member).await?,
    };
    validate_cluster_id(&cluster_id)?;
    check_collisions(hub, options, &cluster_id).await?;

    let mut undo = Vec::new();
    let result = join_steps(hub, &member, options, &cluster_id, &server, &mut undo).await;
    match result {
        Ok(created) => Ok(Joined {
            cluster_id,
            kubernetes_version: version.git_version,
            namespace: cluster_namespace(&options.name),
            created,
        }),
        Err(error) => {
            warn!(cluster = %options.name, %error, "join failed; removing what it created");
            rollback(hub, &member, options, undo).await;
            Err(error)
        }
    }
}

async fn join_steps(
    hub: &Client,
    member: &Client,
    options: &JoinOptions,
    cluster_id: &str,
    server: &str,
    undo: &mut Vec<Undo>,
) -> Result<bool, JoinError> {
    // Member: the About API, then membership, then the hub's identity.
    install_cluster_property_crd(member, undo).await?;
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    match kubeutil::get_opt(&properties, CLUSTER_SET_PROPERTY)
        .await
        .map_err(on_member("reading the clusterset.k8s.io ClusterProperty"))?
    {
        Some(existing) if existing.spec.value != options.cluster_set => {
            return Err(JoinError::OtherClusterSet {
                existing: existing.spec.value,
                wanted: options.cluster_set.clone(),
            });
        }
        _ => {}
    }
    for (name, value) in [
        (CLUSTER_ID_PROPERTY, cluster_id),
        (CLUSTER_SET_PROPERTY, options.cluster_set.as_str()),
    ] {
        let mut property = ClusterProperty::new(
            name,
            ClusterPropertySpec {
                value: value.to_owned(),
            },
        );
        kubeutil::mark_managed(&mut property, &BTreeMap::new());
        let (stored, ensured) = ensure(&properties, &property)
            .await
            .map_err(on_member(format!("creating ClusterProperty {name}")))?;
        if ensured == Ensured::Created {
            undo.push(Undo::MemberClusterProperty(name.to_owned()));
        } else if name == CLUSTER_ID_PROPERTY && stored.spec.value != value {
            // Changed since join read it: someone else is writing the member's identity.
            return Err(JoinError::ClusterIdMismatch {
                existing: stored.spec.value,
                wanted: value.to_owned(),
            });
        }
    }
    let token = install_member_identity(member, options.token_timeout, undo).await?;

    // Hub: the cluster's namespace, its credentials, its profile.
    let cluster_labels = BTreeMap::from([(LABEL_CLUSTER_NAME.to_owned(), options.name.clone())]);
    let namespace = cluster_namespace(&options.name);
    let mut ns = named::<Namespace>(&namespace, None);
    kubeutil::mark_managed(&mut ns, &cluster_labels);
    let (_, ensured) =
        kubeutil::ensure_namespace(&Api::<Namespace>::all(hub.clone()), &ns, NAMESPACE_WAIT)
            .await
            .map_err(on_hub(format!("creating namespace {namespace}")))?;
    if ensured == Ensured::Created {
        undo.push(Undo::HubNamespace(namespace.clone()));
    }
    let manager_ns = named::<Namespace>(&options.manager_namespace, None);
    ensure(&Api::<Namespace>::all(hub.clone()), &manager_ns)
        .await
        .map_err(on_hub(format!(
            "creating namespace {}",
            options.manager_namespace
        )))?;

    // The credentials live in the manager namespace, where tenants of the cluster's
    // namespace have no binding.
    let ca_data = member_ca_data(options, &token)?;
    let kubeconfig = member_kubeconfig_yaml(&options.name, server, &ca_data, &token.token)?;
    let secret_name = member_kubeconfig_secret(&options.name);
    let mut secret = named::<Secret>(&secret_name, Some(&options.manager_namespace));
    kubeutil::mark_managed(&mut secret, &cluster_labels);
    secret.type_ = Some("Opaque".into());
    secret.data = Some(BTreeMap::from([(
        MEMBER_KUBECONFIG_KEY.to_owned(),
        ByteString(kubeconfig.into_bytes()),
    )]));
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), &options.manager_namespace);
    let existed = kubeutil::get_opt(&secrets, &secret_name)
        .await
        .map_err(on_hub("reading the member's credentials"))?
        .is_some();
    secrets
        .patch(
            &secret_name,
            &PatchParams::apply(ATOLL_CLUSTER_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(on_hub("storing the member's credentials"))?;
    if !existed {
        undo.push(Undo::HubSecret);
    }
    // Where an older hub kept them, tenants could read them: gone.
    delete_if_exists(
        &Api::<Secret>::namespaced(hub.clone(), &namespace),
        MEMBER_KUBECONFIG_SECRET,
    )
    .await
    .map_err(on_hub(
        "deleting the member's credentials from the cluster namespace",
    ))?;

    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), &options.manager_namespace);
    let mut profile = ClusterProfile::new(
        &options.name,
        ClusterProfileSpec {
            display_name: Some(options.name.clone()),
            cluster_manager: ClusterManager {
                name: ATOLL_CLUSTER_MANAGER.to_owned(),
            },
            taints: Vec::new(),
        },
    );
    let mut labels = options.labels.clone();
    labels.insert(
        LABEL_CLUSTER_MANAGER.to_owned(),
        ATOLL_CLUSTER_MANAGER.to_owned(),
    );
    labels.insert(LABEL_CLUSTER_SET.to_owned(), options.cluster_set.clone());
    labels.insert(LABEL_MODE.to_owned(), MODE_PUSH.to_owned());
    labels.extend(cluster_labels);
    kubeutil::mark_managed(&mut profile, &labels);
    let (stored, ensured) = ensure(&profiles, &profile)
        .await
        .map_err(on_hub("creating the ClusterProfile"))?;
    if ensured == Ensured::Created {
        undo.push(Undo::HubProfile);
    }

    let version = member
        .apiserver_version()
        .await
        .map_err(on_member("reading /version"))?;
    let now = Time(Timestamp::now());
    let mut status = stored.status.unwrap_or_default();
    conditions::set(
        &mut status.conditions,
        conditions::condition(
            CONDITION_JOINED,
            conditions::TRUE,
            "Joined",
            format!("joined in push mode as cluster ID {cluster_id}"),
            stored.metadata.generation,
            now.clone(),
        ),
    );
    let status = ClusterProfileStatus {
        version: Some(ClusterVersion {
            kubernetes: Some(version.git_version),
        }),
        access_providers: vec![AccessProvider {
            name: ACCESS_PROVIDER.to_owned(),
            cluster: Some(KubeconfigCluster {
                server: server.to_owned(),
                certificate_authority_data: Some(ca_data),
                ..Default::default()
            }),
        }],
        properties: upsert_properties(
            status.properties,
            [
                (CLUSTER_ID_PROPERTY, cluster_id),
                (CLUSTER_SET_PROPERTY, options.cluster_set.as_str()),
            ],
            &now,
        ),
        ..status
    };
    profiles
        .patch_status(
            &options.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map_err(on_hub("writing the ClusterProfile status"))?;
    info!(cluster = %options.name, %cluster_id, "joined");
    Ok(ensured == Ensured::Created)
}

fn upsert_properties<'a>(
    mut properties: Vec<Property>,
    values: impl IntoIterator<Item = (&'a str, &'a str)>,
    now: &Time,
) -> Vec<Property> {
    for (name, value) in values {
        properties.retain(|p| p.name != name);
        properties.push(Property {
            name: name.to_owned(),
            value: value.to_owned(),
            last_observed_time: Some(now.clone()),
        });
    }
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    properties
}

async fn member_client(
    kubeconfig: &Kubeconfig,
    context: Option<String>,
) -> Result<(Client, Config), JoinError> {
    let config = member_config(kubeconfig, context).await?;
    let client = crate::client::multiplexed(config.clone())
        .map_err(|e| JoinError::MemberKubeconfig(e.to_string()))?;
    Ok((client, config))
}

/// The one loader of member kubeconfigs, at join and in every controller: only inline
/// credentials pass (see [`super::credentials`]), and only the entries of the context used
/// reach kube's loader.
async fn member_config(
    kubeconfig: &Kubeconfig,
    context: Option<String>,
) -> Result<Config, JoinError> {
    let inline = super::credentials::inline_only(kubeconfig, context.as_deref())?;
    Config::from_custom_kubeconfig(inline, &KubeConfigOptions::default())
        .await
        .map_err(|e| JoinError::MemberKubeconfig(e.to_string()))
}

/// The stored-kubeconfig loader from a Secret's `kubeconfig` bytes, as the controllers run it
/// ([`secret_kubeconfig`], then [`member_config`]): for the fuzz target (`crate::fuzzing`).
pub(crate) async fn member_config_from_secret_data(bytes: Vec<u8>) -> Result<Config, JoinError> {
    let secret = Secret {
        data: Some(BTreeMap::from([(
            MEMBER_KUBECONFIG_KEY.to_owned(),
            ByteString(bytes),
        )])),
        ..Default::default()
    };
    let kubeconfig = secret_kubeconfig(secret)?;
    member_config(&kubeconfig, None).await
}

/// A client from the member's stored credentials. Every client built from the same Secret
/// (the status, Work and MCS controllers each build one) shares one connection to the member.
async fn stored_member_client(stored: StoredKubeconfig) -> Result<Client, JoinError> {
    let config = member_config(&stored.kubeconfig, None).await?;
    match &stored.transport_key {
        Some(key) => crate::client::shared(key, config),
        None => crate::client::multiplexed(config),
    }
    .map_err(|e| JoinError::MemberKubeconfig(e.to_string()))
}

/// The member's `cluster.clusterset.k8s.io`, if it has one (and the About API at all).
async fn existing_cluster_id(member: &Client) -> Result<Option<String>, JoinError> {
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    match properties.get_opt(CLUSTER_ID_PROPERTY).await {
        Ok(property) => Ok(property.map(|p| p.spec.value)),
        // No ClusterProperty CRD: no ID yet.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(on_member(
            "reading the cluster.clusterset.k8s.io ClusterProperty",
        )(e)),
    }
}

async fn kube_system_uid(member: &Client) -> Result<String, JoinError> {
    let ns = Api::<Namespace>::all(member.clone())
        .get("kube-system")
        .await
        .map_err(on_member(
            "reading namespace kube-system for the cluster ID",
        ))?;
    ns.metadata
        .uid
        .ok_or_else(|| JoinError::MemberKubeconfig("kube-system has no uid".into()))
}

async fn check_collisions(
    hub: &Client,
    options: &JoinOptions,
    cluster_id: &str,
) -> Result<(), JoinError> {
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), &options.manager_namespace);
    let all = match profiles.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(on_hub("listing ClusterProfiles")(e)),
    };
    for profile in all {
        let Some(existing_id) = profile_cluster_id(&profile) else {
            continue;
        };
        let name = profile.metadata.name.clone().unwrap_or_default();
        if name == options.name && existing_id != cluster_id {
            return Err(JoinError::NameCollision {
                name,
                existing_id,
                id: cluster_id.to_owned(),
            });
        }
        if name != options.name && existing_id == cluster_id {
            return Err(JoinError::DuplicateClusterId {
                id: existing_id,
                existing_cluster: name,
            });
        }
    }
    Ok(())
}

/// The cluster ID a profile records.
pub fn profile_cluster_id(profile: &ClusterProfile) -> Option<String> {
    profile
        .status
        .as_ref()?
        .property(CLUSTER_ID_PROPERTY)
        .map(|p| p.value.clone())
}

async fn install_cluster_property_crd(
    member: &Client,
    undo: &mut Vec<Undo>,
) -> Result<(), JoinError> {
    let crds: Api<CustomResourceDefinition> = Api::all(member.clone());
    let Some(mut crd) = atoll_api::crds()
        .ok()
        .into_iter()
        .flatten()
        .find(|c| c.spec.names.kind == ClusterProperty::crd().spec.names.kind)
    else {
        return Err(JoinError::MemberKubeconfig(
            "internal: no ClusterProperty CRD".into(),
        ));
    };
    kubeutil::mark_managed(&mut crd, &BTreeMap::new());
    let name = crd.metadata.name.clone().unwrap_or_default();
    // Create, never replace: a ClusterProperty CRD the member already has (from another
    // implementation of the About API) is used as it is.
    let (_, ensured) = ensure(&crds, &crd)
        .await
        .map_err(on_member("installing the ClusterProperty CRD"))?;
    if ensured == Ensured::Created {
        undo.push(Undo::MemberCrd(name.clone()));
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, wait_conditions::is_crd_established()),
    )
    .await
    .map_err(|_| {
        JoinError::MemberKubeconfig(format!("the member did not establish CRD {name} in 30 s"))
    })?
    .map_err(|e| JoinError::MemberKubeconfig(format!("waiting for CRD {name}: {e}")))?;
    Ok(())
}

/// The hub's credential in the member.
struct MemberToken {
    token: String,
    ca_crt: Option<Vec<u8>>,
}

async fn install_member_identity(
    member: &Client,
    timeout: Duration,
    undo: &mut Vec<Undo>,
) -> Result<MemberToken, JoinError> {
    // The ClusterRole comes first and owns the other objects Atoll creates here, so that the
    // hub's identity can remove all of them at unjoin by deleting the role alone (the member's
    // garbage collector does the rest) without holding any wider permission.
    let mut role = named::<ClusterRole>(MEMBER_CLUSTER_ROLE, None);
    kubeutil::mark_managed(&mut role, &BTreeMap::new());
    role.rules = Some(member_rules());
    let roles: Api<ClusterRole> = Api::all(member.clone());
    let (role, ensured) = ensure(&roles, &role)
        .await
        .map_err(on_member("creating Atoll's ClusterRole"))?;
    if ensured == Ensured::Created {
        undo.push(Undo::MemberClusterRole);
    }
    let owner = OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRole".into(),
        name: MEMBER_CLUSTER_ROLE.into(),
        uid: role.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    let owned = |object: &mut ObjectMeta| {
        if is_managed_meta(&role.metadata) {
            object.owner_references = Some(vec![owner.clone()]);
        }
    };

    let mut ns = named::<Namespace>(MEMBER_NAMESPACE, None);
    kubeutil::mark_managed(&mut ns, &BTreeMap::new());
    owned(&mut ns.metadata);
    let (_, ensured) =
        kubeutil::ensure_namespace(&Api::<Namespace>::all(member.clone()), &ns, NAMESPACE_WAIT)
            .await
            .map_err(on_member(format!("creating namespace {MEMBER_NAMESPACE}")))?;
    if ensured == Ensured::Created {
        undo.push(Undo::MemberNamespace);
    }

    let mut sa = named::<ServiceAccount>(MEMBER_SERVICE_ACCOUNT, Some(MEMBER_NAMESPACE));
    kubeutil::mark_managed(&mut sa, &BTreeMap::new());
    ensure(&Api::namespaced(member.clone(), MEMBER_NAMESPACE), &sa)
        .await
        .map_err(on_member("creating Atoll's service account"))?;

    let mut binding = named::<ClusterRoleBinding>(MEMBER_CLUSTER_ROLE, None);
    kubeutil::mark_managed(&mut binding, &BTreeMap::new());
    owned(&mut binding.metadata);
    binding.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: MEMBER_CLUSTER_ROLE.into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: MEMBER_SERVICE_ACCOUNT.into(),
        namespace: Some(MEMBER_NAMESPACE.into()),
        ..Default::default()
    }]);
    let (_, ensured) = ensure(&Api::<ClusterRoleBinding>::all(member.clone()), &binding)
        .await
        .map_err(on_member("creating Atoll's ClusterRoleBinding"))?;
    if ensured == Ensured::Created {
        undo.push(Undo::MemberClusterRoleBinding);
    }
    install_work_identity(member, owned).await?;

    // A token Secret works on every Kubernetes version: before 1.24 the token controller also
    // creates one on its own, after 1.24 only on request like this.
    let mut secret = named::<Secret>(MEMBER_TOKEN_SECRET, Some(MEMBER_NAMESPACE));
    kubeutil::mark_managed(&mut secret, &BTreeMap::new());
    secret.type_ = Some("kubernetes.io/service-account-token".into());
    secret.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/service-account.name".to_owned(),
        MEMBER_SERVICE_ACCOUNT.to_owned(),
    )]));
    let secrets: Api<Secret> = Api::namespaced(member.clone(), MEMBER_NAMESPACE);
    ensure(&secrets, &secret)
        .await
        .map_err(on_member("requesting a token for Atoll's service account"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let secret = secrets
            .get(MEMBER_TOKEN_SECRET)
            .await
            .map_err(on_member("reading the token"))?;
        let data = secret.data.unwrap_or_default();
        if let Some(token) = data.get("token") {
            return Ok(MemberToken {
                token: String::from_utf8_lossy(&token.0).into_owned(),
                ca_crt: data.get("ca.crt").map(|c| c.0.clone()),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::TokenTimeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What Atoll's identity may do in a member: maintain the About API, read health, and remove
/// the objects Atoll created there (each by name) when the cluster is unjoined.
fn member_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, names: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: (!names.is_empty())
            .then(|| names.iter().map(|n| (*n).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    };
    let crd_name = ClusterProperty::crd().metadata.name.unwrap_or_default();
    let applied_work_crd = AppliedWork::crd().metadata.name.unwrap_or_default();
    let mut rules = vec![
        rule(
            atoll_api::about::GROUP,
            "clusterproperties",
            &[],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(
            "",
            "namespaces",
            &["kube-system", MEMBER_NAMESPACE],
            &["get"],
        ),
        rule(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            &[&crd_name, &applied_work_crd],
            &["get", "delete"],
        ),
        rule(
            "rbac.authorization.k8s.io",
            "clusterroles",
            &[MEMBER_CLUSTER_ROLE],
            &["get", "delete"],
        ),
        rule(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            &[MEMBER_CLUSTER_ROLE],
            &["get"],
        ),
        // The Work applier acts as its own identity (see `install_work_identity`).
        rule(
            "",
            "serviceaccounts",
            &[MEMBER_WORK_SERVICE_ACCOUNT],
            &["impersonate"],
        ),
        PolicyRule {
            non_resource_urls: Some(
                ["/version", "/readyz", "/healthz", "/livez"]
                    .map(String::from)
                    .to_vec(),
            ),
            verbs: vec!["get".into()],
            ..Default::default()
        },
    ];
    rules.extend(mcs_member_rules());
    rules
}

/// Multi-Cluster Services: what `atoll_mcs::member` needs in a member (see
/// `atoll_mcs::rbac::member_rules`), kept as one block apart from the inventory's own rules.
fn mcs_member_rules() -> Vec<PolicyRule> {
    atoll_mcs::rbac::member_rules()
}

/// The Work applier's identity in a push-mode member, `atoll-system/atoll-work`: a Work may
/// carry manifests of any kind, so it may do anything. The hub's identity holds none of that
/// power itself; it may only impersonate this one (what `work_member_from_secret` does).
/// All of it is owned by Atoll's ClusterRole, so unjoin removes it with the role.
async fn install_work_identity(
    member: &Client,
    owned: impl Fn(&mut ObjectMeta),
) -> Result<(), JoinError> {
    let mut role = named::<ClusterRole>(MEMBER_WORK_CLUSTER_ROLE, None);
    kubeutil::mark_managed(&mut role, &BTreeMap::new());
    owned(&mut role.metadata);
    role.rules = Some(vec![PolicyRule {
        api_groups: Some(vec!["*".into()]),
        resources: Some(vec!["*".into()]),
        verbs: vec!["*".into()],
        ..Default::default()
    }]);
    ensure(&Api::<ClusterRole>::all(member.clone()), &role)
        .await
        .map_err(on_member("creating the Work applier's ClusterRole"))?;
    let mut sa = named::<ServiceAccount>(MEMBER_WORK_SERVICE_ACCOUNT, Some(MEMBER_NAMESPACE));
    kubeutil::mark_managed(&mut sa, &BTreeMap::new());
    ensure(&Api::namespaced(member.clone(), MEMBER_NAMESPACE), &sa)
        .await
        .map_err(on_member("creating the Work applier's service account"))?;
    let mut binding = named::<ClusterRoleBinding>(MEMBER_WORK_CLUSTER_ROLE, None);
    kubeutil::mark_managed(&mut binding, &BTreeMap::new());
    owned(&mut binding.metadata);
    binding.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: MEMBER_WORK_CLUSTER_ROLE.into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: MEMBER_WORK_SERVICE_ACCOUNT.into(),
        namespace: Some(MEMBER_NAMESPACE.into()),
        ..Default::default()
    }]);
    ensure(&Api::<ClusterRoleBinding>::all(member.clone()), &binding)
        .await
        .map_err(on_member("creating the Work applier's ClusterRoleBinding"))?;
    Ok(())
}

/// A client for the member as the Work applier's identity: the stored credentials,
/// impersonating `atoll-system/atoll-work`.
pub async fn work_member_from_secret(
    hub: &Client,
    manager_namespace: &str,
    cluster: &str,
) -> Result<Option<Client>, JoinError> {
    let Some(mut stored) = stored_kubeconfig(hub, manager_namespace, cluster).await? else {
        return Ok(None);
    };
    // Impersonation travels in request headers, so this client may share the connection.
    for user in &mut stored.kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.impersonate = Some(format!(
                "system:serviceaccount:{MEMBER_NAMESPACE}:{MEMBER_WORK_SERVICE_ACCOUNT}"
            ));
        }
    }
    Ok(Some(stored_member_client(stored).await?))
}

fn member_ca_data(options: &JoinOptions, token: &MemberToken) -> Result<String, JoinError> {
    let kubeconfig = &options.member_kubeconfig;
    let context_name = options
        .member_context
        .clone()
        .or_else(|| kubeconfig.current_context.clone());
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| Some(&c.name) == context_name.as_ref())
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| Some(&c.name) == cluster_name.as_ref())
        .and_then(|c| c.cluster.as_ref());
    // A CA file was refused when the member client was built (`member_config`).
    if let Some(data) = cluster.and_then(|c| c.certificate_authority_data.clone()) {
        return Ok(data);
    }
    match &token.ca_crt {
        Some(pem) => Ok(base64::engine::general_purpose::STANDARD.encode(pem)),
        None => Err(JoinError::MemberKubeconfig(
            "neither the kubeconfig nor the member's token Secret gives a CA".into(),
        )),
    }
}

fn member_kubeconfig_yaml(
    cluster: &str,
    server: &str,
    ca_data: &str,
    token: &str,
) -> Result<String, JoinError> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": MEMBER_SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": MEMBER_SERVICE_ACCOUNT}}],
        "current-context": cluster,
    });
    serde_saphyr::to_string(&kubeconfig)
        .map_err(|e| JoinError::MemberKubeconfig(format!("writing the member kubeconfig: {e}")))
}

fn named<K: kube::Resource + Default>(name: &str, namespace: Option<&str>) -> K {
    let mut object = K::default();
    *object.meta_mut() = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..Default::default()
    };
    object
}

async fn rollback(hub: &Client, member: &Client, options: &JoinOptions, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        let result = match &step {
            Undo::MemberCrd(name) => {
                delete_if_exists(&Api::<CustomResourceDefinition>::all(member.clone()), name).await
            }
            Undo::MemberClusterProperty(name) => {
                delete_if_exists(&Api::<ClusterProperty>::all(member.clone()), name).await
            }
            Undo::MemberNamespace => {
                delete_if_exists(&Api::<Namespace>::all(member.clone()), MEMBER_NAMESPACE).await
            }
            Undo::MemberClusterRole => {
                delete_if_exists(
                    &Api::<ClusterRole>::all(member.clone()),
                    MEMBER_CLUSTER_ROLE,
                )
                .await
            }
            Undo::MemberClusterRoleBinding => {
                delete_if_exists(
                    &Api::<ClusterRoleBinding>::all(member.clone()),
                    MEMBER_CLUSTER_ROLE,
                )
                .await
            }
            Undo::HubNamespace(name) => {
                delete_if_exists(&Api::<Namespace>::all(hub.clone()), name).await
            }
            Undo::HubSecret => {
                delete_if_exists(
                    &Api::<Secret>::namespaced(hub.clone(), &options.manager_namespace),
                    &member_kubeconfig_secret(&options.name),
                )
                .await
            }
            Undo::HubProfile => {
                delete_if_exists(
                    &Api::<ClusterProfile>::namespaced(hub.clone(), &options.manager_namespace),
                    &options.name,
                )
                .await
            }
        };
        if let Err(error) = result {
            warn!(?step, %error, "could not undo a step of the failed join");
        }
    }
}

/// What `atoll unjoin` was asked to do.
#[derive(Debug, Clone)]
pub struct UnjoinOptions {
    /// The cluster's name on the hub.
    pub name: String,
    /// Hub namespace holding ClusterProfiles.
    pub manager_namespace: String,
    /// Clean the hub even when the member cannot be reached (its objects are then left).
    pub force: bool,
    /// Leave in the member what the cluster's Works applied (orphan it), rather than delete
    /// it as each Work's `deleteOption` says.
    pub keep_workloads: bool,
}

/// How long unjoin waits for the foreground deletion of what the cluster's Works applied.
const WORKLOAD_REMOVAL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long unjoin waits for a pull-mode agent to record that its Works orphan what they
/// applied (`--keep-workloads`).
const PULL_ORPHAN_TIMEOUT: Duration = Duration::from_secs(30);

/// The result of an unjoin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unjoined {
    /// Whether the member was cleaned (false under `force` with the member unreachable, and
    /// in pull mode, where the agent cleans its member itself when it notices).
    pub member_cleaned: bool,
    /// Whether the cluster was joined in pull mode.
    pub pull: bool,
    /// Pull mode: whether its agent recorded that the Works orphan what they applied
    /// (`keep_workloads`), so that it keeps them when it cleans up.
    pub pull_workloads_orphaned: bool,
    /// What the cluster's Works had applied in the member: deleted, or kept (orphaned by a
    /// `deleteOption` or `keep_workloads`). Empty when the member was not cleaned.
    pub workloads: atoll_work::Removed,
    /// Whether the member's ClusterProperty CRD stayed because Atoll did not install it.
    pub kept_cluster_property_crd: bool,
}

/// Removes a cluster: what its Works applied in the member (as each Work's `deleteOption`
/// says, or nothing with `keep_workloads`), everything Atoll created in the member (its
/// identities, the ClusterSet membership, ClusterProperties and the CRDs it installed) and on
/// the hub (the cluster's namespace with its Works, its credentials, and the ClusterProfile).
/// Objects Atoll did not create are left alone. Safe to repeat until it succeeds.
pub async fn unjoin(hub: &Client, options: &UnjoinOptions) -> Result<Unjoined, JoinError> {
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), &options.manager_namespace);
    let namespace = cluster_namespace(&options.name);
    let profile = kubeutil::get_opt(&profiles, &options.name)
        .await
        .map_err(on_hub("reading the ClusterProfile"))?;
    let hub_ns = kubeutil::get_opt(&Api::<Namespace>::all(hub.clone()), &namespace)
        .await
        .map_err(on_hub("reading the cluster namespace"))?;
    // A cluster namespace already being deleted, with no profile, is what a finished unjoin
    // leaves while the hub's namespace controller empties it: not joined any more.
    let hub_ns_live = hub_ns
        .as_ref()
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_none());
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), &options.manager_namespace);
    let secret_name = member_kubeconfig_secret(&options.name);
    let has_secret = kubeutil::get_opt(&secrets, &secret_name)
        .await
        .map_err(on_hub("reading the member's credentials"))?
        .is_some();
    if profile.is_none() && !hub_ns_live && !has_secret {
        return Err(JoinError::NotJoined {
            name: options.name.clone(),
            namespace: options.manager_namespace.clone(),
        });
    }
    let pull = profile
        .as_ref()
        .and_then(|p| p.metadata.labels.as_ref()?.get(LABEL_MODE))
        .is_some_and(|mode| mode == atoll_api::cluster_profile::MODE_PULL);

    let works: Api<Work> = Api::namespaced(hub.clone(), &namespace);
    let mut pull_workloads_orphaned = false;
    let cleaned = if pull {
        // The hub holds no credentials for a pull-mode member; its agent cleans it, as the
        // records of its Works say. To keep the workloads, the Works orphan them first, and
        // the agent's applier confirms it recorded that.
        if options.keep_workloads {
            match atoll_work::removal::orphan_all(&works, PULL_ORPHAN_TIMEOUT).await {
                Ok(_) => pull_workloads_orphaned = true,
                Err(error) if options.force => {
                    warn!(%error, "--force: unjoining anyway; the agent, once it notices, removes what the Works applied as their records say");
                }
                Err(source) => {
                    return Err(JoinError::WorkloadsNotKept {
                        cluster: options.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(None)
    } else {
        clean_push_member(hub, options, &works).await
    };
    let cleaned = match cleaned {
        Ok(cleaned) => cleaned,
        Err(error) if options.force => {
            warn!(%error, "the member could not be cleaned; --force cleans the hub anyway");
            None
        }
        Err(error) => {
            return Err(JoinError::MemberNotCleaned {
                cluster: options.name.clone(),
                source: Box::new(error),
            });
        }
    };

    if profile.as_ref().is_some_and(is_managed) {
        delete_if_exists(&profiles, &options.name)
            .await
            .map_err(on_hub("deleting the ClusterProfile"))?;
    }
    delete_if_exists(&secrets, &secret_name)
        .await
        .map_err(on_hub("deleting the member's credentials"))?;
    if hub_ns.as_ref().is_some_and(is_managed) {
        delete_if_exists(&Api::<Namespace>::all(hub.clone()), &namespace)
            .await
            .map_err(on_hub("deleting the cluster namespace"))?;
    }
    // The cluster's Works must not hold the namespace's deletion waiting for a member that
    // is no longer Atoll's to clean.
    atoll_work::release_finalizers(&works)
        .await
        .map_err(on_hub("releasing the cluster's Works"))?;
    // A pull-mode agent's renewal role lives outside the namespace.
    super::pull::remove_agent_rbac(hub, &options.name)
        .await
        .map_err(on_hub("deleting the agent's ClusterRole"))?;
    let member_cleaned = cleaned.is_some();
    info!(cluster = %options.name, member_cleaned, pull, "unjoined");
    let (workloads, kept_cluster_property_crd) = cleaned.unwrap_or_default();
    Ok(Unjoined {
        member_cleaned,
        pull,
        pull_workloads_orphaned,
        workloads,
        kept_cluster_property_crd,
    })
}

/// Cleans a push-mode member: what the cluster's Works applied, then Atoll's footprint.
/// `None` when the hub holds no credentials for it; else what happened to the Works' objects
/// and whether the ClusterProperty CRD stayed (Atoll did not install it).
async fn clean_push_member(
    hub: &Client,
    options: &UnjoinOptions,
    works: &Api<Work>,
) -> Result<Option<(atoll_work::Removed, bool)>, JoinError> {
    let Some(stored) = stored_kubeconfig(hub, &options.manager_namespace, &options.name).await?
    else {
        return Ok(None);
    };
    let server = stored
        .kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref()?.server.clone())
        .unwrap_or_default();
    let member = stored_member_client(stored).await?;
    // Fail before touching anything when the member does not answer.
    member
        .apiserver_version()
        .await
        .map_err(|source| JoinError::MemberUnreachable { server, source })?;
    let work_member = work_member_from_secret(hub, &options.manager_namespace, &options.name)
        .await?
        .ok_or_else(|| JoinError::MemberKubeconfig("the member's credentials vanished".into()))?;

    // The Works go first, so that no applier applies again what is being deleted; their
    // delete options and records are read before, since a Work without a finalizer goes at
    // once and a running applier may clean up after a deleted one. With `keep_workloads`
    // every Work orphans, also for an applier that cleans up meanwhile.
    let records =
        atoll_work::removal::applied_records(&work_member, &cluster_namespace(&options.name))
            .await
            .map_err(|e| JoinError::Workloads(e.into()))?;
    let listed = match works.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(on_hub("listing the cluster's Works")(e)),
    };
    let mut delete_options = BTreeMap::new();
    for work in &listed {
        let name = work.metadata.name.clone().unwrap_or_default();
        if options.keep_workloads {
            atoll_work::removal::orphan(works, &name)
                .await
                .map_err(|e| JoinError::Workloads(e.into()))?;
        }
        delete_options.insert(name.clone(), work.spec.delete_option.clone());
        delete_if_exists(works, &name)
            .await
            .map_err(on_hub(format!("deleting Work {name}")))?;
    }
    let removed = atoll_work::remove_applied(
        &work_member,
        &atoll_work::Removal {
            namespace: cluster_namespace(&options.name),
            keep_all: options.keep_workloads,
            timeout: WORKLOAD_REMOVAL_TIMEOUT,
        },
        &delete_options,
        records,
    )
    .await?;
    let kept_crd = clean_member(&member).await?;
    Ok(Some((removed, kept_crd)))
}

/// A client for the member, from the credentials stored at join (the Secret
/// `member-kubeconfig-<cluster>` in the manager namespace).
pub async fn member_from_secret(
    hub: &Client,
    manager_namespace: &str,
    cluster: &str,
) -> Result<Option<Client>, JoinError> {
    match stored_kubeconfig(hub, manager_namespace, cluster).await? {
        Some(stored) => Ok(Some(stored_member_client(stored).await?)),
        None => Ok(None),
    }
}

/// Raw requests to the member, from the credentials stored on the hub, sharing the
/// connection of every client built from the same Secret.
pub async fn member_http_from_secret(
    hub: &Client,
    manager_namespace: &str,
    cluster: &str,
) -> Result<Option<crate::client::MemberHttp>, JoinError> {
    let Some(stored) = stored_kubeconfig(hub, manager_namespace, cluster).await? else {
        return Ok(None);
    };
    let config = member_config(&stored.kubeconfig, None).await?;
    match &stored.transport_key {
        Some(key) => crate::client::MemberHttp::shared(key, &config),
        None => crate::client::MemberHttp::new(&config),
    }
    .map(Some)
    .map_err(|e| JoinError::MemberKubeconfig(e.to_string()))
}

/// A member's kubeconfig as stored on the hub.
struct StoredKubeconfig {
    kubeconfig: Kubeconfig,
    /// Names the Secret's content (namespace, name, uid, resourceVersion): clients built from
    /// the same content may share a connection; new credentials get a new one. `None` (no
    /// resourceVersion to tell versions apart): the client gets a connection of its own.
    transport_key: Option<String>,
}

/// The stored kubeconfig of `cluster`, checked to hold only inline credentials. One an older
/// hub left in the cluster's namespace is moved to the manager namespace first (if it holds
/// only inline credentials; otherwise it is refused and left where it is).
async fn stored_kubeconfig(
    hub: &Client,
    manager_namespace: &str,
    cluster: &str,
) -> Result<Option<StoredKubeconfig>, JoinError> {
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), manager_namespace);
    let name = member_kubeconfig_secret(cluster);
    let permit = super::hub_request_permit().await;
    let secret = kubeutil::get_opt(&secrets, &name)
        .await
        .map_err(on_hub("reading the member's credentials"))?;
    drop(permit);
    let secret = match secret {
        Some(secret) => secret,
        None => match move_legacy_secret(hub, &secrets, cluster).await? {
            Some(secret) => secret,
            None => return Ok(None),
        },
    };
    let transport_key = secret.metadata.resource_version.as_ref().map(|version| {
        let uid = secret.metadata.uid.as_deref().unwrap_or_default();
        format!("{manager_namespace}/{name}/{uid}/{version}")
    });
    let kubeconfig = secret_kubeconfig(secret)?;
    Ok(Some(StoredKubeconfig {
        kubeconfig,
        transport_key,
    }))
}

/// The kubeconfig in a member-kubeconfig Secret, inline credentials only. Errors never quote
/// the Secret's content.
fn secret_kubeconfig(secret: Secret) -> Result<Kubeconfig, JoinError> {
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(MEMBER_KUBECONFIG_KEY))
        .map(|b| b.0)
        .unwrap_or_default();
    let text = String::from_utf8(bytes)
        .map_err(|_| JoinError::MemberKubeconfig("the stored kubeconfig is not UTF-8".into()))?;
    let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|_| {
        JoinError::MemberKubeconfig("the stored kubeconfig is not a kubeconfig".into())
    })?;
    super::credentials::inline_only(&kubeconfig, None)?;
    Ok(kubeconfig)
}

/// Moves the member kubeconfig an older hub kept in the cluster's namespace into the manager
/// namespace (level-triggered: whichever controller reads the credentials first does it), and
/// returns the moved Secret. A legacy Secret that is not inline-only is refused, not moved.
async fn move_legacy_secret(
    hub: &Client,
    secrets: &Api<Secret>,
    cluster: &str,
) -> Result<Option<Secret>, JoinError> {
    let legacy_api: Api<Secret> = Api::namespaced(hub.clone(), &cluster_namespace(cluster));
    let permit = super::hub_request_permit().await;
    let legacy = kubeutil::get_opt(&legacy_api, MEMBER_KUBECONFIG_SECRET)
        .await
        .map_err(on_hub(
            "reading the member's credentials in the cluster namespace",
        ))?;
    drop(permit);
    let Some(legacy) = legacy else {
        return Ok(None);
    };
    let data = legacy.data.clone();
    secret_kubeconfig(legacy)?;
    let name = member_kubeconfig_secret(cluster);
    let mut moved = named::<Secret>(&name, None);
    kubeutil::mark_managed(
        &mut moved,
        &BTreeMap::from([(LABEL_CLUSTER_NAME.to_owned(), cluster.to_owned())]),
    );
    moved.type_ = Some("Opaque".into());
    moved.data = data;
    let (stored, _) = ensure(secrets, &moved).await.map_err(on_hub(
        "moving the member's credentials to the manager namespace",
    ))?;
    delete_if_exists(&legacy_api, MEMBER_KUBECONFIG_SECRET)
        .await
        .map_err(on_hub(
            "deleting the member's credentials from the cluster namespace",
        ))?;
    info!(%cluster, "moved the member's credentials out of the cluster namespace");
    Ok(Some(stored))
}

/// Removes Atoll's footprint from a member; true when the ClusterProperty CRD stays because
/// Atoll did not install it (or other ClusterProperties still use it).
async fn clean_member(member: &Client) -> Result<bool, JoinError> {
    // Membership goes first, so that a half-finished unjoin never leaves a cluster that claims
    // a ClusterSet it has left.
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(member.clone());
    let crd_name = ClusterProperty::crd().metadata.name.unwrap_or_default();
    let crd = kubeutil::get_opt(&crds, &crd_name)
        .await
        .map_err(on_member("reading the ClusterProperty CRD"))?;
    if crd.is_some() {
        // clusterset.k8s.io must be absent on a non-member, whoever wrote it.
        delete_if_exists(&properties, CLUSTER_SET_PROPERTY)
            .await
            .map_err(on_member("deleting clusterset.k8s.io"))?;
        if let Some(id) = kubeutil::get_opt(&properties, CLUSTER_ID_PROPERTY)
            .await
            .map_err(on_member("reading cluster.clusterset.k8s.io"))?
            && is_managed(&id)
        {
            delete_if_exists(&properties, CLUSTER_ID_PROPERTY)
                .await
                .map_err(on_member("deleting cluster.clusterset.k8s.io"))?;
        }
    }
    let mut kept_crd = crd.is_some();
    if crd.as_ref().is_some_and(is_managed) {
        // Only when no ClusterProperty is left that someone else wrote.
        let remaining = properties
            .list(&Default::default())
            .await
            .map_err(on_member("listing ClusterProperties"))?;
        if remaining.items.iter().all(is_managed) {
            delete_if_exists(&crds, &crd_name)
                .await
                .map_err(on_member("deleting the ClusterProperty CRD"))?;
            kept_crd = false;
        }
    }
    // Work records go with their CRD when Atoll installed it (unjoin has removed what the
    // records tracked, or orphaned it, before).
    delete_managed(&crds, &AppliedWork::crd().metadata.name.unwrap_or_default()).await?;
    // Last, the ClusterRole: it owns Atoll's namespace (with the identity in it) and binding,
    // which the member's garbage collector then removes. This request is the identity's last.
    delete_managed(
        &Api::<ClusterRole>::all(member.clone()),
        MEMBER_CLUSTER_ROLE,
    )
    .await?;
    Ok(kept_crd)
}

async fn delete_managed<K>(api: &Api<K>, name: &str) -> Result<(), JoinError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Some(object) = kubeutil::get_opt(api, name)
        .await
        .map_err(on_member(format!("reading {name}")))?
        && is_managed(&object)
    {
        delete_if_exists(api, name)
            .await
            .map_err(on_member(format!("deleting {name}")))?;
    }
    Ok(())
}

/// The member side of membership, shared with the pull-mode agent: the cluster ID the member
/// has or gets (its existing `cluster.clusterset.k8s.io`, else `wanted`, else the UID of
/// `kube-system`), validated.
pub async fn resolve_cluster_id(
    member: &Client,
    wanted: Option<&str>,
) -> Result<String, JoinError> {
    let id = match (existing_cluster_id(member).await?, wanted) {
        (Some(existing), Some(wanted)) if existing != wanted => {
            return Err(JoinError::ClusterIdMismatch {
                existing,
                wanted: wanted.to_owned(),
            });
        }
        (Some(existing), _) => existing,
        (None, Some(wanted)) => wanted.to_owned(),
        (None, None) => kube_system_uid(member).await?,
    };
    validate_cluster_id(&id)?;
    Ok(id)
}

/// Installs the About API in a member (the ClusterProperty CRD unless present, and
/// `cluster.clusterset.k8s.io`), and `clusterset.k8s.io` when `cluster_set` is given. Safe to
/// repeat; refuses to change an existing ID or ClusterSet.
pub async fn install_about_api(
    member: &Client,
    cluster_id: &str,
    cluster_set: Option<&str>,
) -> Result<(), JoinError> {
    let mut created = Vec::new();
    install_cluster_property_crd(member, &mut created).await?;
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    let wanted = [
        (CLUSTER_ID_PROPERTY, Some(cluster_id)),
        (CLUSTER_SET_PROPERTY, cluster_set),
    ];
    for (name, value) in wanted {
        let Some(value) = value else { continue };
        let mut property = ClusterProperty::new(
            name,
            ClusterPropertySpec {
                value: value.to_owned(),
            },
        );
        kubeutil::mark_managed(&mut property, &BTreeMap::new());
        let (stored, _) = ensure(&properties, &property)
            .await
            .map_err(on_member(format!("creating ClusterProperty {name}")))?;
        if stored.spec.value != value {
            return Err(if name == CLUSTER_ID_PROPERTY {
                JoinError::ClusterIdMismatch {
                    existing: stored.spec.value,
                    wanted: value.to_owned(),
                }
            } else {
                JoinError::OtherClusterSet {
                    existing: stored.spec.value,
                    wanted: value.to_owned(),
                }
            });
        }
    }
    Ok(())
}

/// Removes from a member the About API footprint Atoll left there: `clusterset.k8s.io`
/// always (a non-member must not claim a ClusterSet), the cluster ID and the CRD only when
/// Atoll created them, and the push-mode identity when there is one.
pub async fn leave_member(member: &Client) -> Result<(), JoinError> {
    clean_member(member).await.map(|_| ())
}
