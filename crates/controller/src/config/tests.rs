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

const MINIMAL: &str = include_str!("../../tests/data/minimal.toml");

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

const WITH_PATHS: &str = include_str!("../../tests/data/with_paths.toml");

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

/// MINIMAL with three vantage points, so agent tokens have names to belong to.
fn with_agents(extra: &str) -> String {
    format!("{MINIMAL}\n[quorum]\nvantages = [\"controller\", \"agent-1\", \"agent-2\"]\n{extra}")
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("in text") + 1
}

fn problem_with<'a>(found: &'a [Problem], needle: &str) -> &'a Problem {
    found
        .iter()
        .find(|p| p.message.contains(needle))
        .unwrap_or_else(|| panic!("no problem containing '{needle}' in {found:#?}"))
}

#[test]
fn tokens_by_hash_and_by_file_resolve_to_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/agent-2.token"), "agent-2-token-0123456789\n").expect("write");
    let hash = TokenDigest::of("agent-1-token-0123456789").to_hex();
    let text = with_agents(&format!(
        "\n[[tokens]]\nname = \"agent-1\"\nrole = \"agent\"\ntoken_sha256 = \"{hash}\"\n\n[[tokens]]\nname = \"agent-2\"\nrole = \"agent\"\ntoken_file = \"secrets/agent-2.token\"\n\n[[tokens]]\nname = \"alice\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n",
        TokenDigest::of("operator-token-0123456789").to_hex()
    ));
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, &text).expect("write");
    let config = load(&path).expect("valid");
    let names: Vec<(&str, Role)> = config.credentials.iter().map(|c| (c.name.as_str(), c.role)).collect();
    assert_eq!(
        names,
        [
            ("agent-1", Role::Agent),
            ("agent-2", Role::Agent),
            ("alice", Role::Operator)
        ]
    );
    assert_eq!(
        config.credentials[0].digest,
        TokenDigest::of("agent-1-token-0123456789")
    );
    assert_eq!(
        config.credentials[1].digest,
        TokenDigest::of("agent-2-token-0123456789"),
        "the file's token, trimmed, found from the config's folder"
    );
}

#[test]
fn token_mistakes_point_at_their_line() {
    let hash = TokenDigest::of("agent-1-token-0123456789").to_hex();
    let text = with_agents(&format!(
        "\n[[tokens]]\nname = \"agent-9\"\nrole = \"agent\"\ntoken_sha256 = \"{hash}\"\n\n[[tokens]]\nname = \"controller\"\nrole = \"agent\"\ntoken_sha256 = \"{}\"\n\n[[tokens]]\nname = \"bob\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n\n[[tokens]]\nname = \"agent-1\"\nrole = \"agent\"\ntoken_sha256 = \"not-hex\"\n\n[[tokens]]\nname = \"agent-2\"\nrole = \"agent\"\ntoken_file = \"/nonexistent/agent-2.token\"\n\n[[tokens]]\nname = \"carol\"\nrole = \"read\"\n\n[[tokens]]\nname = \"copy\"\nrole = \"read\"\ntoken_sha256 = \"{hash}\"\n",
        TokenDigest::of("c-token-0123456789").to_hex(),
        TokenDigest::of("b-token-0123456789").to_hex(),
    ));
    let found = problems(&text);
    assert_eq!(
        problem_with(&found, "'agent-9' names a vantage point not in [quorum] vantages").line,
        line_of(&text, "agent-9")
    );
    problem_with(&found, "names the controller's own vantage point");
    let role = problem_with(&found, "unknown role 'admin'");
    assert_eq!(role.line, line_of(&text, "\"admin\""));
    assert!(role.fix.contains("agent, operator, read"), "{role:?}");
    assert_eq!(
        problem_with(&found, "token_sha256 is not 64 hexadecimal digits").line,
        line_of(&text, "not-hex")
    );
    let missing = problem_with(&found, "cannot read /nonexistent/agent-2.token");
    assert_eq!(missing.line, line_of(&text, "/nonexistent/agent-2.token"));
    problem_with(&found, "token 'carol' needs exactly one of token_sha256 and token_file");
    problem_with(&found, "token 'copy' is the same token as 'agent-9'");
}

