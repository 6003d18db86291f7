//! ServiceAccount tokens (TokenRequest) and CertificateSigningRequests: issue, authenticate,
//! revoke; create, approve, sign, and use the certificate; each check as kube-apiserver makes it.

mod common;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use atoll_apiserver::pki::{CertKey, Pki, kubeconfig_yaml};
use atoll_apiserver::tokens::{Bound, DEFAULT_ISSUER, ServiceAccountKey};
use common::TestHub;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn client_with(
    hub: &TestHub,
    edit: impl FnOnce(&mut kube::Config),
) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(hub.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key_data = None;
    edit(&mut config);
    Ok(kube::Client::try_from(config)?)
}

async fn token_client(hub: &TestHub, token: &str) -> anyhow::Result<kube::Client> {
    client_with(hub, |c| c.auth_info.token = Some(token.to_string().into())).await
}

async fn cert_client(hub: &TestHub, cert: &CertKey) -> anyhow::Result<kube::Client> {
    let url = format!("https://{}", hub.hub.addr);
    let ca = std::fs::read_to_string(hub.dir.path().join("pki/ca.crt"))?;
    let path = hub
        .dir
        .path()
        .join(format!("client-{}.kubeconfig", uuid_like()));
    std::fs::write(&path, kubeconfig_yaml(&ca, &url, "user", cert))?;
    common::client_from(&path).await
}

fn uuid_like() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

async fn whoami(client: &kube::Client) -> anyhow::Result<(String, Vec<String>)> {
    let review = whoami_raw(client).await?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .context("userInfo")?;
    Ok((
        user.username.unwrap_or_default(),
        user.groups.unwrap_or_default(),
    ))
}

fn code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> anyhow::Result<u16> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status.code),
        other => bail!("expected an API error, got {other:?}"),
    }
}

async fn request_token(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    seconds: i64,
) -> Result<String, kube::Error> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
}

