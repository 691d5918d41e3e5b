use super::*;

const EXAMPLE: &str = include_str!("../../../../docs/examples/switchyard.toml");

#[test]
fn the_example_validates() {
    let config = parse("switchyard.toml", EXAMPLE).expect("the example is valid");
    assert_eq!(config.engine.regions.len(), 2);
    assert_eq!(config.engine.policy, Policy::ActivePassive);
    assert_eq!(config.steps.len(), 5);
    assert_eq!(config.quorum.effective_quorum(), 2);
    assert_eq!(config.checks().len(), 5);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

const MINIMAL: &str = r#"
[[regions]]
name = "a"
priority = 1

[[regions]]
name = "b"
priority = 2

[[checks]]
name = "a-app"
region = "a"
kind = { type = "tcp", address = "127.0.0.1:1" }

[[checks]]
name = "b-app"
region = "b"
kind = { type = "tcp", address = "127.0.0.1:2" }
"#;

#[test]
fn minimal_config_uses_defaults_and_warns() {
    let config = parse("m.toml", MINIMAL).expect("valid");
    assert_eq!(config.engine.min_hold_ms, 60_000);
    assert_eq!(config.file.controller.listen.port(), 7400);
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.message.clone()).collect();
    assert!(warnings.iter().any(|w| w.contains("single vote")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("replication lag")), "{warnings:?}");
}

fn problems(text: &str) -> Vec<Problem> {
    match parse("bad.toml", text) {
        Ok(_) => panic!("expected problems"),
        Err(error) => error.problems,
    }
}

#[test]
fn semantic_mistakes_are_all_reported_with_lines() {
    let text = format!(
        "{MINIMAL}\n[quorum]\nvantages = [\"controller\"]\nquorum = 3\n\n[[regions]]\nname = \"a\"\npriority = 1\n\n[[runbook]]\nname = \"x\"\nkind = \"command\"\nwhen_to = [\"mars\"]\n\n[[runbook]]\nname = \"x\"\nkind = \"teleport\"\n"
    );
    let found = problems(&text);
    let text_of = |needle: &str| {
        found
            .iter()
            .find(|p| p.message.contains(needle))
            .unwrap_or_else(|| panic!("no problem containing '{needle}' in {found:#?}"))
    };
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).expect("in text") + 1;
    let quorum = text_of("quorum = 3");
    assert_eq!(quorum.line, line_of("quorum = 3"), "{quorum:?}");
    assert!(quorum.fix.contains("1..=1"));
    let duplicate = text_of("region 'a' is defined twice");
    assert_eq!(duplicate.line, line_of("[quorum]") + 5);
    let mars = text_of("unknown region 'mars'");
    assert_eq!(mars.line, line_of("mars"));
    assert!(mars.fix.contains("a, b"));
    text_of("has no program");
    text_of("step 'x' is defined twice");
    let kind = text_of("unknown kind 'teleport'");
    assert_eq!(kind.line, line_of("teleport"));
    assert!(kind.fix.contains("dns_health"));
}

#[test]
fn priority_ties_and_missing_checks_are_reported() {
    let text = r#"
[[regions]]
name = "a"
priority = 1

[[regions]]
name = "b"
priority = 1
"#;
    let found = problems(text);
    let tie = found
        .iter()
        .find(|p| p.message.contains("both have priority 1"))
        .expect("tie");
    assert_eq!((tie.line, tie.column), (8, 12));
    assert!(found.iter().any(|p| p.message.contains("region 'a' has no checks")));
}

#[test]
fn type_errors_point_at_the_value_in_each_section() {
    let text = r#"
[policy]
min_hold_ms = "soon"

[[regions]]
name = "a"
priority = "high"
"#;
    let found = problems(text);
    assert!(found.iter().any(|p| p.line == 3), "{found:#?}");
    assert!(found.iter().any(|p| p.line == 7), "{found:#?}");
}

#[test]
fn unknown_keys_and_syntax_errors_have_positions() {
    let found = problems("[controler]\nlisten = 1\n");
    assert_eq!(found[0].line, 1, "{found:#?}");
    assert!(found[0].message.contains("unknown field"), "{found:#?}");
    let found = problems("[policy\n");
    assert_eq!(found[0].line, 1, "{found:#?}");
}

#[test]
fn dns_steps_need_a_dns_section_and_checks_a_known_region() {
    let text = format!(
        "{MINIMAL}\n[[checks]]\nname = \"c-app\"\nregion = \"c\"\nkind = {{ type = \"tcp\", address = \"127.0.0.1:3\" }}\n\n[[runbook]]\nname = \"dns\"\nkind = \"dns_health\"\n"
    );
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.message.contains("no [dns] section")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|p| p.message.contains("unknown region 'c'")),
        "{found:#?}"
    );
}

#[test]
fn display_names_file_line_and_fix() {
    let error = parse("x.toml", "[policy]\nmode = \"sideways\"\n").expect_err("invalid");
    let text = error.to_string();
    assert!(
        text.contains("x.toml:2:8: error: unknown policy mode 'sideways'"),
        "{text}"
    );
    assert!(text.contains("fix: use \"active-passive\""), "{text}");
}

