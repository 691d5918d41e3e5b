//! The controller's view: target health and dynamic TXT records, each change carrying the
//! controller's generation (a fencing token).
//!
//! Invariant: a lower generation never replaces a higher one. Equal generations are applied, so
//! a controller can retry a push or send several updates within its term. A generation more than
//! `GENERATION_STEP_MAX` above the applied one is refused too: generations grow by one per
//! runbook, and accepting u64::MAX once would refuse every genuine push afterwards.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData};
use serde::{Deserialize, Serialize};

use crate::config::txt_strings;
use crate::zone::name_key;

/// The controller's fencing token: every push carries one, and the view only moves forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

/// What the controller says about one target (a region, a server, an endpoint): the admin
/// API's wire type.
pub use common::dns_admin::Health;

/// How far above the applied generation a push may be.
pub const GENERATION_STEP_MAX: u64 = 1 << 32;
/// Targets the view holds at most (a bound on what a controller can make us store).
pub const TARGETS_MAX: usize = 10_000;
/// Dynamic TXT records the view holds at most.
pub const DYNAMIC_TXT_MAX: usize = 1_000;
/// Bytes a dynamic TXT value has at most (split into 255-byte strings on the wire).
pub const DYNAMIC_TXT_VALUE_BYTES_MAX: usize = 1_024;
/// Bytes a target name has at most.
pub const TARGET_NAME_BYTES_MAX: usize = 255;
/// Zones whose change count the view keeps at most. A zone no longer configured keeps its
/// count (so that, served again, its serial does not go back) until the view holds this many;
/// then the counts of zones not configured are dropped.
pub const ZONE_COUNTS_MAX: usize = 10_000;

/// The health and dynamic records pushed by the controller. Cheap to read; replaced whole (copy on
/// write) by the admin API.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthView {
    /// Newest generation applied; pushes with a lower one are refused.
    pub generation: Generation,
    /// Health per target; a target never reported is healthy.
    pub targets: BTreeMap<String, Health>,
    /// Dynamic TXT records by lower-case fully qualified name (with the trailing dot). Changed
    /// only through [`apply_txt`](HealthView::apply_txt), which forgets `names`.
    pub txt: BTreeMap<String, String>,
    /// Pushes counted for every zone at once, as versions before per-zone serials counted each
    /// push that changed `targets` or `txt`. No longer moved: kept (from `--state-dir`) so that
    /// no zone's serial goes back after an upgrade; it is part of every zone's serial.
    #[serde(default)]
    pub changes: u64,
    /// Per zone (its origin, lower case, fully qualified), the pushes that changed what the
    /// zone answers or transfers ([`crate::answer::count_zone_changes`]): its SOA serial counts
    /// them on top of the configured one (and `changes`), so a secondary that polls the SOA
    /// sees each change of that zone (RFC 1035 §3.3.13) and a zone a push did not change keeps
    /// its serial (RFC 1996 §4.7: no NOTIFY for it). Kept with the view (`--state-dir`); at
    /// most [`ZONE_COUNTS_MAX`] zones.
    #[serde(default)]
    pub zone_changes: BTreeMap<String, u64>,
    /// `txt` indexed for answering, made by the first query that needs it (once per view).
    #[serde(skip)]
    names: OnceLock<Arc<DynamicNames>>,
}

impl PartialEq for HealthView {
    fn eq(&self, other: &HealthView) -> bool {
        (
            self.generation,
            &self.targets,
            &self.txt,
            self.changes,
            &self.zone_changes,
        ) == (
            other.generation,
            &other.targets,
            &other.txt,
            other.changes,
            &other.zone_changes,
        )
    }
}

impl Eq for HealthView {}

/// The names pushed TXT records make exist, by lower-case wire form ([`name_key`]): each pushed
/// name with its record, and each of its ancestors, which exists too (an empty non-terminal
/// unless the zone has records there; RFC 8020: NXDOMAIN means nothing exists below a name).
#[derive(Debug, Default)]
pub struct DynamicNames {
    names: HashMap<Vec<u8>, Option<RData>>,
}

impl DynamicNames {
    fn new(txt: &BTreeMap<String, String>) -> DynamicNames {
        let mut names = HashMap::new();
        for (name, value) in txt {
            // The admin API stores parsed names; a hand-edited state file's bad name answers nothing.
            let Ok(name) = Name::from_ascii(name) else { continue };
            names.insert(name_key(&name), Some(RData::TXT(TXT::new(txt_strings(value)))));
        }
        let pushed: Vec<Vec<u8>> = names.keys().cloned().collect();
        for key in pushed {
            let mut rest: &[u8] = &key;
            while let Some((&length, tail)) = rest.split_first() {
                rest = tail.get(usize::from(length)..).unwrap_or(&[]);
                names.entry(rest.to_vec()).or_insert(None);
            }
        }
        DynamicNames { names }
    }

