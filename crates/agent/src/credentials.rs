//! The agent's hub credentials: a client certificate issued by the hub, kept in a Secret in
//! the member so that a restarted agent reconnects without registering again.

use std::collections::BTreeMap;

use atoll_controllers::inventory::MEMBER_NAMESPACE;
use atoll_controllers::kubeutil;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::AgentError;

/// The Secret in the member (namespace `atoll-system`) holding the agent's hub credentials.
pub const CREDENTIALS_SECRET: &str = "atoll-agent-hub";
/// Label on the member namespace when the agent created it (and so may remove it).
pub const LABEL_COMPONENT: &str = "atoll.io/component";

const KEY_CLUSTER: &str = "cluster";
const KEY_SERVER: &str = "server";
const KEY_CA: &str = "ca.crt";
const KEY_CERT: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const KEY_ROTATED_FOR: &str = "rotated-for";
const KEY_PENDING_GENERATION: &str = "pending-generation";

/// Where the hub is and how to trust it.
#[derive(Clone, PartialEq, Eq)]
pub struct HubEndpoint {
    /// The hub API server's URL.
    pub server: String,
    /// The CA that signed the hub's serving certificate, PEM.
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for HubEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEndpoint")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A client certificate for the hub, with its key. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster these credentials belong to.
    pub cluster: String,
    /// The hub.
    pub hub: HubEndpoint,
    /// The certificate, PEM; empty while the hub has not issued it.
    pub cert_pem: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: Vec<u8>,
    /// The last rotation request (Lease annotation) that has been handled.
    pub rotated_for: String,
    /// The generation asked for by a registration still waiting for its certificate.
    pub pending_generation: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cluster", &self.cluster)
            .field("hub", &self.hub)
            .field("issued", &!self.cert_pem.is_empty())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The validity window of the certificate: (not before, not after).
    pub fn validity(&self) -> Result<(Timestamp, Timestamp), AgentError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&self.cert_pem)
            .map_err(|e| AgentError::Credentials(format!("the certificate is not PEM: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| AgentError::Credentials(format!("the certificate does not parse: {e}")))?;
        let validity = cert.validity();
        let at = |t: x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp())
                .map_err(|e| AgentError::Credentials(format!("certificate time: {e}")))
        };
        Ok((at(validity.not_before)?, at(validity.not_after)?))
    }

    /// The certificate's generation: the suffix of its `system:atoll:agent:<cluster>:<gen>`
    /// organization. `None` for a certificate without one.
    pub fn generation(&self) -> Option<String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&self.cert_pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        cert.subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .find_map(|o| {
                atoll_controllers::inventory::pull::generation_of(&self.cluster, o)
                    .map(str::to_owned)
            })
    }

    /// The certificate's serial number, for logs and tests.
    pub fn serial(&self) -> Result<String, AgentError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&self.cert_pem)
            .map_err(|e| AgentError::Credentials(format!("the certificate is not PEM: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| AgentError::Credentials(format!("the certificate does not parse: {e}")))?;
        Ok(cert.raw_serial_as_string())
    }

    /// A hub client authenticating with this certificate.
    pub async fn hub_client(&self) -> Result<Client, AgentError> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hub", "cluster": {
                "server": self.hub.server,
                "certificate-authority-data": b64(&self.hub.ca_pem),
            }}],
            "users": [{"name": "agent", "user": {
                "client-certificate-data": b64(&self.cert_pem),
                "client-key-data": b64(&self.key_pem),
            }}],
            "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": "agent"}}],
            "current-context": "hub",
        });
        client_from_kubeconfig(kubeconfig).await
    }
}

/// A hub client authenticating with a bearer token (the bootstrap token).
pub async fn token_client(hub: &HubEndpoint, token: &str) -> Result<Client, AgentError> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hub", "cluster": {
            "server": hub.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&hub.ca_pem),
        }}],
        "users": [{"name": "bootstrap", "user": {"token": token}}],
        "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": "bootstrap"}}],
        "current-context": "hub",
    });
    client_from_kubeconfig(kubeconfig).await
}

async fn client_from_kubeconfig(kubeconfig: serde_json::Value) -> Result<Client, AgentError> {
    let kubeconfig: Kubeconfig = serde_json::from_value(kubeconfig)
        .map_err(|e| AgentError::Credentials(format!("building the hub kubeconfig: {e}")))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| AgentError::Credentials(format!("the hub connection settings: {e}")))?;
    Client::try_from(config)
        .map_err(|e| AgentError::Credentials(format!("the hub connection settings: {e}")))
}

