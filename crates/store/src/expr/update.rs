//! Update expressions (`SET`, `REMOVE`, `ADD`, `DELETE`) and their application to items.
//!
//! DynamoDB applies an update as one step: every right-hand side reads the item as it was
//! before the update, and list indexes in REMOVE refer to the original positions (removing
//! `a[1]` and `a[3]` removes the second and fourth elements). Paths may not overlap, so the
//! actions touch disjoint parts of the item and their order matters only for appends to one
//! list, which happen in index order.

use std::collections::BTreeSet;

use dynamo_protocol::value::{binary_set, number_set, string_set};
use dynamo_protocol::{ApiError, AttributeValue, Item};

use super::ast::{Context, Path, PathElement};
use super::eval::get;
use super::{parser, resolve};

/// The right-hand side of a SET action.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SetValue {
    Path(Path),
    Value(AttributeValue),
    IfNotExists(Path, Box<SetValue>),
    ListAppend(Box<SetValue>, Box<SetValue>),
    Plus(Box<SetValue>, Box<SetValue>),
    Minus(Box<SetValue>, Box<SetValue>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    Set(Path, SetValue),
    Remove(Path),
    /// Adds a number or set members; with a number or set operand only.
    Add(Path, AttributeValue),
    /// Removes set members; the attribute goes away when the set empties.
    Delete(Path, AttributeValue),
    /// The legacy `AttributeUpdates` ADD, which also appends lists and reports type mismatches
    /// in its own words.
    LegacyAdd(Path, AttributeValue),
    /// The legacy `AttributeUpdates` DELETE with a set value, which reports type mismatches in
    /// the legacy API's words.
    LegacyDelete(Path, AttributeValue),
}

impl Action {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Action::Set(path, _)
            | Action::Remove(path)
            | Action::Add(path, _)
            | Action::Delete(path, _)
            | Action::LegacyAdd(path, _)
            | Action::LegacyDelete(path, _) => path,
        }
    }
}

/// A parsed update (UpdateExpression or legacy AttributeUpdates), ready to apply to items.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateExpression {
    pub(crate) actions: Vec<Action>,
}

impl UpdateExpression {
    /// Whether every action only takes something away (REMOVE, DELETE): applied to a missing
    /// item such an update creates nothing (DynamoDB does not create the item).
    pub fn only_removes(&self) -> bool {
        !self.actions.is_empty()
            && self.actions.iter().all(|action| {
                matches!(
                    action,
                    Action::Remove(_) | Action::Delete(..) | Action::LegacyDelete(..)
                )
            })
    }
}

/// Parses an UpdateExpression against the request's names and values.
pub fn parse_update(text: &str, context: &Context) -> Result<UpdateExpression, ApiError> {
    let raw = parser::parse_update(text)?;
    resolve::update(&raw, context).map(|actions| UpdateExpression { actions })
}

fn invalid_path() -> ApiError {
    ApiError::validation("The document path provided in the update expression is invalid for update")
}

fn incorrect_type() -> ApiError {
    ApiError::validation("An operand in the update expression has an incorrect data type")
}

fn missing_attribute() -> ApiError {
    ApiError::validation("The provided expression refers to an attribute that does not exist in the item")
}

impl UpdateExpression {
    /// Applies the update to `item` (empty for a new item). On error `item` is left unchanged.
    pub fn apply(&self, item: &mut Item) -> Result<(), ApiError> {
        let values = self
            .actions
            .iter()
            .map(|action| match action {
                Action::Set(_, value) => evaluate(value, item).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<Option<AttributeValue>>, ApiError>>()?;
        let mut updated = item.clone();
        let mut writes: Vec<usize> = (0..self.actions.len())
            .filter(|&i| !matches!(self.actions[i], Action::Remove(_)))
            .collect();
        writes.sort_by(|&a, &b| self.actions[a].path().cmp(self.actions[b].path()));
        for index in writes {
            match (&self.actions[index], values[index].clone()) {
                (Action::Set(path, _), Some(value)) => write(&mut updated, path, value)?,
                (Action::Add(path, value), _) => add(&mut updated, path, value, false)?,
                (Action::LegacyAdd(path, value), _) => add(&mut updated, path, value, true)?,
                (Action::Delete(path, value), _) => delete(&mut updated, path, value, false)?,
                (Action::LegacyDelete(path, value), _) => delete(&mut updated, path, value, true)?,
                _ => {}
            }
        }
        let mut removals: Vec<&Path> = self
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Remove(path) => Some(path),
                _ => None,
            })
            .collect();
        // Last positions first, so earlier indexes still name the original elements.
        removals.sort_by(|a, b| b.cmp(a));
        for path in removals {
            remove(&mut updated, path, item)?;
        }
        *item = updated;
        Ok(())
    }

    /// The document paths the update writes or removes, in expression order.
    pub fn target_paths(&self) -> Vec<Path> {
        self.actions.iter().map(|action| action.path().clone()).collect()
    }

