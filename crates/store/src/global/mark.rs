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
            store: Some(format!("{:016x}", self.engine.store_id())),
        })
        .expect("a mark serialises");
        let date_ms = self.engine.now_unix_ms();
        match self.post_dated(peer, "/replication/v1/mark", body, date_ms).await {
            Ok((200, answer)) => self.take_mark_answer(&peer.region, date_ms, &answer).await,
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
        let (source, fresh) = self.authenticate_fresh(headers, "/replication/v1/mark", body)?;
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
        if let Some(text) = request.store.as_deref() {
            let id = (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(text, 16).ok())
                .flatten()
                .filter(|id| *id != 0)
                .ok_or_else(|| ApiError::validation(format!("corrupt mark: store id {text:?} is not 16 hex digits")))?;
            // A replayed mark (an older identity within the signing window) changes nothing.
            if fresh {
                self.observe_peer_store(&source, id).await?;
            }
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
        // Tell the peer when its own database lacks replicas listed here: it cannot know by
        // itself (a wiped data directory looks like a fresh install). The answer is signed
        // whether or not it lists any: an unsigned "nothing missing" would let anyone on the
        // path strip the claim and hide the wipe.
        let mut answer = MarkAnswer {
            replicas_missing_here: self.tables_missing_at(&source).map(|(since, mut tables)| {
                tables.truncate(MISSING_HERE_TABLES_MAX);
                MissingHere { since, tables }
            }),
            signature: None,
        };
        answer.signature = Some(self.sign_answer(
            headers,
            &source,
            MARK_ANSWER_PATH,
            &mark_answer_payload(&answer.replicas_missing_here),
        ));
        Ok(serde_json::to_value(answer).expect("a mark answer serialises"))
    }

    /// Takes a peer's answer to this region's mark: what it says this region's database lacks
    /// replaces what it said before (a signed answer without it clears it). Only an answer
    /// signed by the peer for this mark counts, the claim and its absence alike: an unsigned
    /// one (forged, a claim stripped on the way, or a body from a build before them) or one
    /// signed for another mark (replayed) changes nothing.
    async fn take_mark_answer(&self, peer: &str, mark_date_ms: u64, body: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<MarkAnswer>(body) else {
            return;
        };
        let signed = answer.signature.as_deref().is_some_and(|signature| {
            verify(
                &self.config.key,
                (peer, &self.region),
                MARK_ANSWER_PATH,
                mark_date_ms,
                &mark_answer_payload(&answer.replicas_missing_here),
                signature,
            )
        });
        if !signed {
            if answer.replicas_missing_here.is_some() || answer.signature.is_some() {
                tracing::warn!(%peer, "an answer to this region's mark has no valid signature for that mark; ignored (forged, replayed, or the replication keys differ)");
            }
            return;
        }
        let told = answer.replicas_missing_here.map(|mut missing| {
            missing.tables.truncate(MISSING_HERE_TABLES_MAX);
            missing
                .tables
                .retain(|name| crate::catalog::validate_table_name(name, "TableName").is_ok());
            missing
        });
        let (before, after) = {
            let mut missing_here = self.missing_here.lock().expect("missing-here lock is never poisoned");
            let before = missing_here.get(peer).map(|missing| missing.since);
            match told {
                Some(missing) if !missing.tables.is_empty() => {
                    if missing_here.get(peer) != Some(&missing) {
                        tracing::error!(
                            %peer,
                            tables = %missing.tables.join(", "),
                            "{peer} lists replicas of global tables in this region that this database does not have (its data directory was wiped or replaced): this region must not serve them until they are created again from {peer}"
                        );
                    }
                    let since = missing.since.max(1);
                    missing_here.insert(peer.to_string(), missing);
                    (before, Some(since))
                }
                _ => {
                    if before.is_some() {
                        tracing::info!(%peer, "{peer} no longer lists replicas missing in this region");
                    }
                    missing_here.remove(peer);
                    (before, None)
                }
            }
        };
        // Kept durably, so a restart does not serve as `ready` until the peer answers again.
        // Written only when it changes; one peer's marks go one at a time, so its writes keep
        // their order.
        if before.map(|since| since.max(1)) != after {
            let key = super::missing_here_setting(peer);
            let value = after.unwrap_or(0);
            if let Err(error) = self.engine.write(move |context| context.set_setting(&key, value)).await {
                tracing::warn!(%peer, %error, "could not record what {peer} said of this region's database; it holds in memory and is said again by the next answer");
            }
        }
    }

    /// What the peers last said this region's database lacks, per peer.
    pub fn missing_here(&self) -> Vec<(String, MissingHere)> {
        self.missing_here
            .lock()
            .expect("missing-here lock is never poisoned")
            .iter()
            .map(|(peer, missing)| (peer.clone(), missing.clone()))
            .collect()
    }

    /// A peer's mark named its database identity. The first one seen is kept (durably); a
    /// different one later means the peer's database is new — its data directory was wiped or
    /// replaced — so its replicas of the global tables are gone while this region lists them
    /// ACTIVE, and it skips what it is sent for them. When that happened is recorded durably
    /// (`peer_rebuilt_setting`: the last time the old identity was seen, or this process's start),
    /// and every global table listing the peer whose replica there was not created since
    /// (`replica_made_setting`) is raised on `/health` ([`Replication::tables_missing_at`]).
    pub(super) async fn observe_peer_store(&self, peer: &str, id: u64) -> Result<(), ApiError> {
        let now_ms = self.engine.now_unix_ms();
        let old_seen_ms = {
            let mut cache = self.peer_stores.lock().expect("peer store lock is never poisoned");
            match cache.get_mut(peer) {
                Some((known, seen_ms)) if *known == id => {
                    *seen_ms = now_ms;
                    return Ok(());
                }
                Some((_, seen_ms)) => *seen_ms,
                None => self.started_ms,
            }
        };
        let (store_key, rebuilt_key) = (peer_store_setting(peer), peer_rebuilt_setting(peer));
        // Compared and set in one write: concurrent marks cannot leave the two apart.
        let known = self
            .engine
            .write(move |context| {
                let known = context.setting(&store_key)?;
                if known != id {
                    context.set_setting(&store_key, id)?;
                    if known != 0 {
                        context.set_setting(&rebuilt_key, old_seen_ms.max(1))?;
                    }
                }
                Ok(known)
            })
            .await?;
        if known != 0 && known != id {
            tracing::error!(
                %peer,
                old = format!("{known:016x}"),
                new = format!("{id:016x}"),
                "{peer}'s store answers with a new database (its data directory was wiped or replaced): its replicas of the global tables are empty; create each again (UpdateTable ReplicaUpdates Delete, then Create, for {peer}) to backfill it"
            );
        }
        self.peer_stores
            .lock()
            .expect("peer store lock is never poisoned")
            .insert(peer.to_string(), (id, now_ms));
        Ok(())
    }

    /// The global tables listing `peer` whose replica there is missing: the peer's database is
    /// new since (Unix ms), and their replica there was not created again after that.
    pub fn tables_missing_at(&self, peer: &str) -> Option<(u64, Vec<String>)> {
        let since = Some(self.engine.setting_value(&peer_rebuilt_setting(peer))).filter(|at| *at != 0)?;
        let tables: Vec<String> = self
            .engine
            .tables()
            .iter()
            .filter(|table| table.replicas.iter().any(|r| r == peer))
            .filter(|table| self.engine.setting_value(&replica_made_setting(peer, table.id)) < since)
            .map(|table| table.name.clone())
            .collect();
        (!tables.is_empty()).then_some((since, tables))
    }

    pub(super) fn applied(&self, source: &str, through: u64) {
        self.watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .on_applied(source, through);
    }
}

/// What a mark answer's signature covers: the JSON of `replicas_missing_here`, `null` when the
/// answerer lists nothing missing (so "nothing missing" is signed too).
fn mark_answer_payload(missing: &Option<MissingHere>) -> Vec<u8> {
    serde_json::to_vec(missing).expect("a list of tables serialises")
}
