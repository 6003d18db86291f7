//! The zone as data: an index of imported services and the pure function from a question
//! (name, type) to an [`Answer`].
//!
//! Every DNS rule of the crate lives here, so it can be tested without sockets or clusters.
//!
//! # The name tree
//!
//! With `<zone>` the configured zone, the names that exist are:
//!
//! | name                                           | records                  |
//! |------------------------------------------------|--------------------------|
//! | `<zone>`                                       | SOA, NS                  |
//! | `dns-version.<zone>`                           | TXT                      |
//! | the NS name, when in the zone with addresses   | A/AAAA (and its parents, empty) |
//! | `svc.<zone>`                                   | none (always exists)     |
//! | `<ns>.svc.<zone>`, when a service is in `<ns>` | none                     |
//! | `<svc>.<ns>.svc.<zone>`                        | A/AAAA, SRV (every port) |
//! | `_<proto>.<svc>.<ns>.svc.<zone>`               | none (parent of the next)|
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>`       | SRV                      |
//! | `<clusterid>.<svc>.<ns>.svc.<zone>` (headless) | none (parent of the next)|
//! | `<host>.<clusterid>.<svc>.<ns>.svc.<zone>`     | A/AAAA (headless)        |
//!
//! Following the KEP, a headless service without any ready endpoint has no names at all
//! (NXDOMAIN), and a ClusterSetIP service has no per-cluster names. A name that exists but
//! has no record of the asked type answers NODATA (NOERROR, empty answer, SOA in authority);
//! any other name in the zone answers NXDOMAIN with the SOA (RFC 2308). Because only names
//! with records or with existing descendants exist, an NXDOMAIN never hides an existing
//! descendant (RFC 8020).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use atoll_api::mcs::ServiceImportType;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::domain::Label;
use hickory_server::proto::rr::rdata::{A, AAAA, HINFO, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use crate::Error;

/// The zone KEP-1645 mandates.
pub const DEFAULT_ZONE: &str = "clusterset.local";
/// The name server's name, relative to the zone, unless configured otherwise.
pub const DEFAULT_NS_PREFIX: &str = "ns.dns";
/// TTL of every record but `dns-version`, and the SOA minimum (the negative-caching TTL).
/// Five seconds, as in CoreDNS's `multicluster` and `kubernetes` plugins: endpoints move.
pub const DEFAULT_TTL: u32 = 5;
/// The schema version in the `dns-version` TXT record.
///
/// KEP-1645's `specification.md` says 1.0.0; CoreDNS's `multicluster` plugin, the reference
/// implementation the conformance suite runs against, answers "1.1.0" (the version of the
/// cluster-local Kubernetes DNS schema it extends). Clients compare against what deployed
/// servers say, so Atoll answers like CoreDNS.
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` record, as in the KEP's example and CoreDNS.
pub const DNS_VERSION_TTL: u32 = 28_800;
/// SRV priority and weight, as in the KEP's example (`SRV 10 100 443 ...`); the KEP leaves
/// them open, and equal values make clients spread load evenly.
const SRV_PRIORITY: u16 = 10;
const SRV_WEIGHT: u16 = 100;
/// SOA timers, as CoreDNS sets them. Nothing transfers this zone, so they are nominal.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86_400;

/// The CPU field of the HINFO that answers ANY (RFC 8482 §4.2; its OS field is empty).
pub const RFC8482_HINFO_CPU: &str = "RFC8482";

/// The zone served, its name server and its TTL.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    zone: Name,
    hostmaster: Name,
    ns_name: Name,
    ns_addresses: Vec<IpAddr>,
    ttl: u32,
}

