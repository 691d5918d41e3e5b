//! Anti-entropy of the settings that follow a global table (its TTL, its global indexes, its
//! billing mode and write capacity): every align round (`ops::align_unconfirmed`) each region
//! sends each peer the versions it holds of every table they share, and each side marks as
//! unconfirmed (`Followed::mark`) every setting it holds newer than the other, which its own
//! align then sends to every replica.
//!
//! Without it only the region that made a change sends it again: a change that reached some
//! replicas and not others stayed apart for good when its region went down for good (or lost
//! its replica) before the others had it, until the next change of that setting.

use std::collections::BTreeMap;

use super::*;
use crate::catalog::{SettingVersion, TtlSpec, setting_version};

/// Tables whose versions one request carries (a round sends as many requests as it takes).
pub const SETTINGS_TABLES_PER_REQUEST_MAX: usize = 256;

/// The versions of the followed settings one replica of a table holds (unversioned ones, a
/// previous build's, absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<SettingVersion>,
    /// Every versioned global index change (creation or deletion), by index name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub indexes: BTreeMap<String, SettingVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<SettingVersion>,
}

impl HeldSettings {
    pub fn of(table: &TableMeta) -> HeldSettings {
        HeldSettings {
            ttl: TtlSpec::version_of(table.ttl.as_ref()).map(|v| (v.hlc.0, v.origin)),
            indexes: table.index_versions(),
            capacity: table.capacity_version.clone(),
        }
    }

    /// The settings held here in a version newer than `theirs` holds (last writer wins on
    /// `(hlc, region)`, as a definition is taken): the ones this region is to send.
    pub fn newer_than<'a>(&'a self, theirs: &HeldSettings) -> Vec<Followed<'a>> {
        let newer = |ours: Option<&SettingVersion>, theirs: Option<&SettingVersion>| {
            setting_version(ours).is_some_and(|ours| replication::merge::wins(&ours, setting_version(theirs).as_ref()))
        };
        let mut found = Vec::new();
        if newer(self.ttl.as_ref(), theirs.ttl.as_ref()) {
            found.push(Followed::Ttl);
        }
        for (name, version) in &self.indexes {
            if newer(Some(version), theirs.indexes.get(name)) {
                found.push(Followed::Index(name));
            }
        }
        if newer(self.capacity.as_ref(), theirs.capacity.as_ref()) {
            found.push(Followed::Capacity);
        }
        found
    }
}

/// `POST /replication/v1/settings`: the sender's versions of the tables it shares with the
/// receiver, by table name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SettingsRequest {
    pub tables: BTreeMap<String, HeldSettings>,
}

/// The receiver's versions of the tables of a [`SettingsRequest`] it holds a replica of, with
/// the sender among its replicas (a table it lacks, or does not share, is left out).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SettingsAnswer {
    pub tables: BTreeMap<String, HeldSettings>,
    /// The answerer's signature of `tables` ([`settings_answer_payload`]), made as a request's
    /// (`sign`) from the answerer to the asker, over [`SETTINGS_ANSWER_PATH`] and the
    /// *request's* signing time: only the key's holders can make it, and it is valid for that
    /// one request (an answer captured and replayed to a later request does not verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What a settings answer's signature is made over in place of a request path (never a path a
/// request is sent to, so a signed answer is no signed request).
pub const SETTINGS_ANSWER_PATH: &str = "answer:/replication/v1/settings";

/// What a settings answer's signature covers: the JSON of its tables.
pub fn settings_answer_payload(tables: &BTreeMap<String, HeldSettings>) -> Vec<u8> {
    serde_json::to_vec(tables).expect("held settings serialise")
}

/// `body`, `peer`'s answer to this region's settings request signed at `request_date_ms`, if it
/// is one `peer` signed for that request; `None` for an unsigned, forged or replayed answer, or
/// one signed with another key.
fn verified_answer(
    key: &[u8],
    (peer, region): (&str, &str),
    request_date_ms: u64,
    body: &[u8],
) -> Option<SettingsAnswer> {
    let answer: SettingsAnswer = serde_json::from_slice(body).ok()?;
    let signature = answer.signature.as_deref()?;
    let payload = settings_answer_payload(&answer.tables);
    verify(
        key,
        (peer, region),
        SETTINGS_ANSWER_PATH,
        request_date_ms,
        &payload,
        signature,
    )
    .then_some(answer)
}

