//! The open alert incidents of a group of controllers, as the leader keeps them in etcd
//! (`{prefix}/incidents`), so that the next leader resolves what its predecessor opened with the
//! dedup key the pager knows, and does not page again a condition that still holds.
//!
//! Sans-IO: the value's encoding with its bounds, its checks when read back, and the merge a
//! new leader makes of that list and its own audit log. Each incident says whether its trigger
//! was delivered: a leader that died between opening an incident and delivering it left it
//! undelivered, and the next pages it again (same dedup key) instead of adopting it silently. The I/O (a transaction conditioned on
//! the leader key's create revision, so a deposed leader cannot overwrite its successor's list)
//! is in `ha::etcd`; when to write (an incident opened or resolved) in the server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Term;

/// Open incidents kept in the list at most: the alert queue's own bound (the newest are kept).
pub use providers::alerts::queue::INCIDENTS_MAX;
/// Largest value of `{prefix}/incidents`, written or read back; a larger one read back is
/// refused as corrupt (the new leader then goes by its own audit log).
pub const INCIDENTS_BYTES_MAX: usize = 64 * 1024;
/// An incident's message is cut to this many characters in the list (a resolve does not need
/// more; it keeps the list within [`INCIDENTS_BYTES_MAX`]).
pub const INCIDENT_MESSAGE_CHARS_MAX: usize = 512;
/// Longest condition key read back (the keys are short names such as `all_down`).
pub const INCIDENT_KEY_BYTES_MAX: usize = 64;
/// Longest dedup key read back (`{prefix}/{key}`: a prefix is at most 256 bytes).
pub const INCIDENT_ID_BYTES_MAX: usize = 512;
/// The condition whose incident is a member's own, never the group's: `ha_leadership` is raised
/// by a member that stopped acting (so it cannot write the list) and resolved by that member
/// once a leader is settled.
pub const MEMBER_OWN_KEY: &str = "ha_leadership";

/// One open incident: what the next leader needs to resolve it (or to keep it open without
/// paging again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// The condition (`all_down`, `runbook`, `decision`, ...).
    pub key: String,
    /// Its dedup key (PagerDuty's `dedup_key`, the webhook's `incident`).
    pub incident: String,
    /// Wall-clock milliseconds (of the member that opened it) since the Unix epoch.
    pub opened_at_ms: u64,
    /// The last raise's words (a failed runbook's, for the engine to adopt).
    #[serde(default)]
    pub message: String,
    /// Whether its trigger finished on every channel (delivered or given up on). Absent in
    /// lists written before it was recorded: read as delivered, so an upgrade does not page
    /// every open incident again.
    #[serde(default = "delivered_unless_recorded")]
    pub delivered: bool,
}

fn delivered_unless_recorded() -> bool {
    true
}

impl Incident {
    /// As the alert channels keep it open.
    pub fn as_open(&self) -> providers::alerts::queue::OpenIncident {
        providers::alerts::queue::OpenIncident {
            key: self.key.clone(),
            incident: self.incident.clone(),
            opened_at_ms: self.opened_at_ms,
            message: self.message.clone(),
            delivered: self.delivered,
        }
    }
}

/// The value of `{prefix}/incidents`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentList {
    /// The writer's term: the create revision of the leader key it held.
    pub term: i64,
    pub written_by: String,
    /// Wall-clock milliseconds of the writer, for operators.
    pub written_at_ms: u64,
    pub incidents: Vec<Incident>,
    /// Incidents resolved whose resolve was not delivered on every channel yet (at most
    /// [`INCIDENTS_MAX`]): the next leader sends them again, so no pager stays open because
    /// a leader died before delivering a resolve. Absent in older lists: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolving: Vec<Incident>,
}

impl IncidentList {
    /// The list a leader in `term` writes: its open incidents, the group's only (not
    /// [`MEMBER_OWN_KEY`]), the newest [`INCIDENTS_MAX`], messages cut to
    /// [`INCIDENT_MESSAGE_CHARS_MAX`], by key.
    pub fn new(term: Term, member: &str, at_ms: u64, open: impl IntoIterator<Item = Incident>) -> IncidentList {
        let mut incidents = bounded(open);
        incidents.sort_by(|a, b| a.key.cmp(&b.key));
        IncidentList {
            term: term.revision,
            written_by: member.to_string(),
            written_at_ms: at_ms,
            incidents,
            resolving: Vec::new(),
        }
    }

