//! CertificateSigningRequests (certificates.k8s.io/v1), as kube-apiserver and
//! kube-controller-manager handle them:
//! - on create, `spec.username`, `groups`, `uid` and `extra` are the requester's, whatever the
//!   body says, and status starts empty; a `kubernetes.io/kube-apiserver-client` request for
//!   `O=system:masters` is refused (upstream's CertificateSubjectRestriction admission);
//! - the main resource changes only metadata; `/status` changes status but not the
//!   Approved/Denied conditions; `/approval` changes only the conditions, and needs, besides
//!   `update` on `certificatesigningrequests/approval`, the verb `approve` on `signers` named
//!   after the request's signer (or its `<domain>/*` wildcard), as upstream's approval admission,
//!   and a `/status` write that sets the certificate needs `sign` on it (signing admission);
//! - validation: request (a PEM CSR), signerName, usages, expirationSeconds, conditions
//!   (Approved and Denied exclusive, never removed), certificate (set once);
//! - a signer ([`run_signer`]) issues approved, not denied or failed,
//!   `kubernetes.io/kube-apiserver-client` requests with the CA the server trusts for client
//!   certificates, honouring `spec.expirationSeconds`; a request the signer cannot honour gets
//!   `Failed` (reason `SignerValidationFailure`), as kube-controller-manager's signer does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::{SYSTEM_MASTERS, UserInfo};
use crate::error::{ApiError, Cause};
use crate::pki::PkiError;
use crate::registry::{Registry, ResourceDef};
use crate::request::{RequestTarget, ResourceRequest};
use crate::server::AppState;
use crate::storage::{Storage, name_of, now_rfc3339};
use crate::subject::Subject;

/// The API group.
pub const GROUP: &str = "certificates.k8s.io";
/// The signer of client certificates kube-apiserver trusts.
pub const KUBE_APISERVER_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The longest certificate the signer issues, as kube-controller-manager's default
/// `--cluster-signing-duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest `spec.expirationSeconds` accepted.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// How far back certificates are dated, for clocks that lag (as upstream's signer).
const BACKDATE: Duration = Duration::from_secs(300);