/// A followed setting, owned (what [`Followed`] borrows).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Setting {
    Ttl,
    Index(String),
    Capacity,
}

impl Setting {
    fn of(followed: Followed<'_>) -> Setting {
        match followed {
            Followed::Ttl => Setting::Ttl,
            Followed::Index(name) => Setting::Index(name.to_string()),
            Followed::Capacity => Setting::Capacity,
        }
    }

    fn followed(&self) -> Followed<'_> {
        match self {
            Setting::Ttl => Followed::Ttl,
            Setting::Index(name) => Followed::Index(name),
            Setting::Capacity => Followed::Capacity,
        }
    }
}

/// A setting found newer here than in a peer: table, which setting, and the HLC of the version
/// held when it was found (the mark names it; a change since then keeps its own mark).
type Found = (String, Setting, u64);

impl Replication {
    /// Compares the followed settings of every global table shared with each peer (one request
    /// per [`SETTINGS_TABLES_PER_REQUEST_MAX`] tables) and marks unconfirmed the ones held here
    /// newer than a peer holds; the peer does the same with what this region holds older.
    /// Returns how many settings were marked. A peer that cannot be reached, or runs a build
    /// without this exchange, is skipped until the next round.
    pub async fn compare_settings(&self) -> usize {
        // Every peer at once: one that does not answer holds the round up by its timeout only.
        let rounds = self.config.peers.iter().map(|peer| self.compare_settings_with(peer));
        let found: Vec<Found> = futures_util::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !found.is_empty() {
            tracing::info!(found = ?found.iter().map(|(t, s, _)| format!("{t}: {s:?}")).collect::<Vec<_>>(), "global table settings held here newer than in a peer; sending them to every replica");
        }
        self.mark_found(found).await
    }

    /// What [`Replication::compare_settings`] finds held here newer than in `peer`.
    async fn compare_settings_with(&self, peer: &Peer) -> Vec<Found> {
        let shared: Vec<Arc<TableMeta>> = self
            .engine
            .tables()
            .into_iter()
            .filter(|t| t.is_global() && t.replicas.contains(&self.region) && t.replicas.contains(&peer.region))
            .collect();
        let mut found = Vec::new();
        for chunk in shared.chunks(SETTINGS_TABLES_PER_REQUEST_MAX) {
            let request = SettingsRequest {
                tables: chunk.iter().map(|t| (t.name.clone(), HeldSettings::of(t))).collect(),
            };
            let body = serde_json::to_vec(&request).expect("a settings request serialises");
            let date_ms = self.engine.now_unix_ms();
            let answer = match self.post_dated(peer, "/replication/v1/settings", body, date_ms).await {
                Ok((200, body)) => verified_answer(&self.config.key, (&peer.region, &self.region), date_ms, &body),
                Ok((status, body)) => {
                    tracing::debug!(peer = %peer.region, status, answer = %String::from_utf8_lossy(&body), "a peer refused this region's settings comparison; trying again next round");
                    break;
                }
                Err(error) => {
                    tracing::debug!(peer = %peer.region, %error, "comparing global table settings with a peer failed; trying again next round");
                    break;
                }
            };
            let Some(answer) = answer else {
                // What the answer says would move this region to send settings, so only the
                // peer's own word counts.
                tracing::warn!(peer = %peer.region, "an answer to this region's settings comparison has no valid signature for it; ignored (forged, replayed, or the replication keys differ)");
                break;
            };
            for table in chunk {
                // A table the peer left out has no replica there (yet): its definition, not
                // this exchange, brings it.
                let Some(theirs) = answer.tables.get(&table.name) else {
                    continue;
                };
                found.extend(newer_found(&table.name, &HeldSettings::of(table), theirs));
            }
        }
        found
    }

