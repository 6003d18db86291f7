//! Getting a certificate from the hub: first with the bootstrap token (registration), later
//! with the current certificate (renewal). Both send a CSR and wait for the hub to approve it
//! and its signer to issue the certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_controllers::inventory::LABEL_CLUSTER_NAME;
use atoll_controllers::inventory::pull::{
    AGENT_GROUP, ANNOTATION_CLUSTER_ID, ANNOTATION_CLUSTER_SET, ANNOTATION_KUBERNETES_VERSION,
    ANNOTATION_LABELS, CLIENT_SIGNER, agent_generation_group, agent_user,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

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

/// id-at-organizationName.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// A PEM CSR for the agent identity of `cluster`, certificate generation `generation`.
pub fn csr_pem(
    cluster: &str,
    generation: &str,
    key: &rcgen::KeyPair,
) -> Result<String, AgentError> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_user(cluster));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, AGENT_GROUP);
    // rcgen keeps one value per attribute type, so the second organization goes in by its
    // OID (id-at-organizationName, 2.5.4.10): the subject then carries both, as Kubernetes
    // reads groups from every O.
    params.distinguished_name.push(
        rcgen::DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
        agent_generation_group(cluster, generation),
    );
    params
        .serialize_request(key)
        .and_then(|request| request.pem())
        .map_err(|e| AgentError::Credentials(format!("building the CSR: {e}")))
}

/// Whether a PEM CSR carries `key`'s public key: the agent's own request.
pub fn request_is_own(request_pem: &[u8], key: &rcgen::KeyPair) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(request_pem) else {
        return false;
    };
    let Ok((_, request)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
    else {
        return false;
    };
    request
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        == key.public_key_raw()
}

/// Whether a PEM certificate certifies `key`'s public key.
pub fn certificate_is_for(cert_pem: &[u8], key: &rcgen::KeyPair) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

/// Which kind of request: the name of a registration belongs to its token, so a squatted one
/// is refused; a renewal's name belongs to the agent, which may delete a squatter's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// With the bootstrap token.
    Registration,
    /// With the current certificate.
    Renewal,
}

/// What a certificate request is for.
pub struct CertificateRequest<'a> {
    /// The CSR's name.
    pub name: &'a str,
    /// The cluster.
    pub cluster: &'a str,
    /// The certificate generation asked for.
    pub generation: &'a str,
    /// The key the certificate must certify.
    pub key: &'a rcgen::KeyPair,
    /// What the agent tells the hub when registering.
    pub facts: Option<&'a RegistrationFacts>,
    /// Registration or renewal.
    pub kind: RequestKind,
    /// What to tell the operator while waiting.
    pub wait_hint: &'a str,
}

/// Sends the CSR (unless the agent's own exists) and waits for its certificate over a watch of
/// that one CSR, opened before the CSR is sent: the hub revokes a bootstrap token as it
/// approves its request, and the approval and certificate still arrive on the open watch. A
/// refusal by the hub (denied, failed, the requester not authorized, a CSR of that name that
/// is not the agent's) ends the wait with an error; so does a certificate for another key.
pub async fn request_certificate(
    hub: &Client,
    request: &CertificateRequest<'_>,
) -> Result<Vec<u8>, AgentError> {
    let name = request.name;
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    let mut annotations = BTreeMap::new();
    if let Some(facts) = request.facts {
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
                request.cluster.to_owned(),
            )])),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(
                csr_pem(request.cluster, request.generation, request.key)?.into_bytes(),
            ),
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
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    // The watch first, from "0": it starts with the CSR's current state, if any.
    let mut events = csrs
        .watch(&params, "0")
        .await
        .map_err(|e| hub_refusal(e, "watching the certificate request"))?
        .boxed();
    let mut attempts = 0;
    loop {
        match csrs.create(&PostParams::default(), &csr).await {
            Ok(_) => {
                info!(%name, "certificate requested");
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = csrs
                    .get(name)
                    .await
                    .map_err(|e| hub_refusal(e, "reading the certificate request"))?;
                // Sent before a restart, with the stored key: keep waiting for it.
                if request_is_own(&existing.spec.request.0, request.key) {
                    break;
                }
                attempts += 1;
                match request.kind {
                    RequestKind::Renewal if attempts < 3 => {
                        warn!(%name, "a certificate request of this name that is not the agent's was in the way; deleting it");
                        delete_request(hub, name).await?;
                    }
                    _ => {
                        return Err(AgentError::Refused(format!(
                            "a certificate request named {name} exists that this agent did not send; {}",
                            match request.kind {
                                RequestKind::Registration =>
                                    "create a new bootstrap token with `atoll token create` on the hub",
                                RequestKind::Renewal =>
                                    "it keeps coming back: ask the hub's operator",
                            }
                        )));
                    }
                }
            }
            Err(error) => return Err(hub_refusal(error, "sending the certificate request")),
        }
    }
    let started = tokio::time::Instant::now();
    let mut last_hint = started;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.try_next()).await;
        let current = match event {
            Err(_elapsed) => {
                last_hint = tokio::time::Instant::now();
                info!(
                    waited_s = started.elapsed().as_secs(),
                    "still waiting for the hub: {}", request.wait_hint
                );
                continue;
            }
            Ok(Ok(Some(WatchEvent::Added(csr) | WatchEvent::Modified(csr)))) => csr,
            Ok(Ok(Some(WatchEvent::Deleted(_)))) => {
                return Err(AgentError::Refused(format!(
                    "the certificate request {name} was deleted on the hub before it was answered"
                )));
            }
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => continue,
            // The watch ended or broke: open it again (this needs the credentials to still
            // work: a registration whose token was revoked before its certificate arrived
            // ends here with a 401).
            Ok(Ok(Some(WatchEvent::Error(_)) | None)) | Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                events = csrs
                    .watch(&params, "0")
                    .await
                    .map_err(|e| hub_refusal(e, "watching the certificate request"))?
                    .boxed();
                continue;
            }
        };
        if current.name_any() != name {
            continue;
        }
        if !request_is_own(&current.spec.request.0, request.key) {
            return Err(AgentError::Refused(format!(
                "the certificate request {name} on the hub is no longer this agent's"
            )));
        }
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
            if !certificate_is_for(&certificate.0, request.key) {
                return Err(AgentError::Refused(format!(
                    "the hub issued request {name} a certificate for another key"
                )));
            }
            return Ok(certificate.0);
        }
        if last_hint.elapsed() >= Duration::from_secs(30) {
            last_hint = tokio::time::Instant::now();
            info!(
                waited_s = started.elapsed().as_secs(),
                "still waiting for the hub: {}", request.wait_hint
            );
        }
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

/// Checks a bootstrap token before anything is written in the member: a 401 (expired, used,
/// revoked, forged) ends the registration with nothing changed.
pub async fn check_token(hub: &Client, request_name: &str) -> Result<(), AgentError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.clone());
    match csrs.get_opt(request_name).await {
        Ok(_) => Ok(()),
        Err(error) => Err(hub_refusal(error, "checking the bootstrap token")),
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
