//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for
//! the built-in kinds served here, to the JSON the rest of the server works on. client-go's
//! typed clients (so `kubectl create configmap|secret|namespace|serviceaccount|role|...`) send
//! protobuf; responses stay JSON, which they accept too.
//!
//! The decoder is driven by small field tables that mirror upstream's `generated.proto` field
//! numbers; unknown fields are skipped, as protobuf readers do.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [F]),
    /// metav1.Time: seconds and nanos, RFC 3339 in JSON.
    Time,
    /// metav1.MicroTime.
    MicroTime,
    MapStr,
    MapBytes,
    /// Bytes, base64 in JSON.
    Bytes,
}

#[derive(Clone, Copy)]
struct F {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> F {
    F {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> F {
    F {
        num,
        name,
        ty,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[F] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[F] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::MapStr),
    f(12, "annotations", Ty::MapStr),
    r(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    r(14, "finalizers", Ty::Str),
];

const OBJECT_REFERENCE: &[F] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];

const CONFIG_MAP: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapStr),
    f(3, "binaryData", Ty::MapBytes),
    f(4, "immutable", Ty::Bool),
];

const SECRET: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapBytes),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::MapStr),
    f(5, "immutable", Ty::Bool),
];

const NAMESPACE: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(&[r(1, "finalizers", Ty::Str)])),
    f(3, "status", Ty::Msg(&[f(1, "phase", Ty::Str)])),
];

const SERVICE_ACCOUNT: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    r(3, "imagePullSecrets", Ty::Msg(&[f(1, "name", Ty::Str)])),
    f(4, "automountServiceAccountToken", Ty::Bool),
];

const POLICY_RULE: &[F] = &[
    r(1, "verbs", Ty::Str),
    r(2, "apiGroups", Ty::Str),
    r(3, "resources", Ty::Str),
    r(4, "resourceNames", Ty::Str),
    r(5, "nonResourceURLs", Ty::Str),
];

const LABEL_SELECTOR: &[F] = &[
    f(1, "matchLabels", Ty::MapStr),
    r(
        2,
        "matchExpressions",
        Ty::Msg(&[
            f(1, "key", Ty::Str),
            f(2, "operator", Ty::Str),
            r(3, "values", Ty::Str),
        ]),
    ),
];

const ROLE: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "rules", Ty::Msg(POLICY_RULE)),
];

const CLUSTER_ROLE: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "rules", Ty::Msg(POLICY_RULE)),
    f(
        3,
        "aggregationRule",
        Ty::Msg(&[r(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR))]),
    ),
];

const BINDING: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(
        2,
        "subjects",
        Ty::Msg(&[
            f(1, "kind", Ty::Str),
            f(2, "apiGroup", Ty::Str),
            f(3, "name", Ty::Str),
            f(4, "namespace", Ty::Str),
        ]),
    ),
    f(
        3,
        "roleRef",
        Ty::Msg(&[
            f(1, "apiGroup", Ty::Str),
            f(2, "kind", Ty::Str),
            f(3, "name", Ty::Str),
        ]),
    ),
];

const LEASE: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "holderIdentity", Ty::Str),
            f(2, "leaseDurationSeconds", Ty::Int),
            f(3, "acquireTime", Ty::MicroTime),
            f(4, "renewTime", Ty::MicroTime),
            f(5, "leaseTransitions", Ty::Int),
            f(6, "strategy", Ty::Str),
            f(7, "preferredHolder", Ty::Str),
        ]),
    ),
];

const EVENT: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "involvedObject", Ty::Msg(OBJECT_REFERENCE)),
    f(3, "reason", Ty::Str),
    f(4, "message", Ty::Str),
    f(
        5,
        "source",
        Ty::Msg(&[f(1, "component", Ty::Str), f(2, "host", Ty::Str)]),
    ),
    f(6, "firstTimestamp", Ty::Time),
    f(7, "lastTimestamp", Ty::Time),
    f(8, "count", Ty::Int),
    f(9, "type", Ty::Str),
    f(10, "eventTime", Ty::MicroTime),
    f(
        11,
        "series",
        Ty::Msg(&[
            f(1, "count", Ty::Int),
            f(2, "lastObservedTime", Ty::MicroTime),
        ]),
    ),
    f(12, "action", Ty::Str),
    f(13, "related", Ty::Msg(OBJECT_REFERENCE)),
    f(14, "reportingComponent", Ty::Str),
    f(15, "reportingInstance", Ty::Str),
];

