//! Shipping this region's replication log to each peer (one task per peer driving the sans-IO
//! `replication::Shipper`), replica-definition requests, the backfill's start condition and
//! the log trimmer.

use super::*;

/// The sender's durable counter of replica-definition requests.
pub(super) const DEFINITION_SENT_SETTING: &str = "definition_sent";

pub(super) enum Outcome {
    Acked(u64),
    Gap(u64),
    Trimmed(u64),
}

impl Replication {
    /// Tells a peer to create, update or delete its replica of `table`.
    /// Returns the peer's join barrier when it created its replica just now (see
    /// `TableMeta::joined_below`): its backfill must wait until this region has received
    /// everything up to it.
    pub async fn send_table(
        &self,
        region: &str,
        table: &TableMeta,
        delete: bool,
        joining: bool,
    ) -> Result<Option<u64>, ApiError> {
        let answer = self.send_definition(region, table, delete, joining).await?;
        Ok(answer.joined_below)
    }

    /// [`Replication::send_table`], answering what the peer said: its join barrier, and the
    /// TTL its replica holds now (`None` from a build before TTL followed global tables).
    pub async fn send_definition(
        &self,
        region: &str,
        table: &TableMeta,
        delete: bool,
        joining: bool,
    ) -> Result<DefinitionAnswer, ApiError> {
        let peer = self.peer(region).ok_or_else(|| {
            ApiError::validation(format!(
                "Region {region} is not a peer of this store; start it with --peer {region}=http://HOST:PORT"
            ))
        })?;
        // One definition request at a time, so they reach each peer in sequence order.
        let _serial = self.definitions.lock().await;
        let sequence = self
            .engine
            .write(|context| {
                let next = context.setting(DEFINITION_SENT_SETTING)? + 1;
                context.set_setting(DEFINITION_SENT_SETTING, next)?;
                Ok(next)
            })
            .await?;
        let body = serde_json::to_vec(&TableRequest {
            table: table.clone(),
            delete,
            sequence,
            joining,
        })
        .expect("a table definition serialises");
        match self.post(peer, "/replication/v1/table", body).await {
            // An answer that is not JSON (none is) reads as an old build's empty one.
            Ok((200, body)) => Ok(serde_json::from_slice(&body).unwrap_or_default()),
            Ok((status, body)) => Err(ApiError::validation(format!(
                "Region {region} refused the replica of {}: HTTP {status}: {}",
                table.name,
                String::from_utf8_lossy(&body)
            ))),
            Err(error) => Err(ApiError::new(
                ErrorKind::ServiceUnavailable,
                format!(
                    "Cannot reach region {region} to change the replica of {}: {error}; try again when it is up",
                    table.name
                ),
            )),
        }
    }

