//! `switchyard runbook show`: the failover and failback procedure of a validated configuration
//! as a document for people (the DR guides' "document every step"), in Markdown or HTML.
//!
//! The document is built once as blocks (headings, paragraphs, lists, tables) from the same
//! `Config` the controller runs with — its engine timings, quorum, checks and steps — and then
//! rendered; nothing in it is written by hand per deployment.

use std::fmt::Write as _;

use crate::config::{Config, Step, StepKind};
use crate::engine::Policy;
use crate::runbook::STEP_BACKOFF_MS_MAX;
use common::text::escape_html as escape;

/// One block of the document. Text may hold `code` and **strong** spans (Markdown syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Heading(u8, String),
    Paragraph(String),
    List {
        ordered: bool,
        items: Vec<String>,
    },
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
}

fn ms(value: u64) -> String {
    if value >= 1_000 && value.is_multiple_of(1_000) {
        format!("{} s", value / 1_000)
    } else {
        format!("{value} ms")
    }
}

fn code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'"))
}

/// What one step does, in words.
fn describe_step(step: &Step, config: &Config) -> String {
    match step.kind {
        StepKind::DnsHealth => format!(
            "push every region's health to `switchyard dns` ({}): its failover records answer with the new region",
            config
                .file
                .dns
                .as_ref()
                .map_or_else(|| "no [dns] section".to_string(), |dns| code(dns.admin_url.get_ref()))
        ),
        StepKind::DnsTxt => format!(
            "set the TXT record {} to the new active region",
            config
                .file
                .dns
                .as_ref()
                .and_then(|dns| dns.txt_name.clone())
                .map_or_else(|| "(no txt_name)".to_string(), |name| code(&name))
        ),
        StepKind::Pointer => {
            "publish the active-region pointer (`GET /v1/active-region` and its stream): applications, \
                              `pointer watch` and `lock run` follow it"
                .to_string()
        }
        StepKind::Command => {
            let mut line = step.program.clone().unwrap_or_default();
            for arg in &step.args {
                line.push(' ');
                line.push_str(arg);
            }
            format!(
                "run {} (no shell) with `SWITCHYARD_GENERATION`, `SWITCHYARD_FROM`, `SWITCHYARD_TO`, `SWITCHYARD_SERVING` \
                 and `SWITCHYARD_KIND` in its environment; a non-zero exit fails the step",
                code(&line)
            )
        }
        StepKind::Webhook => format!(
            "POST the transition (generation, kind, from, to, serving, reason) as JSON to {}",
            code(step.url.as_deref().unwrap_or(""))
        ),
        StepKind::Provider if step.action.as_ref().is_some_and(|a| a.media().is_some()) => {
            let on_failover = match step.action.as_ref().and_then(|a| a.media()).map(|m| m.on_failover) {
                Some(providers::media::OnFailover::BestEffort) | None => {
                    "on a failover a failed copy is reported and the runbook goes on (`on_failover = \"best_effort\"`: \
                     the old region is likely down)"
                }
                Some(providers::media::OnFailover::Required) => {
                    "on a failover too, a failed copy stops the runbook before the steps after it, and the \
                     controller retries it (`on_failover = \"required\"`)"
                }
                Some(providers::media::OnFailover::Skip) => {
                    "on a failover nothing is copied; failbacks copy (`on_failover = \"skip\"`)"
                }
            };
            format!(
                "copy the media (product images, uploads) the new active region lacks from the region that was \
                 active (`media_sync`; rsync never overwrites a newer file, nothing is deleted unless `delete = true`), \
                 and verify the copy by measuring the lag again; {on_failover}"
            )
        }
        StepKind::Provider => format!(
            "provider step {}: re-reads the current state, writes only over what the controller wrote (else \
             fenced), reads it back (see the README's section on {})",
            code(&config_kind(step, config)),
            code(&config_kind(step, config))
        ),
    }
}

/// The `kind =` a step was written with.
fn config_kind(step: &Step, config: &Config) -> String {
    config
        .file
        .runbook
        .iter()
        .find(|section| section.name.get_ref() == &step.name)
        .map_or_else(|| "provider".to_string(), |section| section.kind.get_ref().clone())
}

