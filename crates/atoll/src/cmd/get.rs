//! `atoll get clusters`: the fleet at a glance, as kubectl prints tables.

use std::io::Write;

use anyhow::Context;
use atoll_api::about::{CLUSTER_ID_PROPERTY, CLUSTER_SET_PROPERTY};
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, CONDITION_CONTROL_PLANE_HEALTHY, CONDITION_JOINED, ClusterProfile,
    ClusterProfileStatus, LABEL_CLUSTER_MANAGER, LABEL_MODE,
};
use atoll_controllers::inventory::DEFAULT_MANAGER_NAMESPACE;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::connect::ClusterArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Joined clusters: health, version, ID and ClusterSet.
    #[command(alias = "cluster")]
    Clusters(ClustersArgs),
    /// Works and the status of each of their manifests, of one cluster or all.
    #[command(alias = "work")]
    Works(super::work::GetArgs),
}

#[derive(clap::Args)]
struct ClustersArgs {
    /// Output format: a table (default), json or yaml.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// After listing, watch for changes and print each changed cluster.
    #[arg(short, long)]
    watch: bool,
    /// Hub namespace that holds ClusterProfiles.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
    Yaml,
}

const HEADER: [&str; 9] = [
    "NAME",
    "JOINED",
    "HEALTHY",
    "VERSION",
    "MODE",
    "CLUSTER-ID",
    "CLUSTERSET",
    "REASON",
    "AGE",
];

pub async fn run(args: Args) -> anyhow::Result<()> {
    let args = match args.what {
        What::Clusters(args) => args,
        What::Works(args) => return super::work::get(args).await,
    };
    let hub = args.hub.client().await?;
    let api: Api<ClusterProfile> = Api::namespaced(hub, &args.manager_namespace);
    let selector = format!("{LABEL_CLUSTER_MANAGER}={ATOLL_CLUSTER_MANAGER}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing ClusterProfiles on the hub")?;
    let mut stdout = std::io::stdout().lock();
    match args.output {
        Output::Table if list.items.is_empty() => {
            crate::output::no_resources(Some(&args.manager_namespace));
        }
        Output::Table => {
            let rows: Vec<_> = list.items.iter().map(row).collect();
            write!(stdout, "{}", table(&HEADER, &rows))?;
        }
        Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&list)?)?,
        Output::Yaml => write!(stdout, "{}", serde_saphyr::to_string(&list)?)?,
    }
    stdout.flush()?;
    drop(stdout);
    if !args.watch {
        return Ok(());
    }
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut initial = true;
    while let Some(event) = events.next().await {
        let profile = match event? {
            Event::InitDone => {
                initial = false;
                continue;
            }
            Event::Apply(profile) | Event::Delete(profile) => profile,
            Event::Init | Event::InitApply(_) => continue,
        };
        if initial {
            continue;
        }
        let mut stdout = std::io::stdout().lock();
        match args.output {
            Output::Table => {
                let line = table(&HEADER, &[row(&profile)]);
                // Rows after the first table have no header, as with kubectl -w.
                write!(stdout, "{}", line.lines().nth(1).unwrap_or_default())?;
                writeln!(stdout)?;
            }
            Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&profile)?)?,
            Output::Yaml => write!(stdout, "---\n{}", serde_saphyr::to_string(&profile)?)?,
        }
        stdout.flush()?;
    }
    Ok(())
}

fn row(profile: &ClusterProfile) -> [String; 9] {
    let none = ClusterProfileStatus::default();
    let status = profile.status.as_ref().unwrap_or(&none);
    let condition = |type_: &str| {
        atoll_api::conditions::find(&status.conditions, type_)
            .map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap_or_else(|| ("Unknown".into(), String::new()))
    };
    let property = |name: &str| {
        status
            .property(name)
            .map(|p| p.value.clone())
            .unwrap_or_else(|| "<none>".into())
    };
    let (healthy, reason) = condition(CONDITION_CONTROL_PLANE_HEALTHY);
    let age = profile
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| age(Timestamp::now().as_second() - t.0.as_second()))
        .unwrap_or_else(|| "<unknown>".into());
    [
        profile.metadata.name.clone().unwrap_or_default(),
        condition(CONDITION_JOINED).0,
        healthy,
        status
            .version
            .as_ref()
            .and_then(|v| v.kubernetes.clone())
            .unwrap_or_else(|| "<unknown>".into()),
        profile
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MODE))
            .cloned()
            .unwrap_or_else(|| "<unknown>".into()),
        property(CLUSTER_ID_PROPERTY),
        property(CLUSTER_SET_PROPERTY),
        if reason.is_empty() {
            "<none>".into()
        } else {
            reason
        },
        age,
    ]
}

/// kubectl's age format: 45s, 12m, 5h, 3d.
pub(crate) fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(text.join("   ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let rows = [[
            "member-1".to_owned(),
            "True".into(),
            "False".into(),
            "v1.20.2".into(),
            "pull".into(),
            "id".into(),
            "set".into(),
            "Unreachable".into(),
            "5m".into(),
        ]];
        let text = table(&HEADER, &rows);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME       JOINED   HEALTHY   VERSION"));
        assert!(lines[1].starts_with("member-1   True     False     v1.20.2"));
        assert_eq!(lines[0].find("AGE"), lines[1].find("5m"));
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 86_400), "3d");
        assert_eq!(age(-5), "0s");
    }
}
