//! Attacks: see the suite's module list in main.rs. A tenant's writes against `atoll hub`
//! that try to escalate through RBAC bindings, CRDs, CSRs and CEL rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atoll_apiserver::{ApiServer, ServerOptions, UserInfo};
use atoll_store::memory::MemoryStore;
use atoll_store::{Op, Store, Txn};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const RBAC: &str = "rbac.authorization.k8s.io/v1";

async fn server(store: Arc<dyn Store>) -> anyhow::Result<ApiServer> {
    Ok(ApiServer::start(store, ServerOptions::default()).await?)
}

/// Creates an object of any kind as `client`, from its JSON.
async fn create(client: &kube::Client, obj: Value) -> Result<Value, kube::Error> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.clone()),
    };
    let plural = match kind.as_str() {
        "ClusterRole" => "clusterroles".to_string(),
        "ClusterRoleBinding" => "clusterrolebindings".to_string(),
        "Role" => "roles".to_string(),
        "RoleBinding" => "rolebindings".to_string(),
        "CustomResourceDefinition" => "customresourcedefinitions".to_string(),
        "Namespace" => "namespaces".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, &kind), &plural);
    let api: Api<DynamicObject> = match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let object: DynamicObject = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
    let created = api.create(&PostParams::default(), &object).await?;
    serde_json::to_value(created).map_err(kube::Error::SerdeError)
}

/// The status code and message of a refused request.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> anyhow::Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        other => anyhow::bail!("expected an API error, got {other:?}"),
    }
}