fn probe(kind: &health::ProbeKind) -> String {
    let value = serde_json::to_value(kind).unwrap_or_default();
    let kind_name = value["type"].as_str().unwrap_or("?").to_string();
    // Only what locates the target: never credentials.
    let target: Vec<String> = ["url", "address", "server", "name", "endpoint", "table"]
        .iter()
        .filter_map(|key| {
            value
                .get(*key)
                .and_then(|v| v.as_str())
                .map(|v| format!("{key} {}", code(v)))
        })
        .collect();
    if target.is_empty() {
        kind_name
    } else {
        format!("{kind_name}: {}", target.join(", "))
    }
}

/// The time a check takes to call a target whose connections are refused down, after its last
/// good probe: up to one interval to the first failure, then `fall - 1` fast intervals.
pub fn check_down_ms(check: &health::CheckSpec) -> u64 {
    check
        .interval_ms
        .saturating_add(u64::from(check.fall.saturating_sub(1)).saturating_mul(check.fast_interval_ms))
}

fn retries(step: &Step) -> String {
    if step.retries == 0 {
        format!("timeout {}, no retry", ms(step.timeout_ms))
    } else {
        format!(
            "timeout {} per attempt, {} retr{} after {} doubling (at most {})",
            ms(step.timeout_ms),
            step.retries,
            if step.retries == 1 { "y" } else { "ies" },
            ms(step.backoff_ms),
            ms(STEP_BACKOFF_MS_MAX)
        )
    }
}

/// The steps that run for a move to `to`, numbered, with their limits.
fn steps_for(config: &Config, to: &str) -> Vec<String> {
    config
        .steps
        .iter()
        .filter(|step| {
            step.when_to
                .as_ref()
                .is_none_or(|regions| regions.iter().any(|r| r == to))
        })
        .map(|step| {
            format!(
                "**{}** — {}; {}.",
                step.name,
                describe_step(step, config),
                retries(step)
            )
        })
        .collect()
}