    /// The pushed TXT record at the name with this key, if one was pushed.
    pub fn record(&self, key: &[u8]) -> Option<&RData> {
        self.names.get(key).and_then(Option::as_ref)
    }

    /// Whether a pushed record makes the name with this key exist (it or a name below it).
    pub fn exists(&self, key: &[u8]) -> bool {
        self.names.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error(
        "generation {offered} is older than the applied generation {applied}: a newer controller has taken over; this push is stale and was not applied"
    )]
    Stale { offered: u64, applied: u64 },
    #[error(
        "generation {offered} is more than {GENERATION_STEP_MAX} above the applied generation {applied}: generations grow by one per runbook, so this is a forged or corrupt push and was not applied; send a generation in {applied}..={limit}",
        limit = applied.saturating_add(GENERATION_STEP_MAX)
    )]
    TooFarAhead { offered: u64, applied: u64 },
    #[error("too many targets: the view holds at most {TARGETS_MAX}")]
    TooManyTargets,
    #[error("target name '{0}' is empty or longer than {TARGET_NAME_BYTES_MAX} bytes")]
    BadTarget(String),
    #[error("too many dynamic TXT records: the view holds at most {DYNAMIC_TXT_MAX}")]
    TooManyTxt,
    #[error("the TXT value has {0} bytes; the limit is {DYNAMIC_TXT_VALUE_BYTES_MAX}")]
    TxtTooLong(usize),
}

impl HealthView {
    /// The names the pushed TXT records make exist, indexed for answering.
    pub fn dynamic_names(&self) -> &DynamicNames {
        self.names.get_or_init(|| Arc::new(DynamicNames::new(&self.txt)))
    }

    /// True unless the controller said the target is unhealthy.
    pub fn is_healthy(&self, target: &str) -> bool {
        self.targets.get(target) != Some(&Health::Unhealthy)
    }

    fn check_generation(&self, generation: Generation) -> Result<(), ViewError> {
        if generation < self.generation {
            return Err(ViewError::Stale {
                offered: generation.0,
                applied: self.generation.0,
            });
        }
        if generation.0 - self.generation.0 > GENERATION_STEP_MAX {
            return Err(ViewError::TooFarAhead {
                offered: generation.0,
                applied: self.generation.0,
            });
        }
        Ok(())
    }

    /// Merges reported health into the view: targets not mentioned keep their state.
    pub fn apply_health(
        &self,
        generation: Generation,
        targets: &BTreeMap<String, Health>,
    ) -> Result<HealthView, ViewError> {
        self.check_generation(generation)?;
        let mut next = self.clone();
        for (target, health) in targets {
            if target.is_empty() || target.len() > TARGET_NAME_BYTES_MAX {
                return Err(ViewError::BadTarget(target.clone()));
            }
            next.targets.insert(target.clone(), *health);
        }
        if next.targets.len() > TARGETS_MAX {
            return Err(ViewError::TooManyTargets);
        }
        next.generation = generation;
        Ok(next)
    }

    /// Sets (or with `None` removes) the dynamic TXT record at `name` (lower-case, fully qualified).
    pub fn apply_txt(&self, generation: Generation, name: &str, value: Option<&str>) -> Result<HealthView, ViewError> {
        self.check_generation(generation)?;
        let mut next = self.clone();
        match value {
            Some(value) => {
                if value.len() > DYNAMIC_TXT_VALUE_BYTES_MAX {
                    return Err(ViewError::TxtTooLong(value.len()));
                }
                next.txt.insert(name.to_string(), value.to_string());
                if next.txt.len() > DYNAMIC_TXT_MAX {
                    return Err(ViewError::TooManyTxt);
                }
            }
            None => {
                next.txt.remove(name);
            }
        }
        next.names = OnceLock::new();
        next.generation = generation;
        Ok(next)
    }

    /// Counts a change of the zone with apex `origin` (one push: one step of its serial).
    pub fn count_zone_change(&mut self, origin: &Name) {
        let count = self.zone_changes.entry(zone_key(origin)).or_insert(0);
        *count = count.wrapping_add(1);
    }

