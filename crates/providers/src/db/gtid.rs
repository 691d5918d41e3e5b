//! GTID positions of MariaDB and MySQL, as values: parsing, union, and what one server has
//! that another lacks (the transactions a promotion would lose, or a rejoining server's errant
//! transactions). Pure; no I/O.
//!
//! MariaDB: a GTID is `domain-server-sequence`; sequence numbers grow within a domain across
//! servers (with `gtid_strict_mode`), and `gtid_binlog_state` keeps, per (domain, server id),
//! the last sequence number. With `log_slave_updates` every server's binlog state covers what
//! it applied, so "has everything up to d-s-n" is "its entry for (d, s) is at least n".
//! MySQL: `gtid_executed` is a set of `uuid[:tag]:interval[:interval...]`, exact.

use std::collections::BTreeMap;

/// Longest GTID text parsed, in bytes (a position names one entry per domain or source).
pub const GTID_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Most entries (domain-server pairs, or source intervals) kept in one position.
pub const GTID_ENTRIES_MAX: usize = 4096;
/// Missing ranges named in a message; the rest are counted.
pub const RANGES_SHOWN_MAX: usize = 8;

/// What one server has executed or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    Mariadb(MariaState),
    Mysql(GtidSet),
}

/// Transactions one position has that another lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// How many (exact for MySQL; for MariaDB exact while one server writes a domain at a
    /// time, the normal primary-replica case).
    pub count: u64,
    /// The ranges, like `0-1-96..0-1-100` or `3E11FA47-...:23-27`.
    pub ranges: Vec<String>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<&str> = self.ranges.iter().take(RANGES_SHOWN_MAX).map(String::as_str).collect();
        write!(f, "{}", shown.join(", "))?;
        if self.ranges.len() > RANGES_SHOWN_MAX {
            write!(f, " and {} more range(s)", self.ranges.len() - RANGES_SHOWN_MAX)?;
        }
        Ok(())
    }
}

impl Position {
    pub fn empty_like(&self) -> Position {
        match self {
            Position::Mariadb(_) => Position::Mariadb(MariaState::default()),
            Position::Mysql(_) => Position::Mysql(GtidSet::default()),
        }
    }

    /// Adds what `other` has (both of one flavour; a mismatch is ignored, the survey refuses
    /// mixed flavours before anything compares).
    pub fn merge(&mut self, other: &Position) {
        match (self, other) {
            (Position::Mariadb(a), Position::Mariadb(b)) => a.merge(b),
            (Position::Mysql(a), Position::Mysql(b)) => a.merge(b),
            _ => {}
        }
    }

    /// What `self` has that `other` lacks.
    pub fn missing_from(&self, other: &Position) -> Missing {
        match (self, other) {
            (Position::Mariadb(a), Position::Mariadb(b)) => a.missing_from(b),
            (Position::Mysql(a), Position::Mysql(b)) => a.missing_from(b),
            _ => Missing::default(),
        }
    }

    /// What `self`, a server's own writes ([`Position::written_by`]), has that `other` lacks.
    /// For MySQL that is [`Position::missing_from`]. For MariaDB a domain's sequence numbers are
    /// shared by its servers, so `gtid_binlog_state`'s last one per server does not say where a
    /// server's own run started; with `gtid_strict_mode` each of its writes took the next
    /// number after the domain's highest, and a replica that kept replicating cleanly took its
    /// own ones after everything `other` has below them. So the run is counted from there, not
    /// from the server's previous entry in `other` (which would count every number the other
    /// servers used in between).
    pub fn own_missing_from(&self, other: &Position) -> Missing {
        match (self, other) {
            (Position::Mariadb(a), Position::Mariadb(b)) => a.missing_after_domain(b),
            _ => self.missing_from(other),
        }
    }

