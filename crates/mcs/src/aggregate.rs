//! The pure part of MCS: from every cluster's export of one service, the ServiceImport the
//! ClusterSet sees, and the Conflict condition of each export (KEP-1645 "Constraints and
//! Conflict Resolution").
//!
//! Rules:
//! - The **oldest export wins** each field: exports are ordered by the creation time of the
//!   ServiceExport in its cluster, ties broken by cluster ID, so every cluster computes the
//!   same answer.
//! - **Ports** are the union by name. When exports define a port name differently (number,
//!   protocol or appProtocol), the oldest export's definition is used. Whenever the exports'
//!   port lists are not all equal (disjoint, or one name with two definitions), that is a
//!   `PortConflict`.
//! - **Type** is `Headless` only when every export is headless; mixed headlessness is a
//!   `TypeConflict` and the import is `ClusterSetIP`.
//! - `sessionAffinity`, `sessionAffinityConfig`, `internalTrafficPolicy`,
//!   `trafficDistribution`, `ipFamilies`, and the exported labels and annotations: the oldest
//!   export's value; any disagreement is a conflict with the upstream reason.
//! - A conflict is a property of the service: **every export involved** (all exports of the
//!   service) carries `Conflict=True` with the first reason in the order above, and a message
//!   naming every field in conflict.

use std::collections::{BTreeMap, BTreeSet};

use atoll_api::mcs::export_conditions::conflict;
use atoll_api::mcs::{ServiceImportSpec, ServiceImportType, ServicePort};
use k8s_openapi::api::core::v1::SessionAffinityConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// What one cluster publishes about one exported Service: its shape, not its endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    /// When the ServiceExport was created in its cluster: the age that decides conflicts.
    pub export_created: Option<Time>,
    /// Whether the Service is headless (`clusterIP: None`).
    #[serde(default)]
    pub headless: bool,
    /// The Service's ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// As in the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// As in the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// As in the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<String>,
    /// As in the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// As in the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// `ServiceExport.spec.exportedLabels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_labels: BTreeMap<String, String>,
    /// `ServiceExport.spec.exportedAnnotations`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_annotations: BTreeMap<String, String>,
}

/// One cluster's export of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    /// The exporting cluster's ID (`cluster.clusterset.k8s.io`).
    pub cluster: String,
    /// Its shape.
    pub service: ExportedService,
}

/// A conflict between exports: the upstream reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The first reason, in the order of the module documentation.
    pub reason: &'static str,
    /// Every field in conflict, and which cluster's value won.
    pub message: String,
}

/// The ServiceImport the ClusterSet sees for one service.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The spec, without `ips` (each importing cluster allocates its own ClusterSet IP).
    pub spec: ServiceImportSpec,
    /// Labels for the ServiceImport (the winning `exportedLabels`).
    pub labels: BTreeMap<String, String>,
    /// Annotations for the ServiceImport (the winning `exportedAnnotations`).
    pub annotations: BTreeMap<String, String>,
    /// `None` when every export agrees; otherwise the conflict every export reports.
    pub conflict: Option<Conflict>,
}

/// Port definitions are unique by name; an unnamed port is named `""`.
fn port_key(port: &ServicePort) -> &str {
    port.name.as_deref().unwrap_or("")
}

/// A port as the API server stores it: protocol TCP when unset, no empty name.
pub fn normalize_port(port: &ServicePort) -> ServicePort {
    ServicePort {
        name: port.name.clone().filter(|n| !n.is_empty()),
        protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
        app_protocol: port.app_protocol.clone().filter(|p| !p.is_empty()),
        port: port.port,
    }
}

fn sorted_ports(ports: &[ServicePort]) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = ports.iter().map(normalize_port).collect();
    ports.sort_by(|a, b| port_key(a).cmp(port_key(b)).then(a.cmp(b)));
    ports.dedup();
    ports
}

