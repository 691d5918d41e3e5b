//! Anti-entropy (and the backfill of a new replica): range digests find where a peer differs,
//! and this region's records there are pushed.

use std::collections::HashMap;

use super::*;

pub(super) struct RepairProgress {
    logged_at: std::time::Instant,
    total: u64,
    /// The peer's join barrier this repair backfills (0: anti-entropy only).
    barrier: u64,
}

impl Replication {
    /// Anti-entropy with `peer` over every global table they share (also the backfill of a new
    /// replica): range digests find where the peer differs (`replication::digest`), and this
    /// region's records there are pushed; a peer with an empty table gets everything at once.
    /// Returns the log head as of the start: the peer then holds everything through it.
    /// `barrier`: the peer's join barrier this repair backfills (0 for anti-entropy only), read
    /// before the tables so that every replica joined at or below it is among them.
    pub(super) async fn repair(&self, peer: &Peer, status: &PeerStatus, barrier: u64) -> Result<u64, String> {
        let head = self.engine.log_head();
        status.repaired_records.store(0, Ordering::Relaxed);
        let tables: Vec<Arc<TableMeta>> = self
            .engine
            .tables()
            .into_iter()
            .filter(|t| t.replicas.iter().any(|r| r == &peer.region))
            .collect();
        let total: u64 = tables.iter().map(|t| self.engine.stats(t.id, None).item_count).sum();
        status.repair_total.store(total, Ordering::Relaxed);
        let mut progress = RepairProgress {
            logged_at: std::time::Instant::now(),
            total,
            barrier,
        };
        let mut compared = 0;
        for table in tables {
            // Where this side keeps its range digests, they are cheap to read a level at a
            // time (the peer keeps them too, unless it runs an earlier version).
            let kept = self
                .engine
                .snapshot()
                .and_then(|s| s.digests_complete(table.id))
                .map_err(|e| e.message)?;
            let mut walk = if kept {
                Walk::with_kept_depth(REPAIR_LEAF_RECORDS_MAX, crate::engine::DIGEST_BUCKET_BITS)
            } else {
                Walk::new(REPAIR_LEAF_RECORDS_MAX)
            };
            while !walk.is_done() {
                let ranges = walk.next_ranges(DIGEST_RANGES_PER_REQUEST_MAX);
                let local = self.local_digests(&table, ranges.clone()).await?;
                let remote = self.remote_digests(peer, &table.name, &ranges).await?;
                let held: HashMap<DigestRange, u64> =
                    ranges.iter().copied().zip(remote.iter().map(|d| d.count)).collect();
                // Where the peer holds records too, only the records that differ are pushed
                // (a leaf of 128 records with one stale key moves one record); where it holds
                // none, or too many to list, the range goes whole.
                let (listed, whole): (Vec<DigestRange>, Vec<DigestRange>) = walk
                    .on_digests(&ranges, &local, &remote)
                    .into_iter()
                    .partition(|range| {
                        held.get(range)
                            .is_some_and(|&count| count > 0 && count <= REPAIR_HASHES_PER_RANGE_MAX as u64)
                    });
                for range in whole {
                    self.push_range(peer, status, &table, range, &mut progress).await?;
                }
                if !listed.is_empty() {
                    self.push_differing(peer, status, &table, &listed, &mut progress)
                        .await?;
                }
            }
            compared += walk.compared;
        }
        self.send_repair(
            peer,
            RepairRequest {
                records: Vec::new(),
                complete_through: Some(head),
                backfill_barrier: barrier,
            },
        )
        .await?;
        let pushed = status.repaired_records.load(Ordering::Relaxed);
        status.repairs.fetch_add(1, Ordering::Relaxed);
        status.last_repair_ranges_compared.store(compared, Ordering::Relaxed);
        status.last_repair_records_pushed.store(pushed, Ordering::Relaxed);
        tracing::info!(
            peer = %peer.region,
            ranges_compared = compared,
            records_pushed = pushed,
            items = total,
            "anti-entropy compared range digests and pushed the differences"
        );
        Ok(head)
    }