    pub(super) async fn ship_loop(self: Arc<Self>, peer: Peer) {
        let status = Arc::clone(&self.status[&peer.region]);
        let mut head = self.engine.subscribe_log();
        let first = self
            .engine
            .snapshot()
            .and_then(|s| s.log_first(*head.borrow()))
            .unwrap_or(1);
        let acked = self.engine.acked(&peer.region);
        let config = ShipperConfig {
            request_timeout_ms: REQUEST_TIMEOUT_MS + 1_000,
            ..ShipperConfig::default()
        };
        let mut shipper = Shipper::new(config, acked, *head.borrow(), first);
        if self.engine.setting_value(&backfill_setting(&peer.region)) != 0 {
            tracing::info!(peer = %peer.region, "a backfill of this peer did not finish before the restart; starting it again");
            status.backfilling.store(true, Ordering::SeqCst);
            shipper.request_repair();
        }
        let mut last_saved = acked;
        let mut marks = self.mark.subscribe();
        let mut mark_sent: Option<Mark> = None;
        loop {
            let mark = *marks.borrow_and_update();
            if mark != mark_sent
                && let Some(mark) = mark
            {
                // Sent once per mark, failed or not: the next one follows within a second.
                self.send_mark(&peer, mark).await;
                mark_sent = Some(mark);
            }
            if status.repair_requested.swap(false, Ordering::SeqCst) {
                shipper.request_repair();
            }
            if status.heard.swap(false, Ordering::SeqCst) {
                shipper.on_peer_heard(self.engine.now_unix_ms());
            }
            shipper.on_appended(*head.borrow_and_update());
            let now = self.engine.now_unix_ms();
            match shipper.poll(now) {
                Some(Command::Send {
                    batch,
                    from_seq,
                    changes_max,
                }) => match self.send_batch(&peer, batch, from_seq, changes_max).await {
                    Ok(Outcome::Acked(through)) => shipper.on_acked(batch, through),
                    Ok(Outcome::Gap(expected)) => shipper.on_gap(batch, expected),
                    Ok(Outcome::Trimmed(first)) => shipper.on_trimmed(first),
                    Err(error) => self.record_failure(&status, &mut shipper, batch, error),
                },
                Some(Command::Repair { batch }) => {
                    status.repairing.store(true, Ordering::SeqCst);
                    let setting = backfill_setting(&peer.region);
                    let barrier = self.engine.setting_value(&setting);
                    let outcome = match self.backfill_ready(barrier) {
                        Ok(()) => self.repair(&peer, &status, barrier).await,
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Ok(through) => {
                            shipper.on_repaired(batch, through);
                            if barrier != 0 {
                                // Cleared only if no newer join raised it meanwhile.
                                let cleared = self
                                    .engine
                                    .write(move |context| {
                                        let current = context.setting(&setting)?;
                                        let cleared = rules::backfill_cleared(current, barrier);
                                        if cleared {
                                            context.set_setting(&setting, 0)?;
                                        }
                                        Ok(cleared)
                                    })
                                    .await;
                                match cleared {
                                    Ok(true) => status.backfilling.store(false, Ordering::SeqCst),
                                    Ok(false) => status.repair_requested.store(true, Ordering::SeqCst),
                                    Err(error) => {
                                        tracing::warn!(%error, "recording a finished backfill failed; it runs again");
                                        status.repair_requested.store(true, Ordering::SeqCst);
                                    }
                                }
                            }
                            tracing::info!(peer = %peer.region, through, "repair finished: the peer holds everything through this change");
                        }
                        Err(error) => self.record_failure(&status, &mut shipper, batch, error),
                    }
                    status.repairing.store(false, Ordering::SeqCst);
                }
                None => {
                    let wait = shipper
                        .next_deadline_ms()
                        .map_or(IDLE_WAKE_MS, |d| d.saturating_sub(now).clamp(1, IDLE_WAKE_MS));
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        _ = marks.changed() => {},
                        () = status.wake.notified() => {},
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {},
                    }
                }
            }
            if shipper.acked() != last_saved && self.engine.save_acked(&peer.region, shipper.acked()).await.is_ok() {
                last_saved = shipper.acked();
            }
            self.update_status(&status, &shipper);
        }
    }

    pub(super) fn record_failure(&self, status: &PeerStatus, shipper: &mut Shipper, batch: u64, error: String) {
        shipper.on_failed(batch, self.engine.now_unix_ms());
        let failures = u64::from(shipper.consecutive_failures());
        status.consecutive_failures.store(failures, Ordering::Relaxed);
        // Log the first failure and then every tenth: a peer that is down is not news each second.
        if failures == 1 || failures % 10 == 0 {
            tracing::warn!(failures, %error, "replication to a peer failed; retrying with backoff");
        }
        *status.last_error.lock().expect("status lock is never poisoned") = Some(error);
        status
            .last_error_at_unix_ms
            .store(self.engine.now_unix_ms(), Ordering::Relaxed);
    }

    pub(super) fn update_status(&self, status: &PeerStatus, shipper: &Shipper) {
        status.acked.store(shipper.acked(), Ordering::Relaxed);
        status.pending_changes.store(shipper.pending(), Ordering::Relaxed);
        if shipper.consecutive_failures() == 0 {
            status.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let (lag, bytes) = match shipper.pending() {
            0 => (0, 0),
            _ => self.oldest_pending(shipper.acked()),
        };
        status.lag_ms.store(lag, Ordering::Relaxed);
        status.pending_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Age of the first change after `acked`, and the bytes of every change after it.
    pub(super) fn oldest_pending(&self, acked: u64) -> (u64, u64) {
        let Ok(snapshot) = self.engine.snapshot() else {
            return (0, 0);
        };
        let bytes = snapshot.log_bytes_after(acked).unwrap_or(0);
        let Ok(entries) = snapshot.read_log(acked + 1, 1, BATCH_BYTES_MAX) else {
            return (0, bytes);
        };
        let lag = entries
            .first()
            .and_then(|(_, entry)| replication_log::decode_change(entry).ok())
            .and_then(|change| record::hlc(&change.record).ok())
            .map(|hlc| {
                self.engine
                    .now_unix_ms()
                    .saturating_sub(hlc >> replication::hlc::LOGICAL_BITS)
            })
            .unwrap_or(0);
        (lag, bytes)
    }

    /// Whether a log entry goes to `peer`: the change did not originate there, and its table
    /// has a replica there (or is gone here, in which case the peer decides).
    pub(super) fn ships_to(&self, entry: &[u8], peer: &str) -> bool {
        let from_peer = replication_log::record_of(entry)
            .and_then(|r| record::origin(r).ok())
            .is_some_and(|origin| origin == peer);
        let replica_there = match replication_log::table_of(entry).map(|name| self.engine.table(name)) {
            Some(Some(table)) => table.replicas.iter().any(|r| r == peer),
            Some(None) => true,
            None => false,
        };
        replica_there && !from_peer
    }

    pub(super) async fn send_batch(
        &self,
        peer: &Peer,
        batch: u64,
        from_seq: u64,
        changes_max: usize,
    ) -> Result<Outcome, String> {
        let snapshot = self.engine.snapshot().map_err(|e| e.message)?;
        let entries = snapshot
            .read_log(from_seq, changes_max, BATCH_BYTES_MAX)
            .map_err(|e| e.message)?;
        match entries.first() {
            None => return Ok(Outcome::Acked(from_seq.saturating_sub(1))),
            Some((first, _)) if *first != from_seq => return Ok(Outcome::Trimmed(*first)),
            Some(_) => {}
        }
        let to_seq = entries.last().map_or(from_seq, |(seq, _)| *seq);
        let request = BatchRequest {
            batch,
            from_seq,
            to_seq,
            // Left out (an empty entry keeps the numbering): a change that originated at the
            // peer, which holds it or something newer already, and a change of a table the
            // peer has no replica of. The latter matters for purging tombstones: a region
            // vouches (in its marks) only for changes it applied, never for ones it skipped.
            changes: entries
                .iter()
                .map(|(_, entry)| {
                    if self.ships_to(entry, &peer.region) {
                        BASE64.encode(entry)
                    } else {
                        String::new()
                    }
                })
                .collect(),
        };
        let body = serde_json::to_vec(&request).expect("a batch serialises");
        let response: BatchResponse = self.exchange(peer, "/replication/v1/batch", body).await?;
        match (response.through, response.expected_from) {
            (Some(through), _) => Ok(Outcome::Acked(through)),
            (None, Some(expected)) => Ok(Outcome::Gap(expected)),
            (None, None) => Err(format!("{}: answer has neither through nor expected_from", peer.url)),
        }
    }

    /// A backfill whose peer joined at `barrier` may start once this region has received
    /// every write up to it (it then holds all the peer skipped before joining).
    pub(super) fn backfill_ready(&self, barrier: u64) -> Result<(), String> {
        let received = self
            .watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .received(u64::MAX);
        // This region's own later writes must be newer than the barrier: the clock moves up
        // to it first (within the bound ahead of the wall clock).
        self.engine.advance_clock_past(barrier);
        rules::backfill_ready(barrier, received, self.engine.clock_last()).map_err(|wait| match wait {
            BackfillWait::Received { barrier, received } => format!(
                "backfill waits until this region has received every write up to the peer's join (HLC {barrier}; received {received}): are all peers up?"
            ),
            BackfillWait::Clock { barrier, clock } => format!(
                "backfill waits until this region's clock passes the peer's join (HLC {barrier}, this clock {clock}): the peer's clock runs ahead of this one by more than clock_offset_max_ms"
            ),
        })
    }

    pub(super) async fn trim_loop(self: Arc<Self>) {
        let mut alarmed = false;
        // Logged once per episode of trimming what a peer still needs, not every round.
        let mut trimmed_needed_before = false;
        // The log holds nothing below this (what the last trim answered): a trim through less
        // is skipped, so an idle store does not commit four times a second.
        let mut held_from = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(TRIM_INTERVAL_MS)).await;
            let head = self.engine.log_head();
            let slowest = self
                .status
                .values()
                .map(|s| s.acked.load(Ordering::Relaxed))
                .min()
                .unwrap_or(head);
            let limit = self.config.backlog_bytes_max;
            let (backlog_bytes, bound) = match self.engine.snapshot() {
                Ok(snapshot) => (
                    snapshot.log_bytes_after(slowest).unwrap_or(0),
                    snapshot.trim_point_for_bytes(limit).unwrap_or(0),
                ),
                Err(_) => (0, 0),
            };
            let alarm = backlog_alarm(backlog_bytes, limit);
            if alarm && !alarmed {
                tracing::error!(
                    backlog_bytes,
                    limit_bytes = limit,
                    backlog_changes = head.saturating_sub(slowest),
                    "replication backlog near its bound: a peer is far behind; past the bound its log is trimmed and it is repaired by anti-entropy"
                );
            }
            alarmed = alarm;
            let trimming_needed = bound > slowest;
            if trimming_needed && !trimmed_needed_before {
                tracing::warn!(
                    through = bound,
                    limit_bytes = limit,
                    "replication log past its bound: trimming changes a peer still needs; it will be repaired by anti-entropy"
                );
            }
            trimmed_needed_before = trimming_needed;
            let through = slowest.max(bound);
            if through > 0 && through >= held_from {
                match self.engine.trim_log(through).await {
                    Ok(from) => held_from = from,
                    Err(error) => tracing::warn!(%error, "trimming the replication log failed; retrying later"),
                }
            }
        }
    }
}