async fn put_raw(store: &Arc<dyn Store>, key: &str, value: &Value) -> anyhow::Result<()> {
    store
        .txn(Txn {
            compares: vec![],
            success: vec![Op::Put {
                key: key.to_string(),
                value: serde_json::to_vec(value)?.into(),
            }],
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// The tenant `mallory`: everything in the core group of namespace `tenant` (so `bind` on any
/// core-group "clusterroles" too), writing RoleBindings there, and anything in a group of her
/// own; nothing cluster-wide.
async fn tenant(admin: &kube::Client) -> anyhow::Result<()> {
    create(
        admin,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant"}}),
    )
    .await?;
    create(
        admin,
        json!({
            "apiVersion": RBAC, "kind": "Role",
            "metadata": {"name": "tenant-admin", "namespace": "tenant"},
            "rules": [
                {"apiGroups": [""], "resources": ["*"], "verbs": ["*"]},
                {"apiGroups": ["evil.example.com"], "resources": ["*"], "verbs": ["*"]},
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create", "get", "update", "patch"]}
            ]
        }),
    )
    .await?;
    create(
        admin,
        json!({
            "apiVersion": RBAC, "kind": "RoleBinding",
            "metadata": {"name": "tenant-admin", "namespace": "tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]
        }),
    )
    .await?;
    Ok(())
}

fn cluster_admin_binding(name: &str, role_ref: Value) -> Value {
    json!({
        "apiVersion": RBAC, "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "tenant"},
        "roleRef": role_ref,
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]
    })
}

#[tokio::test]
async fn a_binding_with_an_omitted_or_foreign_role_ref_group_cannot_bind_cluster_admin()
-> anyhow::Result<()> {
    let server = server(Arc::new(MemoryStore::new())).await?;
    let admin = server.client();
    tenant(&admin).await?;
    let mallory = server.client_as(UserInfo::new("mallory", &[]));

    // Omitted (or empty) apiGroup: defaulted to rbac.authorization.k8s.io, so `bind` is asked
    // there, which mallory lacks; she does not hold cluster-admin's rules either.
    for (name, role_ref) in [
        (
            "omitted",
            json!({"kind": "ClusterRole", "name": "cluster-admin"}),
        ),
        (
            "empty",
            json!({"apiGroup": "", "kind": "ClusterRole", "name": "cluster-admin"}),
        ),
    ] {
        let (code, message) =
            refusal(create(&mallory, cluster_admin_binding(name, role_ref)).await)?;
        assert_eq!(code, 403, "{name}: {message}");
        assert!(
            message.contains("is attempting to grant RBAC permissions not currently held"),
            "{name}: {message}"
        );
    }

    // A group she may `bind` in: validation refuses the reference, as kube-apiserver.
    let (code, message) = refusal(
        create(
            &mallory,
            cluster_admin_binding(
                "foreign",
                json!({"apiGroup": "evil.example.com", "kind": "ClusterRole", "name": "cluster-admin"}),
            ),
        )
        .await,
    )?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains(
            r#"roleRef.apiGroup: Unsupported value: "evil.example.com": supported values: "rbac.authorization.k8s.io""#
        ),
        "{message}"
    );

    // Nothing was stored: mallory still cannot read leases in her namespace.
    let leases = server.client_as(UserInfo::new("mallory", &[]));
    let (code, _) = refusal(
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(leases, "tenant")
            .list(&Default::default())
            .await,
    )?;
    assert_eq!(code, 403);

    // A valid binding's roleRef cannot be changed afterwards.
    create(
        &admin,
        cluster_admin_binding(
            "view",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}),
        ),
    )
    .await?;
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(admin.clone(), "tenant");
    let (code, message) = refusal(
        bindings
            .patch(
                "view",
                &PatchParams::default(),
                &Patch::Merge(json!({"roleRef": {"name": "cluster-admin"}})),
            )
            .await,
    )?;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("cannot change roleRef"), "{message}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bindings_an_older_server_stored_with_an_invalid_role_ref_grant_nothing()
-> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = server(store.clone()).await?;
    let admin = server.client();
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "lease-reader"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list"]}]}),
    )
    .await?;
    let subjects =
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]);
    let stored = |name: &str, role_ref: Value| {
        json!({"apiVersion": RBAC, "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "uid": name, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "roleRef": role_ref, "subjects": subjects})
    };
    // What an older server let through, written beside the store's own server; and one valid
    // binding, to know when the authorizer has read them all.
    let prefix = "/registry/rbac.authorization.k8s.io/clusterrolebindings/";
    for (name, role_ref) in [
        (
            "omitted-group",
            json!({"kind": "ClusterRole", "name": "cluster-admin"}),
        ),
        (
            "foreign-group",
            json!({"apiGroup": "evil.example.com", "kind": "ClusterRole", "name": "cluster-admin"}),
        ),
        (
            "role-kind",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "clusterrole", "name": "cluster-admin"}),
        ),
        (
            "bad-name",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "../cluster-admin"}),
        ),
        (
            "valid",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lease-reader"}),
        ),
    ] {
        put_raw(&store, &format!("{prefix}{name}"), &stored(name, role_ref)).await?;
    }
    let mallory = server.client_as(UserInfo::new("mallory", &[]));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(mallory.clone(), "default");
    atoll_integration::eventually(
        Duration::from_secs(20),
        "the valid stored binding to be honoured",
        async || Ok(leases.list(&Default::default()).await.ok().map(|_| ())),
    )
    .await?;
    let (code, _) = refusal(
        Api::<Namespace>::all(mallory.clone())
            .list(&Default::default())
            .await,
    )?;
    assert_eq!(
        code, 403,
        "a stored binding with an invalid roleRef granted cluster-admin"
    );
    let (code, _) = refusal(
        Api::<Secret>::namespaced(mallory, "kube-system")
            .list(&Default::default())
            .await,
    )?;
    assert_eq!(code, 403);
    server.shutdown().await;
    Ok(())
}