async fn create_account(admin: &kube::Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some(name.into());
    let sa = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await?;
    sa.metadata.uid.context("uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_until_expired_forged_or_revoked() -> anyhow::Result<()>
{
    let hub = TestHub::start().await?;
    let admin = hub.client().await?;
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team".into());
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let uid = create_account(&admin, "team", "robot").await?;

    // Issued and used: the account's identity, its groups, and only what RBAC grants it.
    let token = request_token(&admin, "team", "robot", 3600).await?;
    let robot = token_client(&hub, &token).await?;
    let (name, groups) = whoami(&robot).await?;
    ensure!(name == "system:serviceaccount:team:robot");
    for group in [
        "system:serviceaccounts",
        "system:serviceaccounts:team",
        "system:authenticated",
    ] {
        ensure!(
            groups.iter().any(|g| g == group),
            "{groups:?} lacks {group}"
        );
    }
    let configmaps = Api::<ConfigMap>::namespaced(robot.clone(), "team");
    ensure!(code(configmaps.list(&ListParams::default()).await)? == 403);
    // kubectl asks for tokens the same way.
    let printed = hub.kubectl_ok(&[
        "create",
        "token",
        "robot",
        "-n",
        "team",
        "--duration",
        "15m",
    ])?;
    let from_kubectl = token_client(&hub, printed.trim()).await?;
    ensure!(whoami(&from_kubectl).await?.0 == "system:serviceaccount:team:robot");

    // The lifetime follows upstream's rules.
    let short = request_token(&admin, "team", "robot", 599).await;
    ensure!(code(short)? == 422, "less than 10 minutes is refused");
    ensure!(code(request_token(&admin, "team", "nobody", 3600).await)? == 404);

    // A token signed by another key, or expired, or for another audience is 401.
    let other = ServiceAccountKey::ephemeral()?;
    let key = ServiceAccountKey::load_or_create(&hub.dir.path().join("pki"))?;
    let account = Bound {
        kind: "ServiceAccount".into(),
        namespace: "team".into(),
        name: "robot".into(),
        uid: uid.clone(),
    };
    let hour = Duration::from_secs(3600);
    let now = k8s_openapi::jiff::Timestamp::now();
    let forged = other.issue(&account, None, &[DEFAULT_ISSUER.into()], hour, now)?;
    let expired = key.issue(
        &account,
        None,
        &[DEFAULT_ISSUER.into()],
        hour,
        now.checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(2))?,
    )?;
    let elsewhere = key.issue(&account, None, &["https://vault".into()], hour, now)?;
    for (what, bad) in [
        ("forged", forged),
        ("expired", expired),
        ("other audience", elsewhere),
    ] {
        let client = token_client(&hub, &bad).await?;
        let review = Api::<SelfSubjectReview>::all(client)
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await;
        ensure!(code(review)? == 401, "{what}");
    }

    // The signing key survives a restart: the token still works.
    let TestHub {
        hub: server,
        dir,
        store,
    } = hub;
    server.shutdown().await;
    let hub = TestHub::start_in(dir, store, None).await?;
    let admin = hub.client().await?;
    let robot = token_client(&hub, &token).await?;
    ensure!(whoami(&robot).await?.0 == "system:serviceaccount:team:robot");

    // Deleting the account revokes the token at once; a new account of the same name does
    // not bring it back.
    Api::<ServiceAccount>::namespaced(admin.clone(), "team")
        .delete("robot", &DeleteParams::default())
        .await?;
    ensure!(
        code(
            Api::<ConfigMap>::namespaced(robot.clone(), "team")
                .list(&ListParams::default())
                .await
        )? == 401
    );
    create_account(&admin, "team", "robot").await?;
    ensure!(
        code(
            Api::<ConfigMap>::namespaced(robot.clone(), "team")
                .list(&ListParams::default())
                .await
        )? == 401
    );

    // A token bound to a Secret lives only as long as that Secret.
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("binding".into());
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), "team");
    secrets.create(&PostParams::default(), &secret).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            bound_object_ref: Some(k8s_openapi::api::authentication::v1::BoundObjectReference {
                kind: Some("Secret".into()),
                api_version: Some("v1".into()),
                name: Some("binding".into()),
                uid: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bound = Api::<ServiceAccount>::namespaced(admin.clone(), "team")
        .create_token_request("robot", &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("bound token")?;
    let bound = token_client(&hub, &bound).await?;
    ensure!(whoami(&bound).await?.0 == "system:serviceaccount:team:robot");
    secrets.delete("binding", &DeleteParams::default()).await?;
    let review = Api::<SelfSubjectReview>::all(bound)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await;
    ensure!(code(review)? == 401, "the bound Secret is gone");
    Ok(())
}

fn csr_for(
    name: &str,
    cn: &str,
    org: &str,
    usages: &[&str],
) -> anyhow::Result<(CertificateSigningRequest, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    let pem = params.serialize_request(&key)?.pem()?;
    let mut csr = CertificateSigningRequest::default();
    csr.metadata.name = Some(name.into());
    csr.spec = CertificateSigningRequestSpec {
        request: ByteString(pem.into_bytes()),
        signer_name: "kubernetes.io/kube-apiserver-client".into(),
        usages: Some(usages.iter().map(|u| u.to_string()).collect()),
        expiration_seconds: Some(3600),
        // Forged: the server fills these in from the requester.
        username: Some("system:admin".into()),
        groups: Some(vec!["system:masters".into()]),
        ..Default::default()
    };
    Ok((csr, key))
}

fn approval(type_: &str) -> serde_json::Value {
    json!({"status": {"conditions": [CertificateSigningRequestCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some("Test".into()),
        message: Some("by the test".into()),
        ..Default::default()
    }]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrs_are_approved_with_the_right_rbac_signed_and_usable() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let admin = hub.client().await?;
    let pki = Pki::load_or_create(&hub.dir.path().join("pki"), &[])?;
    // alice may send and read CSRs and update approvals, but approve for no signer.
    let rbac = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "csr-requester"},
        "rules": [
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "patch"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval", "certificatesigningrequests/status"], "verbs": ["update", "patch"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "csr-requester"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-requester"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
    ];
    grant_to_alice(&admin, rbac).await?;
    let alice = cert_client(&hub, &pki.issue_client("alice", &["dev"])?).await?;
    let alice_csrs: Api<CertificateSigningRequest> = Api::all(alice.clone());
    let admin_csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());

    // The requester's identity is the server's to fill in.
    let (csr, key) = csr_for(
        "robot",
        "robot",
        "robots",
        &["digital signature", "client auth"],
    )?;
    let created = alice_csrs.create(&PostParams::default(), &csr).await?;
    ensure!(
        created.spec.username.as_deref() == Some("alice"),
        "{:?}",
        created.spec.username
    );
    let groups = created.spec.groups.clone().unwrap_or_default();
    ensure!(groups.contains(&"dev".to_string()) && !groups.contains(&"system:masters".to_string()));

    // alice may update approvals and status but may neither approve nor sign for this signer.
    let denied = alice_csrs
        .patch_approval(
            "robot",
            &PatchParams::default(),
            &Patch::Merge(&approval("Approved")),
        )
        .await;
    match denied {
        Err(kube::Error::Api(s)) if s.code == 403 => ensure!(
            s.message
                .contains("user not permitted to approve requests with signerName"),
            "{}",
            s.message
        ),
        other => bail!("expected 403, got {other:?}"),
    }
    // The main resource and /status do not approve either.
    admin_csrs
        .patch_status(
            "robot",
            &PatchParams::default(),
            &Patch::Merge(&approval("Approved")),
        )
        .await?;
    ensure!(
        admin_csrs
            .get("robot")
            .await?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .is_empty(),
        "/status may not approve"
    );

    // The admin approves; the hub signs; the certificate authenticates as the CSR's subject.
    admin_csrs
        .patch_approval(
            "robot",
            &PatchParams::default(),
            &Patch::Merge(&approval("Approved")),
        )
        .await?;
    let certificate = common::eventually(Duration::from_secs(30), || async {
        let csr = admin_csrs.get("robot").await?;
        Ok(csr
            .status
            .and_then(|s| s.certificate)
            .filter(|c| !c.0.is_empty()))
    })
    .await?;
    let certificate_pem = String::from_utf8(certificate.0)?;
    let robot = cert_client(
        &hub,
        &CertKey {
            cert_pem: certificate_pem.clone(),
            key_pem: key.serialize_pem(),
        },
    )
    .await?;
    let (name, groups) = whoami(&robot).await?;
    ensure!(
        name == "robot" && groups.contains(&"robots".to_string()),
        "{name} {groups:?}"
    );
    // Approval is final: it cannot be removed or turned into a denial.
    let flip = admin_csrs
        .patch_approval(
            "robot",
            &PatchParams::default(),
            &Patch::Merge(&approval("Denied")),
        )
        .await;
    ensure!(code(flip)? == 422);

    // Granted `approve` on the signer's domain wildcard, alice approves: here a request whose
    // usages the signer does not grant, which then fails with the reason.
    let grant = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "csr-approver"},
            "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
                "resourceNames": ["kubernetes.io/*"], "verbs": ["approve"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "csr-approver"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-approver"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
    ];
    grant_to_alice(&admin, grant).await?;
    let (csr, _) = csr_for("server", "web", "robots", &["server auth"])?;
    alice_csrs.create(&PostParams::default(), &csr).await?;
    alice_csrs
        .patch_approval(
            "server",
            &PatchParams::default(),
            &Patch::Merge(&approval("Approved")),
        )
        .await?;
    let failed = common::eventually(Duration::from_secs(30), || async {
        let csr = admin_csrs.get("server").await?;
        Ok(csr
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed"))
    })
    .await?;
    ensure!(failed.reason.as_deref() == Some("SignerValidationFailure"));
    let forged = json!({"status": {"certificate": k8s_openapi::ByteString(certificate_pem.clone().into_bytes())}});
    match alice_csrs
        .patch_status("server", &PatchParams::default(), &Patch::Merge(&forged))
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => ensure!(
            s.message
                .contains("user not permitted to sign requests with signerName"),
            "{}",
            s.message
        ),
        other => bail!("setting a certificate without `sign`: {other:?}"),
    }
    ensure!(
        admin_csrs
            .get("server")
            .await?
            .status
            .and_then(|s| s.certificate)
            .is_none()
    );

    // Nobody gets system:masters from this signer, and a denied request is never signed.
    let (csr, _) = csr_for("masters", "mallory", "system:masters", &["client auth"])?;
    ensure!(code(alice_csrs.create(&PostParams::default(), &csr).await)? == 403);
    let (csr, _) = csr_for("denied", "eve", "robots", &["client auth"])?;
    alice_csrs.create(&PostParams::default(), &csr).await?;
    // kubectl's own approval command (a PUT of the whole object to /approval).
    hub.kubectl_ok(&["certificate", "deny", "denied"])?;
    // Server-side apply creates with the requester's identity too.
    let (csr, _) = csr_for("applied", "applied", "robots", &["client auth"])?;
    let applied = alice_csrs
        .patch("applied", &PatchParams::apply("test"), &Patch::Apply(&csr))
        .await?;
    ensure!(
        applied.spec.username.as_deref() == Some("alice"),
        "{:?}",
        applied.spec.username
    );
    let listed = admin_csrs.list(&ListParams::default()).await?;
    ensure!(listed.items.len() == 4);

    // kubectl prints it as it prints CSRs from kube-apiserver.
    let table = hub.kubectl_ok(&["get", "csr"])?;
    ensure!(
        table.contains("SIGNERNAME")
            && table.contains("Approved,Issued")
            && table.contains("Denied"),
        "{table}"
    );
    ensure!(
        admin_csrs
            .get("denied")
            .await?
            .status
            .and_then(|s| s.certificate)
            .is_none()
    );
    Ok(())
}

/// Creates cluster-scoped RBAC objects (ClusterRoles and their bindings) as the admin.
async fn grant_to_alice(
    admin: &kube::Client,
    objects: impl IntoIterator<Item = serde_json::Value>,
) -> anyhow::Result<()> {
    for obj in objects {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            &kind,
        ));
        Api::<kube::api::DynamicObject>::all_with(admin.clone(), &ar)
            .create(&PostParams::default(), &serde_json::from_value(obj)?)
            .await?;
    }
    Ok(())
}