#[test]
fn a_vantage_without_an_agent_token_is_warned_about() {
    let hash = TokenDigest::of("agent-1-token-0123456789").to_hex();
    let text = with_agents(&format!(
        "\n[[tokens]]\nname = \"agent-1\"\nrole = \"agent\"\ntoken_sha256 = \"{hash}\"\n"
    ));
    let config = parse("w.toml", &text).expect("valid");
    let warnings: Vec<&str> = config.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("vantage 'agent-2' has no agent token")),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("'agent-1' has no")), "{warnings:?}");
    assert!(
        !warnings.iter().any(|w| w.contains("'controller' has no")),
        "{warnings:?}"
    );
}

#[test]
fn every_url_is_parsed_with_its_position() {
    let text = format!(
        "{MINIMAL}\n[[checks]]\nname = \"a-web\"\nregion = \"a\"\nkind = {{ type = \"http\", url = \"http://:8080/health\" }}\n\n[[checks]]\nname = \"b-store\"\nregion = \"b\"\nkind = {{ type = \"dynamodb\", endpoint = \"http://127.0.0.1:99999\", table = \"t\" }}\n\n[dns]\nadmin_url = \"http://exa mple:5380\"\n\n[[runbook]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://hooks.example:0/x\"\n\n[[alerts]]\nkind = \"webhook\"\nurl = \"ftp://alerts.example/\"\n"
    );
    let found = problems(&text);
    let check = problem_with(&found, "'http://:8080/health' has no host");
    assert_eq!(check.line, line_of(&text, "http://:8080/health"), "the url's line");
    problem_with(&found, "port '99999' is not a number in 1..=65535");
    let admin = problem_with(&found, "[dns] admin_url: 'http://exa mple:5380' has spaces");
    assert_eq!(admin.line, line_of(&text, "exa mple"));
    assert!(admin.fix.contains("http://127.0.0.1:8053"), "{admin:?}");
    let hook = problem_with(&found, "webhook step 'hook': 'http://hooks.example:0/x': port '0'");
    assert_eq!(hook.line, line_of(&text, "hooks.example"));
    let alert = problem_with(&found, "alert url: 'ftp://alerts.example/' does not start with http://");
    assert_eq!(alert.line, line_of(&text, "ftp://"));
}

#[test]
fn every_duration_is_bounded_and_the_bound_is_named() {
    let huge = i64::MAX as u64; // the largest TOML integer
    let text = format!(
        "{MINIMAL}\n[controller]\ntick_ms = 5\n\n[policy]\nmin_hold_ms = {huge}\ndown_confirm_ms = {huge}\nstability_window_ms = {huge}\nlag_stale_ms = {huge}\nfailback_lag_max_ms = {huge}\nrunbook_retry_ms = {huge}\nstartup_grace_ms = {huge}\n\n[[runbook]]\nname = \"x\"\nkind = \"command\"\nprogram = \"true\"\ntimeout_ms = {huge}\nbackoff_ms = {huge}\n"
    );
    let found = problems(&text);
    let tick = problem_with(&found, "[controller] tick_ms = 5 is below the minimum of 10 ms");
    assert_eq!(tick.line, line_of(&text, "tick_ms = 5"));
    for key in [
        "min_hold_ms",
        "down_confirm_ms",
        "stability_window_ms",
        "lag_stale_ms",
        "failback_lag_max_ms",
    ] {
        let problem = problem_with(
            &found,
            &format!("[policy] {key} = {huge} is above the bound of 86400000 ms (1 day(s))"),
        );
        assert_eq!(problem.line, line_of(&text, &format!("{key} = ")), "{key}");
        assert!(problem.fix.contains("0..=86400000"), "{problem:?}");
    }
    problem_with(
        &found,
        "runbook_retry_ms = 9223372036854775807 is above the bound of 3600000 ms (1 h)",
    );
    problem_with(
        &found,
        "startup_grace_ms = 9223372036854775807 is above the bound of 3600000 ms",
    );
    problem_with(
        &found,
        "timeout_ms = 9223372036854775807 is out of range: the bound is 1..=600000 ms",
    );
    let backoff = problem_with(
        &found,
        "backoff_ms = 9223372036854775807 is above the bound of 60000 ms",
    );
    assert_eq!(backoff.line, line_of(&text, "backoff_ms"));
    let stale = problems(&format!("{MINIMAL}\n[quorum]\nreport_stale_ms = {huge}\n"));
    problem_with(
        &stale,
        "[quorum] report_stale_ms = 9223372036854775807 is above the bound of 3600000 ms",
    );
    let check = problems(&format!(
        "{MINIMAL}\n[[checks]]\nname = \"a-db\"\nregion = \"a\"\nkind = {{ type = \"redis\", address = \"127.0.0.1:6379\", max_replica_lag_ms = {huge} }}\n"
    ));
    problem_with(
        &check,
        "max_replica_lag_ms = 9223372036854775807 is above the bound of 86400000 ms",
    );
}

