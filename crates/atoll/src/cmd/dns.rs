//! `atoll dns`.

use crate::cmd::controller::shutdown_signal;
use crate::connect::MemberArgs;

/// Flags of `atoll dns`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to serve on, UDP and TCP.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:53")]
    listen: std::net::SocketAddr,
    /// Zone to serve.
    #[arg(long, value_name = "ZONE", default_value = atoll_dns::model::DEFAULT_ZONE)]
    zone: String,
    /// Name of the zone's name server, in NS and SOA records [default: ns.dns.<zone>].
    #[arg(long, value_name = "NAME")]
    ns_name: Option<String>,
    /// Address of the name server, for its A/AAAA record and NS glue; repeatable.
    #[arg(long = "ns-address", value_name = "IP")]
    ns_addresses: Vec<std::net::IpAddr>,
    /// UDP responses a second per client prefix (/24, /56), as BIND's response rate
    /// limiting; past it queries are dropped or answered TC. 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 100)]
    rate_limit: u32,
    /// Every N-th rate-limited query gets an empty TC response (a real client then retries
    /// over TCP, which is not limited); 0 drops them all.
    #[arg(long, value_name = "N", default_value_t = 2)]
    rate_limit_slip: u32,
    /// The member cluster whose ServiceImports and EndpointSlices are served.
    #[command(flatten)]
    member: MemberArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.member.client("atoll dns").await?;
    let mut zone = atoll_dns::ZoneConfig::new(&args.zone)?.with_ns_addresses(args.ns_addresses);
    if let Some(name) = &args.ns_name {
        zone = zone.with_ns_name(name)?;
    }
    let cancel = atoll_dns::CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let listen = args.listen;
    let rate_limit = atoll_dns::RateLimit {
        slip: args.rate_limit_slip,
        ..atoll_dns::RateLimit::per_second(args.rate_limit)
    };
    atoll_dns::run(
        client,
        atoll_dns::Options {
            listen,
            zone,
            rate_limit,
        },
        cancel,
    )
    .await?;
    Ok(())
}