fn shadow_crd(group: &str, plural: &str, kind: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

#[tokio::test]
async fn crds_cannot_shadow_built_in_kinds() -> anyhow::Result<()> {
    let server = server(Arc::new(MemoryStore::new())).await?;
    let admin = server.client();
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "crd-writer"},
            "rules": [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["*"]}]}),
    )
    .await?;
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "crd-writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "crd-writer"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]}),
    )
    .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "victim"}, "data": {"a": "b"}}))?,
        )
        .await?;
    let mallory = server.client_as(UserInfo::new("mallory", &[]));

    for (group, plural, kind, wanted) in [
        (
            "core",
            "configmaps",
            "ConfigMap",
            r#"spec.group: Invalid value: "core": should be a domain with at least one dot"#,
        ),
        (
            "core",
            "secrets",
            "Secret",
            "should be a domain with at least one dot",
        ),
        (
            "example",
            "widgets",
            "Widget",
            "should be a domain with at least one dot",
        ),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            "must not be a group the API server serves itself",
        ),
        (
            "apps.k8s.io",
            "deployments",
            "Deployment",
            r#"metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation "api-approved.kubernetes.io", see https://github.com/kubernetes/enhancements/pull/1111"#,
        ),
    ] {
        let (code, message) = refusal(create(&mallory, shadow_crd(group, plural, kind)).await)?;
        assert_eq!(code, 422, "{group}: {message}");
        assert!(message.contains(wanted), "{group}: {message}");
    }
    // A protected group with an annotation that is neither a URL nor "unapproved...".
    let mut bad_approval = shadow_crd("apps.k8s.io", "deployments", "Deployment");
    bad_approval["metadata"]["annotations"] = json!({"api-approved.kubernetes.io": "yes please"});
    let (code, message) = refusal(create(&mallory, bad_approval).await)?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("with either a URL or a reason starting with \"unapproved\""),
        "{message}"
    );

    // Atoll's own CRDs (one in the protected about.k8s.io, approved) still install.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in atoll_api::crd::crds()? {
        crds.create(&PostParams::default(), &crd).await?;
    }
    assert_eq!(
        configmaps
            .get("victim")
            .await?
            .data
            .and_then(|d| d.get("a").cloned()),
        Some("b".to_string())
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_stored_crd_in_the_core_group_neither_serves_nor_deletes_built_in_objects()
-> anyhow::Result<()> {
    // An older server accepted `configmaps.core` and `secrets.core`; the store holds them, with
    // the cleanup finalizer, beside the objects they shadowed.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = server(store.clone()).await?;
    let admin = first.client();
    Api::<ConfigMap>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "victim"}, "data": {"a": "b"}}))?,
        )
        .await?;
    Api::<Secret>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "victim"}, "stringData": {"k": "v"}}),
            )?,
        )
        .await?;
    first.shutdown().await;
    for (plural, kind) in [("configmaps", "ConfigMap"), ("secrets", "Secret")] {
        let mut crd = shadow_crd("core", plural, kind);
        crd["metadata"]["uid"] = json!(format!("{plural}-uid"));
        crd["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        crd["metadata"]["finalizers"] = json!(["customresourcecleanup.apiextensions.k8s.io"]);
        put_raw(
            &store,
            &format!("/registry/apiextensions.k8s.io/customresourcedefinitions/{plural}.core"),
            &crd,
        )
        .await?;
    }

    let server = server(store).await?;
    let admin = server.client();
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    // Still the built-in kinds: built-in validation refuses what the shadow's schema allowed.
    let (code, message) = refusal(
        configmaps
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": "x"}, "data": {"bad key": "v"}}),
                )?,
            )
            .await,
    )?;
    assert_eq!(code, 422, "{message}");

    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for plural in ["configmaps", "secrets"] {
        crds.delete(&format!("{plural}.core"), &DeleteParams::default())
            .await?;
    }
    atoll_integration::eventually(
        Duration::from_secs(20),
        "the shadow CRDs to be gone",
        async || {
            let left = crds.list(&Default::default()).await?.items.len();
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        configmaps
            .get("victim")
            .await?
            .data
            .and_then(|d| d.get("a").cloned()),
        Some("b".to_string())
    );
    assert!(
        secrets
            .get("victim")
            .await?
            .data
            .is_some_and(|d| d.contains_key("k"))
    );
    server.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CertificateSigningRequests
// ---------------------------------------------------------------------------------------------

fn csr_object(name: &str, pem: &str) -> anyhow::Result<CertificateSigningRequest> {
    use base64::Engine as _;
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
        }
    }))?)
}