    /// Every document path the update names: each action's, then those its SET values read.
    pub fn paths(&self) -> Vec<&Path> {
        fn value<'a>(set: &'a SetValue, out: &mut Vec<&'a Path>) {
            match set {
                SetValue::Path(path) => out.push(path),
                SetValue::Value(_) => {}
                SetValue::IfNotExists(path, fallback) => {
                    out.push(path);
                    value(fallback, out);
                }
                SetValue::ListAppend(a, b) | SetValue::Plus(a, b) | SetValue::Minus(a, b) => {
                    value(a, out);
                    value(b, out);
                }
            }
        }
        let mut out = Vec::new();
        for action in &self.actions {
            out.push(action.path());
            if let Action::Set(_, set) = action {
                value(set, &mut out);
            }
        }
        out
    }
}

/// Computes a SET right-hand side against the item as it was before the update.
fn evaluate(value: &SetValue, item: &Item) -> Result<AttributeValue, ApiError> {
    match value {
        SetValue::Path(path) => get(item, path).cloned().ok_or_else(missing_attribute),
        SetValue::Value(value) => Ok(value.clone()),
        SetValue::IfNotExists(path, fallback) => match get(item, path) {
            Some(existing) => Ok(existing.clone()),
            None => evaluate(fallback, item),
        },
        SetValue::ListAppend(first, second) => match (evaluate(first, item)?, evaluate(second, item)?) {
            (AttributeValue::L(mut first), AttributeValue::L(second)) => {
                first.extend(second);
                Ok(AttributeValue::L(first))
            }
            _ => Err(incorrect_type()),
        },
        SetValue::Plus(left, right) | SetValue::Minus(left, right) => {
            let (AttributeValue::N(left_number), AttributeValue::N(right_number)) =
                (evaluate(left, item)?, evaluate(right, item)?)
            else {
                return Err(incorrect_type());
            };
            let result = if matches!(value, SetValue::Plus(..)) {
                left_number.checked_add(&right_number)
            } else {
                left_number.checked_sub(&right_number)
            };
            result
                .map(AttributeValue::N)
                .map_err(|error| ApiError::validation(error.to_string()))
        }
    }
}

/// Where a path's last element lives: a map (the item itself at the top) or a list.
enum Container<'i> {
    Map(&'i mut Item),
    List(&'i mut Vec<AttributeValue>),
}

/// The container of the value at `path`, if the path up to it exists.
fn container<'i, 'p>(item: &'i mut Item, path: &'p Path) -> Option<(Container<'i>, &'p PathElement)> {
    let (last, parents) = path.0.split_last()?;
    let mut current = Container::Map(item);
    for element in parents {
        let value = match (current, element) {
            (Container::Map(map), PathElement::Attribute(key)) => map.get_mut(key)?,
            (Container::List(list), PathElement::Index(index)) => list.get_mut(*index)?,
            _ => return None,
        };
        current = match value {
            AttributeValue::M(map) => Container::Map(map),
            AttributeValue::L(list) => Container::List(list),
            _ => return None,
        };
    }
    Some((current, last))
}

/// Sets the value at `path`; an index past the end of a list appends.
fn write(item: &mut Item, path: &Path, value: AttributeValue) -> Result<(), ApiError> {
    match container(item, path).ok_or_else(invalid_path)? {
        (Container::Map(map), PathElement::Attribute(key)) => {
            map.insert(key.clone(), value);
        }
        (Container::List(list), PathElement::Index(index)) => match list.get_mut(*index) {
            Some(slot) => *slot = value,
            None => list.push(value),
        },
        _ => return Err(invalid_path()),
    }
    Ok(())
}

/// The current value at `path`, or an error if its container does not exist.
fn existing<'i>(item: &'i mut Item, path: &Path) -> Result<Option<&'i mut AttributeValue>, ApiError> {
    match container(item, path).ok_or_else(invalid_path)? {
        (Container::Map(map), PathElement::Attribute(key)) => Ok(map.get_mut(key)),
        (Container::List(list), PathElement::Index(index)) => Ok(list.get_mut(*index)),
        _ => Err(invalid_path()),
    }
}

fn union<T: Ord + Clone>(existing: &[T], addition: &[T]) -> Vec<T> {
    existing
        .iter()
        .chain(addition)
        .cloned()
        .collect::<BTreeSet<T>>()
        .into_iter()
        .collect()
}

fn difference<T: Ord + Clone>(existing: &[T], removal: &[T]) -> Vec<T> {
    existing
        .iter()
        .filter(|member| removal.binary_search(member).is_err())
        .cloned()
        .collect()
}

fn set_error(message: String) -> ApiError {
    ApiError::validation(message)
}

