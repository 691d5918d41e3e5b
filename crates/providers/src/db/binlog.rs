//! What errant transactions changed, read from a server's binary log (`SHOW BINLOG EVENTS`
//! rows fed in order): the tables their row events touched (`Table_map` events) and their
//! statements (statement-based or DDL `Query` events). Pure; no I/O: `mysql_promote` feeds
//! the rows and prints the summary when it refuses a rejoin.

use std::collections::{BTreeMap, BTreeSet};

use super::gtid::{Gtid, Position};

/// Tables kept in a summary; more are counted.
pub const TABLES_MAX: usize = 64;
/// Tables named in the summary line.
pub const TABLES_SHOWN_MAX: usize = 12;
/// Statements (DDL, statement-based changes) kept and shown.
pub const STATEMENTS_SHOWN_MAX: usize = 3;
/// Characters of one statement shown.
pub const STATEMENT_CHARS_MAX: usize = 80;

/// Collects, for the transactions a `reference` position lacks, what they touched.
#[derive(Debug)]
pub struct ErrantScan<'a> {
    reference: &'a Position,
    /// The transaction the rows belong to, when it is errant.
    current: Option<Gtid>,
    /// Tables the current transaction touched already (counted once per transaction).
    current_tables: BTreeSet<String>,
    /// Errant transactions seen.
    pub found: u64,
    /// Per `schema.table`, the errant transactions that changed rows in it.
    pub tables: BTreeMap<String, u64>,
    /// Tables beyond [`TABLES_MAX`].
    pub tables_dropped: u64,
    pub statements: Vec<String>,
    pub statements_dropped: u64,
    /// Rows read (every event of every file).
    pub events: u64,
    pub files: u64,
}

