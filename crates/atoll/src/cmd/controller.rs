//! `atoll controller`: every hub-side controller in one process, against any Kubernetes hub,
//! with leader election so that two replicas can run. `atoll hub` runs the same controllers
//! ([`run_controllers`]) inside itself, over its in-process client.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use atoll_controllers::inventory::{self, DEFAULT_MANAGER_NAMESPACE, status::HealthConfig};
use atoll_controllers::leader::{Elector, LeaseConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta};
use tracing::info;

use crate::connect::ClusterArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    options: ControllerOptions,
    #[command(flatten)]
    hub: ClusterArgs,
}

/// How the hub-side controllers run; shared by `atoll controller` and `atoll hub`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerOptions {
    /// Hub namespace that holds ClusterProfiles and the leader-election Lease.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    /// Seconds between health probes of each member.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    health_period: f64,
    /// Seconds one probe may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    health_timeout: f64,
    /// Consecutive failed probes before a member is unhealthy.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    failure_threshold: u32,
    /// Consecutive good probes before an unhealthy member is healthy again.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    success_threshold: u32,
    /// Seconds a pull-mode agent may go without renewing its Lease before its cluster's
    /// health turns Unknown and it is tainted unreachable.
    #[arg(long, value_name = "SECONDS", default_value_t = 40.0)]
    agent_lease_grace: f64,
    /// Accept every pull-mode agent that registers with a valid bootstrap token, without
    /// `atoll accept`.
    #[arg(long)]
    auto_accept: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = crate::connect::CONTROLLER_LEASE)]
    lease_name: String,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("--{name} must be a positive number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    run_controllers(hub, args.options, shutdown_signal()).await
}

/// Campaigns for leadership on `hub`, then runs every hub-side controller until `shutdown`
/// resolves or leadership is lost (an error, so that a restart campaigns again).
pub async fn run_controllers(
    hub: kube::Client,
    args: ControllerOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let health = HealthConfig {
        period: seconds("health-period", args.health_period)?,
        timeout: seconds("health-timeout", args.health_timeout)?,
        failure_threshold: args.failure_threshold,
        success_threshold: args.success_threshold,
        lease_grace: seconds("agent-lease-grace", args.agent_lease_grace)?,
    };
    // The leader-election Lease and the ClusterProfiles live here; a fresh hub has no such
    // namespace yet.
    let manager_namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(args.manager_namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    atoll_controllers::kubeutil::ensure_namespace(
        &Api::all(hub.clone()),
        &manager_namespace,
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("creating the manager namespace {}", args.manager_namespace))?;
    let identity = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "atoll".into()),
        std::process::id()
    );
    let elector = Elector::new(
        hub.clone(),
        LeaseConfig {
            namespace: args.manager_namespace.clone(),
            name: args.lease_name,
            identity: identity.clone(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        },
    );
    tokio::pin!(shutdown);

    info!(%identity, "waiting for leadership");
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        acquired = elector.acquire() => acquired?,
    }
    info!(%identity, "leading; starting controllers");
    // One watch and cache of ClusterProfiles for the status, MCS and Work controllers.
    let mut profile_feed = inventory::profiles::ProfileFeed::new();
    let status_profiles = profile_feed.subscribe();
    let mcs_profiles = profile_feed.subscribe();
    let work_profiles = profile_feed.subscribe();
    // The other controllers are level-triggered and stop at once; appliers get to finish the
    // Works in flight (below).
    let others = {
        let profile_feed = profile_feed.run(hub.clone(), &args.manager_namespace);
        let status = inventory::status::run_with(
            hub.clone(),
            args.manager_namespace.clone(),
            health,
            status_profiles,
            std::future::pending(),
        );
        let registrar = inventory::pull::run_registrar(
            hub.clone(),
            args.manager_namespace.clone(),
            args.auto_accept,
            std::future::pending(),
        );
        let mcs = atoll_controllers::mcs::run_with(
            hub.clone(),
            args.manager_namespace.clone(),
            mcs_profiles,
            std::future::pending(),
        );
        async move {
            tokio::join!(profile_feed, status, registrar, mcs);
        }
    };
    let (stop_work, work_stopped) = tokio::sync::oneshot::channel::<()>();
    let work = atoll_controllers::work::run_with(
        hub,
        atoll_work::ApplierConfig::default(),
        work_profiles,
        async move {
            let _ = work_stopped.await;
        },
    );
    tokio::pin!(others);
    tokio::pin!(work);
    let (outcome, work_running) = tokio::select! {
        () = &mut shutdown => (Ok(()), true),
        _ = &mut others => (Ok(()), true),
        () = &mut work => (Ok(()), false),
        () = elector.hold() => (Err(anyhow::anyhow!("lost leadership; exiting so that a restart campaigns again")), true),
    };
    if work_running {
        // Appliers finish their in-flight Works before the lease goes to the next leader.
        let _ = stop_work.send(());
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut work).await;
    }
    elector.release().await?;
    info!("stopped");
    outcome
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}
