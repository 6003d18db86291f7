//! Pull mode: `atoll token create`, `atoll accept`, `atoll rotate-credentials` on the hub, and
//! `atoll agent` in the member.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use atoll_agent::{AgentOptions, ClusterTask, Exit, HubEndpoint};
use atoll_controllers::inventory::pull::{self, AGENT_LEASE, ANNOTATION_ROTATE, BootstrapToken};
use atoll_controllers::inventory::{DEFAULT_MANAGER_NAMESPACE, cluster_namespace};
use base64::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};

use crate::cmd::controller::shutdown_signal;
use crate::cmd::join::parse_labels;
use crate::connect::{ClusterArgs, MemberArgs};

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a short-lived bootstrap token and print the `atoll agent` command that uses it.
    Create(TokenCreateArgs),
    /// List the bootstrap tokens that still work or wait: cluster, expiry, state.
    List(TokenListArgs),
    /// Revoke a bootstrap token by its id (the part before the dot), or every token of a
    /// cluster.
    Revoke(TokenRevokeArgs),
}

#[derive(clap::Args)]
pub struct TokenListArgs {
    /// Hub namespace that holds ClusterProfiles and bootstrap identities.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(clap::Args)]
pub struct TokenRevokeArgs {
    /// The token's id, as `atoll token list` shows it.
    #[arg(
        value_name = "NAME",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    name: Option<String>,
    /// Revoke every token made for this cluster, or whose agent asks for it.
    #[arg(long, value_name = "CLUSTER")]
    cluster: Option<String>,
    /// Hub namespace that holds ClusterProfiles and bootstrap identities.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(clap::Args)]
pub struct TokenCreateArgs {
    /// How long the token works, such as 30m, 1h or 2h30m.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// The cluster the token is for: it registers only this name, which the printed command
    /// carries.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// The ClusterSet the agent joins (carried into the printed command).
    #[arg(long, value_name = "SET")]
    clusterset: Option<String>,
    /// Labels for the ClusterProfile, as k=v,k=v (carried into the printed command).
    #[arg(long, value_name = "K=V,...", value_delimiter = ',')]
    labels: Vec<String>,
    /// The hub URL agents dial, when it differs from the kubeconfig's.
    #[arg(long, value_name = "URL")]
    hub_server: Option<String>,
    /// Hub namespace that holds ClusterProfiles and bootstrap identities.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(clap::Args)]
pub struct AcceptArgs {
    /// The cluster whose agent is waiting; without it, list the waiting agents.
    name: Option<String>,
    /// Give a joined pull-mode cluster's name to this new agent, revoking the current agent's
    /// certificate at once (for a member rebuilt or moved to new hardware).
    #[arg(long, requires = "name")]
    replace: bool,
    /// Hub namespace that holds ClusterProfiles.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_MANAGER_NAMESPACE)]
    manager_namespace: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(clap::Args)]
pub struct RotateArgs {
    /// The pull-mode cluster whose agent should get new credentials.
    name: String,
    #[command(flatten)]
    hub: ClusterArgs,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The cluster's name on the hub.
    #[arg(long, value_name = "NAME", required_unless_present = "reset")]
    name: Option<String>,
    /// Clear this member's pull-mode registration (stored hub credentials, the namespace and
    /// About API properties the agent wrote) and exit. The hub is not told: unjoin the
    /// cluster there, or accept its next registration with `atoll accept NAME --replace`.
    #[arg(long, conflicts_with_all = ["hub_server", "token"])]
    reset: bool,
    /// The hub's URL (needed to register; afterwards it is stored in the member).
    #[arg(long, value_name = "URL")]
    hub_server: Option<String>,
    /// The hub's CA, base64 PEM (as `atoll token create` prints it).
    #[arg(long, value_name = "BASE64", conflicts_with = "hub_ca")]
    hub_ca_data: Option<String>,
    /// The hub's CA, a PEM file.
    #[arg(long, value_name = "FILE")]
    hub_ca: Option<PathBuf>,
    /// The bootstrap token (needed to register).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ATOLL_BOOTSTRAP_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The cluster ID to use when the member has none; the UID of kube-system by default.
    #[arg(long, value_name = "ID")]
    cluster_id: Option<String>,
    /// The ClusterSet to join.
    #[arg(long, value_name = "SET", default_value = "default")]
    clusterset: String,
    /// Labels for the ClusterProfile, as k=v,k=v.
    #[arg(long, value_name = "K=V,...", value_delimiter = ',')]
    labels: Vec<String>,
    /// Seconds between Lease renewals.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    lease_period: u64,
    /// The member cluster (the agent's own).
    #[command(flatten)]
    member: MemberArgs,
}

/// Durations as 90s, 30m, 1h, 2h30m, 1d.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{text:?}: unknown unit {c:?}; use s, m, h or d")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "{text:?}: the last number has no unit (s, m, h or d)"
        ));
    }
    if total == 0 {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

fn pem_from_der(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => token_create(args).await,
        TokenCommand::List(args) => token_list(args).await,
        TokenCommand::Revoke(args) => token_revoke(args).await,
    }
}