    /// The list with the resolves not delivered yet, bounded as the incidents are.
    pub fn with_resolving(mut self, resolving: impl IntoIterator<Item = Incident>) -> IncidentList {
        self.resolving = bounded(resolving);
        self
    }

    /// Whether `other` holds the same incidents (who wrote it and when aside): a leader
    /// writes the list only when an incident opened, was delivered or resolved, not at every
    /// update.
    pub fn same_incidents(&self, other: &IncidentList) -> bool {
        let ids = |list: &IncidentList| -> Vec<(String, String, bool)> {
            list.incidents
                .iter()
                .map(|i| (i.key.clone(), i.incident.clone(), i.delivered))
                .collect()
        };
        let resolving =
            |list: &IncidentList| -> Vec<String> { list.resolving.iter().map(|i| i.incident.clone()).collect() };
        self.term == other.term && ids(self) == ids(other) && resolving(self) == resolving(other)
    }

    /// The value written, at most [`INCIDENTS_BYTES_MAX`] bytes: the oldest incidents are left
    /// out until it fits (with the bounds of [`IncidentList::new`] it always does).
    pub fn encode(&self) -> Vec<u8> {
        let mut list = self.clone();
        loop {
            let bytes = serde_json::to_vec(&list).expect("a list of strings and numbers serializes");
            if bytes.len() <= INCIDENTS_BYTES_MAX || (list.incidents.is_empty() && list.resolving.is_empty()) {
                return bytes;
            }
            if list.resolving.is_empty() {
                let keep = list.incidents.len() - 1;
                keep_newest(&mut list.incidents, keep);
            } else {
                let keep = list.resolving.len() - 1;
                keep_newest(&mut list.resolving, keep);
            }
        }
    }

    /// Reads the value back. A value over [`INCIDENTS_BYTES_MAX`] or not a list is an error
    /// (the new leader goes by its own audit log, and its first write replaces it); an entry
    /// with an empty or overlong key or dedup key is left out and named in the second part.
    pub fn decode(value: &[u8]) -> Result<(IncidentList, Vec<String>), String> {
        if value.len() > INCIDENTS_BYTES_MAX {
            return Err(format!(
                "the list of open incidents in etcd holds {} bytes (at most {INCIDENTS_BYTES_MAX}); something else writes under this prefix",
                value.len()
            ));
        }
        let mut list: IncidentList = serde_json::from_slice(value)
            .map_err(|e| format!("the list of open incidents in etcd is not readable ({e})"))?;
        let mut problems = Vec::new();
        for (what, incidents) in [("incident", &mut list.incidents), ("resolve", &mut list.resolving)] {
            incidents.retain(|i| {
                let ok = !i.key.is_empty()
                    && i.key.len() <= INCIDENT_KEY_BYTES_MAX
                    && !i.incident.is_empty()
                    && i.incident.len() <= INCIDENT_ID_BYTES_MAX;
                if !ok {
                    problems.push(format!(
                        "left out an {what} with key '{}' and dedup key '{}': empty or longer than {INCIDENT_KEY_BYTES_MAX} / {INCIDENT_ID_BYTES_MAX} bytes",
                        i.key.chars().take(INCIDENT_KEY_BYTES_MAX).collect::<String>(),
                        i.incident.chars().take(INCIDENT_ID_BYTES_MAX).collect::<String>()
                    ));
                }
                ok
            });
            if incidents.len() > INCIDENTS_MAX {
                problems.push(format!(
                    "the list holds {} entries of kind {what}: kept the newest {INCIDENTS_MAX}",
                    incidents.len()
                ));
                keep_newest(incidents, INCIDENTS_MAX);
            }
        }
        Ok((list, problems))
    }

    /// Whether a leader in `term` may take this list as its predecessor's: it must have been
    /// written in an earlier term. (etcd refuses a deposed leader's write, so a list of this or
    /// a later term means something else wrote under the prefix.)
    pub fn usable_by(&self, term: Term) -> Result<(), String> {
        if self.term >= term.revision {
            return Err(format!(
                "the list of open incidents in etcd was written by {} in term {}, not before this term ({}): ignored, going by this member's audit log",
                self.written_by, self.term, term.revision
            ));
        }
        Ok(())
    }
}