    /// This region's digests of `ranges`, computed off the async threads (a range can be the
    /// whole table).
    pub(super) async fn local_digests(
        &self,
        table: &Arc<TableMeta>,
        ranges: Vec<DigestRange>,
    ) -> Result<Vec<Digest>, String> {
        let engine = self.engine.clone();
        let table = Arc::clone(table);
        tokio::task::spawn_blocking(move || engine.snapshot()?.digests(&table, &ranges))
            .await
            .map_err(|e| format!("digest task failed: {e}"))?
            .map_err(|e| e.message)
    }

    pub(super) async fn remote_digests(
        &self,
        peer: &Peer,
        table: &str,
        ranges: &[DigestRange],
    ) -> Result<Vec<Digest>, String> {
        let body = serde_json::to_vec(&DigestRequest {
            table: table.to_string(),
            ranges: ranges.iter().map(|r| (r.depth, r.index)).collect(),
            hashes: false,
        })
        .expect("a digest request serialises");
        let response: DigestResponse = self.exchange(peer, "/replication/v1/digest", body).await?;
        if response.digests.len() != ranges.len() {
            return Err(format!(
                "{}: {} digests for {} ranges",
                peer.url,
                response.digests.len(),
                ranges.len()
            ));
        }
        response
            .digests
            .iter()
            .map(|(count, hash)| {
                Ok(Digest {
                    count: *count,
                    hash: u128::from_str_radix(hash, 16)
                        .map_err(|e| format!("{}: bad digest {hash}: {e}", peer.url))?,
                })
            })
            .collect()
    }

    /// The peer's record hashes in `ranges` (`None` for a range it holds too many records in,
    /// or when the peer is of a version that does not list them).
    async fn remote_hashes(
        &self,
        peer: &Peer,
        table: &str,
        ranges: &[DigestRange],
    ) -> Result<Vec<Option<HashMap<Vec<u8>, u128>>>, String> {
        let body = serde_json::to_vec(&DigestRequest {
            table: table.to_string(),
            ranges: ranges.iter().map(|r| (r.depth, r.index)).collect(),
            hashes: true,
        })
        .expect("a digest request serialises");
        let response: DigestResponse = self.exchange(peer, "/replication/v1/digest", body).await?;
        let Some(listed) = response.hashes else {
            return Ok(vec![None; ranges.len()]);
        };
        if listed.len() != ranges.len() {
            return Err(format!(
                "{}: record hashes of {} ranges for {} asked",
                peer.url,
                listed.len(),
                ranges.len()
            ));
        }
        listed
            .into_iter()
            .map(|range| {
                range
                    .map(|records| {
                        records
                            .into_iter()
                            .map(|(key, hash)| {
                                let key = BASE64
                                    .decode(key.as_bytes())
                                    .map_err(|e| format!("{}: bad key in record hashes: {e}", peer.url))?;
                                let hash = u128::from_str_radix(&hash, 16)
                                    .map_err(|e| format!("{}: bad record hash {hash}: {e}", peer.url))?;
                                Ok((key, hash))
                            })
                            .collect::<Result<HashMap<_, _>, String>>()
                    })
                    .transpose()
            })
            .collect()
    }

    /// Sends the records of `table` in `ranges` whose key and version the peer does not hold
    /// (its record hashes differ or it has no such key); a range the peer cannot list goes whole.
    async fn push_differing(
        &self,
        peer: &Peer,
        status: &PeerStatus,
        table: &TableMeta,
        ranges: &[DigestRange],
        progress: &mut RepairProgress,
    ) -> Result<(), String> {
        let theirs = self.remote_hashes(peer, &table.name, ranges).await?;
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (range, theirs) in ranges.iter().zip(theirs) {
            let Some(theirs) = theirs else {
                self.push_range(peer, status, table, *range, progress).await?;
                continue;
            };
            let mut after: Option<Vec<u8>> = None;
            loop {
                let snapshot = self.engine.snapshot().map_err(|e| e.message)?;
                let records = snapshot
                    .records_in(table, *range, after.as_deref(), REPAIR_RECORDS_PER_REQUEST_MAX)
                    .map_err(|e| e.message)?;
                let Some((last, _)) = records.last() else {
                    break;
                };
                after = Some(last.clone());
                let full = records.len() >= REPAIR_RECORDS_PER_REQUEST_MAX;
                for (key, record) in records {
                    let ours = crate::engine::stored_record_hash(&key, &record)?;
                    if theirs.get(&key) != Some(&ours) {
                        pending.push((key, record));
                    }
                }
                if pending.len() >= REPAIR_RECORDS_PER_REQUEST_MAX {
                    self.send_records(peer, status, table, std::mem::take(&mut pending), progress)
                        .await?;
                }
                if !full {
                    break;
                }
            }
        }
        if !pending.is_empty() {
            self.send_records(peer, status, table, pending, progress).await?;
        }
        Ok(())
    }