    /// Bounds the per-zone counts: past [`ZONE_COUNTS_MAX`], only the zones `configured` says
    /// are served keep theirs.
    pub fn bound_zone_counts(&mut self, configured: impl Fn(&str) -> bool) {
        if self.zone_changes.len() > ZONE_COUNTS_MAX {
            self.zone_changes.retain(|zone, _| configured(zone));
        }
    }

    /// `configured`, the serial the config gives the zone with apex `origin`, moved on by every
    /// push since that changed the zone (RFC 1982 serial arithmetic: it wraps).
    pub fn serial(&self, configured: u32, origin: &Name) -> u32 {
        let zone = self.zone_changes.get(&zone_key(origin)).copied().unwrap_or(0);
        configured.wrapping_add(self.changes as u32).wrapping_add(zone as u32)
    }
}

/// How [`HealthView::zone_changes`] names a zone: its origin, lower case, fully qualified.
pub fn zone_key(origin: &Name) -> String {
    origin.to_lowercase().to_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(list: &[(&str, Health)]) -> BTreeMap<String, Health> {
        list.iter().map(|(t, h)| (t.to_string(), *h)).collect()
    }

    #[test]
    fn never_reported_target_is_healthy() {
        assert!(HealthView::default().is_healthy("us-east-1"));
    }

    #[test]
    fn stale_generation_is_refused_and_equal_is_idempotent() {
        let view = HealthView::default()
            .apply_health(Generation(5), &targets(&[("us-east-1", Health::Unhealthy)]))
            .expect("first push");
        assert!(!view.is_healthy("us-east-1"));
        let stale = view.apply_health(Generation(4), &targets(&[("us-east-1", Health::Healthy)]));
        assert_eq!(stale, Err(ViewError::Stale { offered: 4, applied: 5 }));
        let again = view
            .apply_health(Generation(5), &targets(&[("us-east-1", Health::Unhealthy)]))
            .expect("equal generation");
        assert_eq!(again, view);
        let newer = view
            .apply_health(Generation(6), &targets(&[("us-east-1", Health::Healthy)]))
            .expect("newer");
        assert!(newer.is_healthy("us-east-1"));
        assert_eq!(newer.generation, Generation(6));
    }

    #[test]
    fn a_generation_too_far_ahead_is_refused_and_changes_nothing() {
        let view = HealthView::default()
            .apply_health(Generation(7), &targets(&[("a", Health::Unhealthy)]))
            .expect("first push");
        let at_bound = Generation(7 + GENERATION_STEP_MAX);
        let beyond = Generation(8 + GENERATION_STEP_MAX);
        assert_eq!(
            view.apply_health(beyond, &targets(&[("a", Health::Healthy)])),
            Err(ViewError::TooFarAhead {
                offered: beyond.0,
                applied: 7
            })
        );
        assert!(matches!(
            view.apply_txt(Generation(u64::MAX), "x.", Some("y")),
            Err(ViewError::TooFarAhead { .. })
        ));
        let message = view
            .apply_health(Generation(u64::MAX), &BTreeMap::new())
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains(&format!("7..={}", 7 + GENERATION_STEP_MAX)),
            "{message}"
        );
        // At the bound it applies, and the next push is measured from there.
        let moved = view.apply_health(at_bound, &BTreeMap::new()).expect("at the bound");
        assert_eq!(moved.generation, at_bound);
    }

    #[test]
    fn health_push_merges() {
        let view = HealthView::default()
            .apply_health(Generation(1), &targets(&[("a", Health::Unhealthy)]))
            .expect("push a");
        let view = view
            .apply_health(Generation(1), &targets(&[("b", Health::Unhealthy)]))
            .expect("push b");
        assert!(!view.is_healthy("a") && !view.is_healthy("b"));
    }

    #[test]
    fn txt_generation_shares_the_fence() {
        let view = HealthView::default()
            .apply_txt(Generation(3), "_active-region.shop.example.", Some("eu-west-1"))
            .expect("set");
        assert!(
            view.apply_txt(Generation(2), "_active-region.shop.example.", Some("us-east-1"))
                .is_err()
        );
        assert!(view.apply_health(Generation(2), &BTreeMap::new()).is_err());
        let cleared = view
            .apply_txt(Generation(3), "_active-region.shop.example.", None)
            .expect("remove");
        assert!(cleared.txt.is_empty());
        assert_eq!(
            view.apply_txt(Generation(3), "x.", Some(&"y".repeat(2000))),
            Err(ViewError::TxtTooLong(2000))
        );
    }
}