/// The document's blocks for `config`, read from `file`.
pub fn document(config: &Config, file: &str) -> Vec<Block> {
    let engine = &config.engine;
    let mut regions: Vec<_> = config.file.regions.iter().collect();
    regions.sort_by_key(|region| *region.priority.get_ref());
    let home = regions.first().map(|r| r.name.get_ref().clone()).unwrap_or_default();
    let checks = config.checks();
    let vantages = config.file.quorum.vantages.get_ref();
    let quorum = config
        .file
        .quorum
        .quorum
        .as_ref()
        .map_or(vantages.len() / 2 + 1, |q| *q.get_ref());
    let report_interval = config.file.quorum.report_interval_ms;
    let mut blocks = vec![
        Block::Heading(1, format!("Failover and failback runbook: {file}")),
        Block::Paragraph(format!(
            "Generated by `switchyard runbook show` from {} — the procedure exactly as the controller runs it with \
             this file: {}, {}, {}, {}. Policy **{}**. Regenerate it after \
             every change to the file.",
            code(file),
            common::text::counted(regions.len(), "region", "regions"),
            common::text::counted(checks.len(), "check", "checks"),
            common::text::counted(vantages.len(), "vantage point", "vantage points"),
            common::text::counted(config.steps.len(), "runbook step", "runbook steps"),
            match engine.policy {
                Policy::ActivePassive => "active-passive",
                Policy::ActiveActive => "active-active",
            }
        )),
        Block::Heading(2, "Regions".into()),
        Block::Table {
            header: vec![
                "region".into(),
                "priority".into(),
                "role".into(),
                "checks".into(),
                "rule".into(),
                "DNS targets".into(),
            ],
            rows: regions
                .iter()
                .map(|region| {
                    let name = region.name.get_ref();
                    vec![
                        code(name),
                        region.priority.get_ref().to_string(),
                        if *name == home {
                            "home: serves when healthy; failback returns here".into()
                        } else {
                            "standby".into()
                        },
                        checks
                            .iter()
                            .filter(|check| &check.region == name)
                            .map(|check| code(&check.name))
                            .collect::<Vec<_>>()
                            .join(", "),
                        match region.rule {
                            health::RegionRule::All => "all checks up".into(),
                            health::RegionRule::Any => "any check up".into(),
                            health::RegionRule::AtLeast(n) => format!("at least {n} checks up"),
                        },
                        region.targets().join(", "),
                    ]
                })
                .collect(),
        },
        Block::Heading(2, "How a region is judged".into()),
        Block::List {
            ordered: false,
            items: vec![
                format!(
                    "Vantage points: {}. A region is **down** when {quorum} of {} see it down (a quorum), **up** when \
                     {quorum} see it up; otherwise unknown, which never counts as down.",
                    vantages.iter().map(|v| code(v)).collect::<Vec<_>>().join(", "),
                    vantages.len()
                ),
                format!(
                    "Agents report every {}; a report older than {} counts as unknown.",
                    ms(report_interval),
                    ms(config.file.quorum.report_stale_ms)
                ),
                format!(
                    "A down verdict must last {} before the region counts as down (`down_confirm_ms`); the engine \
                     ticks every {}.",
                    ms(engine.down_confirm_ms),
                    ms(config.file.controller.tick_ms)
                ),
            ],
        },
        Block::Table {
            header: vec![
                "check".into(),
                "region".into(),
                "probe".into(),
                "interval / fast / timeout".into(),
                "rise / fall".into(),
                "refused → down in about".into(),
            ],
            rows: checks
                .iter()
                .map(|check| {
                    vec![
                        code(&check.name),
                        code(&check.region),
                        probe(&check.kind),
                        format!(
                            "{} / {} / {}",
                            ms(check.interval_ms),
                            ms(check.fast_interval_ms),
                            ms(check.timeout_ms)
                        ),
                        format!("{} / {}", check.rise, check.fall),
                        ms(check_down_ms(check)
                            .saturating_add(report_interval)
                            .saturating_add(engine.down_confirm_ms)),
                    ]
                })
                .collect(),
        },
        Block::Paragraph(
            "The last column is the check's time to call refused connections down plus one report and \
             `down_confirm_ms`; probes that hang add up to their timeout each."
                .into(),
        ),
    ];

    blocks.push(Block::Heading(2, "Failover".into()));
    blocks.push(Block::List {
        ordered: false,
        items: match engine.policy {
            Policy::ActivePassive => vec![
                "**Trigger:** the active region is down (above). Suspect or unknown regions are never acted on.".into(),
                "**Target:** the healthy region with the lowest priority number, else a recovering one.".into(),
                "**Static stability:** if every region looks down, nothing moves; the last placement stays and an \
                 alert goes out."
                    .into(),
                format!(
                    "**Limit:** at most {} automatic transitions per hour (the first is never delayed); past it \
                     automation stops until `switchyard acknowledge`.",
                    engine.failovers_per_hour_max
                ),
                "**By hand:** `switchyard failover` (to the best other region), `switchyard switchover --to REGION` \
                 (planned; REGION becomes the preferred region), `switchyard pause` / `resume`."
                    .into(),
            ],
            Policy::ActiveActive => vec![
                "**Trigger:** a serving region is down: it is dropped from the serving set; the region with the \
                 lowest priority number among the rest takes writes."
                    .into(),
                "**Static stability:** if every region looks down, nothing moves.".into(),
                format!(
                    "**Limit:** at most {} automatic transitions per hour; then `switchyard acknowledge`.",
                    engine.failovers_per_hour_max
                ),
            ],
        },
    });
    blocks.push(Block::Paragraph(
        "Each attempt takes a new **generation**, a fencing token every step carries; a receiver that has seen a \
         newer one refuses (409) and the runbook stops (*fenced*) and is never retried with the old generation."
            .into(),
    ));
    let mut pairs = Vec::new();
    for from in &regions {
        for to in &regions {
            if from.name.get_ref() != to.name.get_ref() {
                pairs.push((from.name.get_ref().clone(), to.name.get_ref().clone()));
            }
        }
    }
    for (from, to) in &pairs {
        let label = if *to == home { "failback" } else { "failover" };
        blocks.push(Block::Heading(3, format!("{from} → {to} ({label})")));
        let steps = steps_for(config, to);
        if steps.is_empty() {
            blocks.push(Block::Paragraph(
                "No step runs for this move: nothing outside the controller changes. Add `[[runbook]]` steps.".into(),
            ));
        } else {
            blocks.push(Block::List {
                ordered: true,
                items: steps,
            });
        }
    }
    let roll_forward = match &config.file.controller.ha {
        // With a group, the runbook under way is in etcd with the shared state.
        Some(ha) => format!(
            "The controllers run as a group (`[controller.ha]`, etcd prefix {}): the leader records each step in \
             etcd, and when it dies mid-runbook the member that leads next (within the lease, {}) rolls it forward \
             from there, never applying a step twice.",
            code(&ha.prefix),
            ms(ha.lease_ms)
        ),
        None => format!(
            "A controller that dies mid-runbook rolls it forward from the audit log ({}) when it restarts.",
            code(&config.file.controller.audit_log.display().to_string())
        ),
    };
    blocks.push(Block::Paragraph(format!(
        "Steps run in this order; a failed step stops the runbook, which is retried after {} (doubling) with a new \
         generation. `status` shows the active region as moved only when every step succeeded. {roll_forward}",
        ms(engine.runbook_retry_ms),
    )));

    blocks.push(Block::Heading(2, "Failback".into()));
    let mut failback = Vec::new();
    if engine.auto_failback && engine.policy == Policy::ActivePassive {
        failback.push(format!(
            "Automatic, to the preferred region ({}), once all of these hold:",
            code(&home)
        ));
    } else if engine.policy == Policy::ActiveActive {
        failback.push("A region that is back is added to the serving set once all of these hold:".into());
    } else {
        failback.push(
            "Not automatic (`auto_failback = false`): run `switchyard failback` once these hold (it refuses until \
             then):"
                .into(),
        );
    }
    failback.push(format!(
        "it has been healthy for {} (`stability_window_ms`);",
        ms(engine.stability_window_ms)
    ));
    failback.push(match engine.failback_lag_max_ms {
        Some(lag) => format!(
            "its replication lag is at most {} (`failback_lag_max_ms`; readings older than {} count as unknown);",
            ms(lag),
            ms(engine.lag_stale_ms)
        ),
        None => "replication lag is not checked (`failback_lag_check = false`);".into(),
    });
    if let Some(objects) = engine.failback_media_objects_max {
        failback.push(format!(
            "it lacks at most {objects} media objects of the active region's (`failback_media_objects_max`, \
             measured by the media_sync steps; measurements older than {} count as unknown);",
            ms(engine.media_stale_ms)
        ));
    }
    failback.push(format!(
        "{} have passed since the last transition (`min_hold_ms`).",
        ms(engine.min_hold_ms)
    ));
    let intro = failback.remove(0);
    blocks.push(Block::Paragraph(intro));
    blocks.push(Block::List {
        ordered: false,
        items: failback,
    });
    blocks.push(Block::Paragraph(
        "The steps are those of the move back listed above. `switchyard status` says which condition failback waits \
         for."
            .into(),
    ));
    blocks.push(Block::Heading(2, "Checking by hand".into()));
    blocks.push(Block::List {
        ordered: false,
        items: vec![
            "`switchyard status --controller URL`: regions, votes, lag, generation, and why the controller waits."
                .into(),
            "`switchyard drill region-outage` / `failback` against a lab or staging: measured RTO and RPO.".into(),
            format!(
                "The audit log {} records every verdict, decision, step attempt and alert.",
                code(&config.file.controller.audit_log.display().to_string())
            ),
        ],
    });
    blocks
}