/// A set operand whose type does not match the attribute's: the expression API's message, or
/// with `legacy` (`AttributeUpdates`) the legacy API's.
fn mismatch(legacy: bool) -> ApiError {
    if legacy {
        ApiError::validation("Type mismatch for attribute to update")
    } else {
        incorrect_type()
    }
}

fn add(item: &mut Item, path: &Path, addition: &AttributeValue, legacy: bool) -> Result<(), ApiError> {
    let result = match (existing(item, path)?, addition) {
        (None, addition) => addition.clone(),
        (Some(AttributeValue::N(current)), AttributeValue::N(addition)) => AttributeValue::N(
            current
                .checked_add(addition)
                .map_err(|error| ApiError::validation(error.to_string()))?,
        ),
        (Some(AttributeValue::Ss(current)), AttributeValue::Ss(addition)) => {
            string_set(union(current, addition)).map_err(set_error)?
        }
        (Some(AttributeValue::Ns(current)), AttributeValue::Ns(addition)) => {
            number_set(union(current, addition)).map_err(set_error)?
        }
        (Some(AttributeValue::Bs(current)), AttributeValue::Bs(addition)) => {
            binary_set(union(current, addition)).map_err(set_error)?
        }
        (Some(AttributeValue::L(current)), AttributeValue::L(addition)) if legacy => {
            let mut list = current.clone();
            list.extend(addition.iter().cloned());
            AttributeValue::L(list)
        }
        _ => return Err(mismatch(legacy)),
    };
    write(item, path, result)
}

fn delete(item: &mut Item, path: &Path, removal: &AttributeValue, legacy: bool) -> Result<(), ApiError> {
    let remaining = match (existing(item, path)?, removal) {
        (None, _) => return Ok(()),
        (Some(AttributeValue::Ss(current)), AttributeValue::Ss(removal)) => {
            let members = difference(current, removal);
            (!members.is_empty()).then(|| string_set(members)).transpose()
        }
        (Some(AttributeValue::Ns(current)), AttributeValue::Ns(removal)) => {
            let members = difference(current, removal);
            (!members.is_empty()).then(|| number_set(members)).transpose()
        }
        (Some(AttributeValue::Bs(current)), AttributeValue::Bs(removal)) => {
            let members = difference(current, removal);
            (!members.is_empty()).then(|| binary_set(members)).transpose()
        }
        _ => return Err(mismatch(legacy)),
    };
    match remaining.map_err(set_error)? {
        Some(value) => write(item, path, value),
        None => remove_element(item, path),
    }
}

fn remove_element(item: &mut Item, path: &Path) -> Result<(), ApiError> {
    match container(item, path).ok_or_else(invalid_path)? {
        (Container::Map(map), PathElement::Attribute(key)) => {
            map.remove(key);
        }
        (Container::List(list), PathElement::Index(index)) => {
            if *index < list.len() {
                list.remove(*index);
            }
        }
        _ => return Err(invalid_path()),
    }
    Ok(())
}

/// Removes the value at `path`. A list element that did not exist in the original item is left
/// alone, so an element appended by this update cannot take its place.
fn remove(item: &mut Item, path: &Path, original: &Item) -> Result<(), ApiError> {
    if let Some((PathElement::Index(index), parents)) = path.0.split_last() {
        let parent = Path(parents.to_vec());
        let existed = matches!(get(original, &parent), Some(AttributeValue::L(list)) if *index < list.len());
        if !existed {
            // The container must still be a list; only the element is missing.
            return match container(item, path) {
                Some((Container::List(_), _)) => Ok(()),
                _ => Err(invalid_path()),
            };
        }
    }
    remove_element(item, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> AttributeValue {
        AttributeValue::S(text.into())
    }

    fn attribute(name: &str) -> PathElement {
        PathElement::Attribute(name.into())
    }

    #[test]
    fn write_sets_map_keys_and_list_elements() {
        let mut item: Item = [("l".to_string(), AttributeValue::L(vec![s("a")]))].into();
        write(&mut item, &Path(vec![attribute("l"), PathElement::Index(0)]), s("b")).expect("replaces");
        write(&mut item, &Path(vec![attribute("l"), PathElement::Index(9)]), s("c")).expect("appends");
        assert_eq!(item["l"], AttributeValue::L(vec![s("b"), s("c")]));
        let error = write(&mut item, &Path(vec![attribute("m"), attribute("x")]), s("d")).expect_err("no parent");
        assert_eq!(
            error.message,
            "The document path provided in the update expression is invalid for update"
        );
        let error = write(&mut item, &Path(vec![attribute("l"), attribute("x")]), s("d")).expect_err("not a map");
        assert_eq!(
            error.message,
            "The document path provided in the update expression is invalid for update"
        );
    }

    #[test]
    fn set_arithmetic_on_sets() {
        assert_eq!(union(&[1, 3], &[2, 3]), vec![1, 2, 3]);
        assert_eq!(difference(&[1, 2, 3], &[2, 4]), vec![1, 3]);
    }
}