impl<'a> ErrantScan<'a> {
    pub fn new(reference: &'a Position) -> ErrantScan<'a> {
        ErrantScan {
            reference,
            current: None,
            current_tables: BTreeSet::new(),
            found: 0,
            tables: BTreeMap::new(),
            tables_dropped: 0,
            statements: Vec::new(),
            statements_dropped: 0,
            events: 0,
            files: 0,
        }
    }

    /// A new binlog file starts: no transaction spans two files.
    pub fn next_file(&mut self) {
        self.files += 1;
        self.end_transaction();
    }

    fn end_transaction(&mut self) {
        self.current = None;
        self.current_tables.clear();
    }

    /// One `SHOW BINLOG EVENTS` row (`Event_type`, `Info`).
    pub fn feed(&mut self, event_type: &str, info: &str) {
        self.events += 1;
        if event_type.eq_ignore_ascii_case("Gtid") || event_type.eq_ignore_ascii_case("Gtid_tagged") {
            self.end_transaction();
            if let Some(gtid) = Gtid::from_event(event_type, info)
                && !self.reference.contains(&gtid)
            {
                self.found += 1;
                self.current = Some(gtid);
            }
            return;
        }
        if self.current.is_none() {
            return;
        }
        if event_type.eq_ignore_ascii_case("Table_map") {
            // `table_id: 33 (shop.sales_order)`
            let Some(name) = info
                .rsplit_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .filter(|n| !n.is_empty())
            else {
                return;
            };
            self.touch(name);
        } else if event_type.eq_ignore_ascii_case("Query") {
            let (schema, statement) = split_use(info.trim());
            if let Some(table) = dml_table(statement) {
                // Statement-based (or MIXED) logging of a row change.
                let name = if table.contains('.') || schema.is_empty() {
                    table
                } else {
                    format!("{schema}.{table}")
                };
                self.touch(&name);
                return;
            }
            let keyword = statement
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            if matches!(
                keyword.as_str(),
                "" | "BEGIN" | "COMMIT" | "ROLLBACK" | "XA" | "SAVEPOINT"
            ) {
                return;
            }
            if self.statements.len() < STATEMENTS_SHOWN_MAX {
                // MariaDB logs `CREATE USER ... IDENTIFIED BY 'password'` as written.
                let statement = hide_secret_literals(statement);
                let mut shown: String = statement.chars().take(STATEMENT_CHARS_MAX).collect();
                if statement.chars().count() > STATEMENT_CHARS_MAX {
                    shown.push_str("...");
                }
                self.statements.push(format!(
                    "{} {shown}",
                    self.current.as_ref().map(ToString::to_string).unwrap_or_default()
                ));
            } else {
                self.statements_dropped += 1;
            }
        }
    }

    fn touch(&mut self, name: &str) {
        if !self.current_tables.insert(name.to_string()) {
            return;
        }
        if let Some(n) = self.tables.get_mut(name) {
            *n += 1;
        } else if self.tables.len() < TABLES_MAX {
            self.tables.insert(name.to_string(), 1);
        } else {
            self.tables_dropped += 1;
        }
    }

    /// `wrote to shop.orders (4 transaction(s)), ...; statements: ...; 4 of 4 found in 1
    /// binlog file(s)`.
    pub fn summary(&self, errant_count: u64, complete: bool) -> String {
        let mut parts = Vec::new();
        if !self.tables.is_empty() {
            let mut tables: Vec<(&String, &u64)> = self.tables.iter().collect();
            tables.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let mut shown: Vec<String> = tables
                .iter()
                .take(TABLES_SHOWN_MAX)
                .map(|(name, n)| format!("{name} ({n} transaction(s))"))
                .collect();
            let more = tables.len().saturating_sub(TABLES_SHOWN_MAX) as u64 + self.tables_dropped;
            if more > 0 {
                shown.push(format!("{more} more table(s)"));
            }
            parts.push(format!("their rows changed {}", shown.join(", ")));
        }
        if !self.statements.is_empty() {
            let mut shown = self.statements.join(" | ");
            if self.statements_dropped > 0 {
                shown.push_str(&format!(" and {} more statement(s)", self.statements_dropped));
            }
            parts.push(format!("statements: {shown}"));
        }
        if parts.is_empty() {
            parts.push("no table changes found for them".to_string());
        }
        let coverage = if self.found >= errant_count {
            format!("all {errant_count} found in the binlog")
        } else if complete {
            format!(
                "{} of {errant_count} found: the binlog files holding the rest were purged",
                self.found
            )
        } else {
            format!(
                "{} of {errant_count} found in the newest {} binlog file(s) read ({} events; the scan stops at its bound)",
                self.found, self.files, self.events
            )
        };
        format!("{} ({coverage})", parts.join("; "))
    }
}

/// `statement` with every string literal after a word `IDENTIFIED` or one ending in
/// `PASSWORD` (`PASSWORD`, `MASTER_PASSWORD`, ...) shown as `'<hidden>'`: MariaDB's binlog
/// holds `CREATE USER`, `ALTER USER` and `GRANT ... IDENTIFIED BY 'password'` as written, and
/// a summary goes to the audit log. Identifiers and literals before the keyword stay.
pub fn hide_secret_literals(statement: &str) -> String {
    let mut shown = String::with_capacity(statement.len());
    let mut hiding = false;
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                // To the closing quote: backslash escapes (not in identifiers), doubled quotes.
                let mut quoted = String::from(c);
                while let Some(next) = chars.next() {
                    quoted.push(next);
                    if next == '\\' && c != '`' {
                        if let Some(escaped) = chars.next() {
                            quoted.push(escaped);
                        }
                    } else if next == c {
                        if chars.peek() == Some(&c) {
                            quoted.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                if hiding && c != '`' {
                    shown.push(c);
                    shown.push_str("<hidden>");
                    shown.push(c);
                } else {
                    shown.push_str(&quoted);
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if !(next.is_ascii_alphanumeric() || next == '_') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                let upper = word.to_ascii_uppercase();
                if upper == "IDENTIFIED" || upper.ends_with("PASSWORD") {
                    hiding = true;
                }
                shown.push_str(&word);
            }
            other => shown.push(other),
        }
    }
    shown
}

/// `use `shop`; CREATE TABLE t (...)` -> (`shop`, `CREATE TABLE t (...)`).
fn split_use(statement: &str) -> (String, &str) {
    if statement.len() >= 4
        && statement.is_char_boundary(4)
        && statement[..4].eq_ignore_ascii_case("use ")
        && let Some((schema, rest)) = statement[4..].split_once(';')
    {
        return (unquote(schema.trim()), rest.trim_start());
    }
    (String::new(), statement)
}

fn unquote(name: &str) -> String {
    name.split('.')
        .map(|part| part.trim().trim_matches('`').replace("``", "`"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The table a single-table `INSERT`/`REPLACE`/`UPDATE`/`DELETE` changes (as written, quotes
/// removed), or `None` for anything else.
fn dml_table(statement: &str) -> Option<String> {
    let mut words = statement.split_whitespace();
    let verb = words.next()?.to_ascii_uppercase();
    let skip: &[&str] = match verb.as_str() {
        "INSERT" | "REPLACE" => &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
        "UPDATE" => &["LOW_PRIORITY", "IGNORE"],
        "DELETE" => &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"],
        _ => return None,
    };
    let table = words.find(|w| !skip.contains(&w.to_ascii_uppercase().as_str()))?;
    // `orders(id)` or `orders` followed by a column list or SET.
    let table = table.split('(').next().unwrap_or_default();
    let name = unquote(table);
    (!name.is_empty() && !name.starts_with('/')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::gtid::MariaState;

    #[test]
    fn errant_transactions_name_their_tables_and_statements() {
        // The new primary has 0-1-1..0-1-2; the old one wrote 0-1-3..0-1-6 after the cut.
        let reference = Position::Mariadb(MariaState::parse("0-1-2").expect("p"));
        let mut scan = ErrantScan::new(&reference);
        scan.next_file();
        for (kind, info) in [
            ("Format_desc", "Server ver: 10.11.6-MariaDB, Binlog ver: 4"),
            ("Gtid_list", "[]"),
            ("Gtid", "BEGIN GTID 0-1-2"),
            ("Table_map", "table_id: 33 (shop.orders)"),
            ("Write_rows_v1", "table_id: 33 flags: STMT_END_F"),
            ("Xid", "COMMIT /* xid=10 */"),
            ("Gtid", "BEGIN GTID 0-1-3"),
            ("Table_map", "table_id: 33 (shop.orders)"),
            ("Write_rows_v1", "table_id: 33"),
            ("Table_map", "table_id: 33 (shop.orders)"),
            ("Table_map", "table_id: 34 (shop.order_items)"),
            ("Xid", "COMMIT /* xid=11 */"),
            ("Gtid", "BEGIN GTID 0-1-4 cid=12"),
            ("Table_map", "table_id: 33 (shop.orders)"),
            ("Xid", "COMMIT /* xid=12 */"),
            ("Gtid", "GTID 0-1-5"),
            ("Query", "use `shop`; ALTER TABLE orders ADD COLUMN note text"),
            // MIXED / statement-based logging of row changes.
            ("Gtid", "BEGIN GTID 0-1-6"),
            ("Query", "BEGIN"),
            ("Query", "use `shop`; INSERT INTO shop.orders (id) VALUES (7)"),
            ("Query", "use `shop`; UPDATE `customers` SET name = 'x'"),
            ("Query", "COMMIT"),
        ] {
            scan.feed(kind, info);
        }
        assert_eq!(scan.found, 4);
        assert_eq!(scan.tables.get("shop.orders"), Some(&3), "counted once per transaction");
        assert_eq!(scan.tables.get("shop.order_items"), Some(&1));
        assert_eq!(
            scan.summary(4, true),
            "their rows changed shop.orders (3 transaction(s)), shop.customers (1 transaction(s)), \
             shop.order_items (1 transaction(s)); statements: 0-1-5 ALTER TABLE orders ADD COLUMN note text \
             (all 4 found in the binlog)"
        );
        assert!(
            scan.summary(6, true)
                .contains("4 of 6 found: the binlog files holding the rest were purged")
        );
        assert!(
            scan.summary(6, false)
                .contains("4 of 6 found in the newest 1 binlog file(s)")
        );
    }

    #[test]
    fn passwords_in_account_statements_are_hidden() {
        // As MariaDB 10.11 writes them in its binlog.
        for (logged, shown) in [
            (
                "CREATE USER 'u1'@'%' IDENTIFIED BY 'plainpw1'",
                "CREATE USER 'u1'@'%' IDENTIFIED BY '<hidden>'",
            ),
            (
                "ALTER USER 'u1'@'%' IDENTIFIED BY 'it''s \\' x'",
                "ALTER USER 'u1'@'%' IDENTIFIED BY '<hidden>'",
            ),
            (
                "GRANT SELECT ON *.* TO 'u2'@'%' IDENTIFIED BY \"pw4\", 'u3'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('pw5')",
                "GRANT SELECT ON *.* TO 'u2'@'%' IDENTIFIED BY \"<hidden>\", '<hidden>'@'<hidden>' IDENTIFIED VIA ed25519 USING PASSWORD('<hidden>')",
            ),
            (
                "SET PASSWORD FOR 'u1'@'%'='*D1CE18AFDC8104A3853E0176BEC20E21B62976F7'",
                "SET PASSWORD FOR '<hidden>'@'<hidden>'='<hidden>'",
            ),
            (
                "CREATE TABLE `identified` (c text DEFAULT 'kept')",
                "CREATE TABLE `identified` (c text DEFAULT 'kept')",
            ),
        ] {
            assert_eq!(hide_secret_literals(logged), shown);
        }
        let reference = Position::Mariadb(MariaState::default());
        let mut scan = ErrantScan::new(&reference);
        scan.feed("Gtid", "GTID 0-1-1");
        scan.feed("Query", "CREATE USER 'shop'@'%' IDENTIFIED BY 'shop-s3cret'");
        assert!(
            !scan.summary(1, true).contains("shop-s3cret"),
            "{}",
            scan.summary(1, true)
        );
    }

    #[test]
    fn long_statements_are_cut_and_nothing_found_is_said() {
        let reference = Position::Mariadb(MariaState::parse("0-1-9").expect("p"));
        let mut scan = ErrantScan::new(&reference);
        scan.next_file();
        scan.feed("Gtid", "BEGIN GTID 0-1-5");
        scan.feed("Table_map", "table_id: 1 (shop.orders)");
        assert_eq!(scan.found, 0, "0-1-5 is not errant");
        assert_eq!(
            scan.summary(1, true),
            "no table changes found for them (0 of 1 found: the binlog files holding the rest were purged)"
        );
        let reference = Position::Mariadb(MariaState::default());
        let mut scan = ErrantScan::new(&reference);
        scan.feed("Gtid", "GTID 0-1-1");
        scan.feed(
            "Query",
            &format!("use `x`; CREATE TABLE t (c text DEFAULT '{}')", "é".repeat(100)),
        );
        assert!(scan.statements[0].ends_with("..."), "{:?}", scan.statements);
        assert_eq!(split_use("BEGIN"), (String::new(), "BEGIN"));
        assert_eq!(
            dml_table("INSERT IGNORE INTO `a`.`b`(x) VALUES (1)").as_deref(),
            Some("a.b")
        );
        assert_eq!(dml_table("DELETE QUICK FROM t WHERE 1").as_deref(), Some("t"));
        assert_eq!(dml_table("CREATE TABLE t (x int)"), None);
    }
}