impl ZoneConfig {
    /// The zone `zone` (e.g. `clusterset.local`), with name server `ns.dns.<zone>` without
    /// addresses and TTL [`DEFAULT_TTL`].
    pub fn new(zone: &str) -> Result<Self, Error> {
        let zone = parse_name(zone)?;
        if zone.is_root() {
            return Err(Error::InvalidName {
                name: zone.to_string(),
                reason: "the root cannot be served".into(),
            });
        }
        let below = |prefix: &str| {
            parse_name(prefix)?
                .append_domain(&zone)
                .map_err(|e| invalid(&format!("{prefix}.{zone}"), e))
        };
        Ok(Self {
            hostmaster: below("hostmaster")?,
            ns_name: below(DEFAULT_NS_PREFIX)?,
            zone,
            ns_addresses: Vec::new(),
            ttl: DEFAULT_TTL,
        })
    }

    /// Names the zone's name server (the NS record and the SOA MNAME).
    pub fn with_ns_name(mut self, name: &str) -> Result<Self, Error> {
        self.ns_name = parse_name(name)?;
        Ok(self)
    }

    /// Gives the name server addresses. When the NS name is inside the zone, it then answers
    /// A/AAAA with them, and NS answers carry them as glue.
    pub fn with_ns_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ns_addresses = dedup(addresses);
        self
    }

    /// Overrides [`DEFAULT_TTL`].
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// The zone's apex, lowercase and fully qualified.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The name server's name.
    pub fn ns_name(&self) -> &Name {
        &self.ns_name
    }

    /// The name server's addresses.
    pub fn ns_addresses(&self) -> &[IpAddr] {
        &self.ns_addresses
    }

    /// The TTL of answers and the SOA minimum.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The NS name's labels below the apex, leaf first, when it is inside the zone and has
    /// addresses (only then does the zone own records for it).
    fn ns_relative_labels(&self) -> Option<Vec<String>> {
        if self.ns_addresses.is_empty() || !self.zone.zone_of(&self.ns_name) {
            return None;
        }
        let labels = lowercase_labels(&self.ns_name)?;
        let below = labels.len().checked_sub(label_count(&self.zone))?;
        (below > 0).then(|| {
            labels
                .into_iter()
                .take(below)
                .map(Cow::into_owned)
                .collect()
        })
    }
}

fn parse_name(name: &str) -> Result<Name, Error> {
    let mut parsed = Name::from_ascii(name).map_err(|e| invalid(name, e))?;
    parsed.set_fqdn(true);
    Ok(parsed.to_lowercase())
}

fn invalid(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::InvalidName {
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

/// A service's identity: its namespace and name, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The namespace (lowercase).
    pub namespace: String,
    /// The ServiceImport's name (lowercase).
    pub name: String,
}

impl ServiceKey {
    /// The key of `name` in `namespace`, lowercased (DNS is case-insensitive).
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_ascii_lowercase(),
            name: name.to_ascii_lowercase(),
        }
    }
}

/// An imported service as DNS needs it: the ServiceImport's type, IPs and ports, and the
/// endpoints from its EndpointSlices, by source cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// ClusterSetIP or Headless.
    pub kind: ServiceImportType,
    /// `spec.ips`: the ClusterSet IPs (IPv4 answer A, IPv6 answer AAAA).
    pub ips: Vec<IpAddr>,
    /// `spec.ports`: SRV records of a ClusterSetIP service.
    pub ports: Vec<Port>,
    /// The endpoints, by source cluster ID. Only headless services answer from them.
    pub clusters: BTreeMap<String, Vec<Endpoint>>,
}

/// A port of a service or of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// The port's name; unnamed ports have no `_<port>._<proto>` SRV name.
    pub name: Option<String>,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its addresses; all of them answer for the endpoint's name.
    pub addresses: Vec<IpAddr>,
    /// The endpoint's hostname (StatefulSet pods have one).
    pub hostname: Option<String>,
    /// `conditions.ready`, with unknown counted as ready. Only ready endpoints are answered.
    pub ready: bool,
    /// The EndpointSlice's ports: the SRV ports of a headless service.
    pub ports: Vec<Port>,
}

