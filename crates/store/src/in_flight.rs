//! The budget for requests in flight once their bodies are read: what a DynamoDB API request
//! holds in memory from the end of its body until its answer is built.
//!
//! The listener's body budget (`buffered_body_bytes_max`) bounds the bytes of bodies being
//! read; once a body is whole its share would be given back, while the request goes on to be
//! decoded (JSON into items and expressions, several times its bytes), checked and served. A
//! client sending many large requests at once could so hold memory without any bound. Here a
//! request keeps its body's share until it is charged in this budget: its body's bytes times
//! [`DECODED_BYTES_PER_BODY_BYTE`], held until the answer is built. A request that finds the
//! budget spent waits (its connection reads nothing more meanwhile) for at most the listener's
//! body read timeout, then is answered 503 `ServiceUnavailable`, which SDKs retry.
//!
//! A compressed body is charged for its inflated size (counted first, then charged).
//!
//! Answers are charged too: an operation whose answer may be large (a read: BatchGetItem's up
//! to 16 MB of items) takes [`answer_reserve_bytes`] at least when admitted, for the time it
//! builds its answer; once the answer is serialised its share shrinks to the answer's bytes,
//! and it holds that until the client has read the answer (or its connection closed). A client
//! that asks for large answers and never reads them so fills this budget, not the memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the budget charges per byte of a request's body: the memory its decoded form may take.
/// Measured (debug build, peak resident growth over body bytes, one request at a time): 3–14×
/// for items, keys, lists and most parameters; ExpressionAttributeValues and
/// ExpressionAttributeNames of hundreds of thousands of placeholders, and Expected or Tags of as
/// many entries, more (up to ~30×), though refused once decoded.
pub const DECODED_BYTES_PER_BODY_BYTE: usize = 16;

/// The least a request of `operation` takes when admitted, for the answer it builds: a read's
/// largest answer (DynamoDB's size limits on what it returns) times 4 for its JSON (type tags,
/// base64, escapes), whatever its body. Writes answer little (ReturnValues at most an item)
/// and take nothing more: they wait for their commit while admitted.
pub fn answer_reserve_bytes(operation: &str) -> usize {
    const MIB: usize = 1024 * 1024;
    const JSON_BYTES_PER_ITEM_BYTE: usize = 4;
    let largest = match operation {
        // DynamoDB: 100 items, 16 MB in all.
        "BatchGetItem" => 16 * MIB,
        // 25 statements of an item each (400 KB).
        "BatchExecuteStatement" => 10 * MIB,
        // 100 items, 4 MB in all.
        "TransactGetItems" | "ExecuteTransaction" => 4 * MIB,
        // A page is at most 1 MB of items; GetRecords at most 1 MB of records.
        "Query" | "Scan" | "ExecuteStatement" | "GetRecords" => MIB,
        // An item is at most 400 KB.
        "GetItem" => 400 * 1024,
        _ => 0,
    };
    largest * JSON_BYTES_PER_ITEM_BYTE
}

/// The budget's size: the listener's body budget times [`DECODED_BYTES_PER_BODY_BYTE`] (512 MiB
/// with the default 32 MiB budget), at most `u32::MAX` bytes (a semaphore's largest grant).
pub fn budget_bytes(buffered_body_bytes_max: usize) -> usize {
    buffered_body_bytes_max
        .saturating_mul(DECODED_BYTES_PER_BODY_BYTE)
        .min(u32::MAX as usize)
}

/// The budget, shared by every request of one listener.
pub struct Budget {
    permits: Arc<Semaphore>,
    total_bytes: usize,
    wait: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    pub total_bytes: usize,
    pub waited_ms: u64,
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "The store's budget for requests in flight ({} bytes: buffered_body_bytes_max times {}) stayed spent for {} ms; retry the request, or raise buffered_body_bytes_max",
            self.total_bytes, DECODED_BYTES_PER_BODY_BYTE, self.waited_ms
        )
    }
}

/// One request's share of the budget, given back when dropped.
pub struct Admission {
    permit: OwnedSemaphorePermit,
    /// The body bytes the share covers (capped at the budget's size over the charge per byte).
    covered_body_bytes: usize,
}

impl Admission {
    /// The body bytes this share covers: a body inflated to at most this many needs no more.
    pub fn covered_body_bytes(&self) -> usize {
        self.covered_body_bytes
    }

    /// Bytes of the budget held.
    pub fn held_bytes(&self) -> usize {
        self.permit.num_permits()
    }