const DELETE_OPTIONS: &[F] = &[
    f(1, "gracePeriodSeconds", Ty::Int),
    f(
        2,
        "preconditions",
        Ty::Msg(&[f(1, "uid", Ty::Str), f(2, "resourceVersion", Ty::Str)]),
    ),
    f(3, "orphanDependents", Ty::Bool),
    f(4, "propagationPolicy", Ty::Str),
    r(5, "dryRun", Ty::Str),
];

const RESOURCE_ATTRIBUTES: &[F] = &[
    f(1, "namespace", Ty::Str),
    f(2, "verb", Ty::Str),
    f(3, "group", Ty::Str),
    f(4, "version", Ty::Str),
    f(5, "resource", Ty::Str),
    f(6, "subresource", Ty::Str),
    f(7, "name", Ty::Str),
];

const NON_RESOURCE_ATTRIBUTES: &[F] = &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)];

const SELF_SUBJECT_ACCESS_REVIEW: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
];

const SUBJECT_ACCESS_REVIEW: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
            f(3, "user", Ty::Str),
            r(4, "groups", Ty::Str),
            f(6, "uid", Ty::Str),
        ]),
    ),
];

const SELF_SUBJECT_REVIEW: &[F] = &[f(1, "metadata", Ty::Msg(OBJECT_META))];

const CSR_CONDITION: &[F] = &[
    f(1, "type", Ty::Str),
    f(2, "reason", Ty::Str),
    f(3, "message", Ty::Str),
    f(4, "lastUpdateTime", Ty::Time),
    f(5, "lastTransitionTime", Ty::Time),
    f(6, "status", Ty::Str),
];

const CERTIFICATE_SIGNING_REQUEST: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "request", Ty::Bytes),
            f(2, "username", Ty::Str),
            f(3, "uid", Ty::Str),
            r(4, "groups", Ty::Str),
            r(5, "usages", Ty::Str),
            f(7, "signerName", Ty::Str),
            f(8, "expirationSeconds", Ty::Int),
        ]),
    ),
    f(
        3,
        "status",
        Ty::Msg(&[
            r(1, "conditions", Ty::Msg(CSR_CONDITION)),
            f(2, "certificate", Ty::Bytes),
        ]),
    ),
];

const TOKEN_REQUEST: &[F] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            r(1, "audiences", Ty::Str),
            f(
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    f(1, "kind", Ty::Str),
                    f(2, "apiVersion", Ty::Str),
                    f(3, "name", Ty::Str),
                    f(4, "uid", Ty::Str),
                ]),
            ),
            f(4, "expirationSeconds", Ty::Int),
        ]),
    ),
];

const TYPE_META: &[F] = &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)];

fn schema_for(kind: &str) -> Option<&'static [F]> {
    Some(match kind {
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "Namespace" => NAMESPACE,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "Role" => ROLE,
        "ClusterRole" => CLUSTER_ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "Lease" => LEASE,
        "Event" => EVENT,
        "DeleteOptions" => DELETE_OPTIONS,
        "SelfSubjectAccessReview" => SELF_SUBJECT_ACCESS_REVIEW,
        "SubjectAccessReview" => SUBJECT_ACCESS_REVIEW,
        "SelfSubjectReview" => SELF_SUBJECT_REVIEW,
        "CertificateSigningRequest" => CERTIFICATE_SIGNING_REQUEST,
        "TokenRequest" => TOKEN_REQUEST,
        _ => return None,
    })
}

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf body of the request is malformed")
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or_else(malformed)?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
}

enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Raw<'_>)>, ApiError> {
    let mut reader = Reader { buf };
    let mut out = Vec::new();
    while !reader.buf.is_empty() {
        let key = reader.varint()?;
        let raw = match key & 7 {
            0 => Raw::Varint(reader.varint()?),
            1 => {
                reader.take(8)?;
                continue;
            }
            2 => {
                let len = usize::try_from(reader.varint()?).map_err(|_| malformed())?;
                Raw::Bytes(reader.take(len)?)
            }
            5 => {
                reader.take(4)?;
                continue;
            }
            _ => return Err(malformed()),
        };
        out.push((key >> 3, raw));
    }
    Ok(out)
}

