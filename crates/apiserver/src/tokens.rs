//! ServiceAccount tokens, as kube-apiserver issues and checks them: the `serviceaccounts/token`
//! subresource (TokenRequest, authentication.k8s.io/v1, create only) returns a JWT signed with
//! the server's service-account key, and a bearer JWT authenticates as
//! `system:serviceaccount:<namespace>:<name>` while its signature, expiry and audience hold and
//! the ServiceAccount (and the object it is bound to, if any) still exists with the same uid.
//! Deleting the account therefore revokes its tokens at once.
//!
//! The key is an ECDSA P-256 key made on first start beside the CA (`<data-dir>/pki/sa.key`)
//! and reused after; tokens are ES256 JWTs. Tokens never appear in logs or errors: a token that
//! does not verify is answered 401 `Unauthorized` with no further detail, as upstream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::error::{ApiError, Cause};
use crate::http_util::json_response;
use crate::pki::PkiError;
use crate::registry::{GroupResource, ResourceDef};
use crate::request::ResourceRequest;
use crate::server::AppState;
use crate::storage::Storage;

/// The issuer of the tokens, and the audience a token gets when it asks for none (the API
/// audience), as kube-apiserver's usual `--service-account-issuer`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc";
/// The shortest token lifetime a TokenRequest may ask for.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The lifetime of a token whose TokenRequest names none.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The longest lifetime upstream's validation accepts (2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// The shortest `--service-account-max-token-expiration` upstream accepts (one hour).
pub const MIN_MAX_EXPIRATION_SECONDS: i64 = 3600;
/// `atoll hub`'s default cap on TokenRequest lifetimes: one year, as long as the CSR signer's
/// longest certificate and `atoll token create`'s longest `--ttl` (upstream has no default).
pub const DEFAULT_MAX_EXPIRATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A `--service-account-max-token-expiration` outside upstream's bounds.
#[derive(Debug, thiserror::Error)]
#[error("the service-account-max-token-expiration must be between 1 hour and 2^32 seconds")]
pub struct MaxExpirationError;

/// Checks a cap on TokenRequest lifetimes as kube-apiserver checks
/// `--service-account-max-token-expiration`: zero means none, otherwise from one hour to 2^32
/// seconds.
pub fn check_max_expiration(max: Duration) -> Result<Option<Duration>, MaxExpirationError> {
    if max.is_zero() {
        return Ok(None);
    }
    let secs = i64::try_from(max.as_secs()).map_err(|_| MaxExpirationError)?;
    if !(MIN_MAX_EXPIRATION_SECONDS..=MAX_EXPIRATION_SECONDS).contains(&secs)
        || max.subsec_nanos() != 0 && secs == MAX_EXPIRATION_SECONDS
    {
        return Err(MaxExpirationError);
    }
    Ok(Some(max))
}
/// The file holding the signing key, in the pki directory.
pub const KEY_FILE: &str = "sa.key";

/// The service-account signing key. Its `Debug` shows nothing secret.
pub struct ServiceAccountKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    issuer: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, message: impl std::fmt::Display) -> PkiError {
    PkiError::Pem {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl ServiceAccountKey {
    /// Loads `dir/sa.key`, creating it (owner-only) on first start.
    pub fn load_or_create(dir: &Path) -> Result<ServiceAccountKey, PkiError> {
        let path = dir.join(KEY_FILE);
        let io = |source| PkiError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pem = rcgen::KeyPair::generate()?.serialize_pem();
                crate::pki::write_private(&path, &pem)?;
                pem
            }
            Err(e) => return Err(io(e)),
        };
        ServiceAccountKey::from_pem(&pem, &path)
    }

    /// A key that lives only as long as the process (servers without a data directory).
    pub fn ephemeral() -> Result<ServiceAccountKey, PkiError> {
        let pem = rcgen::KeyPair::generate()?.serialize_pem();
        ServiceAccountKey::from_pem(&pem, Path::new("<memory>"))
    }

    fn from_pem(pem: &str, path: &Path) -> Result<ServiceAccountKey, PkiError> {
        let pair = rcgen::KeyPair::from_pem(pem)?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| key_error(path, e))?;
        let public = pair.public_key_pem();
        let decoding =
            DecodingKey::from_ec_pem(public.as_bytes()).map_err(|e| key_error(path, e))?;
        // Upstream's key id is a hash of the public key; any stable name of the key will do.
        let key_id: String = pair
            .public_key_raw()
            .iter()
            .skip(1)
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(ServiceAccountKey {
            encoding,
            decoding,
            key_id,
            issuer: DEFAULT_ISSUER.to_string(),
        })
    }

    /// The issuer, which is also the default audience.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs a token for a ServiceAccount, valid from `now` for `expiration`.
    pub fn issue(
        &self,
        account: &Bound,
        bound: Option<&Bound>,
        audiences: &[String],
        expiration: Duration,
        now: jiff::Timestamp,
    ) -> Result<String, ApiError> {
        let iat = now.as_second();
        let exp = iat.saturating_add(i64::try_from(expiration.as_secs()).unwrap_or(i64::MAX));
        let mut kubernetes = json!({
            "namespace": account.namespace,
            "serviceaccount": {"name": account.name, "uid": account.uid},
        });
        if let Some(bound) = bound {
            kubernetes[bound.kind.to_lowercase()] = json!({"name": bound.name, "uid": bound.uid});
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                account.namespace, account.name
            ),
            aud: audiences.to_vec(),
            exp,
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))
    }

    /// The claims of a token whose signature, issuer, audience and lifetime hold; `None`
    /// otherwise.
    fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// An object a token names: its ServiceAccount, or the object it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The kind (`ServiceAccount`, `Secret`).
    pub kind: String,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The uid the object had when the token was issued.
    pub uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    #[serde(default)]
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Value,
}