    /// The text the wait functions take: MariaDB's `MASTER_GTID_WAIT` wants one GTID per
    /// domain (the highest); MySQL's `WAIT_FOR_EXECUTED_GTID_SET` the whole set.
    pub fn wait_text(&self) -> String {
        match self {
            Position::Mariadb(state) => state.domain_positions(),
            Position::Mysql(set) => set.to_string(),
        }
    }

    /// Only the transactions written on the server `origin` names (its own writes, not ones it
    /// replicated): MariaDB's entries of its `server_id`, MySQL's of its `server_uuid` (tagged
    /// or not). A mismatch of flavours is empty.
    pub fn written_by(&self, origin: &Origin) -> Position {
        self.split_by(origin, true)
    }

    /// Everything but what [`Position::written_by`] keeps: the transactions it replicated.
    pub fn written_elsewhere(&self, origin: &Origin) -> Position {
        self.split_by(origin, false)
    }

    fn split_by(&self, origin: &Origin, own: bool) -> Position {
        match (self, origin) {
            (Position::Mariadb(state), Origin::ServerId(id)) => Position::Mariadb(MariaState(
                state
                    .0
                    .iter()
                    .filter(|((_, server), _)| (server == id) == own)
                    .map(|(k, v)| (*k, *v))
                    .collect(),
            )),
            (Position::Mysql(set), Origin::ServerUuid(uuid)) => Position::Mysql(GtidSet(
                set.0
                    .iter()
                    .filter(|(source, _)| {
                        let mine = source
                            .get(..uuid.len())
                            .is_some_and(|head| head.eq_ignore_ascii_case(uuid))
                            && matches!(source.as_bytes().get(uuid.len()), None | Some(b':'));
                        mine == own
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
            _ if own => self.empty_like(),
            _ => self.clone(),
        }
    }

    pub fn transactions(&self) -> u64 {
        match self {
            Position::Mariadb(state) => state.0.values().sum(),
            Position::Mysql(set) => set.count(),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Mariadb(state) => write!(f, "{state}"),
            Position::Mysql(set) => write!(f, "{set}"),
        }
    }
}

/// Which server wrote a transaction, as its GTID says: MariaDB's GTIDs carry the writer's
/// `server_id`, MySQL's its `server_uuid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    ServerId(u32),
    /// Lower-case, as [`GtidSet`] keeps sources.
    ServerUuid(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::ServerId(id) => write!(f, "server_id {id}"),
            Origin::ServerUuid(uuid) => write!(f, "server_uuid {uuid}"),
        }
    }
}

/// One transaction's GTID, as a binlog's GTID event names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gtid {
    /// `domain-server-sequence`.
    Mariadb { domain: u32, server: u32, seq: u64 },
    /// `uuid[:tag]:n` (`source` lower-case, tag included).
    Mysql { source: String, n: u64 },
}

impl Gtid {
    /// The GTID of a `SHOW BINLOG EVENTS` row of type `Gtid`: MariaDB writes `BEGIN GTID 0-1-5`
    /// (`GTID 0-1-5` for DDL, sometimes followed by ` cid=N`), MySQL
    /// `SET @@SESSION.GTID_NEXT= 'uuid:5'`. `None` for other rows.
    pub fn from_event(event_type: &str, info: &str) -> Option<Gtid> {
        if !event_type.eq_ignore_ascii_case("Gtid") && !event_type.eq_ignore_ascii_case("Gtid_tagged") {
            return None;
        }
        if let Some((_, quoted)) = info.split_once('\'') {
            let text = quoted.split('\'').next()?;
            let (source, n) = text.rsplit_once(':')?;
            let n = n.parse().ok()?;
            let uuid = source.split(':').next()?;
            if uuid.len() != 36 || n == 0 {
                return None;
            }
            return Some(Gtid::Mysql {
                source: source.to_ascii_lowercase(),
                n,
            });
        }
        let mut words = info.split_whitespace();
        words.find(|w| w.eq_ignore_ascii_case("GTID"))?;
        let mut parts = words.next()?.split('-');
        let (Some(domain), Some(server), Some(seq), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Gtid::Mariadb {
            domain: domain.parse().ok()?,
            server: server.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gtid::Mariadb { domain, server, seq } => write!(f, "{domain}-{server}-{seq}"),
            Gtid::Mysql { source, n } => write!(f, "{source}:{n}"),
        }
    }
}

impl Position {
    /// Whether the position covers `gtid` (MariaDB: its (domain, server) entry reached the
    /// sequence number; MySQL: an interval of its source holds it). Flavours that differ: no.
    pub fn contains(&self, gtid: &Gtid) -> bool {
        match (self, gtid) {
            (Position::Mariadb(state), Gtid::Mariadb { domain, server, seq }) => {
                state.0.get(&(*domain, *server)).is_some_and(|have| have >= seq)
            }
            (Position::Mysql(set), Gtid::Mysql { source, n }) => set
                .0
                .get(source)
                .is_some_and(|intervals| intervals.iter().any(|&(a, b)| a <= *n && *n <= b)),
            _ => false,
        }
    }
}

/// MariaDB: per (domain, server id) the highest sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MariaState(pub BTreeMap<(u32, u32), u64>);

impl MariaState {
    /// Parses `gtid_binlog_state`, `gtid_slave_pos`, `Gtid_IO_Pos` and the like:
    /// `0-1-100,1-2-7` (empty is empty).
    pub fn parse(text: &str) -> Result<MariaState, String> {
        if text.len() > GTID_TEXT_BYTES_MAX {
            return Err(format!("a GTID position of {} bytes is too long", text.len()));
        }
        let mut state = MariaState::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = item.split('-');
            let (Some(domain), Some(server), Some(seq), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("'{item}' is not a MariaDB GTID (domain-server-sequence)"));
            };
            let parsed = (domain.parse::<u32>(), server.parse::<u32>(), seq.parse::<u64>());
            let (Ok(domain), Ok(server), Ok(seq)) = parsed else {
                return Err(format!("'{item}' is not a MariaDB GTID (domain-server-sequence)"));
            };
            state.add(domain, server, seq);
            if state.0.len() > GTID_ENTRIES_MAX {
                return Err(format!("a GTID position with more than {GTID_ENTRIES_MAX} entries"));
            }
        }
        Ok(state)
    }

