//! The token controller of kube-controller-manager, for the Secrets that ask for a
//! ServiceAccount token: each Secret of type `kubernetes.io/service-account-token` whose
//! `kubernetes.io/service-account.name` annotation names an existing ServiceAccount gets a
//! token, the namespace and (when the server has one) the CA, and the account's uid in the
//! `kubernetes.io/service-account.uid` annotation. `atoll join` asks a member for its
//! identity this way, so `atoll hub` can be a member as well as a hub.
//!
//! Upstream's legacy tokens never expire; these are bound to their Secret and to the
//! account's uid, so they stop working when either is deleted (checked on every request), and
//! carry an expiry a century away only because every token here has one.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::registry::{Registry, ResourceDef};
use crate::storage::{Storage, name_of};
use crate::tokens::{Bound, ServiceAccountKey};

const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const ACCOUNT_NAME: &str = "kubernetes.io/service-account.name";
const ACCOUNT_UID: &str = "kubernetes.io/service-account.uid";
const LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Fills token Secrets until `shutdown`.
pub async fn run(
    storage: Storage,
    registry: Registry,
    key: Arc<ServiceAccountKey>,
    ca_pem: Option<String>,
    shutdown: CancellationToken,
) {
    let (Some(secrets), Some(accounts)) = (
        registry.get("", "v1", "secrets"),
        registry.get("", "v1", "serviceaccounts"),
    ) else {
        return;
    };
    let filler = Filler {
        storage: &storage,
        secrets: &secrets,
        accounts: &accounts,
        key: &key,
        ca_pem: ca_pem.as_deref(),
    };
    crate::controllers::repeat_until_cancelled(
        &shutdown,
        Duration::from_millis(500),
        "token controller",
        || filler.pass(&shutdown),
    )
    .await;
}

#[derive(Clone, Copy)]
struct Filler<'a> {
    storage: &'a Storage,
    secrets: &'a Arc<ResourceDef>,
    accounts: &'a Arc<ResourceDef>,
    key: &'a ServiceAccountKey,
    ca_pem: Option<&'a str>,
}

fn string_at<'v>(object: &'v Value, pointer: &str) -> Option<&'v str> {
    object.pointer(pointer).and_then(Value::as_str)
}

impl Filler<'_> {
    async fn pass(self, shutdown: &CancellationToken) -> Result<(), ApiError> {
        let (rv, items) = crate::controllers::list_items(self.storage, self.secrets).await?;
        for secret in &items {
            self.fill(secret).await?;
        }
        crate::controllers::follow(
            self.storage,
            self.secrets,
            rv,
            shutdown,
            move |deleted, secret| async move {
                if deleted {
                    Ok(())
                } else {
                    self.fill(&secret).await
                }
            },
        )
        .await
    }

    async fn fill(self, secret: &Value) -> Result<(), ApiError> {
        let wants_token = secret.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE)
            && string_at(secret, "/data/token").is_none_or(str::is_empty);
        let account_name = string_at(
            secret,
            &format!("/metadata/annotations/{}", ACCOUNT_NAME.replace('/', "~1")),
        );
        let (true, Some(account_name), Some(namespace), Some(secret_uid)) = (
            wants_token,
            account_name,
            string_at(secret, "/metadata/namespace"),
            string_at(secret, "/metadata/uid"),
        ) else {
            return Ok(());
        };
        let account = match self
            .storage
            .get(self.accounts, Some(namespace), account_name, None)
            .await
        {
            Ok(account) => account,
            // Upstream leaves such a Secret empty until the account exists.
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let account_uid = string_at(&account, "/metadata/uid").unwrap_or_default();
        let token = self.key.issue(
            &Bound {
                kind: "ServiceAccount".into(),
                namespace: namespace.into(),
                name: account_name.into(),
                uid: account_uid.into(),
            },
            Some(&Bound {
                kind: "Secret".into(),
                namespace: namespace.into(),
                name: name_of(secret).into(),
                uid: secret_uid.into(),
            }),
            &[self.key.issuer().to_string()],
            LIFETIME,
            jiff::Timestamp::now(),
        )?;
        let b64 = |text: &str| json!(base64::engine::general_purpose::STANDARD.encode(text));
        let result = self
            .storage
            .update_with(
                self.secrets,
                Some(namespace),
                name_of(secret),
                None,
                false,
                |current| {
                    // The Secret that was read, still without a token.
                    if string_at(current, "/metadata/uid") != Some(secret_uid)
                        || string_at(current, "/data/token").is_some_and(|t| !t.is_empty())
                    {
                        return Ok(current.clone());
                    }
                    let mut next = current.clone();
                    if !next.get("data").is_some_and(Value::is_object) {
                        next["data"] = json!({});
                    }
                    next["data"]["token"] = b64(&token);
                    next["data"]["namespace"] = b64(namespace);
                    if let Some(ca) = self.ca_pem {
                        next["data"]["ca.crt"] = b64(ca);
                    }
                    next["metadata"]["annotations"][ACCOUNT_UID] = json!(account_uid);
                    Ok(next)
                },
            )
            .await;
        match result {
            Ok(_) => {
                tracing::info!(
                    namespace,
                    secret = name_of(secret),
                    "service-account token issued"
                );
                Ok(())
            }
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
