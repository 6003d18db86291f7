//! `atoll apply-work CLUSTER -f FILE` and `atoll get works [CLUSTER]`.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use atoll_api::conditions;
use atoll_api::work::{
    CONDITION_APPLIED, CONDITION_AVAILABLE, FieldValue, Manifest, ManifestCondition, Work,
    WorkSpec, WorkloadTemplate,
};
use atoll_controllers::inventory::{CLUSTER_NAMESPACE_PREFIX, cluster_namespace};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::get::{Output, age, table};
use crate::connect::ClusterArgs;

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The joined cluster to apply to.
    cluster: String,
    /// YAML files of Kubernetes objects (several documents per file; `-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Name of the Work; the first file's name without its extension when unset.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    hub: ClusterArgs,
}

/// The objects in YAML text: every document, with `kind: List` unpacked and empty documents
/// skipped.
pub fn manifests_from_yaml(text: &str) -> anyhow::Result<Vec<Value>> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)?;
    let mut objects = Vec::new();
    for document in documents {
        match document {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(Value::Array(items)) = map.get("items") {
                    objects.extend(items.iter().cloned());
                }
            }
            Value::Object(_) => objects.push(document),
            other => bail!("a document is not a Kubernetes object: {other}"),
        }
    }
    for (i, object) in objects.iter().enumerate() {
        atoll_work::manifest::parse(i, object)
            .map_err(|why| anyhow::anyhow!("object {} of the input: {why}", i + 1))?;
    }
    Ok(objects)
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let mut manifests = Vec::new();
    for file in &args.files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        manifests.extend(
            manifests_from_yaml(&text).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    if manifests.is_empty() {
        bail!("the files hold no Kubernetes objects");
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .files
            .first()
            .filter(|f| f.as_os_str() != "-")
            .and_then(|f| f.file_stem())
            .map(|s| s.to_string_lossy().to_lowercase().replace(['_', '.'], "-"))
            .context("pass --name when reading stdin")?,
    };
    let hub = args.hub.client().await?;
    let namespace = cluster_namespace(&args.cluster);
    ensure_joined(&hub, &args.cluster, &namespace).await?;
    let count = manifests.len();
    let work = Work::new(
        &name,
        WorkSpec {
            workload: WorkloadTemplate {
                manifests: manifests.into_iter().map(Manifest).collect(),
            },
            delete_option: None,
            manifest_configs: Vec::new(),
            apply_strategy: None,
        },
    );
    let works: Api<Work> = Api::namespaced(hub, &namespace);
    // Server-side apply: repeating the command with edited files updates the Work, and
    // fields set by others (deleteOption, manifestConfigs) are kept.
    let mut body = serde_json::to_value(&work)?;
    body["apiVersion"] = Value::from("multicluster.x-k8s.io/v1alpha1");
    body["kind"] = Value::from("Work");
    works
        .patch(
            &name,
            &PatchParams::apply("atoll-cli").force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("applying Work {namespace}/{name} on the hub"))?;
    println!(
        "work.multicluster.x-k8s.io/{name} applied to cluster {} ({count} manifests)",
        args.cluster
    );
    Ok(())
}

async fn ensure_joined(hub: &Client, cluster: &str, namespace: &str) -> anyhow::Result<()> {
    let ns = Api::<Namespace>::all(hub.clone())
        .get_opt(namespace)
        .await
        .context("reading the cluster's namespace on the hub")?;
    match ns {
        Some(ns) if ns.metadata.deletion_timestamp.is_none() => Ok(()),
        Some(_) => bail!("cluster {cluster:?} is being unjoined"),
        None => {
            bail!("no cluster named {cluster:?} is joined (no namespace {namespace} on the hub)")
        }
    }
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// Only this cluster's Works.
    cluster: Option<String>,
    /// Output format: a table (default), json or yaml.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    hub: ClusterArgs,
}