    fn add(&mut self, domain: u32, server: u32, seq: u64) {
        let entry = self.0.entry((domain, server)).or_insert(0);
        *entry = (*entry).max(seq);
    }

    pub fn merge(&mut self, other: &MariaState) {
        for (&(domain, server), &seq) in &other.0 {
            self.add(domain, server, seq);
        }
    }

    pub fn missing_from(&self, other: &MariaState) -> Missing {
        let mut missing = Missing::default();
        for (&(domain, server), &seq) in &self.0 {
            let have = other.0.get(&(domain, server)).copied().unwrap_or(0);
            if have < seq {
                missing.count = missing.count.saturating_add(seq - have);
                missing.ranges.push(if have + 1 == seq {
                    format!("{domain}-{server}-{seq}")
                } else {
                    format!("{domain}-{server}-{}..{domain}-{server}-{seq}", have + 1)
                });
            }
        }
        missing
    }

    /// [`MariaState::missing_from`], each run starting after the highest sequence number
    /// `other` has below it in its domain (see [`Position::own_missing_from`]).
    fn missing_after_domain(&self, other: &MariaState) -> Missing {
        let mut floor = MariaState::default();
        for (&(domain, server), &seq) in &self.0 {
            let below = other
                .0
                .iter()
                .filter(|((d, _), n)| *d == domain && **n < seq)
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            floor.add(
                domain,
                server,
                below.max(other.0.get(&(domain, server)).copied().unwrap_or(0)),
            );
        }
        self.missing_from(&floor)
    }

