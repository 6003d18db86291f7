//! The schema model that drives a strategic merge patch (and, later, server-side apply): named
//! types as upstream's OpenAPI spec describes them, each field with its patch strategy and
//! merge key, each list with its list type and map keys, each map with its map type.
//!
//! Its table form (`table/builtin.json`, written by [`crate::generate`]) is JSON:
//! - a type: `"scalar"`, `"untyped"`, `{"ref": "<definition>"}`,
//!   `{"list": <type>, "listType"?: "atomic|set|map", "listMapKeys"?: [..]}` or
//!   `{"map": <type>, "mapType"?: "atomic|granular"}`;
//! - a definition: `{"struct": "<Go name>", "fields": {<json name>: <field>}, "required"?: [..],
//!   "mapType"?}`,
//!   or a type;
//! - a field: `{"type": <type>, "patchStrategy"?: "merge,retainKeys", "patchMergeKey"?: ".."}`;
//! - `kinds`: `"<apiVersion>/<Kind>"` to the root definition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

/// A type, where it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    Scalar,
    /// Any JSON (an object without declared properties, such as `RawExtension`).
    Untyped,
    /// A named definition.
    Ref(String),
    List(Box<ListTy>),
    Map(Box<MapTy>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListTy {
    pub items: Ty,
    /// `x-kubernetes-list-type`.
    pub list_type: Option<String>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapTy {
    pub values: Ty,
    /// `x-kubernetes-map-type`.
    pub map_type: Option<String>,
}

/// A named definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Def {
    Struct(StructDef),
    Other(Ty),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructDef {
    /// The Go type's name (upstream's errors name it).
    pub go_name: String,
    pub fields: BTreeMap<String, Field>,
    /// The fields the spec marks required (Go fields without `omitempty`, mostly).
    pub required: BTreeSet<String>,
    /// `x-kubernetes-map-type` on the struct.
    pub map_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub ty: Ty,
    /// `x-kubernetes-patch-strategy`, as written (comma-separated).
    pub patch_strategy: Option<String>,
    /// `x-kubernetes-patch-merge-key`.
    pub patch_merge_key: Option<String>,
}

/// The metadata a field gives a strategic merge patch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatchMeta<'a> {
    pub strategy: Option<&'a str>,
    pub merge_key: Option<&'a str>,
}

/// A set of named definitions and the kinds they root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub defs: BTreeMap<String, Def>,
    /// `"<apiVersion>/<Kind>"` to its root definition.
    pub kinds: BTreeMap<String, String>,
}

/// A position in a schema.
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    Struct(&'a Schema, &'a StructDef),
    /// A map; the values' type.
    Map(&'a Schema, &'a Ty),
    Scalar,
    Untyped,
}

/// Why a table does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the merge table is malformed at {0}")]
pub struct TableError(pub String);

static BUILTIN: LazyLock<Result<Schema, TableError>> = LazyLock::new(|| {
    let table: Value = serde_json::from_str(include_str!("../table/builtin.json"))
        .map_err(|e| TableError(e.to_string()))?;
    Schema::from_table(&table)
});

