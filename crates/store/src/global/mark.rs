//! Watermark marks: this region's mark sent to every peer each `MARK_INTERVAL_MS`, the peers'
//! marks received, and the tombstone purge below the watermark.

use super::*;

impl Replication {
    /// Every `MARK_INTERVAL_MS`: takes this region's mark for the peers, then purges the
    /// tombstones below the watermark.
    pub(super) async fn mark_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_millis(MARK_INTERVAL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // What this region has received is read *before* the clock and log head are
            // captured: changes applied in between are re-logged after the head, so a
            // `received` read later could claim writes this mark's head does not cover.
            // Reading it early only understates it (it never decreases).
            let received_before = self
                .watermarks
                .lock()
                .expect("watermark lock is never poisoned")
                .received(u64::MAX);
            let (clock, head) = match self.engine.take_mark().await {
                Ok(mark) => mark,
                Err(error) => {
                    tracing::warn!(%error, "taking the watermark mark failed; retrying");
                    continue;
                }
            };
            let received = received_before.min(clock);
            let (below, slowest) = {
                let watermarks = self.watermarks.lock().expect("watermark lock is never poisoned");
                (
                    watermarks.purge_below(clock),
                    watermarks.slowest().map(|(peer, _)| peer.to_string()),
                )
            };
            self.mark.send_replace(Some(Mark { clock, received, head }));
            // A replica joined here and not yet backfilled may still receive writes older than
            // the watermark: nothing is purged until its backfill completes.
            let awaiting = self.engine.awaiting_backfills();
            let held_back_by = match awaiting.first() {
                Some((id, source, _)) => {
                    let table = self
                        .engine
                        .tables()
                        .into_iter()
                        .find(|t| t.id == *id)
                        .map_or_else(|| format!("#{id}"), |t| t.name.clone());
                    Some(format!("backfill of table {table} from {source}"))
                }
                None => slowest,
            };
            *self
                .tombstones
                .held_back_by
                .lock()
                .expect("status lock is never poisoned") = held_back_by;
            if !awaiting.is_empty() {
                continue;
            }
            self.engine.set_purge_below(below);
            self.tombstones.purge_below.store(below, Ordering::Relaxed);
            for _ in 0..PURGE_JOBS_PER_ROUND_MAX {
                if self.engine.oldest_tombstone_hlc().is_none_or(|oldest| oldest >= below) {
                    break;
                }
                match self.engine.purge_tombstones(below).await {
                    Ok((visited, removed)) => {
                        self.tombstones
                            .purged_total
                            .fetch_add(removed as u64, Ordering::Relaxed);
                        if visited < crate::engine::TOMBSTONE_PURGES_PER_JOB_MAX {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "purging tombstones failed; retrying later");
                        break;
                    }
                }
            }
        }
    }

    pub(super) async fn send_mark(&self, peer: &Peer, mark: Mark) {
        let body = serde_json::to_vec(&MarkRequest {
            clock: mark.clock,
            received: mark.received,
            head: mark.head,
        })
        .expect("a mark serialises");
        match self.post(peer, "/replication/v1/mark", body).await {
            Ok((200, _)) => {}
            Ok((status, body)) => tracing::debug!(
                peer = %peer.region,
                status,
                body = %String::from_utf8_lossy(&body),
                "peer refused a watermark mark; tombstones are kept until it takes them"
            ),
            Err(error) => tracing::debug!(peer = %peer.region, %error, "sending a watermark mark failed"),
        }
    }

    /// `POST /replication/v1/mark`: a peer's watermark mark.
    pub async fn receive_mark(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/mark", body)?;
        let request: MarkRequest =
            serde_json::from_slice(body).map_err(|e| ApiError::serialization(format!("corrupt mark: {e}")))?;
        // The peer is up (back from an outage, say): shipping to it need not wait out a backoff
        // that grew while it was down. Marks come about once a second.
        if let Some(status) = self.status.get(&source)
            && status.consecutive_failures.load(Ordering::Relaxed) > 0
        {
            status.heard.store(true, Ordering::SeqCst);
            status.wake.notify_one();
        }
        self.watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .on_mark(
                &source,
                Mark {
                    clock: request.clock,
                    received: request.received,
                    head: request.head,
                },
            );
        Ok(serde_json::json!({}))
    }

    pub(super) fn applied(&self, source: &str, through: u64) {
        self.watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .on_applied(source, through);
    }
}
