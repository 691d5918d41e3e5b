//! Routing policies: which of a record set's members answer, given the controller's view.
//!
//! Pure: randomness comes in as `entropy` (one u64 per query), so a seeded test replays exactly.
//! When no member is healthy every policy answers as if all were healthy (static stability, as
//! Route 53 does): a broken health signal must not take a name off the air.

use common::rng::Rng;
use hickory_proto::rr::RData;

use crate::view::HealthView;

/// Answers a multivalue set gives at most (Route 53's limit).
pub const MULTIVALUE_ANSWERS_MAX: usize = 8;

/// Default TTL of failover records. After the primary fails, resolvers keep handing out the
/// cached primary until the TTL runs out, so the time to fail over is the detection time plus the
/// TTL; 10 s keeps that short at the cost of more queries reaching us.
pub const FAILOVER_TTL_SECS_DEFAULT: u32 = 10;
/// Default TTL of weighted and multivalue records: short enough that a weight change or an
/// unhealthy member leaves caches within a minute (Route 53 recommends 60 s or less).
pub const ROUTED_TTL_SECS_DEFAULT: u32 = 60;

/// One record of a routing policy set (Route 53 calls it a record with a set identifier).
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The set identifier, shown in metrics and errors.
    pub id: String,
    pub ttl: u32,
    pub rdatas: Vec<RData>,
    /// The target whose health decides whether this member answers; `None` is always healthy.
    pub health: Option<String>,
    /// Relative weight (weighted policy only).
    pub weight: u32,
}

impl Member {
    fn healthy(&self, view: &HealthView) -> bool {
        self.health.as_deref().is_none_or(|target| view.is_healthy(target))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// The primary while healthy, else the secondary while healthy, else the primary.
    Failover { primary: Member, secondary: Member },
    /// One healthy member, picked with probability proportional to its weight.
    Weighted(Vec<Member>),
    /// Every healthy member, at most [`MULTIVALUE_ANSWERS_MAX`].
    Multivalue(Vec<Member>),
}

/// Whether [`select`] may use its `entropy` for this policy (weighted and multivalue choices);
/// a failover answer depends on the view alone.
pub fn uses_entropy(policy: &Policy) -> bool {
    !matches!(policy, Policy::Failover { .. })
}

/// The members that answer right now. `entropy` picks among weighted and multivalue members.
pub fn select<'a>(policy: &'a Policy, view: &HealthView, entropy: u64) -> Vec<&'a Member> {
    match policy {
        Policy::Failover { primary, secondary } => {
            if primary.healthy(view) || !secondary.healthy(view) {
                vec![primary]
            } else {
                vec![secondary]
            }
        }
        Policy::Weighted(members) => {
            let healthy: Vec<&Member> = members.iter().filter(|m| m.healthy(view)).collect();
            let pool = if healthy.is_empty() {
                members.iter().collect()
            } else {
                healthy
            };
            pick_weighted(&pool, entropy).into_iter().collect()
        }
        Policy::Multivalue(members) => {
            let healthy: Vec<&Member> = members.iter().filter(|m| m.healthy(view)).collect();
            let mut pool = if healthy.is_empty() {
                members.iter().collect()
            } else {
                healthy
            };
            if pool.len() > MULTIVALUE_ANSWERS_MAX {
                // Partial Fisher-Yates: a uniformly random subset of the allowed size.
                let mut rng = Rng::new(entropy);
                for i in 0..MULTIVALUE_ANSWERS_MAX {
                    let j = i + rng.below((pool.len() - i) as u64) as usize;
                    pool.swap(i, j);
                }
                pool.truncate(MULTIVALUE_ANSWERS_MAX);
            }
            pool
        }
    }
}

/// The members in service, for zone transfers: what a secondary should serve if it cannot know
/// our health view (all healthy weighted and multivalue members, the active failover member).
pub fn in_service<'a>(policy: &'a Policy, view: &HealthView) -> Vec<&'a Member> {
    match policy {
        Policy::Failover { .. } => select(policy, view, 0),
        Policy::Weighted(members) | Policy::Multivalue(members) => {
            let healthy: Vec<&Member> = members.iter().filter(|m| m.healthy(view)).collect();
            if healthy.is_empty() {
                members.iter().collect()
            } else {
                healthy
            }
        }
    }
}

