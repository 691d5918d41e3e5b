//! Projection expressions and projecting items to a set of document paths.

use std::collections::BTreeMap;

use dynamo_protocol::{ApiError, AttributeValue, Item};

use super::ast::{Context, Path, PathElement};
use super::{parser, resolve};

/// Parses a ProjectionExpression (`a, b.c, d[2]`) against the request's names.
pub fn parse_projection(text: &str, context: &Context) -> Result<Vec<Path>, ApiError> {
    let raw = parser::parse_projection(text)?;
    resolve::projection(&raw, context)
}

/// The requested paths as a tree, so each part of the item is visited once.
#[derive(Default)]
struct Selection {
    /// The whole value at this point is wanted.
    whole: bool,
    keys: BTreeMap<String, Selection>,
    indexes: BTreeMap<usize, Selection>,
}

impl Selection {
    fn insert(&mut self, elements: &[PathElement]) {
        let Some((first, rest)) = elements.split_first() else {
            self.whole = true;
            return;
        };
        let child = match first {
            PathElement::Attribute(key) => self.keys.entry(key.clone()).or_default(),
            PathElement::Index(index) => self.indexes.entry(*index).or_default(),
        };
        child.insert(rest);
    }

    fn project_map(&self, map: &Item) -> Item {
        self.keys
            .iter()
            .filter_map(|(key, selection)| {
                let value = selection.project(map.get(key)?)?;
                Some((key.clone(), value))
            })
            .collect()
    }

    /// The selected parts of `value`, or nothing if no selected path exists in it.
    fn project(&self, value: &AttributeValue) -> Option<AttributeValue> {
        if self.whole {
            return Some(value.clone());
        }
        match value {
            AttributeValue::M(map) if !self.keys.is_empty() => {
                let projected = self.project_map(map);
                (!projected.is_empty()).then_some(AttributeValue::M(projected))
            }
            AttributeValue::L(list) if !self.indexes.is_empty() => {
                let projected: Vec<AttributeValue> = self
                    .indexes
                    .iter()
                    .filter_map(|(index, selection)| selection.project(list.get(*index)?))
                    .collect();
                (!projected.is_empty()).then_some(AttributeValue::L(projected))
            }
            _ => None,
        }
    }
}

/// Projects an item to `paths` as DynamoDB does: nested paths keep their enclosing maps, list
/// indexes pick elements that come out compacted in index order, and paths that do not exist
/// in the item contribute nothing.
pub fn project(item: &Item, paths: &[Path]) -> Item {
    let mut selection = Selection::default();
    for path in paths {
        selection.insert(&path.0);
    }
    selection.project_map(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> AttributeValue {
        AttributeValue::S(text.into())
    }

    fn path(elements: &[&str]) -> Path {
        Path(
            elements
                .iter()
                .map(|element| match element.parse::<usize>() {
                    Ok(index) => PathElement::Index(index),
                    Err(_) => PathElement::Attribute((*element).to_string()),
                })
                .collect(),
        )
    }

    fn sample() -> Item {
        [
            ("a".to_string(), n("1")),
            (
                "m".to_string(),
                AttributeValue::M(
                    [
                        ("x".to_string(), n("x")),
                        ("y".to_string(), n("y")),
                        ("z".to_string(), AttributeValue::L(vec![n("z0"), n("z1")])),
                    ]
                    .into(),
                ),
            ),
            (
                "l".to_string(),
                AttributeValue::L(vec![
                    n("l0"),
                    AttributeValue::M([("k".to_string(), n("v")), ("j".to_string(), n("w"))].into()),
                    n("l2"),
                    n("l3"),
                ]),
            ),
        ]
        .into()
    }

    #[test]
    fn top_level_paths_pick_attributes() {
        let projected = project(&sample(), &[path(&["a"]), path(&["missing"])]);
        assert_eq!(projected, [("a".to_string(), n("1"))].into());
    }

    #[test]
    fn nested_paths_keep_their_parents() {
        let projected = project(
            &sample(),
            &[path(&["m", "y"]), path(&["m", "z", "1"]), path(&["m", "nope"])],
        );
        let expected: Item = [(
            "m".to_string(),
            AttributeValue::M(
                [
                    ("y".to_string(), n("y")),
                    ("z".to_string(), AttributeValue::L(vec![n("z1")])),
                ]
                .into(),
            ),
        )]
        .into();
        assert_eq!(projected, expected);
    }

    #[test]
    fn list_elements_are_compacted_in_index_order() {
        let projected = project(
            &sample(),
            &[
                path(&["l", "3"]),
                path(&["l", "1", "k"]),
                path(&["l", "9"]),
                path(&["l", "0"]),
            ],
        );
        let expected: Item = [(
            "l".to_string(),
            AttributeValue::L(vec![
                n("l0"),
                AttributeValue::M([("k".to_string(), n("v"))].into()),
                n("l3"),
            ]),
        )]
        .into();
        assert_eq!(projected, expected);
    }

    #[test]
    fn mismatched_paths_select_nothing() {
        let projected = project(&sample(), &[path(&["a", "b"]), path(&["m", "0"]), path(&["l", "k"])]);
        assert!(projected.is_empty());
        assert!(project(&Item::new(), &[path(&["a"])]).is_empty());
        assert!(project(&sample(), &[]).is_empty());
    }

    #[test]
    fn a_whole_value_wins_over_its_parts() {
        let projected = project(&sample(), &[path(&["m", "x"]), path(&["m"])]);
        assert_eq!(projected["m"], sample()["m"]);
    }
}
