//! `atoll join` and `atoll unjoin`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use atoll_controllers::inventory::{self, DEFAULT_MANAGER_NAMESPACE};
use kube::config::Kubeconfig;

use crate::connect::ClusterArgs;

#[derive(clap::Args)]
pub struct JoinArgs {
    /// The cluster's name on the hub.
    name: String,
    /// The member cluster's kubeconfig. Only inline credentials are accepted (a token or a
    /// client certificate and key, CA data): no exec or auth-provider plugins, no file paths
    /// (`kubectl config view --minify --flatten --raw` embeds files).
    #[arg(long, value_name = "FILE")]
    cluster_kubeconfig: PathBuf,
    /// The context in the member's kubeconfig.
    #[arg(long, value_name = "CONTEXT")]
    cluster_context: Option<String>,
    /// Labels for the ClusterProfile, as k=v,k=v.
    #[arg(long, value_name = "K=V,...", value_delimiter = ',')]
    labels: Vec<String>,
    /// The ClusterSet to join.
    #[arg(long, value_name = "SET", default_value = "default")]
    clusterset: String,
    /// The cluster ID (cluster.clusterset.k8s.io); the UID of the member's kube-system
    /// namespace when unset.
    #[arg(long, value_name = "ID")]
    cluster_id: Option<String>,
    /// Hub namespace that holds ClusterProfiles.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(clap::Args)]
pub struct UnjoinArgs {
    /// The cluster's name on the hub.
    name: String,
    /// Clean the hub even when the member cannot be reached: Atoll's identities, its
    /// ClusterProperties and CRDs, and what the Works applied then stay in the member.
    #[arg(long)]
    force: bool,
    /// Leave in the member what the cluster's Works applied (orphan it) instead of deleting
    /// it as each Work's deleteOption says.
    #[arg(long)]
    keep_workloads: bool,
    /// Hub namespace that holds ClusterProfiles.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

pub fn parse_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("label {pair:?} is not k=v"),
        })
        .collect()
}

pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    let member_kubeconfig = Kubeconfig::read_from(&args.cluster_kubeconfig).with_context(|| {
        format!(
            "reading member kubeconfig {}",
            args.cluster_kubeconfig.display()
        )
    })?;
    let options = inventory::JoinOptions {
        name: args.name.clone(),
        member_kubeconfig,
        member_context: args.cluster_context,
        labels: parse_labels(&args.labels)?,
        cluster_set: args.clusterset,
        cluster_id: args.cluster_id,
        manager_namespace: args.manager_namespace,
        token_timeout: Duration::from_secs(60),
    };
    eprintln!("joining {} ...", args.name);
    let joined = inventory::join(&hub, &options).await?;
    println!(
        "cluster {} {} (cluster ID {}, Kubernetes {}); its hub namespace is {}",
        args.name,
        if joined.created {
            "joined"
        } else {
            "was already joined; completed"
        },
        joined.cluster_id,
        joined.kubernetes_version,
        joined.namespace
    );
    Ok(())
}

pub async fn unjoin(args: UnjoinArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    let unjoined = inventory::unjoin(
        &hub,
        &inventory::UnjoinOptions {
            name: args.name.clone(),
            manager_namespace: args.manager_namespace,
            force: args.force,
            keep_workloads: args.keep_workloads,
        },
    )
    .await?;
    println!("{}", unjoin_report(&args.name, &unjoined));
    Ok(())
}

/// What unjoin says: exactly what was removed from the member and what was kept there.
fn unjoin_report(name: &str, unjoined: &inventory::Unjoined) -> String {
    if unjoined.pull {
        let workloads = if unjoined.pull_workloads_orphaned {
            "keeps what the cluster's Works applied (they now orphan it; the agent recorded that), removes"
        } else {
            "removes what the cluster's Works applied (as each Work's deleteOption says) and"
        };
        return format!(
            "cluster {name} removed from the hub; once its agent notices, it {workloads} what it created in the member, logs what it removed and kept, and exits"
        );
    }
    if !unjoined.member_cleaned {
        return format!(
            "cluster {name} removed from the hub; the member was not cleaned: Atoll's identities (namespace atoll-system, ClusterRoles atoll:hub and atoll:work), its ClusterProperties and CRDs, and everything the cluster's Works applied are still in it"
        );
    }
    let mut report = format!(
        "cluster {name} unjoined; removed from the member: Atoll's identities, its ClusterSet membership and the CRDs Atoll installed"
    );
    let listed = |objects: &std::collections::BTreeSet<String>| {
        objects.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    let workloads = &unjoined.workloads;
    if !workloads.deleted.is_empty() {
        report.push_str(&format!(
            ", and {} object(s) its Works applied ({})",
            workloads.deleted.len(),
            listed(&workloads.deleted)
        ));
    }
    let mut kept = Vec::new();
    if !workloads.kept.is_empty() {
        kept.push(format!(
            "{} object(s) its Works applied, now untracked ({})",
            workloads.kept.len(),
            listed(&workloads.kept)
        ));
    }
    if unjoined.kept_cluster_property_crd {
        kept.push("the ClusterProperty CRD, which Atoll did not install".to_owned());
    }
    if kept.is_empty() {
        report.push_str("; nothing of Atoll's is left in it");
    } else {
        report.push_str(&format!("; kept: {}", kept.join("; ")));
    }
    report
}