/// The answer to one question.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// NOERROR with records; `additionals` holds the addresses of SRV and NS targets.
    Records {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section.
        additionals: Vec<Record>,
    },
    /// The name exists without records of the type: NOERROR, empty, SOA in authority.
    NoData {
        /// The zone's SOA, for the authority section.
        soa: Record,
    },
    /// The name does not exist: NXDOMAIN, SOA in authority.
    NxDomain {
        /// The zone's SOA, for the authority section.
        soa: Record,
    },
    /// The model is not synced yet.
    ServFail,
    /// The name is outside the zone.
    Refused,
}

impl Answer {
    /// The response code to send.
    pub fn response_code(&self) -> ResponseCode {
        match self {
            Answer::Records { .. } | Answer::NoData { .. } => ResponseCode::NoError,
            Answer::NxDomain { .. } => ResponseCode::NXDomain,
            Answer::ServFail => ResponseCode::ServFail,
            Answer::Refused => ResponseCode::Refused,
        }
    }

    /// Whether the answer speaks for the zone (the AA bit).
    pub fn is_authoritative(&self) -> bool {
        matches!(
            self,
            Answer::Records { .. } | Answer::NoData { .. } | Answer::NxDomain { .. }
        )
    }
}

/// The zone's contents: an index of services and whether it is synced, behind a lock.
///
/// Writers ([`apply`](Self::apply) and friends) replace whole services; readers
/// ([`answer`](Self::answer)) hold the read lock only while building one answer.
#[derive(Debug)]
pub struct Model {
    config: ZoneConfig,
    ns_labels: Option<Vec<String>>,
    state: RwLock<State>,
}

#[derive(Debug)]
struct State {
    synced: bool,
    serial: u32,
    services: BTreeMap<ServiceKey, Service>,
}

impl Model {
    /// An empty, unsynced model of the zone `config` describes.
    pub fn new(config: ZoneConfig) -> Self {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Self {
            ns_labels: config.ns_relative_labels(),
            config,
            state: RwLock::new(State {
                synced: false,
                serial,
                services: BTreeMap::new(),
            }),
        }
    }

    /// The zone's configuration.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// Whether the model holds a complete view (answers are SERVFAIL until then).
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// Marks the model synced (or not).
    pub fn set_synced(&self, synced: bool) {
        self.write().synced = synced;
    }

    /// Inserts or replaces a service.
    pub fn upsert(&self, key: ServiceKey, service: Service) {
        self.apply([(key, Some(service))]);
    }

    /// Removes a service.
    pub fn remove(&self, key: &ServiceKey) {
        self.apply([(key.clone(), None)]);
    }

    /// Applies a batch of changes at once: `Some` inserts or replaces, `None` removes.
    pub fn apply(&self, changes: impl IntoIterator<Item = (ServiceKey, Option<Service>)>) {
        let mut state = self.write();
        let mut changed = false;
        for (key, service) in changes {
            changed |= match service {
                Some(service) if state.services.get(&key) == Some(&service) => false,
                Some(service) => {
                    state.services.insert(key, service);
                    true
                }
                None => state.services.remove(&key).is_some(),
            };
        }
        if changed {
            state.serial = state.serial.wrapping_add(1);
        }
    }

    /// Replaces every service.
    pub fn replace_all(&self, services: impl IntoIterator<Item = (ServiceKey, Service)>) {
        let services: BTreeMap<_, _> = services.into_iter().collect();
        let mut state = self.write();
        if state.services != services {
            state.services = services;
            state.serial = state.serial.wrapping_add(1);
        }
    }

    /// A copy of one service.
    pub fn service(&self, key: &ServiceKey) -> Option<Service> {
        self.read().services.get(key).cloned()
    }

    /// How many services the model holds.
    pub fn len(&self) -> usize {
        self.read().services.len()
    }

    /// Whether the model holds no service.
    pub fn is_empty(&self) -> bool {
        self.read().services.is_empty()
    }

