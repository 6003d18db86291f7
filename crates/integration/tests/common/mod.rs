//! Shared helpers for the integration tests.

#![allow(dead_code)] // each test binary uses its own subset

pub mod hub;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use atoll_testbed::{Testbed, TestbedConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, verbs};
use kube::{Client, ResourceExt};
use serde_json::Value;

/// One API server, no controller manager: enough for CRD tests.
pub async fn start_one_cluster() -> Result<Testbed> {
    Ok(Testbed::start(TestbedConfig {
        clusters: 1,
        controller_manager: false,
        ..Default::default()
    })
    .await?)
}

/// Installs every Atoll CRD and waits until each is Established.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    Ok(atoll_testbed::install_crds(client, atoll_api::crds()?).await?)
}

pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Runs kubectl, failing with its stderr unless it succeeds; returns stdout.
pub fn kubectl_ok(command: &mut Command) -> Result<String> {
    let output = command.output().context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}",
            command.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs kubectl with `input` on stdin.
pub fn kubectl_stdin(command: &mut Command, input: &str) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(input.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// An upstream YAML example from `tests/fixtures/upstream`.
pub struct Fixture {
    pub file: String,
    pub path: PathBuf,
    pub object: Value,
}

pub fn fixtures() -> Result<Vec<Fixture>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream");
    let mut fixtures = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let object: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {file}"))?;
        fixtures.push(Fixture { file, path, object });
    }
    fixtures.sort_by(|a, b| a.file.cmp(&b.file));
    ensure!(
        fixtures.len() >= 5,
        "fixtures missing from {}",
        dir.display()
    );
    Ok(fixtures)
}

impl Fixture {
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.object.clone())
            .with_context(|| format!("{} does not parse as Atoll's type", self.file))
    }

    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> String {
        self.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }

    pub fn gvk(&self) -> Result<GroupVersionKind> {
        let api_version = self.object["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version
            .split_once('/')
            .with_context(|| format!("{}: apiVersion {api_version:?}", self.file))?;
        Ok(GroupVersionKind::gvk(group, version, self.kind()))
    }

    /// The plural, from Atoll's own CRD for the kind.
    pub fn plural(&self) -> String {
        atoll_api::crds()
            .ok()
            .into_iter()
            .flatten()
            .find(|c| c.spec.names.kind == self.kind())
            .map(|c| c.spec.names.plural)
            .unwrap_or_default()
    }

    /// `plural.version.group/name`, which pins kubectl to the example's own version.
    pub fn resource_arg(&self) -> String {
        let gvk = self
            .gvk()
            .unwrap_or_else(|_| GroupVersionKind::gvk("", "", ""));
        format!(
            "{}.{}.{}/{}",
            self.plural(),
            gvk.version,
            gvk.group,
            self.name()
        )
    }

    /// The columns `kubectl get` must show for this kind.
    pub fn expected_columns(&self) -> &'static [&'static str] {
        match self.kind() {
            "ClusterProperty" => &["VALUE", "AGE"],
            "ClusterProfile" => &[
                "DISPLAY NAME",
                "CLUSTERSET",
                "JOINED",
                "HEALTHY",
                "VERSION",
                "MODE",
            ],
            "Work" => &["APPLIED", "AVAILABLE", "AGE"],
            "ServiceImport" => &["TYPE", "IP", "AGE"],
            "ServiceExport" => &["VALID", "READY", "CONFLICT", "AGE"],
            _ => &["NAME"],
        }
    }
}

// Like the rest of this module, not every suite that includes it waits.
#[allow(unused_imports)]
pub use atoll_integration::eventually;

/// Every object in a cluster, as (resource, namespace, name, uid), leaving out what the
/// cluster's own controllers churn (events, leases, endpoints).
pub async fn snapshot(client: &Client) -> Result<BTreeSet<(String, String, String, String)>> {
    // Discovery fails with 404 when a CRD goes away between listing the groups and reading
    // one; while the member converges after unjoin, that is expected, so try again.
    let mut attempts = 0;
    let discovery = loop {
        match Discovery::new(client.clone()).run().await {
            Ok(discovery) => break discovery,
            Err(kube::Error::Api(status)) if status.code == 404 && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut objects = BTreeSet::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST)
                || ["events", "leases", "endpoints", "endpointslices"]
                    .contains(&resource.plural.as_str())
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                // A kind whose CRD went away between discovery and the list.
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(e) => return Err(e.into()),
            };
            for object in list.items {
                objects.insert((
                    format!("{}/{}", resource.group, resource.plural),
                    object.namespace().unwrap_or_default(),
                    object.name_any(),
                    object.uid().unwrap_or_default(),
                ));
            }
        }
    }
    Ok(objects)
}

/// Waits until the cluster's objects are exactly `before` again (namespaces and CRDs take a
/// moment to go), or fails listing what differs.
pub async fn converges_to(
    client: &Client,
    before: &BTreeSet<(String, String, String, String)>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let after = snapshot(client).await?;
        if after == *before {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let added: Vec<_> = after.difference(before).collect();
            let removed: Vec<_> = before.difference(&after).collect();
            bail!("the member differs after unjoin:\nadded {added:#?}\nremoved {removed:#?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