const HEADER: [&str; 8] = [
    "CLUSTER",
    "WORK",
    "RESOURCE",
    "APPLIED",
    "AVAILABLE",
    "REASON",
    "FEEDBACK",
    "AGE",
];

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    let mut list = match &args.cluster {
        Some(cluster) => {
            let namespace = cluster_namespace(cluster);
            ensure_joined(&hub, cluster, &namespace).await?;
            Api::<Work>::namespaced(hub, &namespace)
                .list(&ListParams::default())
                .await
                .context("listing Works on the hub")?
        }
        None => {
            let mut list = Api::<Work>::all(hub)
                .list(&ListParams::default())
                .await
                .context("listing Works on the hub")?;
            list.items.retain(|w| {
                w.namespace()
                    .is_some_and(|ns| ns.starts_with(CLUSTER_NAMESPACE_PREFIX))
            });
            list
        }
    };
    list.items
        .sort_by_key(|w| (w.namespace().unwrap_or_default(), w.name_any()));
    let mut stdout = std::io::stdout().lock();
    match args.output {
        Output::Table if list.items.is_empty() => {
            let namespace = args.cluster.as_deref().map(cluster_namespace);
            crate::output::no_resources(namespace.as_deref());
        }
        Output::Table => {
            let rows: Vec<[String; 8]> = list.items.iter().flat_map(rows).collect();
            write!(stdout, "{}", table(&HEADER, &rows))?;
        }
        Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&list)?)?,
        Output::Yaml => write!(stdout, "{}", serde_saphyr::to_string(&list)?)?,
    }
    stdout.flush()?;
    Ok(())
}

/// One row per manifest; a Work with no status yet gets one row saying so.
fn rows(work: &Work) -> Vec<[String; 8]> {
    let cluster = work
        .namespace()
        .unwrap_or_default()
        .trim_start_matches(CLUSTER_NAMESPACE_PREFIX)
        .to_owned();
    let age = work
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| age(k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()))
        .unwrap_or_else(|| "<unknown>".into());
    let manifests = work
        .status
        .as_ref()
        .map(|s| s.manifest_conditions.as_slice())
        .unwrap_or_default();
    if manifests.is_empty() {
        let pending = if work.spec.workload.manifests.is_empty() {
            "<no manifests>"
        } else {
            "<pending>"
        };
        return vec![[
            cluster,
            work.name_any(),
            pending.into(),
            "Unknown".into(),
            "Unknown".into(),
            "<none>".into(),
            "<none>".into(),
            age,
        ]];
    }
    manifests
        .iter()
        .map(|m| {
            let (applied, reason) = condition(m, CONDITION_APPLIED);
            let (available, available_reason) = condition(m, CONDITION_AVAILABLE);
            let reason = if applied == "True" {
                available_reason
            } else {
                reason
            };
            [
                cluster.clone(),
                work.name_any(),
                resource(m),
                applied,
                available,
                reason,
                feedback(m),
                age.clone(),
            ]
        })
        .collect()
}

fn condition(m: &ManifestCondition, type_: &str) -> (String, String) {
    conditions::find(&m.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_else(|| ("Unknown".into(), "<none>".into()))
}

fn resource(m: &ManifestCondition) -> String {
    let id = &m.identifier;
    if id.kind.is_empty() {
        return format!("manifest {}", id.ordinal);
    }
    let kind = if id.group.is_empty() {
        id.kind.clone()
    } else {
        format!("{}.{}", id.kind, id.group)
    };
    if id.namespace.is_empty() {
        format!("{kind}/{}", id.name)
    } else {
        format!("{kind} {}/{}", id.namespace, id.name)
    }
}

fn feedback(m: &ManifestCondition) -> String {
    let Some(feedback) = &m.status_feedback else {
        return "<none>".into();
    };
    let show = |v: &FieldValue| {
        v.integer
            .map(|i| i.to_string())
            .or_else(|| v.string.clone())
            .or_else(|| v.boolean.map(|b| b.to_string()))
            .or_else(|| v.json_raw.clone())
            .unwrap_or_default()
    };
    feedback
        .values
        .iter()
        .map(|v| format!("{}={}", v.name, show(&v.field_value)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_files_become_manifests() -> anyhow::Result<()> {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata:\n    name: b\n";
        let objects = manifests_from_yaml(text)?;
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(kinds, ["ConfigMap", "Secret"]);
        let err = manifests_from_yaml("apiVersion: v1\nkind: ConfigMap\n").err();
        assert!(err.is_some_and(|e| e.to_string().contains("metadata.name")));
        Ok(())
    }
}