/// Keeps the `max` newest incidents (by `opened_at_ms`, then key), in their order.
/// `incidents` without the member's own key, each message cut to
/// [`INCIDENT_MESSAGE_CHARS_MAX`], the newest [`INCIDENTS_MAX`] kept.
fn bounded(incidents: impl IntoIterator<Item = Incident>) -> Vec<Incident> {
    let mut incidents: Vec<Incident> = incidents
        .into_iter()
        .filter(|i| i.key != MEMBER_OWN_KEY)
        .map(|mut i| {
            if i.message.chars().count() > INCIDENT_MESSAGE_CHARS_MAX {
                i.message = i.message.chars().take(INCIDENT_MESSAGE_CHARS_MAX).collect();
            }
            i
        })
        .collect();
    keep_newest(&mut incidents, INCIDENTS_MAX);
    incidents
}

fn keep_newest(incidents: &mut Vec<Incident>, max: usize) {
    if incidents.len() <= max {
        return;
    }
    let mut order: Vec<usize> = (0..incidents.len()).collect();
    order.sort_by(|&a, &b| {
        incidents[b]
            .opened_at_ms
            .cmp(&incidents[a].opened_at_ms)
            .then_with(|| incidents[a].key.cmp(&incidents[b].key))
    });
    let kept: std::collections::BTreeSet<usize> = order.into_iter().take(max).collect();
    let mut index = 0;
    incidents.retain(|_| {
        let keep = kept.contains(&index);
        index += 1;
        keep
    });
}

/// An incident a new leader takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub incident: Incident,
    /// From the group's list: it is open on the pager (if `incident.delivered`; else it is
    /// paged again at once), so the condition still holding is not paged again. From this
    /// member's audit log only: paged as before when it still holds.
    pub from_group: bool,
}

/// What a new leader does with the incidents left open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Takeover {
    /// Kept open (and checked once the engine evaluated: resolved if the condition ended).
    pub adopted: Vec<Adopted>,
    /// Conditions this controller does not raise (another version's, or gone from the
    /// config): resolved at once, with their dedup key, so no pager stays open on them.
    pub unknown: Vec<Incident>,
    /// Resolves the previous leader sent and did not deliver: sent again (none whose dedup key
    /// is open again).
    pub resolving: Vec<Incident>,
    /// What the log says about the merge.
    pub notes: Vec<String>,
}

/// Merges the group's list (`None`: none written yet, or unreadable) with the incidents this
/// member's audit log holds open (`own`). The list's dedup key wins for a condition in both
/// (it is the one the pager knows); an incident only in the audit log is kept too (opened
/// while etcd could not be written). At most [`INCIDENTS_MAX`], the newest; `known` says which
/// condition keys this controller raises.
pub fn merge(list: Option<&IncidentList>, own: &[Incident], known: impl Fn(&str) -> bool) -> Takeover {
    let mut by_key: BTreeMap<String, Adopted> = BTreeMap::new();
    let mut notes = Vec::new();
    for incident in list.map(|l| l.incidents.as_slice()).unwrap_or_default() {
        by_key.insert(
            incident.key.clone(),
            Adopted {
                incident: incident.clone(),
                from_group: true,
            },
        );
    }
    for incident in own {
        match by_key.get(&incident.key) {
            Some(group) if group.incident.incident != incident.incident => notes.push(format!(
                "condition {}: the group's incident {} replaces {} from this member's audit log",
                incident.key, group.incident.incident, incident.incident
            )),
            Some(_) => {}
            None => {
                by_key.insert(
                    incident.key.clone(),
                    Adopted {
                        incident: incident.clone(),
                        from_group: false,
                    },
                );
            }
        }
    }
    let mut adopted: Vec<Adopted> = by_key.into_values().collect();
    if adopted.len() > INCIDENTS_MAX {
        let mut incidents: Vec<Incident> = adopted.iter().map(|a| a.incident.clone()).collect();
        keep_newest(&mut incidents, INCIDENTS_MAX);
        notes.push(format!(
            "{} incidents left open: kept the newest {INCIDENTS_MAX}",
            adopted.len()
        ));
        adopted.retain(|a| incidents.contains(&a.incident));
    }
    let open: std::collections::BTreeSet<&str> = adopted.iter().map(|a| a.incident.incident.as_str()).collect();
    let resolving = list
        .map(|l| l.resolving.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|r| !open.contains(r.incident.as_str()))
        .cloned()
        .collect();
    let (adopted, unknown): (Vec<Adopted>, Vec<Adopted>) = adopted.into_iter().partition(|a| known(&a.incident.key));
    Takeover {
        adopted,
        unknown: unknown.into_iter().map(|a| a.incident).collect(),
        resolving,
        notes,
    }
}

/// What the leader last asked to be written, for the task that writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub term: Term,
    pub list: IncidentList,
}