#[test]
fn relative_paths_resolve_from_the_config_files_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("etc");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("dns.token"), "dns-token-0123456789abcdef").expect("write");
    let text = format!(
        "{MINIMAL}\n[controller]\naudit_log = \"audit/controller.jsonl\"\n\n[[checks]]\nname = \"a-tls\"\nregion = \"a\"\nkind = {{ type = \"http\", url = \"https://a.example/health\", ca_file = \"ca.pem\" }}\n\n[dns]\nadmin_url = \"http://127.0.0.1:5380\"\ntoken_file = \"dns.token\"\n\n[[runbook]]\nname = \"hook\"\nkind = \"command\"\nprogram = \"./hooks/failover.sh\"\n\n[[runbook]]\nname = \"path\"\nkind = \"command\"\nprogram = \"sh\"\n\n[[runbook]]\nname = \"absolute\"\nkind = \"command\"\nprogram = \"/bin/true\"\n"
    );
    let path = folder.join("switchyard.toml");
    std::fs::write(&path, &text).expect("write");
    let config = load(&path).expect("valid");
    assert_eq!(config.file.controller.audit_log, folder.join("audit/controller.jsonl"));
    assert_eq!(config.dns_token.as_deref(), Some("dns-token-0123456789abcdef"));
    let programs: Vec<String> = config.steps.iter().filter_map(|s| s.program.clone()).collect();
    assert_eq!(
        programs,
        [
            folder.join("./hooks/failover.sh").display().to_string(),
            "sh".to_string(),
            "/bin/true".to_string()
        ]
    );
    let ca = config
        .checks()
        .into_iter()
        .find_map(|c| match c.kind {
            health::ProbeKind::Http { ca_file, .. } => ca_file,
            _ => None,
        })
        .expect("the check's ca_file");
    assert_eq!(ca, folder.join("ca.pem").display().to_string());
}

#[test]
fn database_promotion_steps_are_checked_with_lines_and_built() {
    let good = format!(
        "{MINIMAL}\n[[runbook]]\nname = \"orders-db\"\nkind = \"mysql_promote\"\ntimeout_ms = 30000\n\
         [runbook.mysql_promote]\nservers = {{ a = [\"10.0.1.5:3306\"], b = [\"10.1.1.5\"] }}\n\
         user = \"switchyard\"\nreplication_user = \"repl\"\n\n\
         [[runbook]]\nname = \"sessions\"\nkind = \"redis_promote\"\ntimeout_ms = 15000\n\
         [runbook.redis_promote]\nservers = {{ a = [\"10.0.1.6\"], b = [\"10.1.1.6:6380\"] }}\n"
    );
    let config = parse("db.toml", &good).expect("valid");
    let kinds: Vec<&str> = config
        .steps
        .iter()
        .filter_map(|s| s.action.as_ref().map(|a| a.kind()))
        .collect();
    assert_eq!(kinds, ["mysql_promote", "redis_promote"]);

    let bad = format!(
        "{MINIMAL}\n[[runbook]]\nname = \"orders-db\"\nkind = \"mysql_promote\"\n\
         [runbook.mysql_promote]\nservers = {{ a = [\"10.0.1.5:0\"] }}\nuser = \"switchyard\"\nreplication_user = \"repl\"\n\n\
         [[runbook]]\nname = \"orders-db-2\"\nkind = \"mysql_promote\"\ntimeout_ms = 9000\n\
         [runbook.mysql_promote]\nservers = {{ a = [\"10.0.1.9\"] }}\nuser = \"switchyard\"\nreplication_user = \"repl\"\n\n\
         [[runbook]]\nname = \"sessions\"\nkind = \"redis_promote\"\n"
    );
    let found = problems(&bad);
    let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).expect("in text") + 1;
    let port = found
        .iter()
        .find(|p| p.message.contains("port '0'"))
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(port.line, line_of("10.0.1.5:0"));
    let missing = found
        .iter()
        .find(|p| p.message.contains("no [runbook.redis_promote] table"))
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(missing.line, line_of("kind = \"redis_promote\""));
    let short = found
        .iter()
        .find(|p| p.message.contains("timeout_ms = 9000 is shorter"))
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(short.line, line_of("timeout_ms = 9000"));
    // promote_lag_max_ms (5000 by default) + STEP_OVERHEAD_MS + the relay-log drain.
    assert!(short.fix.contains("17000"), "{short:?}");
}