fn cell_markdown(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The document as Markdown (CommonMark with GitHub tables).
pub fn markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(out, "{} {text}\n", "#".repeat(usize::from(*level)));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "{text}\n");
            }
            Block::List { ordered, items } => {
                for (index, item) in items.iter().enumerate() {
                    if *ordered {
                        let _ = writeln!(out, "{}. {item}", index + 1);
                    } else {
                        let _ = writeln!(out, "- {item}");
                    }
                }
                out.push('\n');
            }
            Block::Table { header, rows } => {
                let _ = writeln!(
                    out,
                    "| {} |",
                    header.iter().map(|h| cell_markdown(h)).collect::<Vec<_>>().join(" | ")
                );
                let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                for row in rows {
                    let _ = writeln!(
                        out,
                        "| {} |",
                        row.iter().map(|c| cell_markdown(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                out.push('\n');
            }
        }
    }
    out
}

/// Escapes `text` and turns its `code` and **strong** spans into HTML.
fn inline_html(text: &str) -> String {
    let escaped = escape(text);
    let mut out = String::new();
    for (index, part) in escaped.split('`').enumerate() {
        if index % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            for (inner, piece) in part.split("**").enumerate() {
                if inner % 2 == 1 {
                    let _ = write!(out, "<strong>{piece}</strong>");
                } else {
                    out.push_str(piece);
                }
            }
        }
    }
    out
}