    /// The zone's SOA record; its serial changes whenever the contents do.
    pub fn soa(&self) -> Record {
        self.soa_record(self.read().serial)
    }

    /// Answers `rtype` at `name`. Matching is case-insensitive; answer records are owned by
    /// `name` as asked, other names are lowercase.
    pub fn answer(&self, name: &Name, rtype: RecordType) -> Answer {
        let mut qname = name.clone();
        qname.set_fqdn(true);
        if !self.config.zone.zone_of(&qname) {
            return Answer::Refused;
        }
        let state = self.read();
        if !state.synced {
            return Answer::ServFail;
        }
        // A label that is not UTF-8 names nothing Kubernetes could have created.
        let labels = lowercase_labels(&qname);
        let node = match &labels {
            Some(labels) => {
                let below = labels.len().saturating_sub(label_count(&self.config.zone));
                let mut relative: Vec<&str> = labels[..below].iter().map(Cow::as_ref).collect();
                relative.reverse();
                self.resolve(&state, &relative)
            }
            None => Node::Missing,
        };
        if let Node::Missing = node {
            return Answer::NxDomain {
                soa: self.soa_record(state.serial),
            };
        }
        let mut out = Output::default();
        let types: &[RecordType] = if rtype == RecordType::ANY {
            &[
                RecordType::SOA,
                RecordType::NS,
                RecordType::TXT,
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
            ]
        } else {
            std::slice::from_ref(&rtype)
        };
        for &rtype in types {
            self.records(&state, &node, &qname, rtype, &mut out);
        }
        if rtype == RecordType::ANY && !out.answers.is_empty() {
            // RFC 8482 §4.2: a name with records answers ANY with one synthesized HINFO, not
            // every record it has (which made ANY an amplifier).
            out = Output::default();
            out.answer(Record::from_rdata(
                qname.clone(),
                self.config.ttl,
                RData::HINFO(HINFO::new(RFC8482_HINFO_CPU.to_owned(), String::new())),
            ));
        }
        if out.answers.is_empty() {
            Answer::NoData {
                soa: self.soa_record(state.serial),
            }
        } else {
            Answer::Records {
                answers: out.answers,
                additionals: out.additionals,
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finds the node `relative` (labels below the apex, apex-side first) names.
    fn resolve<'s>(&self, state: &'s State, relative: &[&'s str]) -> Node<'s> {
        if let Some(ns_labels) = &self.ns_labels {
            // ns_labels is leaf first; compare from the apex side.
            let apex_first = ns_labels.iter().rev().map(String::as_str);
            if relative.len() <= ns_labels.len()
                && apex_first.take(relative.len()).eq(relative.iter().copied())
            {
                if relative.len() == ns_labels.len() {
                    return Node::NsHost;
                }
                if !relative.is_empty() {
                    return Node::Empty;
                }
            }
        }
        match relative {
            [] => Node::Apex,
            ["dns-version"] => Node::DnsVersion,
            ["svc"] => Node::Empty,
            ["svc", namespace] => {
                if namespace_has_services(state, namespace) {
                    Node::Empty
                } else {
                    Node::Missing
                }
            }
            ["svc", namespace, name, rest @ ..] => {
                let Some((key, service)) = state
                    .services
                    .get_key_value(&ServiceKey::new(namespace, name))
                else {
                    return Node::Missing;
                };
                let view = ServiceView::new(key, service);
                if !view.exists() {
                    return Node::Missing;
                }
                match rest {
                    [] => Node::Service(view),
                    [proto] if proto.starts_with('_') => {
                        let proto = &proto[1..];
                        if view
                            .srv_ports()
                            .iter()
                            .any(|p| p.name.is_some() && p.protocol.eq_ignore_ascii_case(proto))
                        {
                            Node::Empty
                        } else {
                            Node::Missing
                        }
                    }
                    [cluster] => {
                        if view.hosts().keys().any(|(c, _)| c == cluster) {
                            Node::Empty
                        } else {
                            Node::Missing
                        }
                    }
                    [proto, port] if proto.starts_with('_') => {
                        let filter = port.strip_prefix('_').map(|port| PortFilter {
                            name: port,
                            protocol: &proto[1..],
                        });
                        match filter {
                            Some(filter) if view.srv_ports().iter().any(|p| filter.matches(p)) => {
                                Node::Srv(view, filter)
                            }
                            _ => Node::Missing,
                        }
                    }
                    [cluster, host] => {
                        if view
                            .hosts()
                            .contains_key(&(cluster.to_string(), host.to_string()))
                        {
                            Node::Host(view, cluster, host)
                        } else {
                            Node::Missing
                        }
                    }
                    _ => Node::Missing,
                }
            }
            _ => Node::Missing,
        }
    }

    /// Appends the records of type `rtype` at `node` (owned by `qname`) to `out`.
    fn records(
        &self,
        state: &State,
        node: &Node<'_>,
        qname: &Name,
        rtype: RecordType,
        out: &mut Output,
    ) {
        let ttl = self.config.ttl;
        match (node, rtype) {
            (Node::Apex, RecordType::SOA) => {
                let mut soa = self.soa_record(state.serial);
                soa.name = qname.clone();
                out.answer(soa);
            }
            (Node::Apex, RecordType::NS) => {
                out.answer(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::NS(NS(self.config.ns_name.clone())),
                ));
                if self.config.zone.zone_of(&self.config.ns_name) {
                    out.addresses(
                        &self.config.ns_name,
                        ttl,
                        self.config.ns_addresses.iter().copied(),
                    );
                }
            }
            (Node::DnsVersion, RecordType::TXT) => out.answer(Record::from_rdata(
                qname.clone(),
                DNS_VERSION_TTL,
                RData::TXT(TXT::new(vec![DNS_SCHEMA_VERSION.to_owned()])),
            )),
            (Node::NsHost, RecordType::A | RecordType::AAAA) => {
                out.answer_addresses(qname, ttl, rtype, self.config.ns_addresses.iter().copied());
            }
            (Node::Service(view), RecordType::A | RecordType::AAAA) => {
                out.answer_addresses(qname, ttl, rtype, view.addresses());
            }
            (Node::Service(view), RecordType::SRV) => self.srv(view, None, qname, out),
            (Node::Srv(view, filter), RecordType::SRV) => self.srv(view, Some(filter), qname, out),
            (Node::Host(view, cluster, host), RecordType::A | RecordType::AAAA) => {
                if let Some((addresses, _)) =
                    view.hosts().get(&(cluster.to_string(), host.to_string()))
                {
                    out.answer_addresses(qname, ttl, rtype, addresses.iter().copied());
                }
            }
            _ => {}
        }
    }

    fn srv(
        &self,
        view: &ServiceView<'_>,
        filter: Option<&PortFilter<'_>>,
        qname: &Name,
        out: &mut Output,
    ) {
        let ttl = self.config.ttl;
        let wanted = |port: &Port| filter.is_none_or(|f| f.matches(port));
        let Some(service_name) = self.service_name(view.key) else {
            return;
        };
        match view.service.kind {
            ServiceImportType::ClusterSetIP => {
                let mut any = false;
                for port in view.service.ports.iter().filter(|p| wanted(p)) {
                    any = true;
                    out.answer(srv_record(qname, ttl, port.port, service_name.clone()));
                }
                if any {
                    out.addresses(&service_name, ttl, view.service.ips.iter().copied());
                }
            }
            ServiceImportType::Headless => {
                for ((cluster, host), (addresses, ports)) in view.hosts() {
                    let target = label(cluster).zip(label(host)).and_then(|(c, h)| {
                        service_name.prepend_label(c).ok()?.prepend_label(h).ok()
                    });
                    let Some(target) = target else { continue };
                    let mut any = false;
                    for port in ports.iter().filter(|p| wanted(p)) {
                        any = true;
                        out.answer(srv_record(qname, ttl, port.port, target.clone()));
                    }
                    if any {
                        out.addresses(&target, ttl, addresses.iter().copied());
                    }
                }
            }
        }
    }

    /// `<svc>.<ns>.svc.<zone>.`
    fn service_name(&self, key: &ServiceKey) -> Option<Name> {
        self.config
            .zone
            .prepend_label(label("svc")?)
            .ok()?
            .prepend_label(label(&key.namespace)?)
            .ok()?
            .prepend_label(label(&key.name)?)
            .ok()
    }

    fn soa_record(&self, serial: u32) -> Record {
        Record::from_rdata(
            self.config.zone.clone(),
            self.config.ttl,
            RData::SOA(SOA::new(
                self.config.ns_name.clone(),
                self.config.hostmaster.clone(),
                serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                self.config.ttl,
            )),
        )
    }
}

fn srv_record(owner: &Name, ttl: u32, port: u16, target: Name) -> Record {
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::SRV(SRV::new(SRV_PRIORITY, SRV_WEIGHT, port, target)),
    )
}

fn namespace_has_services(state: &State, namespace: &str) -> bool {
    let from = ServiceKey {
        namespace: namespace.to_owned(),
        name: String::new(),
    };
    state
        .services
        .range(from..)
        .next()
        .is_some_and(|(key, _)| key.namespace == namespace)
}

/// A node of the name tree (see the module docs).
enum Node<'s> {
    Apex,
    DnsVersion,
    NsHost,
    /// Exists, owns no records.
    Empty,
    Service(ServiceView<'s>),
    Srv(ServiceView<'s>, PortFilter<'s>),
    Host(ServiceView<'s>, &'s str, &'s str),
    Missing,
}

/// `_<port>._<proto>`, without the underscores.
struct PortFilter<'s> {
    name: &'s str,
    protocol: &'s str,
}

impl PortFilter<'_> {
    fn matches(&self, port: &Port) -> bool {
        port.name
            .as_deref()
            .is_some_and(|name| name.eq_ignore_ascii_case(self.name))
            && port.protocol.eq_ignore_ascii_case(self.protocol)
    }
}

/// A service with its headless host table computed on demand.
struct ServiceView<'s> {
    key: &'s ServiceKey,
    service: &'s Service,
    hosts: std::cell::OnceCell<Hosts>,
}