fn pick_weighted<'a>(pool: &[&'a Member], entropy: u64) -> Option<&'a Member> {
    let total: u64 = pool.iter().map(|m| u64::from(m.weight)).sum();
    let mut rng = Rng::new(entropy);
    if total == 0 {
        // All weights zero: Route 53 then picks among them with equal probability.
        if pool.is_empty() {
            return None;
        }
        return Some(pool[rng.below(pool.len() as u64) as usize]);
    }
    let mut point = rng.below(total);
    for member in pool {
        let weight = u64::from(member.weight);
        if point < weight {
            return Some(member);
        }
        point -= weight;
    }
    pool.last().copied()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::A;

    use super::*;
    use crate::view::{Generation, Health};

    fn member(id: &str, ip: [u8; 4], weight: u32) -> Member {
        Member {
            id: id.to_string(),
            ttl: 10,
            rdatas: vec![RData::A(A(Ipv4Addr::from(ip)))],
            health: Some(id.to_string()),
            weight,
        }
    }

    fn view(unhealthy: &[&str]) -> HealthView {
        let targets: BTreeMap<String, Health> = unhealthy.iter().map(|t| (t.to_string(), Health::Unhealthy)).collect();
        HealthView::default()
            .apply_health(Generation(1), &targets)
            .expect("valid view")
    }

    fn ids(members: &[&Member]) -> Vec<String> {
        members.iter().map(|m| m.id.clone()).collect()
    }

    /// Seed for randomized tests: printed, and taken from `SWITCHYARD_SEED` to replay a run.
    fn seed() -> u64 {
        common::rng::seed_from_env("dns policy test")
    }

    #[test]
    fn failover_prefers_primary_then_secondary_then_primary_when_all_down() {
        let policy = Policy::Failover {
            primary: member("p", [192, 0, 2, 1], 0),
            secondary: member("s", [192, 0, 2, 2], 0),
        };
        assert_eq!(ids(&select(&policy, &view(&[]), 0)), ["p"]);
        assert_eq!(ids(&select(&policy, &view(&["p"]), 0)), ["s"]);
        assert_eq!(ids(&select(&policy, &view(&["s"]), 0)), ["p"]);
        assert_eq!(ids(&select(&policy, &view(&["p", "s"]), 0)), ["p"]);
    }

    #[test]
    fn weighted_follows_weights_and_skips_unhealthy() {
        let policy = Policy::Weighted(vec![
            member("a", [192, 0, 2, 1], 3),
            member("b", [192, 0, 2, 2], 1),
            member("c", [192, 0, 2, 3], 0),
        ]);
        let mut rng = Rng::new(seed());
        let mut counts = BTreeMap::new();
        for _ in 0..4000 {
            let chosen = select(&policy, &view(&[]), rng.next_u64());
            assert_eq!(chosen.len(), 1);
            *counts.entry(chosen[0].id.clone()).or_insert(0u32) += 1;
        }
        assert!(
            !counts.contains_key("c"),
            "weight 0 never answers while others can: {counts:?}"
        );
        let a = counts.get("a").copied().unwrap_or(0);
        assert!((2600..3400).contains(&a), "a has 3/4 of the weight: {counts:?}");
        for _ in 0..100 {
            let chosen = select(&policy, &view(&["a"]), rng.next_u64());
            assert_eq!(ids(&chosen), ["b"]);
        }
    }

    #[test]
    fn weighted_all_unhealthy_answers_from_all() {
        let policy = Policy::Weighted(vec![member("a", [192, 0, 2, 1], 1), member("b", [192, 0, 2, 2], 1)]);
        let mut rng = Rng::new(seed());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let chosen = select(&policy, &view(&["a", "b"]), rng.next_u64());
            assert_eq!(chosen.len(), 1);
            seen.insert(chosen[0].id.clone());
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn weighted_is_deterministic_for_an_entropy() {
        let policy = Policy::Weighted(vec![member("a", [192, 0, 2, 1], 1), member("b", [192, 0, 2, 2], 1)]);
        for entropy in [0, 1, 42, u64::MAX] {
            assert_eq!(
                select(&policy, &view(&[]), entropy),
                select(&policy, &view(&[]), entropy)
            );
        }
    }

    #[test]
    fn multivalue_healthy_capped_at_eight_and_all_when_none_healthy() {
        let members: Vec<Member> = (0..12u8).map(|i| member(&format!("m{i}"), [192, 0, 2, i], 0)).collect();
        let policy = Policy::Multivalue(members);
        let mut rng = Rng::new(seed());
        let chosen = select(&policy, &view(&[]), rng.next_u64());
        assert_eq!(chosen.len(), MULTIVALUE_ANSWERS_MAX);
        let mut unique = ids(&chosen);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), MULTIVALUE_ANSWERS_MAX);
        let down: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let down: Vec<&str> = down.iter().map(String::as_str).collect();
        assert_eq!(ids(&select(&policy, &view(&down), rng.next_u64())), ["m10", "m11"]);
        let all: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(
            select(&policy, &view(&all), rng.next_u64()).len(),
            MULTIVALUE_ANSWERS_MAX
        );
    }
}