    /// Keeps `bytes` of the share (the answer's, once it is serialised) and gives back the rest.
    pub fn shrink_to(&mut self, bytes: usize) {
        let held = self.permit.num_permits();
        if held > bytes {
            drop(self.permit.split(held - bytes));
        }
        self.covered_body_bytes = 0;
    }
}

impl Budget {
    /// A budget of `total_bytes`; a request waits for its share at most `wait`.
    pub fn new(total_bytes: usize, wait: Duration) -> Budget {
        let total_bytes = total_bytes.clamp(1, u32::MAX as usize);
        Budget {
            permits: Arc::new(Semaphore::new(total_bytes)),
            total_bytes,
            wait,
        }
    }

    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Bytes held by requests in flight.
    pub fn held_bytes(&self) -> usize {
        self.total_bytes.saturating_sub(self.permits.available_permits())
    }

    /// The share a body of `body_bytes` takes: its bytes times the charge per byte, at most the
    /// whole budget (such a request runs alone).
    fn charge(&self, body_bytes: usize) -> usize {
        body_bytes
            .saturating_mul(DECODED_BYTES_PER_BODY_BYTE)
            .min(self.total_bytes)
    }

    fn covered(&self, charge: usize) -> usize {
        if charge >= self.total_bytes {
            usize::MAX
        } else {
            charge / DECODED_BYTES_PER_BODY_BYTE
        }
    }

    async fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Spent> {
        // `charge` keeps it within the budget, whose size fits a u32.
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_many_owned(permits) {
            return Ok(permit);
        }
        let spent = Spent {
            total_bytes: self.total_bytes,
            waited_ms: self.wait.as_millis() as u64,
        };
        match tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or the semaphore closed (it never is).
            _ => Err(spent),
        }
    }

    /// Admits a request whose body has `body_bytes`, taking `at_least_bytes` at least (an
    /// answer's reserve), waiting while the budget is spent.
    pub async fn admit(&self, body_bytes: usize, at_least_bytes: usize) -> Result<Admission, Spent> {
        let charge = self.charge(body_bytes).max(at_least_bytes.min(self.total_bytes));
        let permit = self.take(charge).await?;
        Ok(Admission {
            permit,
            covered_body_bytes: self.covered(charge),
        })
    }

    /// Grows `admission` to cover a body of `body_bytes` (an inflated one), waiting while the
    /// budget is spent; nothing to do when it covers it already. It gives back what it holds and
    /// waits for the larger share whole: holding part of the budget while waiting for more, it
    /// could wait forever for a request queued behind it for the whole budget.
    pub async fn grow(&self, admission: &mut Admission, body_bytes: usize) -> Result<(), Spent> {
        if body_bytes <= admission.covered_body_bytes {
            return Ok(());
        }
        let held = admission.permit.num_permits();
        drop(admission.permit.split(held));
        admission.covered_body_bytes = 0;
        let charge = self.charge(body_bytes);
        admission.permit.merge(self.take(charge).await?);
        admission.covered_body_bytes = self.covered(charge);
        Ok(())
    }
}

/// A request's share kept with its answer: `api` puts it in the response's extensions, and
/// `compat::with_answer_headers` hands it to the answer's body ([`HeldAnswer::body`]).
#[derive(Clone)]
pub struct Held(Arc<std::sync::Mutex<Option<Admission>>>);

impl Held {
    pub fn new(admission: Admission) -> Held {
        Held(Arc::new(std::sync::Mutex::new(Some(admission))))
    }

    fn take(&self) -> Option<Admission> {
        self.0.lock().map(|mut held| held.take()).unwrap_or(None)
    }
}

/// Bytes of an answer given to the connection at a time: it asks for the next piece only once
/// it has room for it (hyper's write buffer, HTTP/2's flow-control window), so the share is
/// held about as long as the answer is.
pub const ANSWER_PIECE_BYTES: usize = 64 * 1024;

/// An answer's body that keeps its request's share of the budget until its last piece has been
/// taken by the connection (or the connection closed).
pub struct HeldAnswer {
    rest: bytes::Bytes,
    held: Option<Admission>,
}

impl HeldAnswer {
    /// `answer` as a body holding `held`'s share (none: a plain body).
    pub fn body(answer: bytes::Bytes, held: Option<Held>) -> axum::body::Body {
        match held.and_then(|held| held.take()) {
            Some(admission) => axum::body::Body::new(HeldAnswer {
                rest: answer,
                held: Some(admission),
            }),
            None => axum::body::Body::from(answer),
        }
    }
}

