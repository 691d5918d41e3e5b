//! The balancer: which server gets the next request (sans-IO; the caller passes the time in
//! milliseconds and applies the results).
//!
//! Invariants: a server in `drain` or `maint`, a down server and a server of weight 0 never get
//! a new request; a backup server gets requests only while no primary can take one; a server
//! that came back ramps its weight linearly over `slowstart_ms` (at least 1).

use serde::Serialize;

use crate::check::{CheckParams, CheckState, Observation, Transition};
use crate::config::{Balance, ServerConfig};

/// What an operator set (HAProxy's `set server ... state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes traffic when healthy.
    Ready,
    /// Takes no new requests; requests in flight finish. Still health-checked.
    Drain,
    /// Takes no traffic at all; shown as MAINT. Still health-checked, so `ready` knows its health.
    Maint,
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            _ => Err(format!("'{text}' is not a server state; use ready, drain or maint")),
        }
    }
}

/// Index of a server in the configuration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);

/// The active health checks run on a server: how many passed, how many failed, and what the
/// last one saw (for the stats page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckCounts {
    pub passed: u64,
    pub failed: u64,
    pub last: String,
}

impl Default for CheckCounts {
    fn default() -> CheckCounts {
        CheckCounts {
            passed: 0,
            failed: 0,
            last: "none yet".into(),
        }
    }
}

impl CheckCounts {
    fn record(&mut self, success: bool, detail: String) {
        if success {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.last = detail;
    }
}

#[derive(Clone, Debug)]
pub struct ServerState {
    pub config: ServerConfig,
    pub admin: AdminState,
    pub check: CheckState,
    /// Requests in flight.
    pub active: u32,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    pub checks: CheckCounts,
    /// When the server last started taking traffic again (slow start counts from here).
    ramp_from_ms: Option<u64>,
    pub last_change_ms: u64,
    /// Smooth weighted round robin's running score.
    current: i64,
}

impl ServerState {
    /// Up by health, ready by the operator, and weight above 0.
    fn usable(&self) -> bool {
        self.admin == AdminState::Ready && self.check.is_up() && self.config.weight > 0
    }

    /// The HAProxy-style status shown on the stats page.
    pub fn status(&self) -> String {
        match self.admin {
            AdminState::Maint => "MAINT".into(),
            AdminState::Drain => format!("DRAIN ({})", self.check.status()),
            AdminState::Ready => self.check.status(),
        }
    }
}

pub struct Balancer {
    servers: Vec<ServerState>,
    algorithm: Balance,
    slowstart_ms: u64,
    /// Where leastconn's tie-break starts, so ties rotate.
    cursor: usize,
}

impl Balancer {
    pub fn new(
        servers: &[ServerConfig],
        algorithm: Balance,
        slowstart_ms: u64,
        params: CheckParams,
        now_ms: u64,
    ) -> Balancer {
        Balancer {
            servers: servers
                .iter()
                .map(|config| ServerState {
                    config: config.clone(),
                    admin: AdminState::Ready,
                    check: CheckState::new(params),
                    active: 0,
                    requests: 0,
                    errors: 0,
                    retries: 0,
                    checks: CheckCounts::default(),
                    ramp_from_ms: None,
                    last_change_ms: now_ms,
                    current: 0,
                })
                .collect(),
            algorithm,
            slowstart_ms,
            cursor: 0,
        }
    }

    pub fn servers(&self) -> &[ServerState] {
        &self.servers
    }

    pub fn server(&self, id: ServerId) -> &ServerState {
        &self.servers[id.0]
    }

    pub fn find(&self, name: &str) -> Option<ServerId> {
        self.servers.iter().position(|s| s.config.name == name).map(ServerId)
    }

    /// The weight in effect now: the configured weight, ramped during slow start.
    pub fn effective_weight(&self, id: ServerId, now_ms: u64) -> u32 {
        let server = &self.servers[id.0];
        let weight = server.config.weight;
        match server.ramp_from_ms {
            Some(from) if self.slowstart_ms > 0 => {
                let elapsed = now_ms.saturating_sub(from);
                if elapsed >= self.slowstart_ms {
                    weight
                } else {
                    let ramped = (u64::from(weight) * elapsed).div_ceil(self.slowstart_ms);
                    (ramped as u32).clamp(1, weight.max(1))
                }
            }
            _ => weight,
        }
    }