async fn token_create(args: TokenCreateArgs) -> anyhow::Result<()> {
    let labels = parse_labels(&args.labels)?;
    let config = args.hub.config().await?;
    let server = args.hub_server.clone().unwrap_or_else(|| {
        config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned()
    });
    let ca_pem: String = config
        .root_cert
        .as_ref()
        .map(|certs| certs.iter().map(|der| pem_from_der(der)).collect())
        .unwrap_or_default();
    if ca_pem.is_empty() {
        bail!(
            "the hub kubeconfig names no certificate authority, so agents could not verify the hub; use a kubeconfig with certificate-authority(-data)"
        );
    }
    let hub = kube::Client::try_from(config)?;
    let intent = pull::TokenIntent {
        cluster: args.cluster.clone(),
        cluster_set: args.clusterset.clone(),
        labels: labels.clone(),
    };
    let created =
        pull::create_bootstrap_token_for(&hub, &args.manager_namespace, args.ttl, &intent).await?;
    let name = args.cluster.as_deref().unwrap_or("CLUSTER_NAME");
    eprintln!(
        "bootstrap token {} created; it registers one cluster and expires at {}",
        created.token.id, created.expires_at
    );
    eprintln!("run this with the member's kubeconfig:");
    let mut extra = String::new();
    if let Some(set) = &args.clusterset {
        extra.push_str(&format!(" --clusterset {set}"));
    }
    if !labels.is_empty() {
        let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        extra.push_str(&format!(" --labels {}", joined.join(",")));
    }
    println!(
        "atoll agent --kubeconfig MEMBER_KUBECONFIG --name {name}{extra} --hub-server {server} --hub-ca-data {} --token {}",
        base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes()),
        created.token
    );
    Ok(())
}

/// Columns padded as kubectl pads them: three spaces after the widest cell.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// How long until `at`, as kubectl prints ages: 45s, 12m, 3h, 2d.
fn until(at: Timestamp, now: Timestamp) -> String {
    let seconds = at.duration_since(now).as_secs();
    if seconds <= 0 {
        return "<expired>".into();
    }
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

async fn token_list(args: TokenListArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    let now = Timestamp::now();
    let tokens = pull::list_bootstrap_tokens(&hub, &args.manager_namespace, now).await?;
    if tokens.is_empty() {
        eprintln!(
            "No resources found in {} namespace.",
            args.manager_namespace
        );
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "CLUSTER".to_owned(),
        "EXPIRES".to_owned(),
        "STATE".to_owned(),
    ]];
    for token in tokens {
        rows.push(vec![
            token.id,
            token.cluster.unwrap_or_else(|| "<none>".into()),
            token
                .expires_at
                .map_or_else(|| "<unknown>".into(), |at| until(at, now)),
            token.state.to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn token_revoke(args: TokenRevokeArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    match (args.name, args.cluster) {
        (Some(name), _) => {
            // Accept the whole token too, but never echo its secret.
            let id = name.split('.').next().unwrap_or_default().to_owned();
            let revoked = pull::revoke_bootstrap_tokens(
                &hub,
                &args.manager_namespace,
                Some(id.as_str()),
                Timestamp::now(),
            )
            .await?;
            if revoked == 0 {
                bail!("bootstrap token {id:?} not found (`atoll token list` shows the live ones)");
            }
            println!("bootstrap token {id} revoked");
        }
        (None, Some(cluster)) => {
            let revoked =
                pull::revoke_cluster_tokens(&hub, &args.manager_namespace, &cluster).await?;
            if revoked == 0 {
                bail!(
                    "no bootstrap token of cluster {cluster:?} found (`atoll token list` shows the live ones)"
                );
            }
            println!("{revoked} bootstrap token(s) of cluster {cluster} revoked");
        }
        (None, None) => bail!("name a token, or a cluster with --cluster"),
    }
    Ok(())
}

pub async fn accept(args: AcceptArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    let Some(name) = args.name else {
        let pending = pull::pending_registrations(&hub).await?;
        if pending.is_empty() {
            crate::output::no_resources(None);
            return Ok(());
        }
        let rows: Vec<[String; 5]> = pending
            .into_iter()
            .map(|r| {
                [
                    r.cluster,
                    r.cluster_id,
                    r.cluster_set,
                    r.kubernetes_version,
                    r.csr,
                ]
            })
            .collect();
        let header = ["NAME", "CLUSTER-ID", "CLUSTERSET", "VERSION", "REQUEST"];
        print!("{}", crate::cmd::get::table(&header, &rows));
        return Ok(());
    };
    let accepted = pull::accept_with(
        &hub,
        &args.manager_namespace,
        &name,
        pull::AcceptOptions {
            replace: args.replace,
        },
    )
    .await?;
    println!(
        "cluster {name} accepted (cluster ID {}, ClusterSet {}); its hub namespace is {}",
        accepted.registration.cluster_id, accepted.registration.cluster_set, accepted.namespace
    );
    Ok(())
}

pub async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let hub = args.hub.client().await?;
    let leases: Api<Lease> = Api::namespaced(hub, &cluster_namespace(&args.name));
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_ROTATE: Timestamp::now().to_string()}}});
    leases
        .patch(AGENT_LEASE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| {
            format!(
                "asking the agent of {} for rotation (is it a pull-mode cluster with a running agent?)",
                args.name
            )
        })?;
    println!(
        "asked the agent of {} for new credentials; it rotates at its next lease renewal",
        args.name
    );
    Ok(())
}

