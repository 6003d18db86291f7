//! The engine: a strategic merge patch applied as k8s.io/apimachinery's `strategicpatch`
//! (`StrategicMergeMapPatch`, with `MergeParallelList` and `IgnoreUnmatchedNulls`) applies
//! it on the server, step for step where the order of a result or the wording of an error
//! depends on it. See ARCHITECTURE.md for where it differs.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::gofmt::{self, GoType, go_type};
use crate::schema::Node;

mod order;

const DIRECTIVE: &str = "$patch";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

/// Bounds on the work one patch may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How deep the engine recurses into objects and lists.
    pub max_depth: usize,
    /// How many elementary steps (an element compared, scanned or moved) a patch may take:
    /// upstream's list merges are quadratic, so a 3 MiB patch against a large list would
    /// otherwise spin for minutes.
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 128,
            max_steps: 50_000_000,
        }
    }
}

/// Applies `patch` to `original` (an object of the type at `root`) with the default limits.
pub fn apply(original: &Value, patch: &Value, root: Node<'_>) -> Result<Value, Error> {
    apply_with_limits(original, patch, root, Limits::default())
}

/// Applies `patch` to `original` within `limits`. The result then goes through what upstream's
/// conversion back to the typed object does to it, as far as the schema tells: directives left
/// in it (inside a map that `$patch: replace` put in whole) are dropped where the type declares
/// no such field, and empty optional maps and lists are dropped (`omitempty`).
pub fn apply_with_limits(
    original: &Value,
    patch: &Value,
    root: Node<'_>,
    limits: Limits,
) -> Result<Value, Error> {
    // Checked without recursion before anything recursive (even a clone) walks the values.
    for value in [original, patch] {
        if !within_depth(value, limits.max_depth) {
            return Err(Error::TooDeep {
                limit: limits.max_depth,
            });
        }
    }
    let patch = match patch {
        Value::Object(map) => map.clone(),
        // Go decodes `null` into a map as no change.
        Value::Null => Map::new(),
        Value::Array(_) => return Err(Error::NotAnObject { found: "array" }),
        Value::String(_) => return Err(Error::NotAnObject { found: "string" }),
        Value::Number(_) => return Err(Error::NotAnObject { found: "number" }),
        Value::Bool(_) => return Err(Error::NotAnObject { found: "bool" }),
    };
    let original = original.as_object().cloned().unwrap_or_default();
    let mut engine = Engine { limits, steps: 0 };
    let mut merged = Value::Object(engine.merge_map(original, patch, root, 0)?);
    strip_directives(&mut merged, root, 0, limits.max_depth)?;
    Ok(merged)
}

/// Whether a value nests no deeper than `max` levels, walked with a heap stack.
fn within_depth(value: &Value, max: usize) -> bool {
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth >= max {
            return false;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    true
}

struct Engine {
    limits: Limits,
    steps: u64,
}

/// A merge key's (or a primitive's) value as upstream's `index` compares it: a map's merge
/// key value (null when it has none), or the element itself.
fn order_key<'v>(item: &'v Value, key: &str, kind: GoType) -> &'v Value {
    const NIL: &Value = &Value::Null;
    if kind == GoType::Map {
        item.as_object().and_then(|m| m.get(key)).unwrap_or(NIL)
    } else {
        item
    }
}

fn not_a_map(v: &Value) -> Error {
    Error::BadArgType {
        expected: "map[string]interface {}",
        actual: gofmt::type_name(v),
    }
}

fn not_a_list(v: &Value) -> Error {
    Error::BadArgType {
        expected: "[]interface {}",
        actual: gofmt::type_name(v),
    }
}

fn no_merge_key(item: &Value, key: &str) -> Error {
    Error::NoMergeKey {
        map: gofmt::v(item),
        key: key.to_string(),
    }
}