fn bound_from(claims: &Claims, kind: &str, key: &str) -> Option<Bound> {
    let entry = claims.kubernetes.get(key)?;
    Some(Bound {
        kind: kind.to_string(),
        namespace: claims.kubernetes.get("namespace")?.as_str()?.to_string(),
        name: entry.get("name")?.as_str()?.to_string(),
        uid: entry.get("uid")?.as_str()?.to_string(),
    })
}

/// Whether the object a token names still exists with the uid it had.
async fn still_exists(state: &AppState, bound: &Bound, resource: &str) -> bool {
    let Some(def) = state.registry.get("", "v1", resource) else {
        return false;
    };
    match state
        .storage
        .get(&def, Some(&bound.namespace), &bound.name, None)
        .await
    {
        Ok(obj) => obj.pointer("/metadata/uid").and_then(Value::as_str) == Some(&bound.uid),
        Err(_) => false,
    }
}

/// Authenticates a bearer ServiceAccount token (`Authorization: Bearer <jwt>`); `None` when it
/// is not one this server issued or it no longer holds.
pub async fn authenticate(state: &AppState, authorization: Option<&str>) -> Option<UserInfo> {
    let token = crate::auth::bearer_token(authorization?)?;
    if token.split('.').count() != 3 {
        return None;
    }
    let claims = state.service_account_key.verify(token)?;
    let account = bound_from(&claims, "ServiceAccount", "serviceaccount")?;
    let subject = format!(
        "system:serviceaccount:{}:{}",
        account.namespace, account.name
    );
    if claims.sub != subject || !still_exists(state, &account, "serviceaccounts").await {
        return None;
    }
    if let Some(secret) = bound_from(&claims, "Secret", "secret")
        && !still_exists(state, &secret, "secrets").await
    {
        return None;
    }
    // The account's uid is the user's uid, as upstream's service account authenticator.
    Some(UserInfo {
        name: subject,
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", account.namespace),
        ],
        uid: account.uid,
        extra: Default::default(),
    })
}

/// Whether a request is a TokenRequest (`POST .../serviceaccounts/<name>/token`).
pub fn is_token_request(def: &ResourceDef, r: &ResourceRequest) -> bool {
    def.group.is_empty()
        && def.resource == "serviceaccounts"
        && r.subresource.as_deref() == Some("token")
}

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid("TokenRequest", "authentication.k8s.io", name, causes)
}