    /// Sends every record of `table` in `range` to the peer, a page at a time, with up to
    /// `REPAIR_REQUESTS_IN_FLIGHT_MAX` pages in flight (records apply by last writer wins, so
    /// their order across pages does not matter; the repair's closing request waits for all).
    pub(super) async fn push_range(
        &self,
        peer: &Peer,
        status: &PeerStatus,
        table: &TableMeta,
        range: DigestRange,
        progress: &mut RepairProgress,
    ) -> Result<(), String> {
        use futures_util::StreamExt as _;
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut after: Option<Vec<u8>> = None;
        let mut exhausted = false;
        loop {
            while !exhausted && in_flight.len() < REPAIR_REQUESTS_IN_FLIGHT_MAX {
                let snapshot = self.engine.snapshot().map_err(|e| e.message)?;
                let records = snapshot
                    .records_in(table, range, after.as_deref(), REPAIR_RECORDS_PER_REQUEST_MAX)
                    .map_err(|e| e.message)?;
                let Some((last, _)) = records.last() else {
                    exhausted = true;
                    break;
                };
                after = Some(last.clone());
                exhausted = records.len() < REPAIR_RECORDS_PER_REQUEST_MAX;
                in_flight.push(self.send_page(peer, table, records, progress.barrier));
            }
            match in_flight.next().await {
                None => return Ok(()),
                Some(sent) => self.count_pushed(peer, status, table, sent?, progress),
            }
        }
    }

    /// One repair request carrying `records` (stored key and bytes) of `table`.
    async fn send_records(
        &self,
        peer: &Peer,
        status: &PeerStatus,
        table: &TableMeta,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        progress: &mut RepairProgress,
    ) -> Result<(), String> {
        let sent = self.send_page(peer, table, records, progress.barrier).await?;
        self.count_pushed(peer, status, table, sent, progress);
        Ok(())
    }

    /// Sends `records` of `table` in one repair request; answers how many.
    async fn send_page(
        &self,
        peer: &Peer,
        table: &TableMeta,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        barrier: u64,
    ) -> Result<u64, String> {
        let encoded = records
            .iter()
            .map(|(key, record)| BASE64.encode(replication_log::encode_change(&table.name, key, record)))
            .collect();
        self.send_repair(
            peer,
            RepairRequest {
                records: encoded,
                complete_through: None,
                // Every request of a backfill says so: its records at or below the
                // receiver's join barrier apply only from a backfill.
                backfill_barrier: barrier,
            },
        )
        .await?;
        Ok(records.len() as u64)
    }

    /// Counts `sent` records pushed, and logs the progress now and then.
    fn count_pushed(
        &self,
        peer: &Peer,
        status: &PeerStatus,
        table: &TableMeta,
        sent: u64,
        progress: &mut RepairProgress,
    ) {
        let copied = status.repaired_records.fetch_add(sent, Ordering::Relaxed) + sent;
        if progress.logged_at.elapsed() >= Duration::from_millis(REPAIR_PROGRESS_LOG_MS) {
            progress.logged_at = std::time::Instant::now();
            tracing::info!(
                peer = %peer.region,
                table = %table.name,
                copied,
                total = progress.total,
                percent = repair_percent(copied, progress.total),
                "repair (backfill) in progress"
            );
        }
    }

    pub(super) async fn send_repair(&self, peer: &Peer, request: RepairRequest) -> Result<(), String> {
        let body = serde_json::to_vec(&request).expect("a repair request serialises");
        self.exchange::<serde_json::Value>(peer, "/replication/v1/repair", body)
            .await
            .map(|_| ())
    }
}
