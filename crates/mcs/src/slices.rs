//! EndpointSlices as data: the fields MCS copies, identical in `discovery.k8s.io/v1` and
//! `v1beta1`, and the choice of version by discovery.
//!
//! Slices are handled as [`DynamicObject`]s with the [`ApiResource`] a cluster serves, so
//! one code path writes v1 where it is served and v1beta1 where it is not (Kubernetes 1.20).
//! Only fields with the same JSON shape in both versions are copied: `addressType`,
//! endpoint `addresses`, `conditions.ready` and `hostname`, and `ports`. Topology (v1beta1
//! `topology`, v1 `nodeName`/`zone`) and `targetRef` name things of the source cluster and
//! are left out.

use std::time::Duration;

use kube::api::DynamicObject;
use kube::core::ApiResource;
use serde::{Deserialize, Serialize};

/// The EndpointSlice API group.
pub const GROUP: &str = "discovery.k8s.io";
/// Versions in order of preference.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The copied part of an EndpointSlice.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SliceData {
    /// IPv4, IPv6 or FQDN.
    pub address_type: String,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointData>,
    /// The ports; `None` (all ports) is kept apart from an empty list.
    #[serde(default)]
    pub ports: Option<Vec<PortData>>,
}

/// One endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointData {
    /// Its addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: ConditionsData,
    /// Its DNS hostname (headless and StatefulSet pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Endpoint conditions: only `ready`, the one every version serves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConditionsData {
    /// Whether the endpoint is ready; unknown (treated as ready) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// One port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortData {
    /// The port's name; the API server stores `""` for none.
    #[serde(default)]
    pub name: Option<String>,
    /// TCP when unset.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// The application protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl SliceData {
    /// Reads the copied fields of a slice, in the form the API server stores them (so that a
    /// slice read back compares equal to the one written). `None` if unreadable.
    pub fn read(slice: &DynamicObject) -> Option<SliceData> {
        SliceData::deserialize(&slice.data)
            .ok()
            .map(SliceData::normalized)
    }

    /// Defaults filled in as the API server fills them: port name `""`, protocol TCP.
    pub fn normalized(mut self) -> SliceData {
        for port in self.ports.iter_mut().flatten() {
            if port.name.is_none() {
                port.name = Some(String::new());
            }
            if port.protocol.is_none() {
                port.protocol = Some("TCP".into());
            }
        }
        self
    }

    /// The slice's fields as the top-level `data` of a [`DynamicObject`].
    pub fn to_data(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The EndpointSlice resource `client`'s cluster serves: v1 when served, else v1beta1.
/// Retries with backoff until one is found; the caller stops it by dropping the future.
pub async fn discover(client: &kube::Client) -> ApiResource {
    let mut delay = Duration::from_millis(200);
    loop {
        match kube::discovery::group(client, GROUP).await {
            Ok(group) => {
                let found = VERSIONS.iter().find_map(|version| {
                    group
                        .versioned_resources(version)
                        .into_iter()
                        .find(|(resource, _)| resource.kind == "EndpointSlice")
                        .map(|(resource, _)| resource)
                });
                if let Some(resource) = found {
                    return resource;
                }
                tracing::warn!("no EndpointSlice in discovery.k8s.io v1 or v1beta1; retrying");
            }
            Err(error) => tracing::warn!(%error, "discovering EndpointSlices; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v1beta1_slices_read_the_same() -> Result<(), serde_json::Error> {
        let v1: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "demo"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true},
                           "nodeName": "n1", "zone": "z", "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
        }))?;
        let v1beta1: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "demo"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                           "topology": {"kubernetes.io/hostname": "n1"}}],
            "ports": [{"name": "http", "port": 80}]
        }))?;
        let (a, b) = (SliceData::read(&v1), SliceData::read(&v1beta1));
        assert!(a.is_some());
        assert_eq!(a, b);
        Ok(())
    }

    #[test]
    fn written_data_reads_back_equal() {
        let data = SliceData {
            address_type: "IPv4".into(),
            endpoints: vec![EndpointData {
                addresses: vec!["10.0.0.1".into()],
                conditions: ConditionsData { ready: Some(true) },
                hostname: Some("web-0".into()),
            }],
            ports: Some(vec![PortData {
                port: Some(80),
                ..Default::default()
            }]),
        }
        .normalized();
        let mut object = DynamicObject::new(
            "x",
            &ApiResource {
                group: GROUP.into(),
                version: "v1".into(),
                api_version: "discovery.k8s.io/v1".into(),
                kind: "EndpointSlice".into(),
                plural: "endpointslices".into(),
            },
        );
        object.data = data.to_data();
        assert_eq!(SliceData::read(&object), Some(data));
    }
}