#[cfg(feature = "etcd")]
#[test]
fn a_member_token_must_be_a_listed_member_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("member.token"), "member-eu-token-0123456789\n").expect("write");
    let listed = |role: &str| {
        format!(
            "{MINIMAL}\n[quorum]\nvantages = [\"controller\", \"controller-eu\", \"agent-1\"]\n\n[controller.ha]\netcd = [\"http://127.0.0.1:2379\"]\nmember = \"eu\"\ntoken_file = \"member.token\"\n\n[[tokens]]\nname = \"controller-eu\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n",
            TokenDigest::of("member-eu-token-0123456789").to_hex()
        )
    };
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, listed("member")).expect("write");
    let config = load(&path).expect("valid");
    assert_eq!(config.member_token.as_deref(), Some("member-eu-token-0123456789"));
    assert_eq!(config.credentials[0].role, Role::Member);

    // Listed with another role, the leader would refuse what it passes on: said at load.
    std::fs::write(&path, listed("read")).expect("write");
    let error = load(&path).expect_err("not a member credential").to_string();
    assert!(
        error.contains("is not a [[tokens]] entry with role \"member\""),
        "{error}"
    );
    assert!(error.contains("switchyard token new --role member"), "{error}");

    // A member token names a vantage point the quorum counts.
    let elsewhere = listed("member").replace("name = \"controller-eu\"", "name = \"controller-xx\"");
    std::fs::write(&path, elsewhere).expect("write");
    let error = load(&path).expect_err("unknown vantage").to_string();
    assert!(
        error.contains("member token 'controller-xx' names a vantage point not in [quorum] vantages"),
        "{error}"
    );
}

fn warning_with<'a>(config: &'a Config, needle: &str) -> &'a Problem {
    config
        .warnings
        .iter()
        .find(|p| p.message.contains(needle))
        .unwrap_or_else(|| panic!("no warning containing '{needle}' in {:#?}", config.warnings))
}

/// A quorum below a majority is legal (the README documents `quorum` as a choice, as Redis
/// Sentinel's is) but lets one vantage point block a failover: said at its line.
#[test]
fn a_quorum_below_a_majority_is_warned_about_with_its_consequence() {
    let text = with_agents("quorum = 1\n");
    let config = parse("q.toml", &text).expect("legal");
    let warning = warning_with(&config, "quorum = 1 is not a majority of the 3 vantage points");
    assert_eq!(warning.line, line_of(&text, "quorum = 1"));
    assert!(warning.message.contains("not failed over"), "{warning:?}");
    assert!(warning.fix.contains("a majority: 2"), "{warning:?}");
    for majority in ["quorum = 2\n", "quorum = 3\n", ""] {
        let config = parse("q.toml", &with_agents(majority)).expect("legal");
        assert!(
            !config.warnings.iter().any(|w| w.message.contains("not a majority")),
            "{majority}: {:#?}",
            config.warnings
        );
    }
    let four = format!(
        "{MINIMAL}\n[quorum]\nvantages = [\"controller\", \"agent-1\", \"agent-2\", \"agent-3\"]\nquorum = 2\n"
    );
    warning_with(
        &parse("q.toml", &four).expect("legal"),
        "quorum = 2 is not a majority of the 4 vantage points",
    );
}

#[test]
fn an_expect_status_that_can_never_pass_is_an_error_at_its_line() {
    for status in [0, 999] {
        let text = format!(
            "{MINIMAL}\n[[checks]]\nname = \"a-web\"\nregion = \"a\"\nkind = {{ type = \"http\", url = \"http://10.0.0.5/health\", expect_status = {status} }}\n"
        );
        let found = problems(&text);
        let problem = problem_with(&found, &format!("expect_status = {status} is not a final HTTP status"));
        let line = line_of(&text, "expect_status");
        let column = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.find("expect_status"))
            .expect("there")
            + 1;
        assert_eq!((problem.line, problem.column), (line, column), "{problem:?}");
    }
}

