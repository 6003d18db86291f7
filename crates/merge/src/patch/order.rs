//! The ordering half of the engine: how upstream dedups, deletes from, partitions and orders
//! merged lists (`deleteFromSlice`, `deduplicateScalars`, the partitions, `normalizeElementOrder`
//! and `mergeSortedSlice`), step for step, since a list's order is part of the result.

use serde_json::Value;

use super::{Engine, no_merge_key, not_a_map, order_key, split_deletions, validate_merge_keys};
use crate::error::Error;
use crate::gofmt::GoType;
use crate::gosort;

impl Engine {
    /// `deleteFromSlice`: the parallel `$deleteFromPrimitiveList` list.
    pub(super) fn delete_from_slice(
        &mut self,
        current: Vec<Value>,
        delete: &[Value],
    ) -> Result<Vec<Value>, Error> {
        if delete.iter().any(|v| v.is_array() || v.is_object()) {
            return Err(Error::Panic {
                why: "a $deleteFromPrimitiveList entry is not hashable",
            });
        }
        self.charge(current.len().saturating_mul(delete.len()))?;
        Ok(current
            .into_iter()
            .filter(|v| !delete.contains(v))
            .collect())
    }

    /// `deduplicateScalars`, with its order: a duplicate is replaced by the last element.
    pub(super) fn deduplicate(&mut self, mut list: Vec<Value>) -> Result<Vec<Value>, Error> {
        let mut i = 0;
        while i + 1 < list.len() {
            let mut j = i + 1;
            while j < list.len() {
                self.charge(1)?;
                if list.get(i) == list.get(j) {
                    list.swap_remove(j);
                    continue;
                }
                j += 1;
            }
            i += 1;
        }
        Ok(list)
    }

    /// `partitionPrimitivesByPresentInList` / `partitionMapsByPresentInList`: the merged
    /// elements that the list names, and the rest.
    pub(super) fn partition(
        &mut self,
        merged: Vec<Value>,
        by: &[Value],
        merge_key: &str,
    ) -> Result<(Vec<Value>, Vec<Value>), Error> {
        let mut named = Vec::with_capacity(merged.len());
        let mut rest = Vec::new();
        if merge_key.is_empty() {
            if by.iter().any(|v| v.is_array() || v.is_object()) {
                return Err(Error::Panic {
                    why: "a primitive list's order entry is not hashable",
                });
            }
            self.charge(merged.len().saturating_mul(by.len()))?;
            for item in merged {
                if by.contains(&item) {
                    named.push(item);
                } else {
                    rest.push(item);
                }
            }
            return Ok((named, rest));
        }
        for item in merged {
            let map = item.as_object().ok_or_else(|| not_a_map(&item))?;
            let Some(value) = map.get(merge_key) else {
                return Err(no_merge_key(&item, merge_key));
            };
            if self.find(by, merge_key, value)?.is_some() {
                named.push(item);
            } else {
                rest.push(item);
            }
        }
        Ok((named, rest))
    }

    /// `index` of every element of `items` in `order`, or `None`.
    pub(super) fn positions(
        &mut self,
        items: &[Value],
        order: &[Value],
        merge_key: &str,
        kind: GoType,
    ) -> Result<Vec<Option<usize>>, Error> {
        self.charge(items.len().saturating_mul(order.len()))?;
        Ok(items
            .iter()
            .map(|item| {
                let wanted = order_key(item, merge_key, kind);
                order
                    .iter()
                    .position(|o| order_key(o, merge_key, kind) == wanted)
            })
            .collect())
    }

    /// `normalizeElementOrder`: each part sorted by its order list, then interleaved by the
    /// server's order.
    pub(super) fn normalize_order(
        &mut self,
        in_patch: Vec<Value>,
        server_only: Vec<Value>,
        patch_order: &[Value],
        server_order: &[Value],
        merge_key: &str,
        kind: GoType,
    ) -> Result<Vec<Value>, Error> {
        let in_patch = self.sort_by_order(in_patch, patch_order, merge_key, kind)?;
        let server_only = self.sort_by_order(server_only, server_order, merge_key, kind)?;
        self.merge_sorted(server_only, in_patch, server_order, merge_key, kind)
    }

    /// `normalizeSliceOrder`: Go's stable sort by position in `order` (an element that is
    /// not there counts as less), `$patch: delete` elements last.
    pub(super) fn sort_by_order(
        &mut self,
        list: Vec<Value>,
        order: &[Value],
        merge_key: &str,
        kind: GoType,
    ) -> Result<Vec<Value>, Error> {
        let (list, deletions) = if kind == GoType::Map {
            validate_merge_keys(merge_key, &[&list, order])?;
            split_deletions(list)?
        } else {
            (list, Vec::new())
        };
        let positions = self.positions(&list, order, merge_key, kind)?;
        let mut keyed: Vec<(Option<usize>, Value)> = positions.into_iter().zip(list).collect();
        gosort::stable(&mut keyed, &mut |a, b| match (a.0, b.0) {
            (Some(i), Some(j)) => i < j,
            _ => true,
        });
        let mut sorted: Vec<Value> = keyed.into_iter().map(|(_, v)| v).collect();
        sorted.extend(deletions);
        Ok(sorted)
    }

    /// `mergeSortedSlice`: the server-only elements inserted among the patch's by the
    /// server's order, each part's own order kept.
    pub(super) fn merge_sorted(
        &mut self,
        left: Vec<Value>,
        right: Vec<Value>,
        server_order: &[Value],
        merge_key: &str,
        kind: GoType,
    ) -> Result<Vec<Value>, Error> {
        let left_pos = self.positions(&left, server_order, merge_key, kind)?;
        let right_pos = self.positions(&right, server_order, merge_key, kind)?;
        let mut left = left.into_iter().zip(left_pos).peekable();
        let mut right = right.into_iter().zip(right_pos).peekable();
        let mut out = Vec::new();
        loop {
            let take_left = match (left.peek(), right.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((_, l)), Some((_, r))) => matches!((l, r), (Some(l), Some(r)) if l < r),
            };
            let next = if take_left { left.next() } else { right.next() };
            if let Some((item, _)) = next {
                out.push(item);
            }
        }
        Ok(out)
    }
}