/// Reads the stored credentials; `None` when there are none.
pub async fn load(member: &Client) -> Result<Option<Credentials>, AgentError> {
    let secrets: Api<Secret> = Api::namespaced(member.clone(), MEMBER_NAMESPACE);
    let secret = match secrets.get_opt(CREDENTIALS_SECRET).await {
        Ok(secret) => secret,
        Err(source) => {
            return Err(AgentError::Member {
                action: "reading the stored hub credentials".into(),
                source,
            });
        }
    };
    let Some(secret) = secret else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| data.get(key).map(|v| v.0.clone()).unwrap_or_default();
    let text = |key: &str| String::from_utf8_lossy(&field(key)).into_owned();
    Ok(Some(Credentials {
        cluster: text(KEY_CLUSTER),
        hub: HubEndpoint {
            server: text(KEY_SERVER),
            ca_pem: field(KEY_CA),
        },
        cert_pem: field(KEY_CERT),
        key_pem: field(KEY_KEY),
        rotated_for: text(KEY_ROTATED_FOR),
        pending_generation: text(KEY_PENDING_GENERATION),
    }))
}

/// Stores credentials (creating Atoll's member namespace when missing). Safe to repeat.
pub async fn store(member: &Client, credentials: &Credentials) -> Result<(), AgentError> {
    let on_member = |action: &str| {
        let action = action.to_owned();
        move |source| AgentError::Member { action, source }
    };
    let mut ns = Namespace {
        metadata: ObjectMeta {
            name: Some(MEMBER_NAMESPACE.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    kubeutil::mark_managed(
        &mut ns,
        &BTreeMap::from([(LABEL_COMPONENT.to_owned(), "agent".to_owned())]),
    );
    kubeutil::ensure(&Api::<Namespace>::all(member.clone()), &ns)
        .await
        .map_err(on_member("creating namespace atoll-system"))?;
    let data = BTreeMap::from([
        (
            KEY_CLUSTER.to_owned(),
            credentials.cluster.as_bytes().to_vec(),
        ),
        (
            KEY_SERVER.to_owned(),
            credentials.hub.server.as_bytes().to_vec(),
        ),
        (KEY_CA.to_owned(), credentials.hub.ca_pem.clone()),
        (KEY_CERT.to_owned(), credentials.cert_pem.clone()),
        (KEY_KEY.to_owned(), credentials.key_pem.clone()),
        (
            KEY_ROTATED_FOR.to_owned(),
            credentials.rotated_for.as_bytes().to_vec(),
        ),
        (
            KEY_PENDING_GENERATION.to_owned(),
            credentials.pending_generation.as_bytes().to_vec(),
        ),
    ]);
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(CREDENTIALS_SECRET.to_owned()),
            namespace: Some(MEMBER_NAMESPACE.to_owned()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    };
    kubeutil::mark_managed(&mut secret, &BTreeMap::new());
    Api::<Secret>::namespaced(member.clone(), MEMBER_NAMESPACE)
        .patch(
            CREDENTIALS_SECRET,
            &PatchParams::apply("atoll-agent").force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(on_member("storing the hub credentials"))?;
    Ok(())
}

/// Removes the stored credentials and, when the agent created it, Atoll's member namespace.
pub async fn forget(member: &Client) -> Result<(), AgentError> {
    let on_member = |action: &str| {
        let action = action.to_owned();
        move |source| AgentError::Member { action, source }
    };
    kubeutil::delete_if_exists(
        &Api::<Secret>::namespaced(member.clone(), MEMBER_NAMESPACE),
        CREDENTIALS_SECRET,
    )
    .await
    .map_err(on_member("deleting the hub credentials"))?;
    let namespaces: Api<Namespace> = Api::all(member.clone());
    if let Some(ns) = kubeutil::get_opt(&namespaces, MEMBER_NAMESPACE)
        .await
        .map_err(on_member("reading namespace atoll-system"))?
        && kubeutil::is_managed(&ns)
        && ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_COMPONENT))
            .is_some_and(|c| c == "agent")
    {
        kubeutil::delete_if_exists(&namespaces, MEMBER_NAMESPACE)
            .await
            .map_err(on_member("deleting namespace atoll-system"))?;
    }
    Ok(())
}
