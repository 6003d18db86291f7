//! `hub-rbac`: what RBAC authorization costs a non-admin request on `atoll hub` (release build,
//! redb) with N pull-mode agents' ClusterRoles and ClusterRoleBindings stored: GET latency by
//! one client, steady, and right after an RBAC write (when a cached policy is rebuilt).
//! `--baseline` measures an earlier build in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::hub_api::{client_from, start_hub_with};

pub struct Options {
    pub agents: usize,
    pub requests: usize,
    pub atoll: PathBuf,
    pub baseline: Option<PathBuf>,
}

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
    after_write_p50_ms: f64,
}

const NAMESPACE: &str = "bench-rbac";
const TOKEN: &str = "bench-agent-token";

fn agent_user(i: usize) -> String {
    format!("atoll:agent:cluster-{i}")
}

/// What a pull-mode agent is granted cluster-wide, roughly: its own ClusterProfile's status,
/// its CSRs, and (for the measured request) one ConfigMap.
fn agent_objects(i: usize) -> anyhow::Result<(ClusterRole, ClusterRoleBinding)> {
    let name = format!("atoll-agent-cluster-{i}");
    let role = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["clusterprofiles", "clusterprofiles/status"],
             "verbs": ["get", "update", "patch"], "resourceNames": [format!("cluster-{i}")]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["probe"]},
        ],
    }))?;
    let binding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": agent_user(i)}],
    }))?;
    Ok((role, binding))
}

async fn token_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key_data = None;
    config.auth_info.token = Some(TOKEN.to_string().into());
    Ok(kube::Client::try_from(config)?)
}

async fn fill(admin: &kube::Client, agents: usize) -> anyhow::Result<()> {
    crate::hub_api::ensure_namespace(admin, NAMESPACE).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), NAMESPACE);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "probe"}}))?,
        )
        .await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let roles: Api<ClusterRole> = Api::all(admin.clone());
        let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= agents {
                    return anyhow::Ok(());
                }
                let (role, binding) = agent_objects(i)?;
                roles.create(&PostParams::default(), &role).await?;
                bindings.create(&PostParams::default(), &binding).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q) as usize]
}

async fn measure(dir: &Path, opts: &Options) -> anyhow::Result<Figures> {
    let kubeconfig = dir.join("admin.kubeconfig");
    let admin = client_from(&kubeconfig).await?;
    fill(&admin, opts.agents).await?;
    let agent: Api<ConfigMap> = Api::namespaced(token_client(&kubeconfig).await?, NAMESPACE);
    for _ in 0..50 {
        agent.get("probe").await?;
    }
    let mut times = Vec::with_capacity(opts.requests);
    let start = Instant::now();
    for _ in 0..opts.requests {
        let at = Instant::now();
        agent.get("probe").await?;
        times.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    let per_second = opts.requests as f64 / start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);

    // Each RBAC write (a label on another agent's ClusterRole) makes the next request rebuild
    // a cached policy.
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let other = format!("atoll-agent-cluster-{}", opts.agents.saturating_sub(1));
    let mut after_write = Vec::new();
    for i in 0..100 {
        roles
            .patch(
                &other,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"bench": i.to_string()}}})),
            )
            .await?;
        let at = Instant::now();
        agent.get("probe").await?;
        after_write.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    after_write.sort_by(f64::total_cmp);
    Ok(Figures {
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        per_second,
        after_write_p50_ms: percentile(&after_write, 0.5),
    })
}

async fn measure_hub(binary: &Path, opts: &Options) -> anyhow::Result<Figures> {
    let dir = std::env::temp_dir().join(format!("atoll-bench-rbac-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{TOKEN},{},1\n", agent_user(0)))?;
    let data = dir.join("data");
    let mut hub = start_hub_with(
        binary,
        &data,
        &["--token-auth-file".as_ref(), tokens.as_os_str()],
    )
    .with_context(|| format!("starting {}", binary.display()))?;
    let result = measure(&data, opts).await;
    let _ = hub.kill();
    let _ = hub.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if let Some(baseline) = &opts.baseline {
        rows.push((
            "atoll hub, baseline build",
            measure_hub(baseline, &opts).await?,
        ));
    }
    rows.push(("atoll hub", measure_hub(&opts.atoll, &opts).await?));
    println!(
        "| server | agents | GET p50 (ms) | GET p99 (ms) | GETs/s, 1 client | GET after an RBAC write, p50 (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, f) in &rows {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.0} | {:.2} |",
            opts.agents, f.p50_ms, f.p99_ms, f.per_second, f.after_write_p50_ms
        );
    }
    Ok(())
}