/// A server with the client signer, and `mallory` allowed to create and read CSRs.
async fn csr_server() -> anyhow::Result<(ApiServer, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    atoll_apiserver::pki::Pki::load_or_create(dir.path(), &[])?;
    let signer = atoll_apiserver::certificates::ClientSigner::load(dir.path())?;
    let server = ApiServer::start(
        Arc::new(MemoryStore::new()),
        ServerOptions {
            client_signer: Some(Arc::new(signer)),
            ..Default::default()
        },
    )
    .await?;
    let admin = server.client();
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "csr-requester"},
            "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests", "certificatesigningrequests/status", "certificatesigningrequests/approval"], "verbs": ["create", "get", "list", "update", "patch"]}]}),
    )
    .await?;
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "csr-requester"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-requester"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]}),
    )
    .await?;
    Ok((server, dir))
}

#[tokio::test]
async fn a_csr_with_two_common_names_is_refused() -> anyhow::Result<()> {
    let (server, _dir) = csr_server().await?;
    let mallory: Api<CertificateSigningRequest> =
        Api::all(server.client_as(UserInfo::new("mallory", &[])));
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mallory");
    // A second CN (2.5.4.3), which rcgen only writes as a custom attribute type.
    params.distinguished_name.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
        "system:admin",
    );
    let pem = params.serialize_request(&key)?.pem()?;
    let (code, message) = refusal(
        mallory
            .create(&PostParams::default(), &csr_object("two-cns", &pem)?)
            .await,
    )?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("the subject may hold at most one common name (CN)"),
        "{message}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn system_masters_is_refused_in_every_string_encoding() -> anyhow::Result<()> {
    let (server, _dir) = csr_server().await?;
    let mallory: Api<CertificateSigningRequest> =
        Api::all(server.client_as(UserInfo::new("mallory", &[])));
    let masters = "system:masters";
    let encodings: Vec<(&str, rcgen::DnValue)> = vec![
        ("utf8", rcgen::DnValue::Utf8String(masters.into())),
        (
            "printable",
            rcgen::DnValue::PrintableString(masters.try_into()?),
        ),
        ("bmp", rcgen::DnValue::BmpString(masters.try_into()?)),
        (
            "universal",
            rcgen::DnValue::UniversalString(masters.try_into()?),
        ),
        (
            "teletex",
            rcgen::DnValue::TeletexString(masters.try_into()?),
        ),
        ("ia5", rcgen::DnValue::Ia5String(masters.try_into()?)),
    ];
    for (name, value) in encodings {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mallory");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, value);
        let pem = params.serialize_request(&key)?.pem()?;
        let (code, message) = refusal(
            mallory
                .create(&PostParams::default(), &csr_object(name, &pem)?)
                .await,
        )?;
        assert_eq!(code, 403, "{name}: {message}");
        assert!(
            message.contains(
                "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
            ),
            "{name}: {message}"
        );
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_signed_certificate_holds_only_the_validated_identity() -> anyhow::Result<()> {
    use base64::Engine as _;
    let (server, _dir) = csr_server().await?;
    let admin: Api<CertificateSigningRequest> = Api::all(server.client());
    let mallory: Api<CertificateSigningRequest> =
        Api::all(server.client_as(UserInfo::new("mallory", &[])));
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![
        "kubernetes.default.svc".to_string(),
        "127.0.0.1".to_string(),
    ])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mallory");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "tenants");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "system:masters");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.serialize_request(&key)?.pem()?;
    mallory
        .create(&PostParams::default(), &csr_object("sans", &pem)?)
        .await?;
    admin
        .patch_approval(
            "sans",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "Test"}]}})),
        )
        .await?;
    let issued = atoll_integration::eventually(
        Duration::from_secs(20),
        "the certificate to be issued",
        async || {
            let csr = mallory.get("sans").await?;
            Ok(csr.status.and_then(|s| s.certificate).map(|c| c.0))
        },
    )
    .await?;
    let cert_pem = String::from_utf8(issued)?;
    let der = base64::engine::general_purpose::STANDARD.decode(
        cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )?;
    // The identity is the one validated CN and O, and nothing else was copied: no SAN, no CA
    // basic constraints, no OU.
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let subject: Vec<(String, String)> = cert
        .subject()
        .iter_attributes()
        .map(|a| {
            (
                a.attr_type().to_id_string(),
                a.as_str().unwrap_or("<not a string>").to_string(),
            )
        })
        .collect();
    assert_eq!(
        subject,
        vec![
            ("2.5.4.3".to_string(), "mallory".to_string()),
            ("2.5.4.10".to_string(), "tenants".to_string())
        ]
    );
    assert!(
        cert.subject_alternative_name()?.is_none(),
        "SANs were copied"
    );
    assert!(
        cert.basic_constraints()?.is_none_or(|bc| !bc.value.ca),
        "the certificate is a CA"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn csr_condition_bodies_of_the_wrong_shape_are_refused_not_panics() -> anyhow::Result<()> {
    let (server, _dir) = csr_server().await?;
    // Mallory may approve and sign too: the bodies get past the approval and signing
    // admission, to whatever reads their conditions.
    let admin = server.client();
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "signer"},
            "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve", "sign"]}]}),
    )
    .await?;
    create(
        &admin,
        json!({"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "signer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "signer"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]}),
    )
    .await?;
    let mallory: Api<CertificateSigningRequest> =
        Api::all(server.client_as(UserInfo::new("mallory", &[])));
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mallory");
    let pem = params.serialize_request(&key)?.pem()?;
    let created = mallory
        .create(&PostParams::default(), &csr_object("shapes", &pem)?)
        .await?;
    let mut base = serde_json::to_value(&created)?;
    for (subresource, conditions) in [
        ("status", json!(["not an object"])),
        ("approval", json!(["not an object"])),
        ("status", json!("not a list")),
        ("approval", json!({"type": "Approved"})),
        ("approval", json!([{"type": 5, "status": "True"}])),
        (
            "status",
            json!([{"type": "Ready", "status": "True", "lastUpdateTime": 7}]),
        ),
    ] {
        base["status"] = json!({"conditions": conditions});
        let (code, message) = refusal(
            mallory
                .replace_subresource(subresource, "shapes", &PostParams::default(), &base)
                .await,
        )?;
        assert_eq!(code, 400, "{subresource} {conditions}: {message}");
        assert!(message.contains("cannot unmarshal"), "{message}");
    }
    // And as a patch.
    let (code, _) = refusal(
        mallory
            .patch_status(
                "shapes",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [1, 2]}})),
            )
            .await,
    )?;
    assert_eq!(code, 400);
    // The server is still up.
    mallory.get("shapes").await?;
    server.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CEL cost