#[test]
fn body_contains_with_head_and_tls_verify_on_http_are_errors_at_their_line() {
    let text = format!(
        "{MINIMAL}\n[[checks]]\nname = \"a-web\"\nregion = \"a\"\n[checks.kind]\ntype = \"http\"\nurl = \"http://10.0.0.5/health\"\nmethod = \"HEAD\"\nbody_contains = \"ok\"\n"
    );
    let found = problems(&text);
    let problem = problem_with(&found, "body_contains is set but method is HEAD");
    assert_eq!(
        (problem.line, problem.column),
        (line_of(&text, "body_contains ="), 1),
        "{problem:?}"
    );
    assert!(problem.message.contains("use method = \"GET\""), "{problem:?}");

    let text = format!(
        "{MINIMAL}\n[[checks]]\nname = \"a-web\"\nregion = \"a\"\n[checks.kind]\ntype = \"http\"\nurl = \"http://probe:secret@10.0.0.5/health\"\ntls_verify = false\n"
    );
    let found = problems(&text);
    let problem = problem_with(&found, "tls_verify = false is set but url 'http://***@10.0.0.5/health'");
    assert_eq!(problem.line, line_of(&text, "tls_verify"), "{problem:?}");
    assert!(!problem.message.contains("secret"), "{problem:?}");
}

#[test]
fn a_region_endpoint_must_be_a_url() {
    let text = MINIMAL.replace(
        "name = \"b\"\npriority = 2\n",
        "name = \"b\"\npriority = 2\nendpoints = [\"http://10.1.0.5:8080\", \"127.0.0.12\"]\n",
    );
    let found = problems(&text);
    let problem = problem_with(&found, "region 'b': endpoints entry: '127.0.0.12'");
    assert_eq!(problem.line, line_of(&text, "127.0.0.12"));
    assert!(problem.fix.contains("https://shop.example.com"), "{problem:?}");
    assert_eq!(found.len(), 1, "the URL entry is fine: {found:#?}");
}

#[test]
fn a_timeout_longer_than_the_interval_is_warned_about() {
    let text = MINIMAL.replace(
        "name = \"b-app\"\nregion = \"b\"\n",
        "name = \"b-app\"\nregion = \"b\"\ninterval_ms = 1000\ntimeout_ms = 5000\n",
    );
    let config = parse("t.toml", &text).expect("legal");
    let warning = warning_with(
        &config,
        "check 'b-app': timeout_ms = 5000 is longer than interval_ms = 1000",
    );
    assert_eq!(warning.line, line_of(&text, "timeout_ms = 5000"));
    assert!(warning.message.contains("after 16500 ms"), "{warning:?}");
}

#[test]
fn one_token_name_under_two_roles_is_an_error() {
    let hash = |token: &str| TokenDigest::of(token).to_hex();
    let entry = |name: &str, role: &str, token: &str| {
        format!(
            "\n[[tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n",
            hash(token)
        )
    };
    let text = with_agents(&format!(
        "{}{}",
        entry("agent-1", "agent", "agent-1-token-0123456789"),
        entry("agent-1", "operator", "operator-token-0123456789")
    ));
    let found = problems(&text);
    let problem = problem_with(
        &found,
        "token name 'agent-1' is given role 'operator' here and role 'agent' on line",
    );
    assert_eq!(problem.line, line_of(&text, "role = \"operator\""));
    // Two tokens of one agent under one role are a rotation: fine.
    let rotation = with_agents(&format!(
        "{}{}",
        entry("agent-1", "agent", "agent-1-old-token-0123456789"),
        entry("agent-1", "agent", "agent-1-new-token-0123456789")
    ));
    parse("r.toml", &rotation).expect("a rotation is legal");
}