#[test]
fn range_mistakes_point_at_their_key_and_missing_sections_at_line_zero() {
    let text = format!("{MINIMAL}\n[controller]\nlisten = \"127.0.0.1:7400\"\n  tick_ms = 0\n");
    let found = problems(&text);
    let tick = found
        .iter()
        .find(|p| p.message.contains("tick_ms = 0"))
        .expect("tick_ms reported");
    let line = text.lines().position(|l| l.contains("tick_ms = 0")).expect("in text") + 1;
    assert_eq!((tick.line, tick.column), (line, 3));
    let found = problems("");
    let none = found
        .iter()
        .find(|p| p.message.contains("no regions"))
        .expect("no regions");
    assert_eq!(none.line, 0);
    let error = parse("e.toml", "").expect_err("invalid");
    assert!(
        error.to_string().contains("e.toml: error: no regions configured"),
        "{error}"
    );
}

const WITH_PATHS: &str = r#"
[quorum]
vantages = ["controller", "agent-1", "agent-2"]

[[regions]]
name = "a"
priority = 1

[[regions]]
name = "b"
priority = 2

[[checks]]
name = "a-app"
region = "a"
kind = { type = "http", url = "http://127.0.0.1:18000/health" }

[[checks]]
name = "b-store"
region = "b"
kind = { type = "dynamodb", endpoint = "http://127.0.0.1:28000", table = "t", lag_sources = ["http://127.0.0.1:18000"] }

[vantage_paths.agent-1]
"127.0.0.1:18000" = "127.0.0.1:19000"
"127.0.0.1:28000" = "127.0.0.1:29000"

[vantage_paths.controller]
"127.0.0.1:28000" = "10.0.0.2:8000"
"#;

#[test]
fn vantage_paths_map_each_vantage_points_checks() {
    let config = parse("p.toml", WITH_PATHS).expect("valid");
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.message.clone()).collect();
    // Region b's dynamodb check reads lag through lag_sources; region a has none.
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("region 'a'") && w.contains("replication lag")),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("region 'b'")), "{warnings:?}");
    assert!(
        !warnings.iter().any(|w| w.contains("no check connects")),
        "{warnings:?}"
    );
    let agent = config.checks_for("agent-1");
    assert_eq!(
        serde_json::to_value(&agent[0].kind).expect("json")["url"],
        "http://127.0.0.1:19000/health"
    );
    let store = serde_json::to_value(&agent[1].kind).expect("json");
    assert_eq!(store["endpoint"], "http://127.0.0.1:29000");
    assert_eq!(store["lag_sources"][0], "http://127.0.0.1:19000");
    let own = config.checks_for("controller");
    assert_eq!(own[0], config.checks()[0], "unmapped targets are unchanged");
    assert_eq!(
        serde_json::to_value(&own[1].kind).expect("json")["endpoint"],
        "http://10.0.0.2:8000"
    );
    assert_eq!(config.checks_for("agent-2"), config.checks(), "no map, no change");
}

#[test]
fn vantage_path_mistakes_point_at_their_line() {
    let text = format!(
        "{WITH_PATHS}\n[vantage_paths.agent-9]\n\"127.0.0.1:18000\" = \"127.0.0.1:19001\"\n\n[vantage_paths.agent-2]\n\"127.0.0.1\" = \"127.0.0.1:19000\"\n\"127.0.0.1:28000\" = \"http://127.0.0.1:29000\"\n"
    );
    let found = problems(&text);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).expect("in the text") + 1;
    let find = |needle: &str| {
        found
            .iter()
            .find(|p| p.message.contains(needle))
            .unwrap_or_else(|| panic!("no problem mentions {needle}: {found:?}"))
    };
    let unknown = find("[vantage_paths.agent-9] names an unknown vantage point");
    assert_eq!(unknown.line, line_of("[vantage_paths.agent-9]"));
    assert!(unknown.fix.contains("controller, agent-1, agent-2"), "{}", unknown.fix);
    let key = find("key: address '127.0.0.1' is not host:port");
    assert_eq!(key.line, line_of("\"127.0.0.1\" ="));
    let value = find("value: address 'http://127.0.0.1:29000'");
    assert_eq!(value.line, line_of("\"http://127.0.0.1:29000\""));
    assert_eq!(found.len(), 3, "{found:?}");
}

#[test]
fn vantage_path_to_an_address_no_check_uses_is_a_warning() {
    let text = format!("{WITH_PATHS}\n[vantage_paths.agent-2]\n\"127.0.0.1:18001\" = \"127.0.0.1:19000\"\n");
    let config = parse("p.toml", &text).expect("valid");
    let warning = config
        .warnings
        .iter()
        .find(|w| w.message.contains("no check connects"))
        .expect("a warning");
    assert_eq!(
        warning.line,
        text.lines()
            .position(|l| l.contains("127.0.0.1:18001"))
            .expect("in text")
            + 1
    );
}