/// A Secret asking for a ServiceAccount token gets one (with the CA and the namespace), as
/// kube-controller-manager fills it; the token is the account's and dies with the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_secrets_are_filled_and_their_tokens_die_with_them() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let hub = TestHub::start().await?;
    let admin = hub.client().await?;
    let account_uid = create_account(&admin, "default", "robot").await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    let mut secret = Secret {
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Default::default()
    };
    secret.metadata.name = Some("robot-token".into());
    secret.metadata.annotations =
        Some([("kubernetes.io/service-account.name".into(), "robot".into())].into());
    secrets.create(&PostParams::default(), &secret).await?;
    // One for an account that does not exist stays empty, as upstream leaves it.
    secret.metadata.name = Some("ghost-token".into());
    secret.metadata.annotations =
        Some([("kubernetes.io/service-account.name".into(), "ghost".into())].into());
    secrets.create(&PostParams::default(), &secret).await?;

    let filled = common::eventually(Duration::from_secs(30), || async {
        let secret = secrets.get("robot-token").await?;
        Ok(secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("token"))
            .then_some(secret))
    })
    .await?;
    let data = filled.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    ensure!(text("namespace") == "default");
    ensure!(text("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    ensure!(
        filled
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/service-account.uid"))
            == Some(&account_uid)
    );
    let robot = token_client(&hub, &text("token")).await?;
    let (user, groups) = whoami(&robot).await?;
    ensure!(user == "system:serviceaccount:default:robot", "{user}");
    ensure!(groups.contains(&"system:serviceaccounts:default".to_string()));
    let ghost = secrets.get("ghost-token").await?;
    ensure!(
        ghost.data.unwrap_or_default().is_empty(),
        "no token for a missing account"
    );

    secrets
        .delete("robot-token", &DeleteParams::default())
        .await?;
    common::eventually(Duration::from_secs(30), || async {
        Ok((code(whoami_raw(&robot).await)? == 401).then_some(()))
    })
    .await?;
    Ok(())
}

async fn whoami_raw(client: &kube::Client) -> Result<SelfSubjectReview, kube::Error> {
    Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
}