/// `config check` and the start agree: what start refuses, the check refuses too.
#[test]
fn config_check_refuses_what_start_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    // Operator and read have no token, and the API listens beyond loopback.
    let open = format!("[controller]\nlisten = \"0.0.0.0:7400\"\n{MINIMAL}");
    let path = write("open.toml", &open);
    let config = load(&path).expect("the file itself is valid");
    let exposure = config.exposure.clone().expect("start would refuse it");
    let started = crate::server::check_exposure(config.file.controller.listen, &crate::server::access(&config, None));
    assert!(started.is_err(), "and start does refuse it");
    let error = check_file(&path).expect_err("config check refuses it too");
    assert_eq!(error.problems, vec![exposure.clone()]);
    assert_eq!(exposure.line, 2);
    assert!(
        exposure.message.contains("agent, operator, read have no token"),
        "{exposure:?}"
    );
    assert!(exposure.fix.contains("127.0.0.1"), "{exposure:?}");
    // On loopback both agree it is fine.
    let path = write("loopback.toml", &open.replace("0.0.0.0", "127.0.0.1"));
    assert!(check_file(&path).expect("valid").exposure.is_none());
    // An empty audit log path, or a folder: start cannot open it.
    for (name, value) in [
        ("empty.toml", String::new()),
        ("dir.toml", dir.path().display().to_string()),
    ] {
        let text = format!("[controller]\naudit_log = \"{value}\"\n{MINIMAL}");
        let found = check_file(&write(name, &text)).expect_err("refused").problems;
        let problem = problem_with(&found, "[controller] audit_log");
        assert_eq!(problem.line, 2, "{problem:?}");
        assert!(problem.message.contains("would not start"), "{problem:?}");
    }
}

#[cfg(unix)]
#[test]
fn a_secret_in_a_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "{MINIMAL}\n[[checks]]\nname = \"a-db\"\nregion = \"a\"\n[checks.kind]\ntype = \"sql\"\ndriver = \"mysql\"\naddress = \"10.0.0.6:3306\"\nuser = \"probe\"\npassword = \"hunter2\"\n"
    );
    std::fs::write(&path, &text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = load(&path).expect("legal");
    let warning = warning_with(
        &config,
        "check 'a-db' holds its password in this file, and other users can read",
    );
    assert_eq!(warning.line, line_of(&text, "hunter2"));
    assert!(warning.fix.starts_with("chmod 600"), "{warning:?}");
    assert!(!warning.message.contains("hunter2"), "the secret is never repeated");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = load(&path).expect("legal");
    assert!(
        !config.warnings.iter().any(|w| w.message.contains("holds its password")),
        "{:#?}",
        config.warnings
    );
}

#[cfg(unix)]
#[test]
fn a_password_in_a_checks_url_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "{MINIMAL}\n[[checks]]\nname = \"a-auth\"\nregion = \"a\"\n[checks.kind]\ntype = \"http\"\nurl = \"http://probe:hunter2@10.0.0.5:8080/health\"\n"
    );
    std::fs::write(&path, &text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = load(&path).expect("legal");
    let warning = warning_with(&config, "check 'a-auth' holds a password in its url in this file");
    assert_eq!(warning.line, line_of(&text, "hunter2"));
    assert!(!warning.message.contains("hunter2"), "the secret is never repeated");
    // An @ in the path is no user info.
    let plain = text.replace("probe:hunter2@10.0.0.5:8080/health", "10.0.0.5:8080/health?mail=a@b");
    std::fs::write(&path, &plain).expect("write");
    let config = load(&path).expect("legal");
    assert!(
        !config.warnings.iter().any(|w| w.message.contains("in its url")),
        "{:#?}",
        config.warnings
    );
}

#[test]
fn more_checks_than_a_plan_may_hold_are_an_error() {
    let mut text = MINIMAL.to_string();
    for index in 0..health::runner::CHECKS_MAX {
        text.push_str(&format!(
            "\n[[checks]]\nname = \"extra-{index}\"\nregion = \"a\"\nkind = {{ type = \"tcp\", address = \"127.0.0.1:1\" }}\n"
        ));
    }
    let found = problems(&text);
    let problem = problem_with(&found, "1002 checks is more than 1000");
    assert_eq!(problem.line, line_of(&text, "name = \"extra-998\"") - 1);
}