    /// One GTID per domain, the highest sequence number in it.
    pub fn domain_positions(&self) -> String {
        let mut best: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
        for (&(domain, server), &seq) in &self.0 {
            let entry = best.entry(domain).or_insert((seq, server));
            if seq > entry.0 {
                *entry = (seq, server);
            }
        }
        best.iter()
            .map(|(domain, (seq, server))| format!("{domain}-{server}-{seq}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for MariaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(|((d, s), n)| format!("{d}-{s}-{n}")).collect();
        if items.is_empty() {
            write!(f, "(empty)")
        } else {
            write!(f, "{}", items.join(","))
        }
    }
}

/// MySQL: per source (uuid, or `uuid:tag`) sorted, disjoint, non-adjacent closed intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidSet(pub BTreeMap<String, Vec<(u64, u64)>>);

impl GtidSet {
    /// Parses `gtid_executed` / `Retrieved_Gtid_Set`: `uuid:1-5:7,uuid2:tag:1-3` (newlines
    /// after commas allowed, empty is empty).
    pub fn parse(text: &str) -> Result<GtidSet, String> {
        if text.len() > GTID_TEXT_BYTES_MAX {
            return Err(format!("a GTID set of {} bytes is too long", text.len()));
        }
        let mut set = GtidSet::default();
        let mut entries = 0usize;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = item.split(':');
            let uuid = parts.next().unwrap_or_default().to_ascii_lowercase();
            if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(format!("'{item}' does not start with a server uuid"));
            }
            let mut source = uuid.clone();
            for part in parts {
                if part.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    let (start, end) = match part.split_once('-') {
                        Some((a, b)) => (a.parse::<u64>(), b.parse::<u64>()),
                        None => (part.parse::<u64>(), part.parse::<u64>()),
                    };
                    let (Ok(start), Ok(end)) = (start, end) else {
                        return Err(format!("'{part}' in '{item}' is not an interval like 1-5"));
                    };
                    if start == 0 || end < start {
                        return Err(format!("'{part}' in '{item}' is not an interval like 1-5"));
                    }
                    set.insert(&source, start, end);
                    entries += 1;
                    if entries > GTID_ENTRIES_MAX {
                        return Err(format!("a GTID set with more than {GTID_ENTRIES_MAX} intervals"));
                    }
                } else {
                    source = format!("{uuid}:{}", part.to_ascii_lowercase());
                }
            }
        }
        Ok(set)
    }

    fn insert(&mut self, source: &str, start: u64, end: u64) {
        let intervals = self.0.entry(source.to_string()).or_default();
        intervals.push((start, end));
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(a, b) in intervals.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *intervals = merged;
    }

    pub fn merge(&mut self, other: &GtidSet) {
        for (source, intervals) in &other.0 {
            for &(a, b) in intervals {
                self.insert(source, a, b);
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.0
            .values()
            .flatten()
            .map(|(a, b)| b - a + 1)
            .fold(0u64, u64::saturating_add)
    }

    pub fn missing_from(&self, other: &GtidSet) -> Missing {
        let mut missing = Missing::default();
        for (source, intervals) in &self.0 {
            let theirs = other.0.get(source).map(Vec::as_slice).unwrap_or(&[]);
            for &(a, b) in intervals {
                // Walk `theirs` (sorted, disjoint) and keep the gaps inside [a, b].
                let mut next = a;
                for &(c, d) in theirs {
                    if d < next || c > b {
                        continue;
                    }
                    if c > next {
                        push_range(&mut missing, source, next, c - 1);
                    }
                    next = d.saturating_add(1);
                    if next > b {
                        break;
                    }
                }
                if next <= b {
                    push_range(&mut missing, source, next, b);
                }
            }
        }
        missing
    }
}

fn push_range(missing: &mut Missing, source: &str, a: u64, b: u64) {
    missing.count = missing.count.saturating_add(b - a + 1);
    missing.ranges.push(if a == b {
        format!("{source}:{a}")
    } else {
        format!("{source}:{a}-{b}")
    });
}

impl std::fmt::Display for GtidSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(source, intervals)| {
                let parts: Vec<String> = intervals
                    .iter()
                    .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                    .collect();
                format!("{source}:{}", parts.join(":"))
            })
            .collect();
        write!(f, "{}", items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4e11fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn mariadb_missing_names_the_ranges_per_domain_and_server() {
        let old = MariaState::parse("0-1-100, 1-1-7").expect("parses");
        let new = MariaState::parse("0-1-95,0-2-150,1-1-7").expect("parses");
        let errant = old.missing_from(&new);
        assert_eq!(errant.count, 5);
        assert_eq!(errant.ranges, vec!["0-1-96..0-1-100".to_string()]);
        assert!(
            new.missing_from(&MariaState::parse("0-1-95,0-2-150,1-1-7").expect("p"))
                .is_empty()
        );
        assert_eq!(new.domain_positions(), "0-2-150,1-1-7");
        let one = MariaState::parse("0-1-96")
            .expect("p")
            .missing_from(&MariaState::parse("0-1-95").expect("p"));
        assert_eq!(one.ranges, vec!["0-1-96".to_string()]);
    }

    #[test]
    fn written_by_keeps_only_the_origins_own_transactions() {
        let maria = Position::Mariadb(MariaState::parse("0-1-100,0-2-9,1-2-4").expect("parses"));
        assert_eq!(maria.written_by(&Origin::ServerId(2)).to_string(), "0-2-9,1-2-4");
        assert_eq!(maria.written_by(&Origin::ServerId(3)).to_string(), "(empty)");
        let set = Position::Mysql(GtidSet::parse(&format!("{A}:1-10,{A}:audit:1-2,{B}:1-3")).expect("parses"));
        let own = set.written_by(&Origin::ServerUuid(A.to_string()));
        assert_eq!(own.transactions(), 12, "{own}");
        assert!(!own.to_string().contains(B), "{own}");
        // A uuid is matched whole, in any case, not as a prefix of another source.
        let upper = Origin::ServerUuid(B.to_ascii_uppercase());
        assert_eq!(set.written_by(&upper).transactions(), 3);
        assert_eq!(
            set.written_by(&Origin::ServerUuid(B[..8].to_string())).transactions(),
            0
        );
        // Flavours do not mix.
        assert_eq!(maria.written_by(&Origin::ServerUuid(A.to_string())).transactions(), 0);
        // The rest is what it replicated.
        assert_eq!(maria.written_elsewhere(&Origin::ServerId(2)).to_string(), "0-1-100");
        let replicated = set.written_elsewhere(&Origin::ServerUuid(A.to_string()));
        assert_eq!(replicated.transactions(), 3, "{replicated}");
    }

    #[test]
    fn a_servers_own_run_is_counted_from_the_domains_highest_number_below_it() {
        let primary = Position::Mariadb(MariaState::parse("0-1-100,0-2-40,1-1-7").expect("parses"));
        // b (server 2) wrote 0-2-101 and 0-2-102 itself after replicating 0-1-100.
        let own = Position::Mariadb(MariaState::parse("0-2-102,1-2-3").expect("parses"));
        let missing = own.own_missing_from(&primary);
        assert_eq!(missing.count, 2 + 3, "{missing:?}");
        assert_eq!(
            missing.ranges,
            vec!["0-2-101..0-2-102".to_string(), "1-2-1..1-2-3".to_string()]
        );
        // Counted from the server's own entry, it would be 62 in domain 0.
        assert_eq!(own.missing_from(&primary).count, 62 + 3);
        assert!(own.own_missing_from(&own).is_empty());
    }

    #[test]
    fn mariadb_bad_text_is_named() {
        let error = MariaState::parse("0-1-x").expect_err("refused");
        assert!(error.contains("'0-1-x'"), "{error}");
        assert!(MariaState::parse("1-2").is_err());
        assert_eq!(MariaState::parse("").expect("empty"), MariaState::default());
    }

    #[test]
    fn mysql_sets_merge_and_subtract_exactly() {
        let old = GtidSet::parse(&format!("{A}:1-10:12,\n{B}:1-3")).expect("parses");
        let new = GtidSet::parse(&format!("{A}:1-5:7-8,{B}:1-3")).expect("parses");
        let errant = old.missing_from(&new);
        assert_eq!(errant.count, 4);
        assert_eq!(
            errant.ranges,
            vec![format!("{A}:6"), format!("{A}:9-10"), format!("{A}:12")]
        );
        let mut union = new.clone();
        union.merge(&old);
        assert_eq!(union.to_string(), format!("{A}:1-10:12,{B}:1-3"));
        assert!(old.missing_from(&union).is_empty());
        assert_eq!(union.count(), 14);
    }

    #[test]
    fn mysql_tags_are_sources_of_their_own_and_bad_text_is_named() {
        let set = GtidSet::parse(&format!("{A}:1-2:ops:1-4")).expect("parses");
        assert_eq!(set.count(), 6);
        assert_eq!(set.0.len(), 2);
        let error = GtidSet::parse("nope:1-2").expect_err("refused");
        assert!(error.contains("nope:1-2"), "{error}");
        assert!(GtidSet::parse(&format!("{A}:5-2")).is_err());
        assert!(GtidSet::parse(&format!("{A}:0")).is_err());
    }

    #[test]
    fn binlog_gtid_events_parse_and_positions_contain_them() {
        let maria = Gtid::from_event("Gtid", "BEGIN GTID 0-1-96").expect("gtid");
        assert_eq!(maria.to_string(), "0-1-96");
        assert_eq!(
            Gtid::from_event("Gtid", "GTID 2-3-7 cid=55"),
            Some(Gtid::Mariadb {
                domain: 2,
                server: 3,
                seq: 7
            })
        );
        assert_eq!(Gtid::from_event("Query", "BEGIN GTID 0-1-96"), None);
        assert_eq!(Gtid::from_event("Gtid", "BEGIN"), None);
        let state = Position::Mariadb(MariaState::parse("0-1-95,0-2-150").expect("p"));
        assert!(!state.contains(&maria));
        assert!(state.contains(&Gtid::from_event("Gtid", "BEGIN GTID 0-1-95").expect("gtid")));
        let mysql =
            Gtid::from_event("Gtid", &format!("SET @@SESSION.GTID_NEXT= '{}:12'", A.to_uppercase())).expect("gtid");
        assert_eq!(mysql.to_string(), format!("{A}:12"));
        let tagged = Gtid::from_event("Gtid_tagged", &format!("SET @@SESSION.GTID_NEXT= '{A}:ops:3'")).expect("gtid");
        assert_eq!(tagged.to_string(), format!("{A}:ops:3"));
        let set = Position::Mysql(GtidSet::parse(&format!("{A}:1-10:13,{A}:ops:1-3")).expect("p"));
        assert!(!set.contains(&mysql));
        assert!(set.contains(&tagged));
        assert!(!state.contains(&mysql), "flavours never match");
        assert_eq!(Gtid::from_event("Gtid", "SET @@SESSION.GTID_NEXT= 'ANONYMOUS'"), None);
    }

    #[test]
    fn positions_of_either_flavour_render_the_wait_text() {
        let maria = Position::Mariadb(MariaState::parse("0-1-5,0-2-9").expect("p"));
        assert_eq!(maria.wait_text(), "0-2-9");
        let mysql = Position::Mysql(GtidSet::parse(&format!("{A}:1-3")).expect("p"));
        assert_eq!(mysql.wait_text(), format!("{A}:1-3"));
        assert_eq!(mysql.transactions(), 3);
    }
}
