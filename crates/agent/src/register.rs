//! Getting a certificate from the hub: first with the bootstrap token (registration), later
//! with the current certificate (renewal). Both send a CSR and wait for the hub to approve it
//! and its signer to issue the certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_controllers::inventory::LABEL_CLUSTER_NAME;
use atoll_controllers::inventory::pull::{
    AGENT_GROUP, ANNOTATION_CLUSTER_ID, ANNOTATION_CLUSTER_SET, ANNOTATION_KUBERNETES_VERSION,
    ANNOTATION_LABELS, CLIENT_SIGNER, agent_user,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use tracing::info;

use crate::AgentError;

/// What the agent tells the hub about its member when it asks to join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationFacts {
    /// The member's cluster ID.
    pub cluster_id: String,
    /// The ClusterSet to join.
    pub cluster_set: String,
    /// Labels for the ClusterProfile.
    pub labels: BTreeMap<String, String>,
    /// The member's Kubernetes version.
    pub kubernetes_version: String,
}

/// A fresh private key (ECDSA P-256), PKCS#8 PEM.
pub fn new_key() -> Result<rcgen::KeyPair, AgentError> {
    rcgen::KeyPair::generate()
        .map_err(|e| AgentError::Credentials(format!("generating a key: {e}")))
}

/// A PEM CSR for the agent identity of `cluster`.
pub fn csr_pem(cluster: &str, key: &rcgen::KeyPair) -> Result<String, AgentError> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_user(cluster));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, AGENT_GROUP);
    params
        .serialize_request(key)
        .and_then(|request| request.pem())
        .map_err(|e| AgentError::Credentials(format!("building the CSR: {e}")))
}

/// Sends the CSR `name` (unless it exists) and waits for its certificate. A refusal by the hub
/// (denied, failed, or the requester not authorized) ends the wait with an error.
pub async fn request_certificate(
    hub: &Client,
    name: &str,
    cluster: &str,
    key: &rcgen::KeyPair,
    facts: Option<&RegistrationFacts>,
    wait_hint: &str,
) -> Result<Vec<u8>, AgentError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let mut annotations = BTreeMap::new();
    if let Some(facts) = facts {
        annotations.insert(ANNOTATION_CLUSTER_ID.to_owned(), facts.cluster_id.clone());
        annotations.insert(ANNOTATION_CLUSTER_SET.to_owned(), facts.cluster_set.clone());
        annotations.insert(
            ANNOTATION_LABELS.to_owned(),
            serde_json::to_string(&facts.labels).unwrap_or_else(|_| "{}".into()),
        );
        annotations.insert(
            ANNOTATION_KUBERNETES_VERSION.to_owned(),
            facts.kubernetes_version.clone(),
        );
    }
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                LABEL_CLUSTER_NAME.to_owned(),
                cluster.to_owned(),
            )])),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem(cluster, key)?.into_bytes()),
            signer_name: CLIENT_SIGNER.into(),
            usages: Some(vec![
                "digital signature".into(),
                "key encipherment".into(),
                "client auth".into(),
            ]),
            ..Default::default()
        },
        status: None,
    };
    match csrs.create(&PostParams::default(), &csr).await {
        Ok(_) => info!(%name, "certificate requested"),
        // Sent before a restart: keep waiting for it (the key it was made with is the stored one).
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(hub_refusal(error, "sending the certificate request")),
    }
    let started = tokio::time::Instant::now();
    let mut last_hint = started;
    loop {
        let current = csrs
            .get(name)
            .await
            .map_err(|e| hub_refusal(e, "reading the certificate request"))?;
        let status = current.status.unwrap_or_default();
        if let Some(refused) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(AgentError::Refused(format!(
                "{}: {}",
                refused
                    .reason
                    .clone()
                    .unwrap_or_else(|| refused.type_.clone()),
                refused.message.clone().unwrap_or_default()
            )));
        }
        if let Some(certificate) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok(certificate.0);
        }
        if last_hint.elapsed() >= Duration::from_secs(30) {
            last_hint = tokio::time::Instant::now();
            info!(
                waited_s = started.elapsed().as_secs(),
                "still waiting for the hub: {wait_hint}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes a CSR; gone already is fine.
pub async fn delete_request(hub: &Client, name: &str) -> Result<(), AgentError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    match csrs.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(hub_refusal(error, "deleting the old renewal request")),
    }
}

/// Turns a hub error into one that says what to do.
pub fn hub_refusal(error: kube::Error, action: &str) -> AgentError {
    match error {
        kube::Error::Api(status) if status.code == 401 => AgentError::Unauthorized(format!(
            "{action}: the hub does not accept these credentials (401). A bootstrap token that is expired, already used, revoked, or not issued by this hub looks like this; create a new one with `atoll token create` on the hub"
        )),
        kube::Error::Api(status) if status.code == 403 => {
            AgentError::Refused(format!("{action}: the hub forbids it: {}", status.message))
        }
        source => AgentError::Hub {
            action: action.to_owned(),
            source,
        },
    }
}