/// Aggregates the exports of one service; `None` when there are none.
pub fn aggregate(exports: &[Export]) -> Option<Aggregate> {
    let mut ordered: Vec<&Export> = exports.iter().collect();
    // Oldest first; an export of unknown age counts as newest. Ties by cluster ID.
    ordered.sort_by(|a, b| {
        let age = |e: &Export| e.service.export_created.as_ref().map(|t| t.0);
        match (age(a), age(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.cluster.cmp(&b.cluster))
    });
    let oldest = *ordered.first()?;
    let mut conflicts: Vec<(&'static str, String)> = Vec::new();

    // Ports: union by name, the oldest definition of each name.
    let mut ports: BTreeMap<String, ServicePort> = BTreeMap::new();
    for export in &ordered {
        for port in sorted_ports(&export.service.ports) {
            ports.entry(port_key(&port).to_owned()).or_insert(port);
        }
    }
    let ports: Vec<ServicePort> = ports.into_values().collect();
    let port_lists: BTreeSet<Vec<ServicePort>> = ordered
        .iter()
        .map(|e| sorted_ports(&e.service.ports))
        .collect();
    if port_lists.len() > 1 {
        conflicts.push((
            conflict::PORT_CONFLICT,
            format!(
                "the exported Services' ports differ; the import has the union by name, each name as cluster {:?} (oldest) defines it where they disagree",
                oldest.cluster
            ),
        ));
    }

    let all_headless = ordered.iter().all(|e| e.service.headless);
    let mixed = !all_headless && ordered.iter().any(|e| e.service.headless);
    if mixed {
        conflicts.push((
            conflict::TYPE_CONFLICT,
            "some exported Services are headless and some are not; the import is ClusterSetIP"
                .to_owned(),
        ));
    }

    let mut check = |reason: &'static str, field: &str, differs: bool| {
        if differs {
            conflicts.push((
                reason,
                format!(
                    "{field} differs; cluster {:?}'s (oldest) is used",
                    oldest.cluster
                ),
            ));
        }
    };
    fn differs<T: PartialEq>(exports: &[&Export], field: impl Fn(&ExportedService) -> T) -> bool {
        exports
            .windows(2)
            .any(|w| field(&w[0].service) != field(&w[1].service))
    }
    let affinity = |s: &ExportedService| {
        s.session_affinity
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "None".to_owned())
    };
    check(
        conflict::SESSION_AFFINITY_CONFLICT,
        "sessionAffinity",
        differs(&ordered, affinity),
    );
    check(
        conflict::SESSION_AFFINITY_CONFIG_CONFLICT,
        "sessionAffinityConfig",
        differs(&ordered, |s| s.session_affinity_config.clone()),
    );
    check(
        conflict::LABELS_CONFLICT,
        "exportedLabels",
        differs(&ordered, |s| s.exported_labels.clone()),
    );
    check(
        conflict::ANNOTATIONS_CONFLICT,
        "exportedAnnotations",
        differs(&ordered, |s| s.exported_annotations.clone()),
    );
    check(
        conflict::INTERNAL_TRAFFIC_POLICY_CONFLICT,
        "internalTrafficPolicy",
        differs(&ordered, |s| s.internal_traffic_policy.clone()),
    );
    check(
        conflict::TRAFFIC_DISTRIBUTION_CONFLICT,
        "trafficDistribution",
        differs(&ordered, |s| s.traffic_distribution.clone()),
    );
    check(
        conflict::IP_FAMILY_CONFLICT,
        "ipFamilies",
        differs(&ordered, |s| s.ip_families.clone()),
    );

    let winner = &oldest.service;
    let conflict = conflicts.first().map(|(reason, _)| Conflict {
        reason,
        message: conflicts
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    });
    Some(Aggregate {
        spec: ServiceImportSpec {
            ports,
            ips: Vec::new(),
            type_: if all_headless {
                ServiceImportType::Headless
            } else {
                ServiceImportType::ClusterSetIP
            },
            session_affinity: Some(affinity(winner)),
            session_affinity_config: winner.session_affinity_config.clone(),
            ip_families: winner.ip_families.clone(),
            internal_traffic_policy: winner.internal_traffic_policy.clone(),
            traffic_distribution: winner.traffic_distribution.clone(),
        },
        labels: winner.exported_labels.clone(),
        annotations: winner.exported_annotations.clone(),
        conflict,
    })
}

#[cfg(test)]
mod tests;