impl Pending {
    /// Only the term that made it writes it: a list made in an ended term (this member lost
    /// the lead, maybe won it again since) is dropped, never written over the successor's.
    pub fn writable_in(&self, acting: Option<Term>) -> bool {
        acting == Some(self.term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(revision: i64) -> Term {
        Term { revision, lease_id: 7 }
    }

    fn incident(key: &str, id: &str, at: u64) -> Incident {
        Incident {
            key: key.into(),
            incident: id.into(),
            opened_at_ms: at,
            message: format!("{key} holds"),
            delivered: true,
        }
    }

    fn known(key: &str) -> bool {
        key != "gone"
    }

    #[test]
    fn the_groups_list_and_the_audit_log_merge_with_the_groups_dedup_key_winning() {
        let list = IncidentList::new(
            term(10),
            "a",
            5,
            [
                incident("all_down", "shop/all_down", 1),
                incident("runbook", "shop/runbook", 2),
            ],
        );
        let own = [
            // The same condition under a key an older version made: the pager knows the group's.
            incident("all_down", "ctl/all_down/g3-1000", 1),
            // Opened while etcd could not be written: only this member knows it.
            incident("fenced", "shop/fenced", 3),
        ];
        let merged = merge(Some(&list), &own, known);
        let got: Vec<(&str, &str, bool)> = merged
            .adopted
            .iter()
            .map(|a| (a.incident.key.as_str(), a.incident.incident.as_str(), a.from_group))
            .collect();
        assert_eq!(
            got,
            vec![
                ("all_down", "shop/all_down", true),
                ("fenced", "shop/fenced", false),
                ("runbook", "shop/runbook", true),
            ]
        );
        assert!(merged.unknown.is_empty());
        assert_eq!(merged.notes.len(), 1, "{:?}", merged.notes);
        assert!(merged.notes[0].contains("ctl/all_down/g3-1000"), "{:?}", merged.notes);
        // No list (none written yet, or unreadable): the audit log alone, as before.
        let alone = merge(None, &own, known);
        assert_eq!(alone.adopted.len(), 2);
        assert!(alone.adopted.iter().all(|a| !a.from_group));
        assert_eq!(alone.adopted[0].incident.incident, "ctl/all_down/g3-1000");
    }

    #[test]
    fn a_condition_this_controller_does_not_raise_is_resolved_not_adopted() {
        let list = IncidentList::new(term(3), "a", 5, [incident("gone", "shop/gone", 1)]);
        let merged = merge(Some(&list), &[incident("all_down", "shop/all_down", 2)], known);
        assert_eq!(merged.unknown, vec![incident("gone", "shop/gone", 1)]);
        assert_eq!(merged.adopted.len(), 1);
        assert_eq!(merged.adopted[0].incident.key, "all_down");
    }

    #[test]
    fn the_list_is_bounded_in_incidents_message_and_bytes() {
        let long = "x".repeat(INCIDENT_MESSAGE_CHARS_MAX * 4);
        let many = (0..INCIDENTS_MAX as u64 + 10).map(|i| Incident {
            message: long.clone(),
            ..incident(&format!("k{i:03}"), &format!("shop/k{i:03}"), i)
        });
        // ha_leadership is a member's own: never in the group's list.
        let list = IncidentList::new(term(4), "a", 5, many.chain([incident(MEMBER_OWN_KEY, "shop/ha", 999)]));
        assert_eq!(list.incidents.len(), INCIDENTS_MAX);
        assert!(list.incidents.iter().all(|i| i.key != MEMBER_OWN_KEY));
        assert!(list.incidents.iter().all(|i| i.opened_at_ms >= 10), "the oldest went");
        assert!(
            list.incidents
                .iter()
                .all(|i| i.message.chars().count() == INCIDENT_MESSAGE_CHARS_MAX)
        );
        let bytes = list.encode();
        assert!(bytes.len() <= INCIDENTS_BYTES_MAX, "{}", bytes.len());
        let (back, problems) = IncidentList::decode(&bytes).expect("decodes");
        assert_eq!(back, list);
        assert!(problems.is_empty());

        // Longer keys could not fit: the encoding drops the oldest until it does.
        let mut huge = list.clone();
        for i in &mut huge.incidents {
            i.incident = "y".repeat(4096);
        }
        let bytes = huge.encode();
        assert!(bytes.len() <= INCIDENTS_BYTES_MAX, "{}", bytes.len());
        let (back, problems) = IncidentList::decode(&bytes).expect("decodes");
        assert!(back.incidents.is_empty(), "overlong dedup keys are left out when read");
        assert!(!problems.is_empty());

        // Read back: too large, not a list, or too many entries.
        let over = vec![b' '; INCIDENTS_BYTES_MAX + 1];
        assert!(
            IncidentList::decode(&over)
                .expect_err("too large")
                .contains("at most 65536")
        );
        assert!(IncidentList::decode(b"{\"term\": \"x\"}").is_err());
        let mut crowded = list.clone();
        crowded.incidents = (0..INCIDENTS_MAX as u64 + 3)
            .map(|i| incident(&format!("c{i}"), &format!("shop/c{i}"), i))
            .collect();
        let (back, problems) = IncidentList::decode(&serde_json::to_vec(&crowded).expect("json")).expect("decodes");
        assert_eq!(back.incidents.len(), INCIDENTS_MAX);
        assert_eq!(problems.len(), 1);
        // More incidents left open than the bound: the newest are adopted.
        let merged = merge(Some(&crowded), &[], |_| true);
        assert_eq!(merged.adopted.len(), INCIDENTS_MAX);
        assert!(merged.adopted.iter().all(|a| a.incident.opened_at_ms >= 3));
    }

    #[test]
    fn a_list_from_this_term_or_later_is_not_a_predecessors_and_is_ignored() {
        let list = IncidentList::new(term(20), "a", 5, [incident("all_down", "shop/all_down", 1)]);
        assert!(list.usable_by(term(21)).is_ok());
        let error = list.usable_by(term(20)).expect_err("its own term");
        assert!(error.contains("written by a in term 20"), "{error}");
        assert!(list.usable_by(term(19)).is_err());
    }

    #[test]
    fn a_list_made_in_a_term_that_ended_is_never_written() {
        // The deposed leader's last list (term 20) must not overwrite its successor's: the
        // writer drops it once the term ended, even if this member leads again (term 30).
        let pending = Pending {
            term: term(20),
            list: IncidentList::new(term(20), "a", 5, [incident("all_down", "shop/all_down", 1)]),
        };
        assert!(pending.writable_in(Some(term(20))));
        assert!(!pending.writable_in(None));
        assert!(!pending.writable_in(Some(term(30))));
    }

    #[test]
    fn only_an_opened_or_resolved_incident_is_a_change_to_write() {
        let a = IncidentList::new(term(1), "a", 5, [incident("all_down", "shop/all_down", 1)]);
        let mut reworded = IncidentList::new(term(1), "a", 9, [incident("all_down", "shop/all_down", 1)]);
        reworded.incidents[0].message = "other words".into();
        assert!(a.same_incidents(&reworded));
        let resolved = IncidentList::new(term(1), "a", 9, []);
        assert!(!a.same_incidents(&resolved));
        let next_term = IncidentList::new(term(2), "a", 9, [incident("all_down", "shop/all_down", 1)]);
        assert!(!a.same_incidents(&next_term));
        // Its trigger delivered (the list said not yet): the next leader must know.
        let mut undelivered = a.clone();
        undelivered.incidents[0].delivered = false;
        assert!(!undelivered.same_incidents(&a));
    }

    /// A list written before deliveries were recorded reads as delivered (an upgrade pages
    /// nothing again); a list says which trigger was not delivered, and the merge keeps it.
    #[test]
    fn the_delivered_flag_round_trips_and_an_old_list_reads_as_delivered() {
        let old = br#"{"term":3,"written_by":"a","written_at_ms":5,"incidents":[{"key":"all_down","incident":"shop/all_down","opened_at_ms":1,"message":"down"}]}"#;
        let (list, problems) = IncidentList::decode(old).expect("decode");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(list.incidents[0].delivered);
        let pending = Incident {
            delivered: false,
            ..incident("fenced", "shop/fenced", 2)
        };
        let list = IncidentList::new(
            term(4),
            "a",
            6,
            [incident("all_down", "shop/all_down", 1), pending.clone()],
        );
        let (back, _) = IncidentList::decode(&list.encode()).expect("decode");
        assert_eq!(back, list);
        let merged = merge(Some(&back), &[incident("fenced", "shop/fenced", 2)], known);
        let flags: Vec<(&str, bool, bool)> = merged
            .adopted
            .iter()
            .map(|a| (a.incident.key.as_str(), a.incident.delivered, a.from_group))
            .collect();
        assert_eq!(flags, vec![("all_down", true, true), ("fenced", false, true)]);
    }

    /// The resolves a leader did not deliver are in its list, bounded, and the next leader
    /// sends them again unless their dedup key is open again; an old list has none.
    #[test]
    fn resolves_not_delivered_are_listed_and_handed_to_the_next_leader() {
        let old = br#"{"term":3,"written_by":"a","written_at_ms":5,"incidents":[]}"#;
        assert!(IncidentList::decode(old).expect("decode").0.resolving.is_empty());
        let list = IncidentList::new(term(4), "a", 6, [incident("all_down", "shop/all_down", 1)]).with_resolving([
            incident("runbook", "shop/runbook", 2),
            incident("all_down", "shop/all_down", 1),
            incident(MEMBER_OWN_KEY, "shop/ha", 3),
        ]);
        assert_eq!(list.resolving.len(), 2, "never a member's own: {list:?}");
        let (back, _) = IncidentList::decode(&list.encode()).expect("decode");
        assert_eq!(back, list);
        let bare = IncidentList::new(term(4), "a", 6, [incident("all_down", "shop/all_down", 1)]);
        assert!(!bare.same_incidents(&list), "a resolve delivered is a change to write");
        let merged = merge(Some(&back), &[], known);
        let resolving: Vec<&str> = merged.resolving.iter().map(|r| r.incident.as_str()).collect();
        assert_eq!(
            resolving,
            vec!["shop/runbook"],
            "all_down is open again: its resolve is not sent after"
        );
        let many = (0..INCIDENTS_MAX as u64 + 5).map(|i| incident(&format!("k{i}"), &format!("shop/k{i}"), i));
        assert_eq!(bare.with_resolving(many).resolving.len(), INCIDENTS_MAX);
    }

    #[test]
    fn a_value_planted_in_etcd_is_refused_or_bounded_and_never_panics() {
        // Numbers out of range, or nested deeper than serde_json follows: unreadable, an error.
        for planted in [
            r#"{"term": 1e30, "written_by": "x", "written_at_ms": 0, "incidents": []}"#.to_string(),
            r#"{"term": 1, "written_by": "x", "written_at_ms": -1, "incidents": []}"#.to_string(),
            format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)),
            String::from_utf8_lossy(&[0xff, 0xfe, b'{']).into_owned(),
        ] {
            assert!(
                IncidentList::decode(planted.as_bytes()).is_err(),
                "{}",
                &planted[..planted.len().min(60)]
            );
        }
        // The largest numbers: read, and a term this high is never a predecessor's.
        let huge = format!(
            r#"{{"term": {}, "written_by": "x", "written_at_ms": {}, "incidents": [{{"key": "all_down", "incident": "shop/all_down", "opened_at_ms": {}}}]}}"#,
            i64::MAX,
            u64::MAX,
            u64::MAX
        );
        let (list, problems) = IncidentList::decode(huge.as_bytes()).expect("decodes");
        assert!(problems.is_empty());
        assert!(list.usable_by(term(i64::MAX)).is_err());
        assert_eq!(merge(Some(&list), &[], known).adopted.len(), 1);
        // Keys in multi-byte characters are measured in bytes, and cut on characters in the
        // problem's words (no panic in the middle of one).
        let long_key = "é".repeat(INCIDENT_KEY_BYTES_MAX); // 2 bytes each: over the bound
        let short_key = "é".repeat(INCIDENT_KEY_BYTES_MAX / 2);
        let unicode = IncidentList {
            incidents: vec![incident(&long_key, "shop/x", 1), incident(&short_key, "shop/y", 2)],
            ..IncidentList::default()
        };
        let (back, problems) = IncidentList::decode(&serde_json::to_vec(&unicode).expect("json")).expect("decodes");
        assert_eq!(back.incidents.len(), 1);
        assert_eq!(back.incidents[0].key, short_key);
        assert_eq!(problems.len(), 1);
        // Hundreds of small entries within the byte bound: the newest INCIDENTS_MAX are kept.
        let crowd = IncidentList {
            incidents: (0..600u64)
                .map(|i| incident(&format!("k{i}"), &format!("d{i}"), i))
                .collect(),
            ..IncidentList::default()
        };
        let bytes = serde_json::to_vec(&crowd).expect("json");
        assert!(bytes.len() <= INCIDENTS_BYTES_MAX, "{}", bytes.len());
        let (back, _) = IncidentList::decode(&bytes).expect("decodes");
        assert_eq!(back.incidents.len(), INCIDENTS_MAX);
        assert!(
            back.incidents
                .iter()
                .all(|i| i.opened_at_ms >= 600 - INCIDENTS_MAX as u64)
        );
    }
}