/// `(cluster, host label)` → (addresses, ports), for the ready endpoints of a headless
/// service. Cluster IDs and host labels are lowercase.
type Hosts = BTreeMap<(String, String), (BTreeSet<IpAddr>, BTreeSet<Port>)>;

impl<'s> ServiceView<'s> {
    fn new(key: &'s ServiceKey, service: &'s Service) -> Self {
        Self {
            key,
            service,
            hosts: std::cell::OnceCell::new(),
        }
    }

    fn ready_endpoints(&self) -> impl Iterator<Item = (&'s String, &'s Endpoint)> + 's {
        self.service
            .clusters
            .iter()
            .flat_map(|(cluster, endpoints)| endpoints.iter().map(move |e| (cluster, e)))
            .filter(|(_, e)| e.ready && !e.addresses.is_empty())
    }

    /// A ClusterSetIP service always exists; a headless one while it has a ready endpoint
    /// (KEP-1645: "If there are no ready endpoints for the headless Service, the answer
    /// should be NXDOMAIN").
    fn exists(&self) -> bool {
        match self.service.kind {
            ServiceImportType::ClusterSetIP => true,
            ServiceImportType::Headless => self.ready_endpoints().next().is_some(),
        }
    }

    /// The service name's addresses: the ClusterSet IPs, or every ready endpoint address.
    fn addresses(&self) -> Vec<IpAddr> {
        match self.service.kind {
            ServiceImportType::ClusterSetIP => dedup(self.service.ips.iter().copied()),
            ServiceImportType::Headless => dedup(
                self.ready_endpoints()
                    .flat_map(|(_, e)| e.addresses.iter().copied()),
            ),
        }
    }

    /// The ports SRV records can be made of.
    fn srv_ports(&self) -> Vec<&Port> {
        match self.service.kind {
            ServiceImportType::ClusterSetIP => self.service.ports.iter().collect(),
            ServiceImportType::Headless => self
                .hosts()
                .values()
                .flat_map(|(_, ports)| ports.iter())
                .collect(),
        }
    }

    /// The per-endpoint names of a headless service (none for ClusterSetIP, per the KEP).
    fn hosts(&self) -> &Hosts {
        self.hosts.get_or_init(|| {
            let mut hosts = Hosts::new();
            if self.service.kind != ServiceImportType::Headless {
                return hosts;
            }
            for (cluster, endpoint) in self.ready_endpoints() {
                let cluster = cluster.to_ascii_lowercase();
                if label(&cluster).is_none() {
                    continue;
                }
                let hostname = endpoint
                    .hostname
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .filter(|h| label(h).is_some());
                let named: Vec<(String, Vec<IpAddr>)> = match hostname {
                    Some(host) => vec![(host, endpoint.addresses.clone())],
                    None => endpoint
                        .addresses
                        .iter()
                        .map(|ip| (dashed(ip), vec![*ip]))
                        .collect(),
                };
                for (host, addresses) in named {
                    let entry = hosts.entry((cluster.clone(), host)).or_default();
                    entry.0.extend(addresses);
                    entry.1.extend(endpoint.ports.iter().cloned());
                }
            }
            hosts
        })
    }
}