/// What the agent runs for its cluster while connected: the Work applier, and MCS export and
/// import; the same code as push mode runs on the hub.
pub fn agent_tasks() -> Vec<ClusterTask> {
    let work: ClusterTask = std::sync::Arc::new(|connected: atoll_agent::Connected| {
        Box::pin(atoll_work::run(
            Api::namespaced(connected.hub, &connected.namespace),
            connected.member,
            atoll_work::ApplierConfig::default(),
            std::future::pending(),
        ))
    });
    let mcs: ClusterTask = std::sync::Arc::new(|connected: atoll_agent::Connected| {
        Box::pin(atoll_mcs::member::run(
            atoll_mcs::member::MemberConfig {
                hub: connected.hub,
                hub_namespace: connected.namespace,
                member: connected.member,
                cluster_name: connected.cluster,
                cluster_id: connected.cluster_id,
                member_owner: None,
            },
            std::future::pending(),
        ))
    });
    vec![work, mcs]
}

pub async fn agent(args: AgentArgs, tasks: Vec<ClusterTask>) -> anyhow::Result<()> {
    let member = args.member.client("atoll agent").await?;
    if args.reset {
        match atoll_agent::reset(&member).await? {
            Some(cluster) => println!(
                "the member's registration as cluster {cluster} is cleared; on the hub, `atoll unjoin {cluster}` if it is still joined, or accept its next registration with `atoll accept {cluster} --replace`"
            ),
            None => {
                println!("the member holds no registration; Atoll's footprint, if any, is removed")
            }
        }
        return Ok(());
    }
    let Some(name) = args.name else {
        bail!("--name is required (unless --reset)");
    };
    let ca_pem = match (&args.hub_ca_data, &args.hub_ca) {
        (Some(data), _) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("--hub-ca-data is not base64")?,
        ),
        (None, Some(path)) => Some(
            std::fs::read(path).with_context(|| format!("reading --hub-ca {}", path.display()))?,
        ),
        (None, None) => None,
    };
    let hub = match (args.hub_server, ca_pem) {
        (Some(server), Some(ca_pem)) => Some(HubEndpoint { server, ca_pem }),
        (None, None) => None,
        _ => bail!("--hub-server and --hub-ca-data (or --hub-ca) go together"),
    };
    let bootstrap_token = args
        .token
        .map(|t| t.parse::<BootstrapToken>())
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut options = AgentOptions::new(name.clone(), member);
    options.hub = hub;
    options.bootstrap_token = bootstrap_token;
    options.cluster_id = args.cluster_id;
    options.cluster_set = args.clusterset;
    options.labels = parse_labels(&args.labels)?;
    options.lease_period = Duration::from_secs(args.lease_period.max(1));
    match atoll_agent::run(options, tasks, shutdown_signal()).await? {
        Exit::Shutdown => eprintln!("agent stopped"),
        Exit::Unjoined => {
            println!("cluster {name} was unjoined; the agent removed what it created in the member")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectl_users_write_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in ["", "10", "1x", "h", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