/// Answers a TokenRequest: 201 with the token in `status.token`.
pub async fn create_token(
    state: &AppState,
    r: &ResourceRequest,
    req: Request,
) -> Result<Response, ApiError> {
    if r.verb != "create" {
        return Err(ApiError::method_not_allowed());
    }
    let (Some(namespace), Some(name)) = (r.namespace.as_deref(), r.name.as_deref()) else {
        return Err(ApiError::path_not_found());
    };
    let body = axum::body::to_bytes(req.into_body(), crate::server::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(crate::server::MAX_BODY_BYTES))?;
    let request: Value = if body.is_empty() {
        json!({})
    } else if crate::protobuf::is_protobuf(&body) {
        // kubectl and client-go's typed clients send protobuf.
        crate::protobuf::decode(&body)?
    } else {
        serde_json::from_slice(&body)
            .or_else(|_| crate::server::from_yaml(&body))
            .map_err(|e| {
                ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
            })?
    };
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let mut causes = Vec::new();
    if expiration < MIN_EXPIRATION_SECONDS {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    } else if expiration > MAX_EXPIRATION_SECONDS {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![state.service_account_key.issuer().to_string()],
    };
    let bound_ref = spec.get("boundObjectRef").filter(|b| !b.is_null());
    if let Some(bound) = bound_ref {
        let kind = bound
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(kind, "Pod" | "Secret" | "Node") {
            causes.push(Cause::not_supported(
                "spec.boundObjectRef.kind",
                &json!(kind),
                &["Pod".into(), "Secret".into(), "Node".into()],
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid(name, causes));
    }
    // A lifetime over the server's cap is shortened to it with a warning, as upstream's
    // `--service-account-max-token-expiration` does (the request stays valid).
    let mut warnings = Vec::new();
    let max = state
        .max_token_expiration
        .and_then(|m| i64::try_from(m.as_secs()).ok())
        .filter(|m| *m > 0);
    let expiration = match max {
        Some(max) if expiration > max => {
            warnings.push(format!(
                "requested expiration of {expiration} seconds shortened to {max} seconds"
            ));
            max
        }
        _ => expiration,
    };

    let account = service_account(&state.storage, state, namespace, name).await?;
    let bound = match bound_ref {
        None => None,
        Some(bound) => Some(bound_object(state, namespace, bound).await?),
    };
    let now = jiff::Timestamp::now();
    let token = state.service_account_key.issue(
        &account,
        bound.as_ref(),
        &audiences,
        Duration::from_secs(u64::try_from(expiration).unwrap_or(0)),
        now,
    )?;
    let expires = now
        .checked_add(jiff::SignedDuration::from_secs(expiration))
        .map_err(|e| ApiError::internal(e.to_string()))?
        .round(jiff::Unit::Second)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let bound_json = match (&bound, bound_ref) {
        (Some(b), Some(r)) => json!({
            "kind": b.kind,
            "apiVersion": r.get("apiVersion").cloned().unwrap_or(json!("v1")),
            "name": b.name,
            "uid": b.uid,
        }),
        _ => Value::Null,
    };
    let answer = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": now.round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
        },
        "spec": {
            "audiences": audiences,
            "expirationSeconds": expiration,
            "boundObjectRef": bound_json,
        },
        "status": {
            "token": token,
            "expirationTimestamp": expires.to_string(),
        },
    });
    let mut response = json_response(StatusCode::CREATED, &answer);
    for warning in warnings {
        if let Ok(value) = http::HeaderValue::from_str(&format!("299 - {warning:?}")) {
            response.headers_mut().append(http::header::WARNING, value);
        }
    }
    Ok(response)
}

async fn service_account(
    storage: &Storage,
    state: &AppState,
    namespace: &str,
    name: &str,
) -> Result<Bound, ApiError> {
    let def = state
        .registry
        .get("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not served"))?;
    let obj = storage.get(&def, Some(namespace), name, None).await?;
    Ok(Bound {
        kind: "ServiceAccount".into(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// The object a token is bound to. Only Secrets are served here; a Pod or Node reference is
/// answered as kube-apiserver answers one to an object that does not exist.
async fn bound_object(state: &AppState, namespace: &str, r: &Value) -> Result<Bound, ApiError> {
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
    let (resource, def) = match kind {
        "Secret" => ("secrets", state.registry.get("", "v1", "secrets")),
        "Pod" => ("pods", None),
        _ => ("nodes", None),
    };
    let Some(def) = def else {
        return Err(ApiError::not_found(&GroupResource::new("", resource), name));
    };
    let obj = state.storage.get(&def, Some(namespace), name, None).await?;
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(wanted) = r
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        && wanted != uid
    {
        return Err(ApiError::conflict(
            &def.group_resource(),
            name,
            format!(
                "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    Ok(Bound {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid,
    })
}

/// The key a server uses: the given one, or a fresh in-memory one.
pub fn key_or_ephemeral(
    key: Option<Arc<ServiceAccountKey>>,
) -> Result<Arc<ServiceAccountKey>, PkiError> {
    match key {
        Some(key) => Ok(key),
        None => Ok(Arc::new(ServiceAccountKey::ephemeral()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Bound {
        Bound {
            kind: "ServiceAccount".into(),
            namespace: "ns".into(),
            name: "sa".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn tokens_verify_only_with_their_key_audience_and_lifetime()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = ServiceAccountKey::load_or_create(dir.path())?;
        let again = ServiceAccountKey::load_or_create(dir.path())?;
        let other = ServiceAccountKey::ephemeral()?;
        let now = jiff::Timestamp::now();
        let hour = Duration::from_secs(3600);
        let token = key.issue(&account(), None, &[DEFAULT_ISSUER.into()], hour, now)?;
        let claims = again.verify(&token).ok_or("the reloaded key verifies")?;
        assert_eq!(claims.sub, "system:serviceaccount:ns:sa");
        assert!(other.verify(&token).is_none(), "another key's token");
        let elsewhere = key.issue(&account(), None, &["vault".into()], hour, now)?;
        assert!(key.verify(&elsewhere).is_none(), "another audience");
        let old = now.checked_sub(jiff::SignedDuration::from_hours(2))?;
        let expired = key.issue(&account(), None, &[DEFAULT_ISSUER.into()], hour, old)?;
        assert!(key.verify(&expired).is_none(), "expired");
        assert!(!format!("{key:?}").contains("PRIVATE"));
        Ok(())
    }
}