// ---------------------------------------------------------------------------------------------

fn cel_crd(name: &str, spec_schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{name}s.cel.example.com")},
        "spec": {
            "group": "cel.example.com", "scope": "Namespaced",
            "names": {"plural": format!("{name}s"), "kind": name.to_uppercase()},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}}}]
        }
    })
}

const NESTED_ALL: &str = "self.items.all(a, self.items.all(b, a == b || a != b))";

fn nested_all_spec(max_items: Option<u64>) -> Value {
    let mut items = json!({"type": "array", "items": {"type": "string", "maxLength": 8}});
    if let Some(max) = max_items {
        items["maxItems"] = json!(max);
    }
    json!({"type": "object", "properties": {"items": items},
        "x-kubernetes-validations": [{"rule": NESTED_ALL}]})
}

async fn established(client: &kube::Client, name: &str) -> anyhow::Result<Api<DynamicObject>> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cel.example.com", "v1", &name.to_uppercase()),
        &format!("{name}s"),
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    atoll_integration::eventually(
        Duration::from_secs(20),
        "the CRD to be served",
        async || Ok(api.list(&Default::default()).await.ok().map(|_| ())),
    )
    .await?;
    Ok(api)
}

fn object(name: &str, spec: Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

#[tokio::test]
async fn a_crd_whose_rule_has_no_bound_is_refused_at_creation() -> anyhow::Result<()> {
    let server = server(Arc::new(MemoryStore::new())).await?;
    let admin = server.client();
    let (code, message) =
        refusal(create(&admin, cel_crd("unbounded", nested_all_spec(None))).await)?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains(
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
        ),
        "{message}"
    );
    // Many cheap rules that each run once per item of an unbounded list: the CRD's total.
    let per_item = json!({"type": "object", "properties": {"rows": {"type": "array",
        "items": {"type": "object", "properties": {"s": {"type": "string", "maxLength": 1000}},
            "x-kubernetes-validations": [{"rule": "self.s.startsWith('a') || self.s.endsWith('b') || self.s.contains('c')"}]}}}});
    let (code, message) = refusal(create(&admin, cel_crd("rows", per_item)).await)?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of"),
        "{message}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_expensive_object_is_stopped_by_the_runtime_budgets() -> anyhow::Result<()> {
    let server = server(Arc::new(MemoryStore::new())).await?;
    let admin = server.client();
    // Under the static limit: at most 500 items.
    create(&admin, cel_crd("bounded", nested_all_spec(Some(500)))).await?;
    let bounded = established(&admin, "bounded").await?;
    let items: Vec<String> = (0..500).map(|i| format!("i{i}")).collect();
    let (code, message) = refusal(
        bounded
            .create(
                &PostParams::default(),
                &object("big", json!({"items": items}))?,
            )
            .await,
    )?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains(&format!(
            "spec: Invalid value: \"object\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {NESTED_ALL}"
        )),
        "{message}"
    );
    // A small object still validates.
    bounded
        .create(
            &PostParams::default(),
            &object("small", json!({"items": ["a", "b"]}))?,
        )
        .await?;

    // Rules each under the per-call limit, together over the request's budget.
    let rule = (0..40)
        .map(|i| format!("!self.s.contains('{i}z')"))
        .collect::<Vec<_>>()
        .join(" && ");
    let rules: Vec<Value> = (0..13).map(|_| json!({"rule": rule})).collect();
    let spec = json!({"type": "object", "properties": {"s": {"type": "string", "maxLength": 300000}},
        "x-kubernetes-validations": rules});
    create(&admin, cel_crd("scan", spec)).await?;
    let scan = established(&admin, "scan").await?;
    let (code, message) = refusal(
        scan.create(
            &PostParams::default(),
            &object("long", json!({"s": "a".repeat(200_000)}))?,
        )
        .await,
    )?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec: Invalid value: \"object\": validation failed due to running out of cost budget, no further validation rules will be run"),
        "{message}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_while_expensive_rules_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = atoll_apiserver::Hub::start(
        Arc::new(MemoryStore::new()),
        atoll_apiserver::HubConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse()?,
            token_file: None,
            extra_sans: vec![],
            compaction_interval: None,
            max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
        },
    )
    .await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&hub.admin_kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    create(&client, cel_crd("bounded", nested_all_spec(Some(500)))).await?;
    let bounded = established(&client, "bounded").await?;
    // Each object is as expensive as one call may be (just under the per-call limit), and
    // there are more of them than the runtime has workers.
    let items: Vec<String> = (0..250).map(|i| format!("i{i}")).collect();
    let started = Instant::now();
    let mut writes = Vec::new();
    for i in 0..4 {
        let api = bounded.clone();
        let obj = object(&format!("heavy-{i}"), json!({"items": items}))?;
        writes.push(tokio::spawn(async move {
            let result = api.create(&PostParams::default(), &obj).await;
            (result.map(|_| ()), started.elapsed())
        }));
    }
    let readyz = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_text(
            http::Request::get("/readyz")
                .body(Vec::new())
                .context("the /readyz request")?,
        ),
    )
    .await
    .context("/readyz did not answer while rules were evaluated")??;
    let answered = started.elapsed();
    assert_eq!(readyz, "ok");
    let mut fastest = Duration::MAX;
    for write in writes {
        let (result, took) = write.await?;
        result?;
        fastest = fastest.min(took);
    }
    assert!(
        answered < fastest,
        "/readyz answered after {answered:?}, the first evaluation ended after {fastest:?}: it waited for them"
    );
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CEL parser and interpreter depth (found by the `cel_rules` fuzz target)
// ---------------------------------------------------------------------------------------------