/// An address as a DNS label: `10.1.2.3` → `10-1-2-3`, `fd00::1` → `fd00--1`.
fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// `s` as a DNS label if it is one Kubernetes could produce: 1–63 of `[a-z0-9_-]` (any case).
fn label(s: &str) -> Option<Label> {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Label::from_raw_bytes(s.to_ascii_lowercase().as_bytes()).ok()
    } else {
        None
    }
}

/// The labels of `name`, leaf first, lowercased; borrowed when already lowercase (queries
/// usually are), so answering a query does not copy every label.
fn lowercase_labels(name: &Name) -> Option<Vec<Cow<'_, str>>> {
    name.iter()
        .map(|label| {
            let label = std::str::from_utf8(label).ok()?;
            Some(if label.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(label.to_ascii_lowercase())
            } else {
                Cow::Borrowed(label)
            })
        })
        .collect()
}

fn label_count(name: &Name) -> usize {
    name.iter().count()
}

fn dedup(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut seen = BTreeSet::new();
    addresses
        .into_iter()
        .filter(|ip| seen.insert(*ip))
        .collect()
}

/// The answer and additional sections being built, without duplicates.
#[derive(Default)]
struct Output {
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

impl Output {
    fn answer(&mut self, record: Record) {
        if !self.answers.contains(&record) {
            self.answers.push(record);
        }
    }

    fn answer_addresses(
        &mut self,
        owner: &Name,
        ttl: u32,
        rtype: RecordType,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) {
        for record in address_records(owner, ttl, addresses) {
            if record.record_type() == rtype {
                self.answer(record);
            }
        }
    }

    fn addresses(&mut self, owner: &Name, ttl: u32, addresses: impl IntoIterator<Item = IpAddr>) {
        for record in address_records(owner, ttl, addresses) {
            if !self.additionals.contains(&record) {
                self.additionals.push(record);
            }
        }
    }
}

fn address_records(
    owner: &Name,
    ttl: u32,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> impl Iterator<Item = Record> {
    addresses.into_iter().map(move |ip| {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner.clone(), ttl, data)
    })
}

#[cfg(test)]
mod tests;