    /// `POST /replication/v1/settings`: answers with this region's versions of the tables named
    /// that it shares with the sender, and marks unconfirmed the settings it holds newer.
    pub async fn receive_settings(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        // A request replayed (or reordered) within the signing window still gets an answer,
        // but marks nothing: only the peer's latest word moves this region to send.
        let (source, fresh) = self.authenticate_fresh(headers, "/replication/v1/settings", body)?;
        let request: SettingsRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("corrupt settings request: {e}")))?;
        if request.tables.len() > SETTINGS_TABLES_PER_REQUEST_MAX {
            return Err(ApiError::validation(format!(
                "settings request for {} tables; at most {SETTINGS_TABLES_PER_REQUEST_MAX}",
                request.tables.len()
            )));
        }
        let mut answer = SettingsAnswer::default();
        let mut found = Vec::new();
        for (name, theirs) in &request.tables {
            let Some(table) = self.engine.table(name) else { continue };
            if !(table.replicas.contains(&self.region) && table.replicas.contains(&source)) {
                continue;
            }
            let ours = HeldSettings::of(&table);
            if fresh {
                found.extend(newer_found(name, &ours, theirs));
            }
            answer.tables.insert(name.clone(), ours);
        }
        answer.signature = Some(self.sign_answer(
            headers,
            &source,
            SETTINGS_ANSWER_PATH,
            &settings_answer_payload(&answer.tables),
        ));
        if !found.is_empty() {
            tracing::info!(%source, found = ?found.iter().map(|(t, s, _)| format!("{t}: {s:?}")).collect::<Vec<_>>(), "global table settings held here newer than in a peer; sending them to every replica");
        }
        self.mark_found(found).await;
        Ok(serde_json::to_value(answer).expect("a settings answer serialises"))
    }

    /// Marks each setting found unconfirmed, if the table still holds the version found (one
    /// write; a mark already set for it is left). Returns how many were marked.
    async fn mark_found(&self, found: Vec<Found>) -> usize {
        if found.is_empty() {
            return 0;
        }
        let marked = self
            .engine
            .write(move |context| {
                let mut marked = 0;
                for (name, setting, hlc) in &found {
                    let Some(table) = context.table_named(name) else {
                        continue;
                    };
                    let followed = setting.followed();
                    if followed.version(&table).map(|v| v.0) != Some(*hlc) {
                        continue;
                    }
                    let mark = followed.mark(table.id);
                    if context.setting(&mark)? != *hlc {
                        context.set_setting(&mark, *hlc)?;
                        marked += 1;
                    }
                }
                Ok(marked)
            })
            .await;
        marked.unwrap_or_else(|error| {
            tracing::warn!(%error, "marking global table settings to send again failed; the next round finds them again");
            0
        })
    }
}

/// The settings of table `name` held here (`ours`) newer than `theirs`, as marks to set.
fn newer_found(name: &str, ours: &HeldSettings, theirs: &HeldSettings) -> Vec<Found> {
    ours.newer_than(theirs)
        .into_iter()
        .filter_map(|followed| {
            let hlc = followed.version_in(ours)?;
            Some((name.to_string(), Setting::of(followed), hlc))
        })
        .collect()
}

