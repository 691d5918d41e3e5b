//! The write transaction TransactWriteItems and ExecuteTransaction share: planned steps run
//! as one job of the writer, every condition checked against the current items first, every
//! new item computed, and only then the writes, in one durable batch or not at all; and the
//! ClientRequestToken that makes a repeated request a no-op.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use dynamo_protocol::error::CancellationReason;
use dynamo_protocol::{ApiError, ErrorKind, Item};

use super::items::{check_condition, updated_item};
use super::{Capacity, Store};
use crate::catalog::TableMeta;
use crate::engine::WriteContext;
use crate::expr::{Condition, UpdateExpression};

pub(super) enum TxAction {
    /// A condition alone (ConditionCheck, EXISTS).
    Check,
    /// Puts the item whether or not one is there (Put).
    Put(Item),
    /// Puts the item only where there is none (PartiQL INSERT): DuplicateItem otherwise.
    Insert(Item),
    /// Updates the item with that key (made of the key where none is there).
    Update(Item, Option<UpdateExpression>),
    /// Deletes the item (on a global table, a tombstone even where there is none).
    Delete,
    /// Deletes the item where there is one, and writes nothing where there is none (PartiQL).
    DeleteExisting,
}

pub(super) struct TxStep {
    pub meta: Arc<TableMeta>,
    pub key: Vec<u8>,
    /// The item must exist (PartiQL UPDATE and EXISTS).
    pub must_exist: bool,
    pub condition: Option<Condition>,
    pub return_old: bool,
    pub action: TxAction,
}

/// Runs `steps` as one transaction and gives the capacity each table consumed, split by index
/// as the transactions report it. `token` is the ClientRequestToken and `digest` the digest of
/// what the request asks: the same token with the same request again within the token's
/// lifetime changes nothing, and consumes what reading its items does ("Subsequent
/// TransactWriteItems calls with the same client token return the number of read capacity
/// units consumed in reading the item"): a transactional read, two strongly consistent reads,
/// of each item as it stands.
pub(super) async fn commit(
    store: &Store,
    steps: Vec<TxStep>,
    token: Option<String>,
    digest: [u8; 32],
) -> Result<BTreeMap<String, Capacity>, ApiError> {
    let mut seen = HashSet::new();
    for step in &steps {
        if !seen.insert((step.meta.id, step.key.clone())) {
            return Err(ApiError::validation(
                "Transaction request cannot include multiple operations on one item",
            ));
        }
    }
    let now = store.engine().now_unix_ms();
    if let Some(token) = &token {
        if token.is_empty() || token.len() > 36 {
            return Err(ApiError::validation(
                "ClientRequestToken must be 1 to 36 characters long",
            ));
        }
        if store.transactions.check(token, digest, now)? {
            let snapshot = store.engine().snapshot()?;
            let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
            for step in &steps {
                let size = snapshot
                    .get(&step.meta, &step.key)?
                    .as_ref()
                    .map_or(0, dynamo_protocol::value::item_size_bytes);
                capacity
                    .entry(step.meta.name.clone())
                    .or_default()
                    .add(&Capacity::table(2.0 * super::read_units(size, true)));
            }
            return Ok(capacity);
        }
    }
    let capacity = store.engine().write(move |context| run(context, &steps)).await?;
    if let Some(token) = token {
        store.transactions.remember(token, digest, now);
    }
    Ok(capacity)
}

/// Why a step cannot go ahead against `old`, the item there now; `None` if it can.
fn cancellation(step: &TxStep, old: Option<&Item>) -> Result<Option<CancellationReason>, ApiError> {
    let failed_condition = |item| CancellationReason {
        code: "ConditionalCheckFailed".into(),
        message: Some("The conditional request failed".into()),
        item,
    };
    if matches!(step.action, TxAction::Insert(_)) && old.is_some() {
        return Ok(Some(CancellationReason {
            code: "DuplicateItem".into(),
            message: Some("Duplicate primary key exists in table".into()),
            item: None,
        }));
    }
    if step.must_exist && old.is_none() {
        return Ok(Some(failed_condition(None)));
    }
    match check_condition(step.condition.as_ref(), old, step.return_old) {
        Ok(()) => Ok(None),
        Err(error) if error.kind == ErrorKind::ConditionalCheckFailed => Ok(Some(failed_condition(error.item))),
        Err(error) => Err(error),
    }
}

/// One writer job: every condition against the current items first, every new item computed,
/// and only then the writes. A transaction writes each item twice (prepare and commit): twice
/// what the same single write consumes on the table and on every index whose entry it changes;
/// a check costs two units.
fn run(context: &mut WriteContext<'_>, steps: &[TxStep]) -> Result<BTreeMap<String, Capacity>, ApiError> {
    let mut olds = Vec::with_capacity(steps.len());
    let mut reasons = Vec::with_capacity(steps.len());
    let mut failed = false;
    for step in steps {
        context.current_table(&step.meta)?;
        let old = context.get(&step.meta, &step.key)?;
        let reason = cancellation(step, old.as_ref())?;
        failed |= reason.is_some();
        reasons.push(reason.unwrap_or_else(CancellationReason::none));
        olds.push(old);
    }
    // Compute every new item before the first write, so a failing update writes nothing.
    let mut news = Vec::with_capacity(steps.len());
    for (position, (step, old)) in steps.iter().zip(&olds).enumerate() {
        news.push(match &step.action {
            // Only REMOVE/DELETE on a missing item: nothing is created (as UpdateItem).
            TxAction::Update(_, Some(update)) if !failed && old.is_none() && update.only_removes() => None,
            TxAction::Update(key, update) if !failed => {
                match updated_item(&step.meta, key, old.as_ref(), update.as_ref()) {
                    Ok(item) => Some(item),
                    Err(error) => {
                        failed = true;
                        reasons[position] = CancellationReason {
                            code: "ValidationError".into(),
                            message: Some(error.message),
                            item: None,
                        };
                        None
                    }
                }
            }
            TxAction::Put(item) | TxAction::Insert(item) => Some(item.clone()),
            _ => None,
        });
    }
    if failed {
        return Err(ApiError::transaction_canceled(reasons));
    }
    let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
    for ((step, old), new) in steps.iter().zip(&olds).zip(&news) {
        let consumed = match (&step.action, new) {
            (TxAction::Put(_) | TxAction::Insert(_) | TxAction::Update(..), Some(new)) => {
                context.put(&step.meta, &step.key, old.as_ref(), new)?;
                Capacity::write(&step.meta, old.as_ref(), Some(new))
            }
            (TxAction::Delete, _) => {
                context.delete(&step.meta, &step.key, old.as_ref())?;
                Capacity::write(&step.meta, old.as_ref(), None)
            }
            (TxAction::DeleteExisting, _) => {
                if old.is_some() {
                    context.delete(&step.meta, &step.key, old.as_ref())?;
                }
                Capacity::write(&step.meta, old.as_ref(), None)
            }
            (TxAction::Update(..), None) => Capacity::write(&step.meta, old.as_ref(), None),
            _ => Capacity::table(1.0),
        };
        let entry = capacity.entry(step.meta.name.clone()).or_default();
        entry.add(&consumed);
        entry.add(&consumed);
    }
    Ok(capacity)
}