const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Whether `def` is the CertificateSigningRequest kind.
pub fn is_csr(def: &ResourceDef) -> bool {
    def.group == GROUP && def.kind == "CertificateSigningRequest"
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

fn decoded(obj: &Value, pointer: &str) -> Option<Vec<u8>> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|s| b64().decode(s).ok())
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn condition_type(c: &Value) -> &str {
    c.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn has_true(obj: &Value, type_: &str) -> bool {
    conditions(obj).iter().any(|c| {
        condition_type(c) == type_ && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

fn is_approval(t: &str) -> bool {
    t == "Approved" || t == "Denied"
}

/// JSON's name of a value's type, as Go's decoder reports it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The 400 kube-apiserver answers for a body that does not decode into a
/// CertificateSigningRequest: a field of the wrong JSON type (null is always fine, it decodes
/// to the zero value). Checked before anything reads the body, so that no later step meets a
/// shape it does not expect.
fn shape_error(obj: &Value) -> Option<ApiError> {
    #[derive(Clone, Copy)]
    enum Want {
        Object,
        String,
        Integer,
        Strings,
        Objects,
    }
    let fits = |v: &Value, want: Want| match want {
        Want::Object => v.is_object(),
        Want::String => v.is_string(),
        Want::Integer => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        Want::Strings | Want::Objects => v.is_array(),
    };
    let refuse = |v: &Value, field: &str, go_type: &str| {
        Some(ApiError::bad_request(format!(
            "CertificateSigningRequest in version \"v1\" cannot be handled as a CertificateSigningRequest: json: cannot unmarshal {} into Go struct field {field} of type {go_type}",
            json_type(v)
        )))
    };
    // (where, field as Go names it, Go type, wanted JSON type)
    let fields: [(Option<&Value>, &str, &str, Want); 9] = [
        (
            obj.get("spec"),
            "CertificateSigningRequest.spec",
            "v1.CertificateSigningRequestSpec",
            Want::Object,
        ),
        (
            obj.get("status"),
            "CertificateSigningRequest.status",
            "v1.CertificateSigningRequestStatus",
            Want::Object,
        ),
        (
            obj.pointer("/spec/request"),
            "CertificateSigningRequestSpec.spec.request",
            "[]uint8",
            Want::String,
        ),
        (
            obj.pointer("/spec/signerName"),
            "CertificateSigningRequestSpec.spec.signerName",
            "string",
            Want::String,
        ),
        (
            obj.pointer("/spec/expirationSeconds"),
            "CertificateSigningRequestSpec.spec.expirationSeconds",
            "int32",
            Want::Integer,
        ),
        (
            obj.pointer("/spec/usages"),
            "CertificateSigningRequestSpec.spec.usages",
            "[]v1.KeyUsage",
            Want::Strings,
        ),
        (
            obj.pointer("/spec/groups"),
            "CertificateSigningRequestSpec.spec.groups",
            "[]string",
            Want::Strings,
        ),
        (
            obj.pointer("/status/conditions"),
            "CertificateSigningRequestStatus.status.conditions",
            "[]v1.CertificateSigningRequestCondition",
            Want::Objects,
        ),
        (
            obj.pointer("/status/certificate"),
            "CertificateSigningRequestStatus.status.certificate",
            "[]uint8",
            Want::String,
        ),
    ];
    for (value, field, go_type, want) in fields {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            continue;
        };
        if !fits(value, want) {
            return refuse(value, field, go_type);
        }
        let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
        for item in items.iter().filter(|v| !v.is_null()) {
            match want {
                Want::Strings if !item.is_string() => {
                    return refuse(item, field, go_type.trim_start_matches("[]"));
                }
                Want::Objects if !item.is_object() => {
                    return refuse(item, field, go_type.trim_start_matches("[]"));
                }
                Want::Objects => {
                    for key in [
                        "type",
                        "status",
                        "reason",
                        "message",
                        "lastUpdateTime",
                        "lastTransitionTime",
                    ] {
                        if let Some(v) = item.get(key).filter(|v| !v.is_null() && !v.is_string()) {
                            return refuse(
                                v,
                                &format!(
                                    "CertificateSigningRequestCondition.status.conditions.{key}"
                                ),
                                match key {
                                    "type" => "v1.RequestConditionType",
                                    "status" => "v1.ConditionStatus",
                                    "lastUpdateTime" | "lastTransitionTime" => "v1.Time",
                                    _ => "string",
                                },
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// Create: the requester's identity goes into the spec; status starts empty.
pub fn on_create(def: &ResourceDef, mut obj: Value, user: &UserInfo) -> Result<Value, ApiError> {
    if !is_csr(def) || !obj.is_object() {
        // Not an object: the generic create refuses it (400).
        return Ok(obj);
    }
    if let Some(error) = shape_error(&obj) {
        return Err(error);
    }
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    // As upstream's strategy: the requester's name, uid, groups and extra, whatever the body
    // said (an empty uid or extra is omitted).
    obj["spec"]["username"] = json!(user.name);
    obj["spec"]["groups"] = json!(user.all_groups());
    if let Some(spec) = obj["spec"].as_object_mut() {
        spec.remove("uid");
        spec.remove("extra");
        if !user.uid.is_empty() {
            spec.insert("uid".into(), json!(user.uid));
        }
        if !user.extra.is_empty() {
            spec.insert("extra".into(), json!(user.extra));
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer == KUBE_APISERVER_CLIENT_SIGNER
        && let Some(pem) = decoded(&obj, "/spec/request")
        && let Ok(subject) = csr_subject(&pem)
        && subject.organizations.iter().any(|o| o == SYSTEM_MASTERS)
    {
        return Err(ApiError::forbidden(
            &def.group_resource(),
            name_of(&obj),
            format!(
                "use of {KUBE_APISERVER_CLIENT_SIGNER} signer with {SYSTEM_MASTERS} group is not allowed"
            ),
        ));
    }
    Ok(obj)
}

/// What a request may do beyond its RBAC verb, decided before its write (upstream's
/// certificate admission plugins).
#[derive(Debug, Default)]
pub struct Admission {
    /// Whether the write is of a CSR (its body's shape is then checked).
    csr: bool,
    /// For a `/status` write of a CSR the requester may not `sign` for: the denial to give
    /// if the write changes `status.certificate`.
    denied_signing: Option<ApiError>,
}

impl Admission {
    /// Refuses (400) a CSR body that does not decode as one, and a write that sets or changes
    /// a certificate without the right to sign it.
    pub fn check(&self, current: &Value, next: &Value) -> Result<(), ApiError> {
        if self.csr
            && let Some(error) = shape_error(next)
        {
            return Err(error);
        }
        match &self.denied_signing {
            Some(denial)
                if current.pointer("/status/certificate")
                    != next.pointer("/status/certificate") =>
            {
                Err(denial.clone())
            }
            _ => Ok(()),
        }
    }
}

/// Whether `user` may `verb` (approve, sign) for `signer`, by name or its `<domain>/*`.
async fn may_for_signer(
    state: &AppState,
    user: &UserInfo,
    verb: &'static str,
    signer: &str,
) -> Result<bool, ApiError> {
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    for resource_name in names {
        let target = RequestTarget::Resource(ResourceRequest {
            group: GROUP.into(),
            version: "v1".into(),
            namespace: None,
            resource: "signers".into(),
            name: Some(resource_name),
            subresource: None,
            verb,
        });
        if crate::rbac::authorize(&state.storage, user, &target).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The extra authorization of CSR writes: `/approval` needs `approve` on the request's signer,
/// and a `/status` write that changes the certificate needs `sign` on it.
pub async fn admit(
    state: &AppState,
    def: &ResourceDef,
    r: &ResourceRequest,
    user: &UserInfo,
) -> Result<Admission, ApiError> {
    if !is_csr(def) {
        return Ok(Admission::default());
    }
    let checked = Admission {
        csr: true,
        denied_signing: None,
    };
    let verb = match r.subresource.as_deref() {
        Some("approval") => "approve",
        Some("status") => "sign",
        _ => return Ok(checked),
    };
    if !matches!(r.verb, "update" | "patch") {
        return Ok(checked);
    }
    let name = r.name.as_deref().unwrap_or_default();
    let csr = state.storage.get(def, None, name, None).await?;
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if may_for_signer(state, user, verb, &signer).await? {
        return Ok(checked);
    }
    let denial = ApiError::forbidden(
        &def.group_resource(),
        name,
        format!("user not permitted to {verb} requests with signerName {signer:?}"),
    );
    match verb {
        "approve" => Err(denial),
        _ => Ok(Admission {
            csr: true,
            denied_signing: Some(denial),
        }),
    }
}

/// Update rules: which parts each of the main resource, `/status` and `/approval` may change;
/// condition timestamps are filled in.
pub fn prepare_update(current: &Value, mut next: Value, subresource: Option<&str>) -> Value {
    next["spec"] = current.get("spec").cloned().unwrap_or_else(|| json!({}));
    match subresource {
        Some("status") => {
            // /status may not change the approval conditions.
            let mut kept: Vec<Value> = conditions(&next)
                .into_iter()
                .filter(|c| !is_approval(condition_type(c)))
                .collect();
            kept.extend(
                conditions(current)
                    .into_iter()
                    .filter(|c| is_approval(condition_type(c))),
            );
            set_conditions(&mut next, kept);
        }
        Some("approval") => {
            // /approval changes the conditions and nothing else.
            let wanted = conditions(&next);
            next["status"] = current.get("status").cloned().unwrap_or_else(|| json!({}));
            set_conditions(&mut next, wanted);
        }
        _ => {}
    }
    stamp_conditions(current, &mut next);
    next
}

fn set_conditions(obj: &mut Value, conditions: Vec<Value>) {
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    if conditions.is_empty() {
        if let Some(status) = obj["status"].as_object_mut() {
            status.remove("conditions");
        }
    } else {
        obj["status"]["conditions"] = json!(conditions);
    }
}

fn stamp_conditions(current: &Value, next: &mut Value) {
    let before = conditions(current);
    let Some(list) = next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let now = now_rfc3339();
    for c in list.iter_mut().filter(|c| c.is_object()) {
        let old = before
            .iter()
            .find(|o| condition_type(o) == condition_type(c));
        if c.get("lastUpdateTime").is_none_or(Value::is_null) {
            c["lastUpdateTime"] = json!(now);
        }
        if c.get("lastTransitionTime").is_none_or(Value::is_null) {
            let transition = match old {
                Some(o) if o.get("status") == c.get("status") => {
                    o.get("lastTransitionTime").cloned().unwrap_or(json!(now))
                }
                _ => json!(now),
            };
            c["lastTransitionTime"] = transition;
        }
    }
}

/// Parses a PEM CSR and reads the identity it asks for ([`crate::subject::read`]: at most
/// one CN, no CN or O in a multi-valued RDN, CN and O strings of any ASN.1 string type).
/// Refused besides: anything but one `CERTIFICATE REQUEST` block. Nothing else of the subject
/// is read (nor copied into a certificate).
fn csr_subject(pem: &[u8]) -> Result<Subject, String> {
    use x509_parser::prelude::FromDer;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| "must contain a PEM block".to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| format!("the certificate request does not parse: {e}"))?;
    crate::subject::read(&request.certification_request_info.subject).map_err(|e| e.to_string())
}

fn valid_signer_name(name: &str) -> bool {
    let Some((domain, path)) = name.split_once('/') else {
        return false;
    };
    !path.is_empty()
        && domain.contains('.')
        && crate::validation::validate_name(crate::registry::NameRule::Subdomain, domain, false)
            .is_empty()
}

/// Validation of a CSR (on create, `old` is `None`).
pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    match decoded(obj, "/spec/request") {
        None => causes.push(Cause::required("spec.request", "")),
        Some(pem) => {
            if let Err(why) = csr_subject(&pem) {
                causes.push(Cause::invalid(
                    "spec.request",
                    &json!("<certificate request>"),
                    why,
                ));
            }
        }
    }
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer.is_empty() {
        causes.push(Cause::required("spec.signerName", ""));
    } else if !valid_signer_name(signer) {
        causes.push(Cause::invalid(
            "spec.signerName",
            &json!(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    let usages: Vec<&str> = obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if usages.is_empty() {
        causes.push(Cause::required("spec.usages", ""));
    }
    for (i, usage) in usages.iter().enumerate() {
        if !KNOWN_USAGES.contains(usage) {
            causes.push(Cause::not_supported(
                format!("spec.usages[{i}]"),
                &json!(usage),
                &KNOWN_USAGES
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            ));
        }
    }
    if let Some(seconds) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        && seconds < MIN_EXPIRATION_SECONDS
    {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            &json!(seconds),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    let list = conditions(obj);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let t = condition_type(c);
        if t.is_empty() {
            causes.push(Cause::required(format!("status.conditions[{i}].type"), ""));
            continue;
        }
        if seen.contains(&t) {
            causes.push(Cause::duplicate(
                format!("status.conditions[{i}].type"),
                &json!(t),
            ));
        }
        seen.push(t);
        let status = c.get("status").and_then(Value::as_str).unwrap_or_default();
        if matches!(t, "Approved" | "Denied" | "Failed") {
            if status != "True" {
                causes.push(Cause::not_supported(
                    format!("status.conditions[{i}].status"),
                    &json!(status),
                    &["True".to_string()],
                ));
            }
        } else if !matches!(status, "True" | "False" | "Unknown") {
            causes.push(Cause::not_supported(
                format!("status.conditions[{i}].status"),
                &json!(status),
                &["False".into(), "True".into(), "Unknown".into()],
            ));
        }
    }
    if seen.contains(&"Approved") && seen.contains(&"Denied") {
        causes.push(Cause::invalid(
            "status.conditions",
            &json!(list),
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    let certificate = decoded(obj, "/status/certificate").unwrap_or_default();
    if !certificate.is_empty()
        && x509_parser::pem::parse_x509_pem(&certificate)
            .map(|(_, b)| b.label != "CERTIFICATE")
            .unwrap_or(true)
    {
        causes.push(Cause::invalid(
            "status.certificate",
            &json!("<certificate data>"),
            "must contain at least one CERTIFICATE PEM block",
        ));
    }
    if let Some(old) = old {
        for c in conditions(old) {
            let t = condition_type(&c);
            if is_approval(t) && !seen.contains(&t) {
                causes.push(Cause::forbidden(
                    "status.conditions",
                    format!("updates may not remove a condition of type {t:?}"),
                ));
            }
        }
        let before = decoded(old, "/status/certificate").unwrap_or_default();
        if !before.is_empty() && before != certificate {
            causes.push(Cause::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }
    causes
}

/// The CA that signs client certificates: the server's own, which its TLS verifier trusts.
pub struct ClientSigner {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClientSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSigner").finish_non_exhaustive()
    }
}

impl ClientSigner {
    /// Reads the CA (`ca.crt`, `ca.key`) from the pki directory.
    pub fn load(dir: &Path) -> Result<ClientSigner, PkiError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
        };
        let key = KeyPair::from_pem(&read("ca.key")?)?;
        Ok(ClientSigner {
            issuer: Issuer::from_ca_cert_pem(&read("ca.crt")?, key)?,
        })
    }

    /// Issues a client certificate for a PEM CSR, valid for `duration` from now. The
    /// certificate holds the request's public key and, of everything else the request says,
    /// only its validated common name and organizations ([`csr_subject`]): no SANs, no other
    /// subject attributes, no requested extensions.
    pub fn sign(
        &self,
        csr_pem: &str,
        usages: &[&str],
        duration: Duration,
    ) -> Result<String, String> {
        let subject = csr_subject(csr_pem.as_bytes())?;
        if subject.organizations.iter().any(|o| o == SYSTEM_MASTERS) {
            return Err(format!(
                "use of {KUBE_APISERVER_CLIENT_SIGNER} signer with {SYSTEM_MASTERS} group is not allowed"
            ));
        }
        // Parsed again by rcgen only for the verified public key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the certificate request does not parse or verify: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !subject.common_name.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, subject.common_name.as_str());
        }
        // rcgen keeps one value per attribute type: a second organization is written as the
        // same OID (2.5.4.10) spelled as a custom type; more cannot be expressed.
        match subject.organizations.as_slice() {
            [] => {}
            [first] => params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, first.as_str()),
            [first, second] => {
                params
                    .distinguished_name
                    .push(rcgen::DnType::OrganizationName, first.as_str());
                params.distinguished_name.push(
                    rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
                    second.as_str(),
                );
            }
            _ => return Err("a client certificate carries at most two organizations".into()),
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + duration;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = usages
            .iter()
            .filter_map(|u| match *u {
                "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
                _ => None,
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut serial = *uuid::Uuid::new_v4().as_bytes();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params
            .signed_by(&csr.public_key, &self.issuer)
            .map(|cert| cert.pem())
            .map_err(|e| format!("signing: {e}"))
    }
}

/// The usages kube-controller-manager's signer grants for `kube-apiserver-client`: client auth
/// is required, digital signature and key encipherment are optional, nothing else.
fn check_client_usages(usages: &[&str]) -> Result<(), String> {
    for usage in usages {
        if !matches!(
            *usage,
            "digital signature" | "key encipherment" | "client auth"
        ) {
            return Err(format!("invalid usage for client certificate: {usage}"));
        }
    }
    if !usages.contains(&"client auth") {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

/// What the signer does with one request.
enum Decision {
    Skip,
    Issue(String),
    Fail(String),
}

fn decide(signer: &ClientSigner, csr: &Value) -> Decision {
    let signer_name = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let issued = csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    if signer_name != KUBE_APISERVER_CLIENT_SIGNER
        || issued
        || !has_true(csr, "Approved")
        || has_true(csr, "Denied")
        || has_true(csr, "Failed")
    {
        return Decision::Skip;
    }
    let usages: Vec<&str> = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Err(why) = check_client_usages(&usages) {
        return Decision::Fail(why);
    }
    let Some(pem) = decoded(csr, "/spec/request").and_then(|p| String::from_utf8(p).ok()) else {
        return Decision::Fail("the certificate request is not PEM".into());
    };
    let duration = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(|s| Duration::from_secs(u64::try_from(s.max(MIN_EXPIRATION_SECONDS)).unwrap_or(0)))
        .map_or(MAX_DURATION, |d| d.min(MAX_DURATION));
    match signer.sign(&pem, &usages, duration) {
        Ok(cert) => Decision::Issue(cert),
        Err(why) => Decision::Fail(why),
    }
}

async fn reconcile(
    storage: &Storage,
    def: &ResourceDef,
    signer: &ClientSigner,
    csr: &Value,
) -> Result<(), ApiError> {
    let decision = decide(signer, csr);
    if matches!(decision, Decision::Skip) {
        return Ok(());
    }
    let name = name_of(csr).to_string();
    let uid = csr.pointer("/metadata/uid").cloned();
    let result = storage
        .update_with(def, None, &name, Some("status"), false, |current| {
            // Only the request that was judged, still undecided by the signer.
            if current.pointer("/metadata/uid").cloned() != uid || !still_waiting(current) {
                return Ok(current.clone());
            }
            let mut next = current.clone();
            if !next.get("status").is_some_and(Value::is_object) {
                next["status"] = json!({});
            }
            match &decision {
                Decision::Issue(cert) => {
                    next["status"]["certificate"] = json!(b64().encode(cert.as_bytes()));
                }
                Decision::Fail(why) => {
                    let mut list = conditions(current);
                    list.push(json!({
                        "type": "Failed",
                        "status": "True",
                        "reason": "SignerValidationFailure",
                        "message": why,
                    }));
                    next["status"]["conditions"] = json!(list);
                }
                Decision::Skip => {}
            }
            Ok(next)
        })
        .await;
    match result {
        Ok(_) => {
            match &decision {
                Decision::Issue(_) => tracing::info!(csr = %name, "certificate issued"),
                Decision::Fail(why) => tracing::info!(csr = %name, reason = %why, "request failed"),
                Decision::Skip => {}
            }
            Ok(())
        }
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a request (re-read inside the write) still waits for the signer.
fn still_waiting(csr: &Value) -> bool {
    let issued = csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    !issued && has_true(csr, "Approved") && !has_true(csr, "Denied") && !has_true(csr, "Failed")
}

/// The signer: follows every CSR and issues approved `kube-apiserver-client` requests.
pub async fn run_signer(
    storage: Storage,
    registry: Registry,
    signer: Arc<ClientSigner>,
    shutdown: CancellationToken,
) {
    let Some(def) = registry.get(GROUP, "v1", "certificatesigningrequests") else {
        return;
    };
    crate::controllers::repeat_until_cancelled(
        &shutdown,
        Duration::from_millis(500),
        "CSR signer",
        || signer_pass(&storage, &def, &signer, &shutdown),
    )
    .await;
}

async fn signer_pass(
    storage: &Storage,
    def: &Arc<ResourceDef>,
    signer: &ClientSigner,
    shutdown: &CancellationToken,
) -> Result<(), ApiError> {
    let (rv, items) = crate::controllers::list_items(storage, def).await?;
    for csr in &items {
        reconcile(storage, def, signer, csr).await?;
    }
    crate::controllers::follow(storage, def, rv, shutdown, move |deleted, csr| async move {
        if deleted {
            Ok(())
        } else {
            reconcile(storage, def, signer, &csr).await
        }
    })
    .await
}

/// `kubectl get csr` columns: AGE, SIGNERNAME, REQUESTOR, REQUESTEDDURATION, CONDITION.
pub fn table_cells(obj: &Value) -> (String, String, String, String) {
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let requestor = obj
        .pointer("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let duration = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(crate::table::human_duration)
        .unwrap_or_else(|| "<none>".into());
    let mut condition: Vec<String> = conditions(obj)
        .iter()
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
        .map(|c| condition_type(c).to_string())
        .collect();
    if condition.is_empty() {
        condition.push("Pending".into());
    }
    if obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        condition.push("Issued".into());
    }
    (signer, requestor, duration, condition.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_pem(cn: &str, org: &str) -> Result<(String, KeyPair), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        Ok((params.serialize_request(&key)?.pem()?, key))
    }

    #[test]
    fn the_signer_copies_every_organization_of_the_subject()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        crate::pki::Pki::load_or_create(dir.path(), &[])?;
        let signer = ClientSigner::load(dir.path())?;
        let key = KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "agent");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "group-one");
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]), "group-two");
        let pem = params.serialize_request(&key)?.pem()?;
        let cert = signer.sign(&pem, &["client auth"], Duration::from_secs(600))?;
        let (_, block) = x509_parser::pem::parse_x509_pem(cert.as_bytes())?;
        let parsed = block.parse_x509()?;
        let groups: Vec<&str> = parsed
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .collect();
        assert_eq!(groups, ["group-one", "group-two"]);
        Ok(())
    }

    #[test]
    fn the_signer_honours_usages_and_expiration() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let pki = crate::pki::Pki::load_or_create(dir.path(), &[])?;
        let signer = ClientSigner::load(dir.path())?;
        let (pem, _key) = csr_pem("alice", "dev")?;
        let csr = json!({
            "metadata": {"name": "a"},
            "spec": {
                "request": b64().encode(pem.as_bytes()),
                "signerName": KUBE_APISERVER_CLIENT_SIGNER,
                "usages": ["digital signature", "client auth"],
                "expirationSeconds": 3600,
            },
            "status": {"conditions": [{"type": "Approved", "status": "True"}]},
        });
        let Decision::Issue(cert) = decide(&signer, &csr) else {
            return Err("an approved request is issued".into());
        };
        let der = rustls::pki_types::CertificateDer::from(
            x509_parser::pem::parse_x509_pem(cert.as_bytes())?
                .1
                .contents,
        );
        let user = crate::auth::identity_from_cert(&der)?.ok_or("identity")?;
        assert_eq!(
            (user.name.as_str(), user.groups),
            ("alice", vec!["dev".to_string()])
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)?;
        let lifetime =
            parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + BACKDATE.as_secs() as i64);
        assert!(pki.ca_pem().contains("CERTIFICATE"));

        let mut server_auth = csr.clone();
        server_auth["spec"]["usages"] = json!(["server auth"]);
        assert!(
            matches!(decide(&signer, &server_auth), Decision::Fail(m) if m.contains("server auth"))
        );
        let mut denied = csr.clone();
        denied["status"]["conditions"] = json!([{"type": "Denied", "status": "True"}]);
        assert!(matches!(decide(&signer, &denied), Decision::Skip));
        Ok(())
    }

    #[test]
    fn the_requester_is_recorded_whatever_the_body_says() -> Result<(), Box<dyn std::error::Error>>
    {
        let registry = Registry::new();
        let def = registry
            .get(GROUP, "v1", "certificatesigningrequests")
            .ok_or("the CSR kind")?;
        let body = json!({
            "metadata": {"name": "a"},
            "spec": {"username": "admin", "uid": "0", "groups": ["system:masters"],
                "extra": {"scopes": ["cluster-admin"]}},
        });
        let mut user = UserInfo::new("bob", &["dev"]);
        user.uid = "42".into();
        user.extra.insert("scopes".into(), vec!["read".into()]);
        let created = on_create(&def, body.clone(), &user)?;
        assert_eq!(
            created["spec"],
            json!({"username": "bob", "uid": "42", "groups": ["dev", "system:authenticated"],
                "extra": {"scopes": ["read"]}})
        );
        // No uid or extra: the body's are dropped, none are written.
        let created = on_create(&def, body, &UserInfo::new("carol", &[]))?;
        assert_eq!(
            created["spec"],
            json!({"username": "carol", "groups": ["system:authenticated"]})
        );
        Ok(())
    }

    #[test]
    fn approval_conditions_are_exclusive_and_kept() {
        let csr = json!({
            "spec": {"request": "", "signerName": "example.com/x", "usages": ["client auth"]},
            "status": {"conditions": [
                {"type": "Approved", "status": "True"},
                {"type": "Denied", "status": "True"},
            ]},
        });
        let causes = validate(&csr, None);
        assert!(
            causes
                .iter()
                .any(|c| c.message.contains("mutually exclusive"))
        );
        let approved =
            json!({"spec": {}, "status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        let cleared = prepare_update(&approved, json!({"spec": {}, "status": {}}), Some("status"));
        assert_eq!(conditions(&cleared).len(), 1, "/status keeps the approval");
    }
}
