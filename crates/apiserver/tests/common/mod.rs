//! A hub API server on a free loopback port, with an in-memory store, for the tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_apiserver::{Hub, HubConfig};
use atoll_store::Store;
use atoll_store::memory::MemoryStore;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub struct TestHub {
    pub hub: Hub,
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
}

impl TestHub {
    pub async fn start() -> anyhow::Result<TestHub> {
        TestHub::start_with(Arc::new(MemoryStore::new()), None).await
    }

    pub async fn start_with(
        store: Arc<dyn Store>,
        token_file: Option<PathBuf>,
    ) -> anyhow::Result<TestHub> {
        let dir = tempfile::tempdir()?;
        TestHub::start_in(dir, store, token_file).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        token_file: Option<PathBuf>,
    ) -> anyhow::Result<TestHub> {
        let hub = Hub::start(
            store.clone(),
            HubConfig {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse()?,
                token_file,
                extra_sans: vec![],
                compaction_interval: None,
                max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
            },
        )
        .await?;
        Ok(TestHub { hub, dir, store })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.hub.admin_kubeconfig
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(self.kubeconfig()).await
    }

    /// Runs kubectl against the hub.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        kubectl_with(self.kubeconfig(), args)
    }

    /// Runs kubectl and returns stdout; fails with stderr on a non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("running kubectl")
}

/// Polls `check` until it returns `Some`, for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = check().await;
        match last {
            Ok(Some(v)) => return Ok(v),
            Ok(None) if tokio::time::Instant::now() < deadline => {}
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
            }
            Ok(None) => anyhow::bail!("condition not met within {timeout:?}"),
            Err(e) => return Err(e.context(format!("condition not met within {timeout:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CRD with a namespaced kind `Widget` in two versions (v1 stored), a status subresource and
/// printer columns, and a cluster-scoped kind `Gadget`.
pub fn widget_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}
                    ],
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "required": ["size"], "properties": {
                                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"}
                            }},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                        }
                    }}
                },
                {
                    "name": "v1beta1", "served": true, "storage": false,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                        }
                    }}
                }
            ]
        }
    })
}

pub fn gadget_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    })
}