/// The fuzzer's input: brackets that never close, which overflowed the `cel` crate's
/// recursive parser and killed the hub, at creation and on every start after it was stored.
fn deep_rule() -> String {
    format!("{}self", "[".repeat(1000))
}

#[tokio::test]
async fn a_rule_nested_past_the_parsers_depth_is_refused_and_the_hub_lives() -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = server(store.clone()).await?;
    let admin = first.client();
    let spec = json!({"type": "object", "x-kubernetes-validations": [{"rule": deep_rule()}]});
    let (code, message) = refusal(create(&admin, cel_crd("deep", spec.clone())).await)?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: ")
            && message.contains("compilation failed: ERROR: <input>:-1:0: max recursion depth exceeded"),
        "{message}"
    );
    // A rule longer than cel-go parses.
    let long = format!("self.s == '{}'", "x".repeat(100_000));
    let spec_long = json!({"type": "object", "properties": {"s": {"type": "string"}},
        "x-kubernetes-validations": [{"rule": long}]});
    let (code, message) = refusal(create(&admin, cel_crd("long", spec_long)).await)?;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("expression code point size exceeds limit: size: 100012, limit 100000"),
        "{message}"
    );
    // The hub still answers.
    Api::<Namespace>::all(admin.clone())
        .list(&Default::default())
        .await?;
    first.shutdown().await;

    // A CRD an older hub stored with that rule: this hub starts, serves the kind without the
    // rule, and answers.
    let mut crd = cel_crd("deep", spec);
    crd["metadata"]["uid"] = json!("deep-uid");
    crd["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    put_raw(
        &store,
        "/registry/apiextensions.k8s.io/customresourcedefinitions/deeps.cel.example.com",
        &crd,
    )
    .await?;
    let server = server(store).await?;
    let admin = server.client();
    let deeps = established(&admin, "deep").await?;
    deeps
        .create(&PostParams::default(), &object("one", json!({}))?)
        .await?;
    Api::<Namespace>::all(admin.clone())
        .list(&Default::default())
        .await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_deeply_nested_object_under_a_rule_does_not_overflow_evaluation() -> anyhow::Result<()> {
    let server = server(Arc::new(MemoryStore::new())).await?;
    let admin = server.client();
    let spec = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
        "x-kubernetes-validations": [{"rule": "self == self && self.all(k, has(self.a) || !has(self.a))"}]});
    create(&admin, cel_crd("nest", spec)).await?;
    let nests = established(&admin, "nest").await?;
    // As deep as the body decoder lets an object be: each level converted and compared
    // recursively by the interpreter.
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!({"a": deep});
    }
    let result = nests
        .create(&PostParams::default(), &object("deep", deep)?)
        .await;
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(status)) => {
            assert!(status.code < 500, "{status:?}");
        }
        Err(e) => return Err(e.into()),
    }
    Api::<Namespace>::all(admin.clone())
        .list(&Default::default())
        .await?;
    server.shutdown().await;
    Ok(())
}