/// `extractKey`: the list's name after a directive prefix.
fn extract_key(key: &str, prefix: &str) -> Result<String, Error> {
    match key.split_once('/') {
        Some((head, rest)) if head == prefix => Ok(rest.to_string()),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST => Err(Error::BadPatchFormatForPrimitiveList),
        _ => Err(Error::BadPatchFormatForSetElementOrderList),
    }
}

/// `extractRetainKeysPatchStrategy`: the strategy besides `retainKeys`.
fn strategy_of(strategy: Option<&str>) -> Result<&str, Error> {
    let parts: Vec<&str> = strategy.unwrap_or("").split(',').collect();
    match parts.as_slice() {
        [one] if *one == "retainKeys" => Ok(""),
        [one] => Ok(one),
        [a, b] if *a == "retainKeys" => Ok(b),
        [a, b] if *b == "retainKeys" => Ok(a),
        _ => Err(Error::UnexpectedPatchStrategy {
            strategies: format!("[{}]", parts.join(" ")),
        }),
    }
}

/// `sliceElementType`: the one Go type of every element of the lists.
fn slice_element_type(lists: &[&[Value]]) -> Result<GoType, Error> {
    let mut prev = None;
    for list in lists {
        for item in list.iter() {
            let t = go_type(item);
            match prev {
                None if t == GoType::Nil => {
                    return Err(Error::Panic {
                        why: "a merged list's first element is null",
                    });
                }
                None if t == GoType::Slice => return Err(Error::NoListOfLists),
                None => prev = Some(t),
                Some(p) if p != t => {
                    return Err(Error::ElementTypesDiffer {
                        lists: gofmt::v_lists(lists),
                    });
                }
                Some(_) => {}
            }
        }
    }
    prev.ok_or(Error::NoElements)
}

fn is_delete_item(item: &Value) -> bool {
    item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete")
}

/// `extractToDeleteItems`: `$patch: delete` elements apart from the rest.
fn split_deletions(list: Vec<Value>) -> Result<(Vec<Value>, Vec<Value>), Error> {
    let mut keep = Vec::with_capacity(list.len());
    let mut delete = Vec::new();
    for item in list {
        if !item.is_object() {
            return Err(not_a_map(&item));
        }
        if is_delete_item(&item) {
            delete.push(item);
        } else {
            keep.push(item);
        }
    }
    Ok((keep, delete))
}

/// `validateMergeKeyInLists`.
fn validate_merge_keys(key: &str, lists: &[&[Value]]) -> Result<(), Error> {
    for item in lists.iter().flat_map(|l| l.iter()) {
        let map = item.as_object().ok_or_else(|| not_a_map(item))?;
        if !map.contains_key(key) {
            return Err(no_merge_key(item, key));
        }
    }
    Ok(())
}

impl Engine {
    fn charge(&mut self, n: usize) -> Result<(), Error> {
        self.steps = self.steps.saturating_add(n as u64);
        if self.steps > self.limits.max_steps {
            return Err(Error::TooExpensive {
                limit: self.limits.max_steps,
            });
        }
        Ok(())
    }