impl Schema {
    /// The committed table of the built-in kinds.
    pub fn builtin() -> Result<&'static Schema, TableError> {
        BUILTIN.as_ref().map_err(Clone::clone)
    }

    /// The root of a kind, if the schema has it.
    pub fn root(&self, api_version: &str, kind: &str) -> Option<Node<'_>> {
        let def = self.kinds.get(&format!("{api_version}/{kind}"))?;
        Some(self.named(def))
    }

    /// Where a named definition leads.
    pub fn named<'a>(&'a self, name: &str) -> Node<'a> {
        match self.defs.get(name) {
            Some(Def::Struct(def)) => Node::Struct(self, def),
            Some(Def::Other(Ty::Ref(_))) | None => Node::Untyped,
            Some(Def::Other(other)) => self.node(other),
        }
    }

    /// Where a type leads.
    pub fn node<'a>(&'a self, ty: &'a Ty) -> Node<'a> {
        match ty {
            Ty::Scalar => Node::Scalar,
            Ty::Untyped | Ty::List(_) => Node::Untyped,
            Ty::Map(map) => Node::Map(self, &map.values),
            Ty::Ref(name) => self.named(name),
        }
    }

    /// Reads a table.
    pub fn from_table(table: &Value) -> Result<Schema, TableError> {
        let mut schema = Schema::default();
        for (name, def) in object(table.get("definitions"), "definitions")? {
            let def = match def.get("struct") {
                Some(go_name) => {
                    let mut fields = BTreeMap::new();
                    for (field, spec) in object(def.get("fields"), name)? {
                        let at = || format!("{name}.{field}");
                        fields.insert(
                            field.clone(),
                            Field {
                                ty: read_ty(spec.get("type"), &at())?,
                                patch_strategy: opt_str(spec.get("patchStrategy"), &at())?,
                                patch_merge_key: opt_str(spec.get("patchMergeKey"), &at())?,
                            },
                        );
                    }
                    let required = match def.get("required") {
                        None => BTreeSet::new(),
                        Some(Value::Array(names)) => names
                            .iter()
                            .map(|n| str_of(Some(n), name).map(str::to_string))
                            .collect::<Result<_, _>>()?,
                        Some(_) => return Err(TableError(name.clone())),
                    };
                    Def::Struct(StructDef {
                        go_name: str_of(Some(go_name), name)?.to_string(),
                        fields,
                        required,
                        map_type: opt_str(def.get("mapType"), name)?,
                    })
                }
                None => Def::Other(read_ty(Some(def), name)?),
            };
            schema.defs.insert(name.clone(), def);
        }
        for (kind, root) in object(table.get("kinds"), "kinds")? {
            schema
                .kinds
                .insert(kind.clone(), str_of(Some(root), kind)?.to_string());
        }
        Ok(schema)
    }

    /// Writes the table form.
    pub fn to_table(&self) -> Value {
        let mut defs = Map::new();
        for (name, def) in &self.defs {
            let value = match def {
                Def::Struct(s) => {
                    let mut fields = Map::new();
                    for (field, spec) in &s.fields {
                        let mut f = Map::new();
                        f.insert("type".into(), write_ty(&spec.ty));
                        if let Some(strategy) = &spec.patch_strategy {
                            f.insert("patchStrategy".into(), json!(strategy));
                        }
                        if let Some(key) = &spec.patch_merge_key {
                            f.insert("patchMergeKey".into(), json!(key));
                        }
                        fields.insert(field.clone(), Value::Object(f));
                    }
                    let mut out = Map::new();
                    out.insert("struct".into(), json!(s.go_name));
                    out.insert("fields".into(), Value::Object(fields));
                    if !s.required.is_empty() {
                        out.insert("required".into(), json!(s.required));
                    }
                    if let Some(map_type) = &s.map_type {
                        out.insert("mapType".into(), json!(map_type));
                    }
                    Value::Object(out)
                }
                Def::Other(ty) => write_ty(ty),
            };
            defs.insert(name.clone(), value);
        }
        json!({ "definitions": defs, "kinds": self.kinds })
    }
}

impl<'a> Node<'a> {
    fn field(self, key: &str) -> Result<Option<&'a Field>, crate::Error> {
        match self {
            Node::Struct(_, def) => Ok(def.fields.get(key)),
            // Upstream reflects on the Go map type and fails.
            Node::Map(..) => Err(crate::Error::NotAStruct),
            Node::Scalar | Node::Untyped => Ok(None),
        }
    }

    fn schema(self) -> Option<&'a Schema> {
        match self {
            Node::Struct(schema, _) | Node::Map(schema, _) => Some(schema),
            Node::Scalar | Node::Untyped => None,
        }
    }

    /// `LookupPatchMetadataForStruct`: the schema of a map-valued key and its metadata. A key
    /// the schema does not declare is untyped (see ARCHITECTURE.md for this gap).
    pub fn lookup_struct(self, key: &str) -> Result<(Node<'a>, PatchMeta<'a>), crate::Error> {
        let Some(field) = self.field(key)? else {
            return Ok((Node::Untyped, PatchMeta::default()));
        };
        let node = match (self.schema(), &field.ty) {
            (Some(schema), ty) => schema.node(ty),
            (None, _) => Node::Untyped,
        };
        Ok((node, meta(field)))
    }

    /// `LookupPatchMetadataForSlice`: the schema of a list-valued key's items and its
    /// metadata.
    pub fn lookup_slice(self, key: &str) -> Result<(Node<'a>, PatchMeta<'a>), crate::Error> {
        let Some(field) = self.field(key)? else {
            return Ok((Node::Untyped, PatchMeta::default()));
        };
        let node = match (self.schema(), &field.ty) {
            (Some(schema), Ty::List(list)) => schema.node(&list.items),
            _ => Node::Untyped,
        };
        Ok((node, meta(field)))
    }

    /// `Name()` of upstream's struct-backed schema: the Go kind.
    pub fn go_kind(self) -> &'static str {
        match self {
            Node::Struct(..) => "struct",
            Node::Map(..) => "map",
            Node::Scalar => "string",
            Node::Untyped => "interface",
        }
    }

    /// Whether an empty map or list at `key` is dropped by the typed round trip: an optional
    /// field (not required) whose type is a map or a list (Go's `omitempty` on a map or slice;
    /// an empty struct behind a pointer is kept).
    pub fn omits_empty(self, key: &str, value: &Value) -> bool {
        let Node::Struct(_, def) = self else {
            return false;
        };
        let Some(field) = def.fields.get(key) else {
            return false;
        };
        if def.required.contains(key) {
            return false;
        }
        match (&field.ty, value) {
            (Ty::Map(_), Value::Object(map)) => map.is_empty(),
            (Ty::List(_), Value::Array(items)) => items.is_empty(),
            _ => false,
        }
    }

    /// Whether a key is a declared field (a struct's) or may hold anything (maps, untyped).
    pub fn declares(self, key: &str) -> bool {
        match self {
            Node::Struct(_, def) => def.fields.contains_key(key),
            Node::Map(..) | Node::Scalar | Node::Untyped => true,
        }
    }
}