/// The document as one self-contained HTML page.
pub fn html(blocks: &[Block]) -> String {
    let title = blocks
        .iter()
        .find_map(|block| match block {
            Block::Heading(1, text) => Some(text.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "Runbook".into());
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; \
         text-align: left; vertical-align: top; }}\nth {{ background: #f3f3f3; }} code {{ background: #f3f3f3; padding: 0 .2rem; \
         overflow-wrap: anywhere; }}\n</style>\n</head>\n<body>\n",
        escape(&title)
    );
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(out, "<h{level}>{}</h{level}>", inline_html(text));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "<p>{}</p>", inline_html(text));
            }
            Block::List { ordered, items } => {
                let tag = if *ordered { "ol" } else { "ul" };
                let _ = writeln!(out, "<{tag}>");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", inline_html(item));
                }
                let _ = writeln!(out, "</{tag}>");
            }
            Block::Table { header, rows } => {
                out.push_str("<table>\n<thead><tr>");
                for cell in header {
                    let _ = write!(out, "<th>{}</th>", inline_html(cell));
                }
                out.push_str("</tr></thead>\n<tbody>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for cell in row {
                        let _ = write!(out, "<td>{}</td>", inline_html(cell));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = include_str!("../tests/data/runbook_doc.toml");

    fn blocks() -> Vec<Block> {
        let config = crate::config::parse("switchyard.toml", FILE).expect("valid config");
        document(&config, "switchyard.toml")
    }

    #[test]
    fn the_document_names_checks_quorum_timers_and_steps_per_move() {
        let text = markdown(&blocks());
        assert!(
            text.starts_with("# Failover and failback runbook: switchyard.toml\n"),
            "{text}"
        );
        assert!(text.contains("when 2 of 3 see it down"), "{text}");
        assert!(
            text.contains(
                "| `use1-app` | `us-east-1` | http: url `http://10.0.0.1/health` | 1 s / 250 ms / 500 ms | 2 / 3 |"
            ),
            "{text}"
        );
        // Five probes to go down: interval + 4 fast intervals + one report interval.
        assert!(text.contains("| 2 / 5 | 2500 ms |"), "{text}");
        assert!(text.contains("### us-east-1 → eu-west-1 (failover)"));
        assert!(text.contains("### eu-west-1 → us-east-1 (failback)"));
        let failover = text.split("### us-east-1 → eu-west-1").nth(1).expect("section");
        let failover = failover.split("###").next().expect("section");
        assert!(failover.contains("1. **pointer**"), "{failover}");
        assert!(
            failover.contains("2. **page-eu-team** — run `/usr/local/bin/page eu <team>`"),
            "{failover}"
        );
        assert!(failover.contains("no retry"), "{failover}");
        let failback = text.split("### eu-west-1 → us-east-1").nth(1).expect("section");
        assert!(
            !failback.split("##").next().unwrap_or("").contains("page-eu-team"),
            "when_to filters it out"
        );
        assert!(text.contains("healthy for 120 s"), "{text}");
        assert!(text.contains("at most 2 s (`failback_lag_max_ms`"), "{text}");
        assert!(text.contains("rolls it forward from the audit log"), "{text}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn with_a_group_the_next_leader_rolls_the_runbook_forward_from_etcd() {
        let grouped = FILE.replacen(
            "[controller]",
            "[controller.ha]\netcd = [\"http://127.0.0.1:2379\"]\nmember = \"a\"\n\n[controller]",
            1,
        );
        let config = crate::config::parse("switchyard.toml", &grouped).expect("valid config");
        let text = markdown(&document(&config, "switchyard.toml"));
        assert!(
            text.contains("the member that leads next (within the lease, 5 s) rolls it forward"),
            "{text}"
        );
        assert!(!text.contains("when it restarts"), "{text}");
    }

    #[test]
    fn html_escapes_and_keeps_the_structure() {
        let page = html(&blocks());
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<title>Failover and failback runbook: switchyard.toml</title>"));
        assert!(
            page.contains("<code>/usr/local/bin/page eu &lt;team&gt;</code>"),
            "{page}"
        );
        assert!(!page.contains("<team>"));
        assert!(page.contains("<ol>\n<li><strong>pointer</strong>"), "{page}");
        assert_eq!(page.matches("<table>").count(), 2);
    }

    #[test]
    fn inline_spans_and_table_cells() {
        assert_eq!(inline_html("a `b<c` **d**"), "a <code>b&lt;c</code> <strong>d</strong>");
        assert_eq!(cell_markdown("x|y"), "x\\|y");
        assert_eq!(ms(1500), "1500 ms");
        assert_eq!(ms(60_000), "60 s");
    }
}