    fn descend(&self, depth: usize) -> Result<usize, Error> {
        if depth >= self.limits.max_depth {
            return Err(Error::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        Ok(depth + 1)
    }

    /// `mergeMap`.
    fn merge_map(
        &mut self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
        node: Node<'_>,
        depth: usize,
    ) -> Result<Map<String, Value>, Error> {
        let depth = self.descend(depth)?;
        self.charge(patch.len())?;
        if let Some(directive) = patch.get(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => {
                    patch.remove(DIRECTIVE);
                    Ok(patch)
                }
                Some("delete") => Ok(Map::new()),
                _ => Err(Error::BadPatchType {
                    directive: gofmt::s(directive),
                    map: gofmt::v(&Value::Object(patch.clone())),
                }),
            };
        }
        self.apply_retain_keys(&mut original, &mut patch)?;
        self.merge_ordered_lists(&mut original, &mut patch, node, depth)?;
        for (key, patch_value) in patch {
            let (key, deletion_list) = if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                (extract_key(&key, DELETE_FROM_PRIMITIVE_LIST)?, true)
            } else {
                (key, false)
            };
            if patch_value.is_null() {
                original.remove(&key);
                continue;
            }
            let Some(slot) = original.get_mut(&key) else {
                original.insert(key, patch_value);
                continue;
            };
            if go_type(slot) != go_type(&patch_value) {
                *slot = patch_value;
                continue;
            }
            match (std::mem::take(slot), patch_value) {
                (Value::Object(current), Value::Object(patch_map)) => {
                    let (sub, meta) = node.lookup_struct(&key)?;
                    let strategy = strategy_of(meta.strategy)?;
                    *slot = if strategy == "replace" {
                        Value::Object(patch_map)
                    } else {
                        Value::Object(self.merge_map(current, patch_map, sub, depth)?)
                    };
                }
                (Value::Array(current), Value::Array(patch_list)) => {
                    let (sub, meta) = node.lookup_slice(&key)?;
                    let strategy = strategy_of(meta.strategy)?;
                    let merge_key = meta.merge_key.unwrap_or("");
                    *slot = Value::Array(self.merge_slice_by_strategy(
                        current,
                        patch_list,
                        sub,
                        strategy,
                        merge_key,
                        deletion_list,
                        depth,
                    )?);
                }
                (_, patch_value) => *slot = patch_value,
            }
        }
        Ok(original)
    }