fn meta(field: &Field) -> PatchMeta<'_> {
    PatchMeta {
        strategy: field.patch_strategy.as_deref(),
        merge_key: field.patch_merge_key.as_deref(),
    }
}

fn object<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a Map<String, Value>, TableError> {
    v.and_then(Value::as_object)
        .ok_or_else(|| TableError(at.to_string()))
}

fn str_of<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a str, TableError> {
    v.and_then(Value::as_str)
        .ok_or_else(|| TableError(at.to_string()))
}

fn opt_str(v: Option<&Value>, at: &str) -> Result<Option<String>, TableError> {
    match v {
        None => Ok(None),
        Some(v) => Ok(Some(str_of(Some(v), at)?.to_string())),
    }
}

fn read_ty(v: Option<&Value>, at: &str) -> Result<Ty, TableError> {
    let err = || TableError(at.to_string());
    match v.ok_or_else(err)? {
        Value::String(s) if s == "scalar" => Ok(Ty::Scalar),
        Value::String(s) if s == "untyped" => Ok(Ty::Untyped),
        Value::Object(o) => {
            if let Some(name) = o.get("ref") {
                return Ok(Ty::Ref(str_of(Some(name), at)?.to_string()));
            }
            if let Some(items) = o.get("list") {
                let keys = match o.get("listMapKeys") {
                    None => Vec::new(),
                    Some(Value::Array(keys)) => keys
                        .iter()
                        .map(|k| str_of(Some(k), at).map(str::to_string))
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(err()),
                };
                return Ok(Ty::List(Box::new(ListTy {
                    items: read_ty(Some(items), at)?,
                    list_type: opt_str(o.get("listType"), at)?,
                    list_map_keys: keys,
                })));
            }
            if let Some(values) = o.get("map") {
                return Ok(Ty::Map(Box::new(MapTy {
                    values: read_ty(Some(values), at)?,
                    map_type: opt_str(o.get("mapType"), at)?,
                })));
            }
            Err(err())
        }
        _ => Err(err()),
    }
}

fn write_ty(ty: &Ty) -> Value {
    match ty {
        Ty::Scalar => json!("scalar"),
        Ty::Untyped => json!("untyped"),
        Ty::Ref(name) => json!({ "ref": name }),
        Ty::List(list) => {
            let mut out = Map::new();
            out.insert("list".into(), write_ty(&list.items));
            if let Some(t) = &list.list_type {
                out.insert("listType".into(), json!(t));
            }
            if !list.list_map_keys.is_empty() {
                out.insert("listMapKeys".into(), json!(list.list_map_keys));
            }
            Value::Object(out)
        }
        Ty::Map(map) => {
            let mut out = Map::new();
            out.insert("map".into(), write_ty(&map.values));
            if let Some(t) = &map.map_type {
                out.insert("mapType".into(), json!(t));
            }
            Value::Object(out)
        }
    }
}

impl<'a> Node<'a> {
    /// A map's value type (server-side apply walks into map values by it).
    pub fn map_values(self) -> Option<Node<'a>> {
        match self {
            Node::Map(schema, values) => Some(schema.node(values)),
            _ => None,
        }
    }
}