#[test]
fn guard_isolation_fence_is_held_to_the_quickest_failover_with_its_line() {
    let step = "\n[[runbook]]\nname = \"orders-db\"\nkind = \"mysql_promote\"\ntimeout_ms = 30000\n\
         [runbook.mysql_promote]\nservers = { a = [\"10.0.1.5:3306\"], b = [\"10.1.1.5\"] }\n\
         user = \"switchyard\"\nreplication_user = \"repl\"\n";
    // The checks' defaults (fall 3, fast_interval_ms 250) call a region down 500 ms after the
    // first failure: a 3 s isolation fence comes far too late without down_confirm_ms.
    let late = format!("{MINIMAL}\n[guard]\nisolation_fence_ms = 3000\n{step}");
    let found = problems(&late);
    let problem = problem_with(&found, "isolation_fence_ms = 3000");
    assert_eq!(problem.line, line_of(&late, "isolation_fence_ms = 3000"));
    assert!(problem.message.contains("after 500 ms"), "{}", problem.message);
    let needed = 3_000 + crate::guard::FENCE_DELAY_MS - 500;
    assert!(
        problem.fix.contains(&format!("down_confirm_ms to at least {needed}")),
        "{}",
        problem.fix
    );
    // The fix it names is enough.
    let fixed =
        format!("{MINIMAL}\n[policy]\ndown_confirm_ms = {needed}\n\n[guard]\nisolation_fence_ms = 3000\n{step}");
    let config = parse("guard.toml", &fixed).expect("valid");
    let limit = config.file.guard.as_ref().and_then(|g| g.isolation_fence_ms.as_ref());
    assert_eq!(limit.map(|l| *l.get_ref()), Some(3_000));
    // Out of bounds, and set with nothing to fence.
    let tiny = format!("{MINIMAL}\n[guard]\nisolation_fence_ms = 10\ncontroller_members = 0\n{step}");
    let found = problems(&tiny);
    assert!(
        problem_with(&found, "isolation_fence_ms = 10 is outside")
            .fix
            .contains("at least")
    );
    let members = problem_with(&found, "controller_members = 0 is outside");
    assert_eq!(members.line, line_of(&tiny, "controller_members = 0"));
    let idle = format!("{MINIMAL}\n[policy]\ndown_confirm_ms = 60000\n\n[guard]\nisolation_fence_ms = 3000\n");
    let config = parse("idle.toml", &idle).expect("valid, with a warning");
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.message.contains("no runbook step has servers a guard fences")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn a_media_sync_step_with_mistakes_is_still_a_media_sync_step_for_the_failback_gate() {
    // The step's own mistake (a missing file) is the one problem: failback_media_objects_max
    // is not also said to lack a media_sync step, which the file plainly has.
    let text = format!(
        "{MINIMAL}\n[policy]\nfailback_media_objects_max = 0\n\n[[runbook]]\nname = \"media\"\nkind = \"media_sync\"\ntimeout_ms = 600000\n[runbook.media_sync]\nmode = \"rsync\"\nssh_identity_file = \"no-such-media.key\"\n[runbook.media_sync.locations]\na = {{ url = \"/var/www/media/\" }}\nb = {{ url = \"deploy@web-b:/var/www/media/\" }}\n"
    );
    let found = problems(&text);
    problem_with(&found, "ssh_identity_file");
    assert!(
        !found
            .iter()
            .any(|p| p.message.contains("no runbook step has kind = \"media_sync\"")),
        "{found:#?}"
    );
    // Without any media_sync step the gate is still refused.
    let text = format!("{MINIMAL}\n[policy]\nfailback_media_objects_max = 0\n");
    let found = problems(&text);
    problem_with(&found, "no runbook step has kind = \"media_sync\"");
}

#[test]
fn a_sub_table_without_its_tables_header_names_the_missing_header() {
    // `[runbook.media_sync.locations]` with no `[runbook.media_sync]` (its `mode`) above it:
    // toml reports "invalid type: string \"locations\", expected a borrowed string".
    let text = format!(
        "{MINIMAL}\n[[runbook]]\nname = \"media\"\nkind = \"media_sync\"\n\n[runbook.media_sync.locations]\na = {{ url = \"/srv/media/\" }}\n"
    );
    let found = problems(&text);
    let problem = problem_with(
        &found,
        "[runbook.media_sync.locations] has no [runbook.media_sync] header",
    );
    assert_eq!(
        problem.line,
        line_of(&text, "[runbook.media_sync.locations]"),
        "{found:#?}"
    );
    assert!(problem.fix.contains("write [runbook.media_sync]"), "{found:#?}");
    assert!(
        !found.iter().any(|p| p.message.contains("borrowed string")),
        "{found:#?}"
    );
}