    /// `applyRetainKeysDirective`.
    fn apply_retain_keys(
        &mut self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> Result<(), Error> {
        let Some(retain) = patch.remove(RETAIN_KEYS) else {
            return Ok(());
        };
        let Value::Array(retain) = retain else {
            return Err(Error::BadPatchFormatForRetainKeys);
        };
        if retain.iter().any(|v| v.is_array() || v.is_object()) {
            return Err(Error::Panic {
                why: "a $retainKeys entry is not hashable",
            });
        }
        let retained = |key: &str| retain.iter().any(|v| v.as_str() == Some(key));
        self.charge(retain.len().saturating_mul(patch.len() + original.len()))?;
        for (key, value) in patch.iter() {
            if value.is_null()
                || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
                || key.starts_with(SET_ELEMENT_ORDER)
            {
                continue;
            }
            if !retained(key) {
                return Err(Error::BadPatchFormatForRetainKeys);
            }
        }
        original.retain(|key, _| retained(key));
        Ok(())
    }

    /// `mergePatchIntoOriginal`: each `$setElementOrder/<list>` with its list.
    fn merge_ordered_lists(
        &mut self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
        node: Node<'_>,
        depth: usize,
    ) -> Result<(), Error> {
        let directives: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
            .cloned()
            .collect();
        for directive in directives {
            let Some(order) = patch.remove(&directive) else {
                continue;
            };
            let Value::Array(order) = order else {
                return Err(not_a_list(&order));
            };
            let list_key = extract_key(&directive, SET_ELEMENT_ORDER)?;
            let current = match original.get(&list_key) {
                None => None,
                Some(Value::Array(list)) => Some(list.clone()),
                Some(other) => return Err(not_a_list(other)),
            };
            let patch_list = match patch.remove(&list_key) {
                None => None,
                Some(Value::Array(list)) => Some(list),
                Some(other) => return Err(not_a_list(&other)),
            };
            let (sub, meta) = node.lookup_slice(&list_key)?;
            let strategy = strategy_of(meta.strategy)?;
            let merge_key = meta.merge_key.unwrap_or("");
            self.validate_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
            let current_list = current.as_deref().unwrap_or(&[]);
            let patch_copy = patch_list.clone().unwrap_or_default();
            let merged = match (current.clone(), patch_list) {
                (Some(current), None) => current,
                (None, Some(patch_list)) => patch_list,
                (Some(current), Some(patch_list)) => self.merge_slice_by_strategy(
                    current, patch_list, sub, strategy, merge_key, false, depth,
                )?,
                (None, None) => continue,
            };
            let (in_order, server_only) = self.partition(merged, &order, merge_key)?;
            let kind = slice_element_type(&[current_list, &patch_copy])?;
            let both =
                self.normalize_order(in_order, server_only, &order, current_list, merge_key, kind)?;
            original.insert(list_key, Value::Array(both));
        }
        Ok(())
    }

    /// `validatePatchWithSetOrderList`: the patch's elements appear in the order list, in
    /// its order.
    fn validate_order(
        &mut self,
        patch_list: &[Value],
        order: &[Value],
        merge_key: &str,
    ) -> Result<(), Error> {
        if order.is_empty() || patch_list.is_empty() {
            return Ok(());
        }
        let kept: Vec<Value> = if merge_key.is_empty() {
            patch_list.to_vec()
        } else {
            split_deletions(patch_list.to_vec())?.0
        };
        let (mut p, mut o) = (0, 0);
        while let (Some(item), Some(wanted)) = (kept.get(p), order.get(o)) {
            self.charge(1)?;
            if item.get(DIRECTIVE).is_some() {
                p += 1;
                continue;
            }
            if merge_key_equal(item, wanted, merge_key)? {
                p += 1;
            }
            o += 1;
        }
        if p < kept.len() && o >= order.len() {
            return Err(Error::OrderMismatch {
                patch: gofmt::v_list(patch_list),
                order: gofmt::v_list(order),
            });
        }
        Ok(())
    }

    /// `mergeSliceHandler`: merged by key when the strategy is `merge`, else replaced.
    #[allow(clippy::too_many_arguments)]
    fn merge_slice_by_strategy(
        &mut self,
        current: Vec<Value>,
        patch: Vec<Value>,
        node: Node<'_>,
        strategy: &str,
        merge_key: &str,
        deletion_list: bool,
        depth: usize,
    ) -> Result<Vec<Value>, Error> {
        if strategy == "merge" {
            self.merge_slice(current, patch, node, merge_key, deletion_list, depth)
        } else {
            Ok(patch)
        }
    }

    /// `mergeSlice`.
    fn merge_slice(
        &mut self,
        current: Vec<Value>,
        patch: Vec<Value>,
        node: Node<'_>,
        merge_key: &str,
        deletion_list: bool,
        depth: usize,
    ) -> Result<Vec<Value>, Error> {
        if current.is_empty() && patch.is_empty() {
            return Ok(current);
        }
        let depth = self.descend(depth)?;
        let kind = slice_element_type(&[&current, &patch])?;
        let (server_order, patch_order, merged) = if kind != GoType::Map {
            if deletion_list {
                return self.delete_from_slice(current, &patch);
            }
            let server_order = current.clone();
            let mut both = current;
            both.extend(patch.iter().cloned());
            (server_order, patch, self.deduplicate(both)?)
        } else {
            if merge_key.is_empty() {
                return Err(Error::NoMergeKeyDeclared {
                    name: node.go_kind(),
                });
            }
            let (current, patch) = self.apply_list_directives(current, patch, merge_key)?;
            let server_order = current.clone();
            let patch_order = patch.clone();
            let merged = self.merge_by_key(current, patch, merge_key, node, depth)?;
            (server_order, patch_order, merged)
        };
        let (in_patch, server_only) = self.partition(merged, &patch_order, merge_key)?;
        self.normalize_order(
            in_patch,
            server_only,
            &patch_order,
            &server_order,
            merge_key,
            kind,
        )
    }

    /// `mergeSliceWithSpecialElements`: `$patch: delete|replace` elements.
    fn apply_list_directives(
        &mut self,
        mut current: Vec<Value>,
        patch: Vec<Value>,
        merge_key: &str,
    ) -> Result<(Vec<Value>, Vec<Value>), Error> {
        let mut plain = Vec::with_capacity(patch.len());
        let mut replace = false;
        for item in patch {
            let Some(directive) = item.get(DIRECTIVE) else {
                plain.push(item);
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    let Some(value) = item.get(merge_key) else {
                        return Err(no_merge_key(&item, merge_key));
                    };
                    self.charge(current.len())?;
                    // `findMapInSliceBasedOnKeyValue` fails on an element that is no map.
                    if let Some(index) = current.iter().position(|v| !v.is_object()) {
                        return Err(Error::NotAMap { index });
                    }
                    current.retain(|v| v.get(merge_key) != Some(value));
                }
                Some("replace") => replace = true,
                Some("merge") => return Err(Error::MergeDirectiveInList),
                _ => {
                    return Err(Error::BadPatchType {
                        directive: gofmt::s(directive),
                        map: gofmt::v(&item),
                    });
                }
            }
        }
        Ok(if replace {
            (plain, Vec::new())
        } else {
            (current, plain)
        })
    }