fn string(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

fn time(bytes: &[u8], micro: bool) -> Result<Value, ApiError> {
    let mut seconds = 0i64;
    let mut nanos = 0i64;
    for (num, raw) in fields(bytes)? {
        match (num, raw) {
            (1, Raw::Varint(v)) => seconds = v as i64,
            (2, Raw::Varint(v)) => nanos = v as i64,
            _ => {}
        }
    }
    let ts = jiff::Timestamp::new(seconds, if micro { nanos as i32 } else { 0 })
        .map_err(|_| malformed())?;
    let text = if micro {
        ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
    } else {
        ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    Ok(json!(text))
}

fn map_entry(bytes: &[u8], value_bytes: bool) -> Result<(String, Value), ApiError> {
    let mut key = String::new();
    let mut value = json!("");
    for (num, raw) in fields(bytes)? {
        match (num, raw) {
            (1, Raw::Bytes(b)) => key = string(b)?,
            (2, Raw::Bytes(b)) if value_bytes => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Raw::Bytes(b)) => value = json!(string(b)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn decode_message(buf: &[u8], schema: &[F]) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for (num, raw) in fields(buf)? {
        let Some(field) = schema.iter().find(|f| f.num == num) else {
            continue;
        };
        let value = match (field.ty, raw) {
            // Upstream's encoder writes empty strings that JSON omits; so does this decoder.
            (Ty::Str, Raw::Bytes([])) if !field.repeated => continue,
            (Ty::Str, Raw::Bytes(b)) => json!(string(b)?),
            (Ty::Int, Raw::Varint(v)) => json!(v as i64),
            (Ty::Bool, Raw::Varint(v)) => json!(v != 0),
            (Ty::Msg(sub), Raw::Bytes(b)) => decode_message(b, sub)?,
            (Ty::Bytes, Raw::Bytes(b)) => {
                json!(base64::engine::general_purpose::STANDARD.encode(b))
            }
            (Ty::Time, Raw::Bytes(b)) => time(b, false)?,
            (Ty::MicroTime, Raw::Bytes(b)) => time(b, true)?,
            (Ty::MapStr | Ty::MapBytes, Raw::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(field.ty, Ty::MapBytes))?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map[k] = v;
                continue;
            }
            _ => return Err(malformed()),
        };
        if field.repeated {
            let list = out.entry(field.name).or_insert_with(|| json!([]));
            if let Some(items) = list.as_array_mut() {
                items.push(value);
            }
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Whether a body is a Kubernetes protobuf envelope.
pub fn is_protobuf(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Decodes a protobuf body (the `k8s\0` envelope around a runtime.Unknown) to JSON.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let inner = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (num, field) in fields(inner)? {
        match (num, field) {
            (1, Raw::Bytes(b)) => {
                let type_meta = decode_message(b, TYPE_META)?;
                api_version = type_meta["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                kind = type_meta["kind"].as_str().unwrap_or_default().to_string();
            }
            (2, Raw::Bytes(b)) => raw = b,
            (3, Raw::Bytes(b)) if !b.is_empty() => {
                return Err(ApiError::bad_request(
                    "compressed protobuf bodies are not supported",
                ));
            }
            _ => {}
        }
    }
    let schema = schema_for(&kind).ok_or_else(|| {
        ApiError::unsupported_media_type(&["application/json", "application/yaml"])
    })?;
    let mut obj = decode_message(raw, schema)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(num: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    #[test]
    fn a_protobuf_configmap_decodes_to_json() -> Result<(), ApiError> {
        let mut labels_entry = Vec::new();
        bytes_field(1, b"app", &mut labels_entry);
        bytes_field(2, b"web", &mut labels_entry);
        let mut meta = Vec::new();
        bytes_field(1, b"settings", &mut meta);
        bytes_field(11, &labels_entry, &mut meta);
        bytes_field(14, b"example.com/f", &mut meta);
        let mut data_entry = Vec::new();
        bytes_field(1, b"k", &mut data_entry);
        bytes_field(2, b"v", &mut data_entry);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &data_entry, &mut cm);
        varint(4 << 3, &mut cm);
        varint(1, &mut cm);
        let mut type_meta = Vec::new();
        bytes_field(1, b"v1", &mut type_meta);
        bytes_field(2, b"ConfigMap", &mut type_meta);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &type_meta, &mut body);
        bytes_field(2, &cm, &mut body);
        assert!(is_protobuf(&body));
        assert_eq!(
            decode(&body)?,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "labels": {"app": "web"}, "finalizers": ["example.com/f"]},
                "data": {"k": "v"}, "immutable": true
            })
        );
        Ok(())
    }
}