impl Followed<'_> {
    /// The HLC of this setting's version in `held`.
    fn version_in(self, held: &HeldSettings) -> Option<u64> {
        match self {
            Followed::Ttl => held.ttl.as_ref(),
            Followed::Index(name) => held.indexes.get(name),
            Followed::Capacity => held.capacity.as_ref(),
        }
        .map(|v| v.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: u64, region: &str) -> SettingVersion {
        (hlc, region.to_string())
    }

    fn held(
        ttl: Option<SettingVersion>,
        indexes: &[(&str, SettingVersion)],
        capacity: Option<SettingVersion>,
    ) -> HeldSettings {
        HeldSettings {
            ttl,
            indexes: indexes.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
            capacity,
        }
    }

    #[test]
    fn only_an_answer_the_peer_signed_for_this_request_is_taken() {
        let key = b"0123456789abcdef-shared-key";
        let tables: BTreeMap<String, HeldSettings> = [("carts".to_string(), held(Some(v(5, "a")), &[], None))]
            .into_iter()
            .collect();
        let signed_at = |date_ms: u64, signer_key: &[u8], tables: &BTreeMap<String, HeldSettings>| {
            let signature = sign(
                signer_key,
                "eu-west-1",
                "us-east-1",
                SETTINGS_ANSWER_PATH,
                date_ms,
                &settings_answer_payload(tables),
            );
            serde_json::to_vec(&SettingsAnswer {
                tables: tables.clone(),
                signature: Some(signature),
            })
            .expect("serialises")
        };
        let peers = ("eu-west-1", "us-east-1");
        let taken =
            verified_answer(key, peers, 1_000, &signed_at(1_000, key, &tables)).expect("signed for this request");
        assert_eq!(taken.tables, tables);
        // Replayed to a later request, signed with another key, from another peer, unsigned, or
        // with its tables changed on the way: not taken.
        assert!(verified_answer(key, peers, 2_000, &signed_at(1_000, key, &tables)).is_none());
        assert!(verified_answer(key, peers, 1_000, &signed_at(1_000, b"another key, sixteen+", &tables)).is_none());
        assert!(verified_answer(key, ("ap-south-1", "us-east-1"), 1_000, &signed_at(1_000, key, &tables)).is_none());
        let unsigned = serde_json::to_vec(&SettingsAnswer {
            tables: tables.clone(),
            signature: None,
        })
        .expect("serialises");
        assert!(verified_answer(key, peers, 1_000, &unsigned).is_none());
        let mut forged: serde_json::Value = serde_json::from_slice(&signed_at(1_000, key, &tables)).expect("JSON");
        forged["tables"]["carts"] = serde_json::json!({});
        assert!(verified_answer(key, peers, 1_000, forged.to_string().as_bytes()).is_none());
    }

    #[test]
    fn the_same_versions_are_newer_on_neither_side() {
        let both = held(Some(v(5, "a")), &[("by_shop", v(6, "b"))], Some(v(7, "c")));
        assert!(both.newer_than(&both.clone()).is_empty());
        assert!(HeldSettings::default().newer_than(&HeldSettings::default()).is_empty());
    }

    #[test]
    fn each_side_finds_only_what_it_holds_newer() {
        let east = held(
            Some(v(9, "b")),
            &[("by_shop", v(6, "b")), ("by_day", v(3, "a"))],
            Some(v(4, "a")),
        );
        let west = held(Some(v(5, "a")), &[("by_shop", v(6, "b"))], Some(v(8, "c")));
        assert_eq!(east.newer_than(&west), vec![Followed::Ttl, Followed::Index("by_day")]);
        assert_eq!(west.newer_than(&east), vec![Followed::Capacity]);
    }

    #[test]
    fn the_same_clock_is_settled_by_the_region_as_a_definition_is() {
        let a = held(None, &[], Some(v(5, "a")));
        let b = held(None, &[], Some(v(5, "b")));
        assert_eq!(b.newer_than(&a), vec![Followed::Capacity]);
        assert!(a.newer_than(&b).is_empty());
    }

    #[test]
    fn a_versioned_setting_is_newer_than_an_unversioned_one_and_not_the_other_way() {
        let versioned = held(Some(v(1, "a")), &[("i", v(1, "a"))], Some(v(1, "a")));
        let unversioned = HeldSettings::default();
        assert_eq!(versioned.newer_than(&unversioned).len(), 3);
        assert!(unversioned.newer_than(&versioned).is_empty());
    }

    #[test]
    fn found_settings_name_the_version_held() {
        let ours = held(Some(v(9, "b")), &[("by_day", v(3, "a"))], None);
        assert_eq!(
            newer_found("orders", &ours, &HeldSettings::default()),
            vec![
                ("orders".to_string(), Setting::Ttl, 9),
                ("orders".to_string(), Setting::Index("by_day".to_string()), 3)
            ]
        );
    }

    #[test]
    fn a_request_from_a_build_without_some_fields_reads_as_unversioned() {
        let request: SettingsRequest = serde_json::from_str(r#"{"tables":{"t":{}}}"#).expect("valid");
        assert_eq!(request.tables["t"], HeldSettings::default());
        let text = serde_json::to_string(&held(Some(v(1, "a")), &[], None)).expect("serialises");
        assert_eq!(text, r#"{"ttl":[1,"a"]}"#);
    }
}