impl axum::body::HttpBody for HeldAnswer {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            this.held = None;
            return std::task::Poll::Ready(None);
        }
        let piece = this.rest.split_to(this.rest.len().min(ANSWER_PIECE_BYTES));
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_request_holds_its_body_times_the_charge_until_dropped() {
        let budget = Budget::new(1000, WAIT);
        let admission = budget.admit(10, 0).await.expect("admitted");
        assert_eq!(admission.held_bytes(), 10 * DECODED_BYTES_PER_BODY_BYTE);
        assert_eq!(admission.covered_body_bytes(), 10);
        assert_eq!(budget.held_bytes(), 160);
        drop(admission);
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_after_the_wait_and_admits_once_a_share_is_given_back() {
        let budget = Arc::new(Budget::new(320, WAIT));
        let first = budget.admit(20, 0).await.expect("admitted");
        let refused = budget.admit(1, 0).await.err().expect("refused");
        assert_eq!(refused.total_bytes, 320);
        assert!(
            refused.to_string().contains("raise buffered_body_bytes_max"),
            "{refused}"
        );
        // A waiter is admitted as soon as the share it waits for is given back.
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.admit(20, 0).await.map(|a| a.held_bytes()) })
        };
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(waiting.await.expect("task"), Ok(320));
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_takes_all_of_it_and_covers_any_size() {
        let budget = Budget::new(100, WAIT);
        let admission = budget.admit(1_000_000, 0).await.expect("admitted");
        assert_eq!(admission.held_bytes(), 100);
        assert_eq!(admission.covered_body_bytes(), usize::MAX);
        assert!(budget.admit(0, 0).await.is_ok(), "an empty body takes nothing");
        assert!(budget.admit(1, 0).await.is_err());
    }

    #[tokio::test]
    async fn growing_waits_for_the_larger_share_whole_holding_nothing_meanwhile() {
        let budget = Arc::new(Budget::new(1600, WAIT));
        let mut admission = budget.admit(10, 0).await.expect("admitted");
        budget.grow(&mut admission, 5).await.expect("grown");
        assert_eq!(admission.held_bytes(), 160, "a smaller body needs nothing more");
        budget.grow(&mut admission, 50).await.expect("grown");
        assert_eq!((admission.held_bytes(), admission.covered_body_bytes()), (800, 50));
        let other = budget.admit(40, 0).await.expect("admitted");
        assert!(budget.grow(&mut admission, 100).await.is_err());
        assert_eq!(admission.held_bytes(), 0, "a refused growth holds nothing");
        assert_eq!(budget.held_bytes(), 640);
        // A request queued for the whole budget does not wait on one that grows behind it.
        let whole = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.admit(1000, 0).await.map(|a| a.held_bytes()) })
        };
        tokio::task::yield_now().await;
        drop(other);
        assert_eq!(whole.await.expect("task"), Ok(1600));
        budget.grow(&mut admission, 1000).await.expect("grown");
        assert_eq!(
            (admission.held_bytes(), admission.covered_body_bytes()),
            (1600, usize::MAX)
        );
    }

    #[tokio::test]
    async fn a_read_takes_its_answers_reserve_then_keeps_only_its_answer() {
        let budget = Budget::new(100 * 1024 * 1024, WAIT);
        let mut admission = budget
            .admit(100, answer_reserve_bytes("BatchGetItem"))
            .await
            .expect("admitted");
        assert_eq!(admission.held_bytes(), 64 * 1024 * 1024);
        admission.shrink_to(5000);
        assert_eq!((admission.held_bytes(), budget.held_bytes()), (5000, 5000));
        let write = budget
            .admit(100, answer_reserve_bytes("PutItem"))
            .await
            .expect("admitted");
        assert_eq!(
            write.held_bytes(),
            100 * DECODED_BYTES_PER_BODY_BYTE,
            "a write takes only its body's charge"
        );
        // A reserve larger than the whole budget takes all of it.
        drop((admission, write));
        let small = Budget::new(1000, WAIT);
        assert_eq!(
            small
                .admit(1, answer_reserve_bytes("Query"))
                .await
                .expect("admitted")
                .held_bytes(),
            1000
        );
    }

    #[test]
    fn the_budget_is_the_body_budget_times_the_charge_within_a_semaphore_grant() {
        assert_eq!(budget_bytes(32 << 20), 512 << 20);
        assert_eq!(budget_bytes(usize::MAX), u32::MAX as usize);
    }
}