    /// `findMapInSliceBasedOnKeyValue`.
    fn find(&mut self, list: &[Value], key: &str, value: &Value) -> Result<Option<usize>, Error> {
        for (index, item) in list.iter().enumerate() {
            self.charge(1)?;
            let map = item.as_object().ok_or(Error::NotAMap { index })?;
            if map.get(key) == Some(value) {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// `mergeSliceWithoutSpecialElements`.
    fn merge_by_key(
        &mut self,
        mut current: Vec<Value>,
        patch: Vec<Value>,
        merge_key: &str,
        node: Node<'_>,
        depth: usize,
    ) -> Result<Vec<Value>, Error> {
        for item in patch {
            let Value::Object(patch_map) = item else {
                return Err(not_a_map(&item));
            };
            let Some(value) = patch_map.get(merge_key).cloned() else {
                return Err(no_merge_key(&Value::Object(patch_map), merge_key));
            };
            match self.find(&current, merge_key, &value)? {
                Some(index) => {
                    if let Some(slot) = current.get_mut(index) {
                        let Value::Object(existing) = std::mem::take(slot) else {
                            return Err(Error::NotAMap { index });
                        };
                        *slot = Value::Object(self.merge_map(existing, patch_map, node, depth)?);
                    }
                }
                None => current.push(Value::Object(patch_map)),
            }
        }
        Ok(current)
    }
}

/// `mergeKeyValueEqual`.
fn merge_key_equal(left: &Value, right: &Value, merge_key: &str) -> Result<bool, Error> {
    if merge_key.is_empty() {
        return Ok(left == right);
    }
    let l = left.as_object().ok_or_else(|| not_a_map(left))?;
    let r = right.as_object().ok_or_else(|| not_a_map(right))?;
    let lv = l
        .get(merge_key)
        .ok_or_else(|| no_merge_key(left, merge_key))?;
    let rv = r
        .get(merge_key)
        .ok_or_else(|| no_merge_key(right, merge_key))?;
    Ok(lv == rv)
}

/// Drops `$`-keys that the type does not declare, as the conversion back to the typed object
/// drops unknown keys (directives inside a map that `$patch: replace` put in whole), and empty
/// optional maps and lists, as the typed object's `omitempty` does.
fn strip_directives(
    value: &mut Value,
    node: Node<'_>,
    depth: usize,
    max_depth: usize,
) -> Result<(), Error> {
    if depth >= max_depth {
        return Err(Error::TooDeep { limit: max_depth });
    }
    match value {
        Value::Object(map) => {
            if matches!(node, Node::Untyped | Node::Scalar) {
                return Ok(());
            }
            map.retain(|key, value| {
                (!key.starts_with('$') || node.declares(key)) && !node.omits_empty(key, value)
            });
            for (key, child) in map.iter_mut() {
                let sub = match (node, &*child) {
                    (Node::Map(..), _) => node.map_values().unwrap_or(Node::Untyped),
                    (_, Value::Array(_)) => node.lookup_slice(key)?.0,
                    _ => node.lookup_struct(key)?.0,
                };
                strip_directives(child, sub, depth + 1, max_depth)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                strip_directives(item, node, depth + 1, max_depth)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