    /// Whether any primary can take a request; if none, backups do.
    fn primaries_usable(&self) -> bool {
        self.servers.iter().any(|s| !s.config.backup && s.usable())
    }

    /// Chooses a server for a request and counts it as active. `tried` are servers this request
    /// already failed on; they are avoided while another usable server of the same tier exists.
    pub fn pick(&mut self, now_ms: u64, tried: &[ServerId]) -> Option<ServerId> {
        let backup_tier = !self.primaries_usable();
        let in_tier = |s: &ServerState| s.usable() && s.config.backup == backup_tier;
        let untried_exists = self
            .servers
            .iter()
            .enumerate()
            .any(|(i, s)| in_tier(s) && !tried.contains(&ServerId(i)));
        let candidates: Vec<usize> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, s)| in_tier(s) && (!untried_exists || !tried.contains(&ServerId(*i))))
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.algorithm {
            Balance::Roundrobin => self.pick_round_robin(&candidates, now_ms),
            Balance::Leastconn => self.pick_least_connections(&candidates, now_ms),
        };
        let server = &mut self.servers[chosen];
        server.active += 1;
        server.requests += 1;
        Some(ServerId(chosen))
    }

    /// The same server again, if it can still take a request (retries without `redispatch`).
    pub fn pin(&mut self, id: ServerId) -> Option<ServerId> {
        let server = self.servers.get_mut(id.0)?;
        if !server.usable() {
            return None;
        }
        server.active += 1;
        server.requests += 1;
        Some(id)
    }

    /// Smooth weighted round robin (nginx's): deterministic, spreads a heavy server's turns.
    fn pick_round_robin(&mut self, candidates: &[usize], now_ms: u64) -> usize {
        let mut total: i64 = 0;
        let mut best = candidates[0];
        let mut best_score = i64::MIN;
        for &i in candidates {
            let weight = i64::from(self.effective_weight(ServerId(i), now_ms));
            total += weight;
            let server = &mut self.servers[i];
            server.current += weight;
            if server.current > best_score {
                best_score = server.current;
                best = i;
            }
        }
        self.servers[best].current -= total;
        best
    }

    /// Lowest `(active + 1) / weight`; ties rotate.
    fn pick_least_connections(&mut self, candidates: &[usize], now_ms: u64) -> usize {
        let start = self.cursor % candidates.len();
        let mut best = candidates[start];
        for offset in 1..candidates.len() {
            let i = candidates[(start + offset) % candidates.len()];
            let (a, b) = (&self.servers[i], &self.servers[best]);
            let wa = u64::from(self.effective_weight(ServerId(i), now_ms));
            let wb = u64::from(self.effective_weight(ServerId(best), now_ms));
            if (u64::from(a.active) + 1) * wb < (u64::from(b.active) + 1) * wa {
                best = i;
            }
        }
        self.cursor = self.cursor.wrapping_add(1);
        best
    }

    /// A request that [`pick`](Self::pick) counted has finished (response sent or failed).
    pub fn finish(&mut self, id: ServerId) {
        let server = &mut self.servers[id.0];
        server.active = server.active.saturating_sub(1);
    }

    /// Counts a retry moving off this server.
    pub fn note_retry(&mut self, id: ServerId) {
        self.servers[id.0].retries += 1;
    }

    /// Applies what a request showed about the server (passive check).
    pub fn observe(&mut self, id: ServerId, observation: Observation, now_ms: u64) -> Option<Transition> {
        let server = &mut self.servers[id.0];
        if observation == Observation::Error {
            server.errors += 1;
        }
        let transition = server.check.on_traffic(observation);
        self.apply(id, transition, now_ms);
        transition
    }

    /// Applies an active check result; `detail` is shown on the stats page.
    pub fn on_check(&mut self, id: ServerId, success: bool, detail: String, now_ms: u64) -> Option<Transition> {
        let server = &mut self.servers[id.0];
        server.checks.record(success, detail);
        let transition = server.check.on_check(success);
        self.apply(id, transition, now_ms);
        transition
    }

    fn apply(&mut self, id: ServerId, transition: Option<Transition>, now_ms: u64) {
        let server = &mut self.servers[id.0];
        match transition {
            Some(Transition::Up) => {
                server.ramp_from_ms = Some(now_ms);
                server.last_change_ms = now_ms;
                server.current = 0;
            }
            Some(Transition::Down) => {
                server.ramp_from_ms = None;
                server.last_change_ms = now_ms;
            }
            None => {}
        }
    }

    /// The operator's `set server NAME state`. Returns the previous state.
    pub fn set_admin(&mut self, id: ServerId, admin: AdminState, now_ms: u64) -> AdminState {
        let server = &mut self.servers[id.0];
        let previous = server.admin;
        if previous != admin {
            server.admin = admin;
            server.last_change_ms = now_ms;
            if admin == AdminState::Ready {
                server.ramp_from_ms = Some(now_ms);
                server.current = 0;
            }
        }
        previous
    }

    /// The operator's `set server NAME weight`. Returns the previous weight.
    pub fn set_weight(&mut self, id: ServerId, weight: u32, now_ms: u64) -> u32 {
        let server = &mut self.servers[id.0];
        let previous = server.config.weight;
        if previous != weight {
            server.config.weight = weight;
            server.last_change_ms = now_ms;
            server.current = 0;
        }
        previous
    }

    /// How long until the next active check of this server.
    pub fn next_check_ms(&self, id: ServerId) -> u64 {
        self.servers[id.0].check.next_interval_ms()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;

    use common::rng::Rng;

    fn server(name: &str, weight: u32, backup: bool) -> ServerConfig {
        let address: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        ServerConfig {
            name: name.into(),
            address,
            weight,
            backup,
        }
    }

    fn balancer(servers: &[ServerConfig], algorithm: Balance, slowstart_ms: u64) -> Balancer {
        Balancer::new(servers, algorithm, slowstart_ms, CheckParams::default(), 0)
    }

    fn counts(balancer: &mut Balancer, picks: usize, now_ms: u64) -> Vec<usize> {
        let mut counts = vec![0; balancer.servers().len()];
        for _ in 0..picks {
            let id = balancer.pick(now_ms, &[]).expect("a server");
            balancer.finish(id);
            counts[id.0] += 1;
        }
        counts
    }

    fn take_down(balancer: &mut Balancer, id: ServerId) {
        balancer.on_check(id, false, "test".into(), 0);
        assert!(!balancer.server(id).check.is_up());
    }

    fn bring_up(balancer: &mut Balancer, id: ServerId, now_ms: u64) {
        for _ in 0..2 {
            balancer.on_check(id, true, "test".into(), now_ms);
        }
        assert!(balancer.server(id).check.is_up());
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let mut b = balancer(
            &[server("a", 1, false), server("b", 2, false), server("c", 3, false)],
            Balance::Roundrobin,
            0,
        );
        assert_eq!(counts(&mut b, 600, 0), vec![100, 200, 300]);
    }

    #[test]
    fn round_robin_interleaves() {
        let mut b = balancer(&[server("a", 1, false), server("b", 1, false)], Balance::Roundrobin, 0);
        let order: Vec<usize> = (0..4)
            .map(|_| {
                let id = b.pick(0, &[]).expect("server");
                b.finish(id);
                id.0
            })
            .collect();
        assert_eq!(order, vec![0, 1, 0, 1]);
    }

    #[test]
    fn least_connections_prefers_the_idle_server() {
        let mut b = balancer(&[server("a", 1, false), server("b", 1, false)], Balance::Leastconn, 0);
        let first = b.pick(0, &[]).expect("server");
        let second = b.pick(0, &[]).expect("server");
        assert_ne!(first, second);
        b.finish(first);
        let third = b.pick(0, &[]).expect("server");
        assert_eq!(third, first, "the server that finished is the idle one");
    }

    #[test]
    fn least_connections_respects_weights() {
        let mut b = balancer(&[server("a", 1, false), server("b", 3, false)], Balance::Leastconn, 0);
        let held: Vec<ServerId> = (0..8).map(|_| b.pick(0, &[]).expect("server")).collect();
        let on_b = held.iter().filter(|id| id.0 == 1).count();
        assert_eq!(on_b, 6, "b holds three times a's share: {held:?}");
    }

    #[test]
    fn down_drained_maint_and_zero_weight_servers_get_nothing() {
        let mut b = balancer(
            &[
                server("a", 1, false),
                server("b", 1, false),
                server("c", 1, false),
                server("d", 0, false),
                server("e", 1, false),
            ],
            Balance::Roundrobin,
            0,
        );
        take_down(&mut b, ServerId(0));
        b.set_admin(ServerId(1), AdminState::Drain, 0);
        b.set_admin(ServerId(2), AdminState::Maint, 0);
        assert_eq!(counts(&mut b, 10, 0), vec![0, 0, 0, 0, 10]);
    }

    #[test]
    fn backups_only_when_all_primaries_are_down() {
        let mut b = balancer(
            &[server("a", 1, false), server("b", 1, false), server("spare", 1, true)],
            Balance::Roundrobin,
            0,
        );
        assert_eq!(counts(&mut b, 10, 0), vec![5, 5, 0]);
        take_down(&mut b, ServerId(0));
        assert_eq!(counts(&mut b, 10, 0), vec![0, 10, 0]);
        take_down(&mut b, ServerId(1));
        assert_eq!(counts(&mut b, 10, 0), vec![0, 0, 10]);
        bring_up(&mut b, ServerId(1), 0);
        assert_eq!(counts(&mut b, 10, 0), vec![0, 10, 0]);
    }

    #[test]
    fn drained_primaries_send_traffic_to_backups() {
        let mut b = balancer(
            &[server("a", 1, false), server("spare", 1, true)],
            Balance::Leastconn,
            0,
        );
        b.set_admin(ServerId(0), AdminState::Drain, 0);
        assert_eq!(counts(&mut b, 4, 0), vec![0, 4]);
    }

    #[test]
    fn nothing_usable_gives_none() {
        let mut b = balancer(
            &[server("a", 1, false), server("spare", 1, true)],
            Balance::Roundrobin,
            0,
        );
        take_down(&mut b, ServerId(0));
        take_down(&mut b, ServerId(1));
        assert_eq!(b.pick(0, &[]), None);
    }

    #[test]
    fn retries_avoid_servers_already_tried() {
        let mut b = balancer(
            &[server("a", 1, false), server("b", 1, false), server("c", 1, false)],
            Balance::Roundrobin,
            0,
        );
        for _ in 0..20 {
            let id = b.pick(0, &[ServerId(0), ServerId(1)]).expect("server");
            b.finish(id);
            assert_eq!(id, ServerId(2));
        }
        let id = b
            .pick(0, &[ServerId(0), ServerId(1), ServerId(2)])
            .expect("all tried: any");
        b.finish(id);
    }

    #[test]
    fn pin_keeps_a_usable_server_and_refuses_others() {
        let mut b = balancer(&[server("a", 1, false), server("b", 1, false)], Balance::Roundrobin, 0);
        assert_eq!(b.pin(ServerId(1)), Some(ServerId(1)));
        assert_eq!(b.server(ServerId(1)).active, 1);
        b.set_admin(ServerId(1), AdminState::Drain, 0);
        assert_eq!(b.pin(ServerId(1)), None);
        take_down(&mut b, ServerId(0));
        assert_eq!(b.pin(ServerId(0)), None);
        assert_eq!(b.pin(ServerId(9)), None, "an unknown id is refused, not a panic");
    }

    #[test]
    fn set_weight_changes_the_share() {
        let mut b = balancer(&[server("a", 1, false), server("b", 1, false)], Balance::Roundrobin, 0);
        assert_eq!(b.set_weight(ServerId(1), 3, 0), 1);
        assert_eq!(counts(&mut b, 40, 0), vec![10, 30]);
        b.set_weight(ServerId(0), 0, 0);
        assert_eq!(counts(&mut b, 10, 0), vec![0, 10], "weight 0 takes no traffic");
    }

    #[test]
    fn slow_start_ramps_the_weight() {
        let mut b = balancer(
            &[server("a", 10, false), server("b", 10, false)],
            Balance::Roundrobin,
            1000,
        );
        take_down(&mut b, ServerId(0));
        bring_up(&mut b, ServerId(0), 5_000);
        assert_eq!(b.effective_weight(ServerId(0), 5_000), 1);
        assert_eq!(b.effective_weight(ServerId(0), 5_500), 5);
        assert_eq!(b.effective_weight(ServerId(0), 6_000), 10);
        let early = counts(&mut b, 110, 5_000);
        assert_eq!(early, vec![10, 100]);
        let later = counts(&mut b, 200, 7_000);
        assert_eq!(later, vec![100, 100]);
    }

    #[test]
    fn ready_after_drain_starts_slowly() {
        let mut b = balancer(&[server("a", 4, false)], Balance::Roundrobin, 1000);
        b.set_admin(ServerId(0), AdminState::Drain, 0);
        b.set_admin(ServerId(0), AdminState::Ready, 100);
        assert_eq!(b.effective_weight(ServerId(0), 100), 1);
        assert_eq!(b.effective_weight(ServerId(0), 1100), 4);
    }

    #[test]
    fn passive_errors_take_a_server_out() {
        let mut b = balancer(&[server("a", 1, false), server("b", 1, false)], Balance::Roundrobin, 0);
        for _ in 0..9 {
            assert_eq!(b.observe(ServerId(0), Observation::Error, 0), None);
        }
        assert_eq!(b.observe(ServerId(0), Observation::Error, 0), Some(Transition::Down));
        assert_eq!(counts(&mut b, 4, 0), vec![0, 4]);
    }

    /// Seeded: random checks, admin changes and picks never route to an unusable server, and
    /// backups only serve while no primary is usable. Replay with `SWITCHYARD_SEED`.
    #[test]
    fn randomized_events_keep_routing_invariants() {
        let seed = common::rng::seed_from_env("randomized_events_keep_routing_invariants");
        let mut rng = Rng::new(seed);
        for algorithm in [Balance::Roundrobin, Balance::Leastconn] {
            let configs: Vec<ServerConfig> = (0..6)
                .map(|i| server(&format!("s{i}"), (rng.next_u64() % 5) as u32, i >= 4))
                .collect();
            let mut b = balancer(&configs, algorithm, 500);
            let mut held: Vec<ServerId> = Vec::new();
            for step in 0..5000u64 {
                let now = step * 10;
                let id = ServerId((rng.next_u64() % 6) as usize);
                match rng.next_u64() % 6 {
                    0 => {
                        b.on_check(id, rng.next_u64().is_multiple_of(2), String::new(), now);
                    }
                    1 => {
                        let state =
                            [AdminState::Ready, AdminState::Drain, AdminState::Maint][(rng.next_u64() % 3) as usize];
                        b.set_admin(id, state, now);
                    }
                    2 if !held.is_empty() => {
                        let index = (rng.next_u64() as usize) % held.len();
                        b.finish(held.swap_remove(index));
                    }
                    _ => {
                        let primaries = b.servers().iter().any(|s| !s.config.backup && s.usable());
                        if let Some(id) = b.pick(now, &[]) {
                            let s = b.server(id);
                            assert!(s.usable(), "seed {seed}: picked unusable {}", s.config.name);
                            assert_eq!(s.config.backup, !primaries, "seed {seed}: wrong tier");
                            held.push(id);
                        } else {
                            assert!(!b.servers().iter().any(|s| s.usable()), "seed {seed}");
                        }
                    }
                }
                let active: u32 = b.servers().iter().map(|s| s.active).sum();
                assert_eq!(active as usize, held.len(), "seed {seed}");
            }
        }
    }
}
