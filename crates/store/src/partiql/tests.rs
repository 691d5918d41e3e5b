use dynamo_protocol::{AttributeValue, ErrorKind, Item, Number};
use proptest::prelude::*;

use super::*;
use crate::catalog::{KeyAttribute, KeySchema, KeyType};

fn schema() -> KeySchema {
    KeySchema {
        partition: KeyAttribute {
            name: "pk".into(),
            value_type: KeyType::S,
        },
        sort: Some(KeyAttribute {
            name: "sk".into(),
            value_type: KeyType::N,
        }),
        extra_partition: Vec::new(),
        extra_sort: Vec::new(),
    }
}

fn message(text: &str) -> String {
    let error = parse_statement(text).expect_err(text);
    assert_eq!(error.kind, ErrorKind::Validation, "{text}");
    error.message
}

const MALFORMED: &str = "Statement wasn't well formed, can't be processed: ";

#[test]
fn parses_each_statement_kind() {
    let parsed = parse_statement(r#"SELECT a, "b c".d[2] FROM "t"."idx" WHERE pk = ? AND x > 3 ORDER BY sk DESC;"#)
        .expect("select");
    assert_eq!(parsed.parameters, 1);
    let Statement::Select(select) = parsed.statement else {
        panic!("a select")
    };
    assert_eq!(select.table, "t");
    assert_eq!(select.index.as_deref(), Some("idx"));
    let paths = select.projection.expect("a projection");
    assert_eq!(paths[1].to_string(), "b c.d[2]");
    assert_eq!(select.order_by.len(), 1);
    assert!(select.order_by[0].1);

    let parsed =
        parse_statement("insert into t value {'pk': 'a', 'n': -1.5e3, 'l': [1, true, null], 's': <<'x', 'y'>>}")
            .expect("insert");
    assert!(matches!(parsed.statement, Statement::Insert { .. }));

    let parsed = parse_statement("UPDATE t SET a = a + 1, b = list_append(b, [?]) REMOVE c.d SET e = 'x' WHERE pk = 'a' AND sk = 1 RETURNING ALL NEW *")
        .expect("update");
    let Statement::Update {
        assignments, returning, ..
    } = parsed.statement
    else {
        panic!("an update")
    };
    assert_eq!(assignments.len(), 4);
    assert_eq!(returning, Some(Returning::AllNew));

    let parsed =
        parse_statement("DELETE FROM t WHERE pk = 'a' -- a comment\n AND sk = /* inline */ 2").expect("delete");
    assert!(matches!(parsed.statement, Statement::Delete { .. }));

    let parsed =
        parse_statement("EXISTS(SELECT * FROM t WHERE pk = 'a' AND sk = 1 AND attribute_exists(x))").expect("exists");
    assert!(matches!(parsed.statement, Statement::Exists(_)));
}

#[test]
fn syntax_errors_read_as_dynamodb_writes_them() {
    assert_eq!(
        message("SELECT * FROM t WHERE pk = 1 foo"),
        format!("{MALFORMED}Unexpected token after expression")
    );
    assert_eq!(message("SELECT * FROM t WHERE"), format!("{MALFORMED}Unexpected term"));
    assert_eq!(
        message("SELECT * FROM t WHERE pk = 'a' AND"),
        format!("{MALFORMED}Missing right-hand side expression of infix operator")
    );
    assert_eq!(
        message("SELECT * FROM t WHERE ORDER BY pk"),
        format!("{MALFORMED}Unexpected keyword")
    );
    assert_eq!(
        message("DELETE FROM"),
        format!("{MALFORMED}Expected identifier for simple path")
    );
    assert_eq!(message("SELECT * FROM t x WHERE pk = 'a'"), "Aliasing is not supported");
    assert_eq!(message("SELECT * FROM t LIMIT 3"), "Unsupported clause: LIMIT");
    assert_eq!(
        message("SLECT * FROM t"),
        format!("{MALFORMED}Expected data manipulation")
    );
    assert_eq!(
        message("INSERT INTO t VALUE {'pk': 'a'} RETURNING ALL OLD *"),
        "RETURNING is not supported in INSERT"
    );
    assert_eq!(
        message("SELECT * FROM t WHERE a = 'unterminated"),
        format!("{MALFORMED}Unterminated string literal starting at column 27")
    );
    assert_eq!(
        message("SELECT * FROM \"t WHERE a = 1"),
        format!("{MALFORMED}Unterminated quoted identifier starting at column 15")
    );
    assert_eq!(
        message("SELECT * FROM t WHERE a = 1 /* open"),
        format!("{MALFORMED}Unterminated comment at column 29")
    );
    assert_eq!(
        message("SELECT * FROM t WHERE é = `a`"),
        format!("{MALFORMED}Invalid character 'é' at column 23")
    );
    assert_eq!(
        message("SELECT *\nFROM t\nWHERE a = 'open"),
        format!("{MALFORMED}Unterminated string literal starting at line 3, column 11")
    );
    assert!(message("").contains("'statement'"));
    assert!(message(&"x".repeat(STATEMENT_BYTES_MAX + 1)).contains("8192"));
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("SELECT * FROM t WHERE {}a = 1{}", "(".repeat(500), ")".repeat(500));
    assert!(message(&deep).contains("nests deeper"));
    let deep_not = format!("SELECT * FROM t WHERE {} a = 1", "NOT ".repeat(500));
    assert!(message(&deep_not).contains("nests deeper"));
    let deep_list = format!("INSERT INTO t VALUE {{'pk': {}1{}}}", "[".repeat(500), "]".repeat(500));
    assert!(message(&deep_list).contains("nests deeper"));
}

fn where_of(text: &str) -> Expr {
    match parse_statement(text).expect(text).statement {
        Statement::Select(Select { condition: Some(c), .. })
        | Statement::Update { condition: c, .. }
        | Statement::Delete { condition: c, .. } => c,
        other => panic!("no WHERE in {other:?}"),
    }
}

#[test]
fn key_equalities_name_the_item_and_the_rest_is_a_condition() {
    let expr = where_of("DELETE FROM t WHERE ? = pk AND sk = 7 AND size(x) > 2");
    let values = [AttributeValue::S("a".into())];
    let keyed = keyed_where(&expr, &schema(), &Parameters(&values)).expect("keyed");
    assert_eq!(keyed.key.get("pk"), Some(&AttributeValue::S("a".into())));
    assert_eq!(keyed.key.get("sk"), Some(&AttributeValue::N(Number::from_i64(7))));
    assert!(keyed.rest.is_some());

    let expr = where_of("DELETE FROM t WHERE pk = 'a' OR sk = 7");
    let error = keyed_where(&expr, &schema(), &Parameters(&[])).err().expect("no key");
    assert_eq!(
        error.message,
        "Where clause does not contain a mandatory equality on all key attributes"
    );

    let expr = where_of("DELETE FROM t WHERE pk = 'a' AND sk = 'seven'");
    let error = keyed_where(&expr, &schema(), &Parameters(&[]))
        .err()
        .expect("wrong type");
    assert_eq!(
        error.message,
        "Key attribute's data type should match its data type in table's schema: Key sk"
    );
}

#[test]
fn partitions_come_from_equality_or_in() {
    let expr = where_of("SELECT * FROM t WHERE pk IN ['a', 'b', 'a'] AND x = 1");
    let found = partitions(Some(&expr), &schema(), &Parameters(&[])).expect("partitions");
    assert_eq!(found.map(|v| v.len()), Some(2));
    let expr = where_of("SELECT * FROM t WHERE pk = 'a' OR pk = 'b' OR pk IN ['c', 'a']");
    let found = partitions(Some(&expr), &schema(), &Parameters(&[])).expect("partitions");
    assert_eq!(found.map(|v| v.len()), Some(3));
    let expr = where_of("SELECT * FROM t WHERE x = 1 AND (pk = 'a' OR pk = 'b')");
    let found = partitions(Some(&expr), &schema(), &Parameters(&[])).expect("partitions");
    assert_eq!(found.map(|v| v.len()), Some(2));
    // One alternative not on the key: every partition may hold a match, so it scans.
    let expr = where_of("SELECT * FROM t WHERE pk = 'a' OR x = 1");
    assert_eq!(
        partitions(Some(&expr), &schema(), &Parameters(&[])).expect("scan"),
        None
    );
}

#[test]
fn conditions_evaluate_like_dynamodb() {
    let item: Item = serde_json::from_value(serde_json::json!({
        "pk": {"S": "a"}, "n": {"N": "5"}, "m": {"M": {"k": {"L": [{"S": "x"}, {"S": "yz"}]}}}, "z": {"NULL": true}
    }))
    .expect("item");
    let holds = |text: &str| {
        let expr = where_of(&format!("SELECT * FROM t WHERE {text}"));
        where_condition(Some(&expr), &Parameters(&[]))
            .expect(text)
            .expect("a condition")
            .evaluate(&item)
            .expect("evaluates")
    };
    assert!(holds("n BETWEEN 1 AND 5"));
    assert!(holds("n NOT IN [1, 2]"));
    assert!(holds("m.k[1] = 'yz'"));
    assert!(holds("begins_with(m.k[1], 'y')"));
    assert!(holds("q IS MISSING AND n IS NOT MISSING"));
    assert!(holds("z IS NULL AND NOT n IS NULL"));
    assert!(holds("attribute_type(m, 'M') AND size(m.k) = 2"));
    assert!(holds("contains(m.k, 'x') OR n < 0"));
    assert!(!holds("n <> 5"));
}

#[test]
fn values_are_checked_as_dynamodb_checks_them() {
    // The value of attribute `v` of an INSERT's item.
    let value_of = |text: &str| {
        let Statement::Insert { value: v, .. } = parse_statement(&format!("INSERT INTO t VALUE {{'v': {text}}}"))
            .expect(text)
            .statement
        else {
            panic!("an insert")
        };
        value(&v, &Parameters(&[]), "root").map(|item| match item {
            AttributeValue::M(mut map) => map.remove("v").expect("v"),
            other => panic!("not a map: {other:?}"),
        })
    };
    assert_eq!(
        value_of("<<>>").err().map(|e| e.message),
        Some("Empty bags are not supported".into())
    );
    assert_eq!(
        value_of("<<'a', 'a'>>").err().map(|e| e.message),
        Some("Input collection contains duplicates".into())
    );
    assert_eq!(
        value_of("<<'a', 1>>").err().map(|e| e.message),
        Some("Unsupported data type in Bag. DynamoDB only supports either numbers or strings in bags".into())
    );
    assert_eq!(
        value_of("{'x': 1e126}").err().map(|e| e.message),
        Some("Number overflow. Attempting to store a number with magnitude larger than supported range".into())
    );
    assert!(matches!(value_of("<<1, 2>>"), Ok(AttributeValue::Ns(_))));
}

#[test]
fn updates_refuse_keys_and_overlaps() {
    let assignments_of = |text: &str| match parse_statement(text).expect(text).statement {
        Statement::Update { assignments, .. } => assignments,
        _ => panic!("an update"),
    };
    let error = update(
        &assignments_of("UPDATE t SET pk = 'b' WHERE pk = 'a'"),
        &schema(),
        &Parameters(&[]),
    )
    .expect_err("key");
    assert!(
        error.message.contains("Cannot update attribute pk"),
        "{}",
        error.message
    );
    let error = update(
        &assignments_of("UPDATE t SET a.b = 1 REMOVE a WHERE pk = 'a'"),
        &schema(),
        &Parameters(&[]),
    )
    .expect_err("overlap");
    assert!(
        error.message.starts_with("Two document paths overlap"),
        "{}",
        error.message
    );
    let mut item = Item::new();
    let parameters = [AttributeValue::N(Number::from_i64(2))];
    update(
        &assignments_of("UPDATE t SET n = if_not_exists(n, ?) + 3, s = set_add(s, <<'x'>>) WHERE pk = 'a'"),
        &schema(),
        &Parameters(&parameters),
    )
    .expect("update")
    .apply(&mut item)
    .expect("applies");
    assert_eq!(item.get("n"), Some(&AttributeValue::N(Number::from_i64(5))));
}

#[test]
fn projections_flatten_to_the_last_name() {
    let paths = match parse_statement("SELECT m.k[1], l[0], m.z FROM t")
        .expect("select")
        .statement
    {
        Statement::Select(select) => select.projection.expect("paths"),
        _ => panic!("a select"),
    };
    let names: Vec<String> = paths.iter().map(output_name).collect();
    assert_eq!(names, ["k[1]", "l[0]", "z"]);
    let paths = match parse_statement("SELECT a.z, b.z FROM t").expect("select").statement {
        Statement::Select(select) => select.projection.expect("paths"),
        _ => panic!("a select"),
    };
    assert_eq!(
        check_projection(&paths).err().map(|e| e.message),
        Some("Duplicate identifiers in select clause: z".into())
    );
}

/// Fragments that make up statements, so random sequences reach deep into the grammar.
const FRAGMENTS: &[&str] = &[
    "SELECT",
    "BOOLEAN",
    "CHARACTER",
    "VARYING",
    "sk",
    "<",
    "BETWEEN",
    "*",
    "FROM",
    "\"t\"",
    ".",
    "\"i\"",
    "WHERE",
    "pk",
    "=",
    "?",
    "'a'",
    "1",
    "-2.5e3",
    "AND",
    "OR",
    "NOT",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "<<",
    ">>",
    ",",
    ":",
    "IN",
    "BETWEEN",
    "IS",
    "MISSING",
    "NULL",
    "INSERT",
    "INTO",
    "VALUE",
    "UPDATE",
    "SET",
    "REMOVE",
    "DELETE",
    "RETURNING",
    "ALL",
    "OLD",
    "NEW",
    "EXISTS",
    "size",
    "begins_with",
    "ORDER",
    "BY",
    "DESC",
    "+",
    "-",
    "<>",
    "<=",
    ";",
    "--",
    "/*",
    "*/",
    "\"",
    "'",
    "é",
    "\u{0}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the text, parsing answers (a statement or a ValidationException) and never panics.
    #[test]
    fn parsing_never_panics(text in "\\PC{0,200}") {
        if let Err(error) = check_statement(&text, &[], &schema()) {
            prop_assert_eq!(error.kind, ErrorKind::Validation);
        }
    }

    #[test]
    fn statements_of_fragments_never_panic(parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..60)) {
        let text = parts.join(" ");
        let values = vec![AttributeValue::S("p".into()); 8];
        if let Err(error) = check_statement(&text, &values, &schema()) {
            prop_assert_eq!(error.kind, ErrorKind::Validation);
        }
    }
}

#[test]
fn long_chains_translate_without_deep_recursion() {
    let chain = vec!["a = 1"; 600].join(" AND ");
    let expr = where_of(&format!(
        "SELECT * FROM t WHERE {chain} OR {}",
        vec!["b = 2"; 150].join(" OR ")
    ));
    let condition = where_condition(Some(&expr), &Parameters(&[]))
        .expect("translates")
        .expect("a condition");
    let item: Item = serde_json::from_value(serde_json::json!({"b": {"N": "2"}})).expect("item");
    assert!(condition.evaluate(&item).expect("evaluates"));
    let sums = format!("UPDATE t SET a = 1{} WHERE pk = 'a' AND sk = 1", " + 1".repeat(100));
    assert!(message(&sums).contains("nests deeper"));
}

#[test]
fn only_requests_of_selects_count_as_reads_for_the_replay_guard() {
    let body = |value: serde_json::Value| value.to_string().into_bytes();
    let select = body(serde_json::json!({"Statement": "SELECT * FROM t WHERE pk = 'a'"}));
    assert!(reads_only("ExecuteStatement", &select));
    let delete = body(serde_json::json!({"Statement": "DELETE FROM t WHERE pk = 'a' AND sk = 1"}));
    assert!(!reads_only("ExecuteStatement", &delete));
    let batch = |second: &str| {
        body(serde_json::json!({"Statements": [
            {"Statement": "SELECT * FROM t WHERE pk = 'a'"},
            {"Statement": second}
        ]}))
    };
    assert!(reads_only(
        "BatchExecuteStatement",
        &batch("SELECT a FROM t WHERE pk = 'b'")
    ));
    assert!(!reads_only(
        "BatchExecuteStatement",
        &batch("INSERT INTO t VALUE {'pk': 'c', 'sk': 1}")
    ));
    let transaction = body(serde_json::json!({"TransactStatements": [
        {"Statement": "EXISTS(SELECT * FROM t WHERE pk = 'a' AND sk = 1)"},
        {"Statement": "UPDATE t SET a = 1 WHERE pk = 'a' AND sk = 1"}
    ]}));
    assert!(!reads_only("ExecuteTransaction", &transaction));
    // Unreadable, empty or unparseable: a write, so its signature is remembered.
    assert!(!reads_only("ExecuteStatement", b"not json"));
    assert!(!reads_only(
        "BatchExecuteStatement",
        &body(serde_json::json!({"Statements": []}))
    ));
    assert!(!reads_only(
        "ExecuteStatement",
        &body(serde_json::json!({"Statement": "SELEC * FROM t"}))
    ));
    assert!(!reads_only("GetItem", &select));
}

#[test]
fn a_selects_sort_key_conditions_are_checked_as_a_querys() {
    let check = |text: &str, values: &[AttributeValue]| {
        let expr = where_of(text);
        check_sort_equalities(Some(&expr), &schema(), &Parameters(values)).map_err(|e| e.message)
    };
    assert_eq!(
        check("DELETE FROM t WHERE pk = 'a' AND sk BETWEEN 2 AND 4", &[]),
        Ok(())
    );
    assert_eq!(check("DELETE FROM t WHERE pk = 'a' AND sk = 3", &[]), Ok(()));
    let reversed = check("DELETE FROM t WHERE pk = 'a' AND sk BETWEEN 5 AND 0", &[]).expect_err("reversed");
    assert!(reversed.contains("requires upper bound"), "{reversed}");
    let on_number = check("DELETE FROM t WHERE pk = 'a' AND begins_with(sk, 1)", &[]).expect_err("a number");
    assert!(on_number.ends_with("begins_with, operand type: N"), "{on_number}");
    let wrong = check(
        "DELETE FROM t WHERE pk = 'a' AND sk = ?",
        &[AttributeValue::S("1".into())],
    )
    .expect_err("type");
    assert!(wrong.contains("Key sk"), "{wrong}");
    // Conditions under OR or NOT are filters, not key conditions: left alone.
    assert_eq!(
        check("DELETE FROM t WHERE pk = 'a' AND (sk BETWEEN 5 AND 0 OR x = 1)", &[]),
        Ok(())
    );
}

// What DynamoDB answers where the store used to answer otherwise (DynamoDB Local 2026-05-28,
// AWS's own PartiQL front end, where the PartiQL reference is silent; the references are named
// at each test).

/// The validation message of translating `text` (a SELECT's WHERE, an UPDATE's SET and WHERE,
/// a DELETE's WHERE or an INSERT's value), or of parsing it.
fn refusal(text: &str, parameters: &[AttributeValue]) -> String {
    let error = check_statement(text, parameters, &schema()).expect_err(text);
    assert_eq!(error.kind, ErrorKind::Validation, "{text}");
    error.message
}

#[test]
fn functions_outside_dynamodbs_list_are_unrecognized() {
    // The PartiQL reference lists SIZE, EXISTS (of a subquery, in transactions), ATTRIBUTE_TYPE,
    // BEGINS_WITH, CONTAINS and MISSING (`IS [NOT] MISSING`); `exists(path)` and `missing(path)`
    // are not conditions.
    assert_eq!(
        refusal("SELECT * FROM t WHERE exists(m)", &[]),
        "Unrecognized function: exists"
    );
    assert_eq!(
        refusal("SELECT * FROM t WHERE foo(m)", &[]),
        "Unrecognized function: foo"
    );
    assert!(refusal("SELECT * FROM t WHERE missing(m)", &[]).starts_with(MALFORMED));
    assert_eq!(
        refusal("UPDATE t SET a = foo(a) WHERE pk = 'a' AND sk = 1", &[]),
        "Unrecognized function: foo"
    );
    assert_eq!(
        refusal("SELECT * FROM t WHERE begins_with(g)", &[]),
        "Incorrect number of operands for operator or function; operator or function: begins_with, number of operands: 1"
    );
    assert_eq!(
        refusal("UPDATE t SET l = list_append(l) WHERE pk = 'a' AND sk = 1", &[]),
        "Incorrect number of operands for operator or function; operator or function: list_append, number of operands: 1"
    );
    assert_eq!(
        refusal("UPDATE t SET l = if_not_exists(l) WHERE pk = 'a' AND sk = 1", &[]),
        "Incorrect number of operands for operator or function; operator or function: if_not_exists, number of operands: 1"
    );
    assert_eq!(
        refusal("SELECT * FROM t WHERE size(1) = 1", &[]),
        "Incorrect operand type for operator or function; operator or function: size, operand type: N"
    );
}

#[test]
fn in_takes_a_list_of_1_to_100_values() {
    let seq = "IN operator must have a left hand argument of type Variable Reference and right hand argument of type Seq with at least one member";
    assert_eq!(refusal("SELECT * FROM t WHERE g IN []", &[]), seq);
    let list = [AttributeValue::L(vec![AttributeValue::S("a".into())])];
    assert_eq!(refusal("SELECT * FROM t WHERE g IN ?", &list), seq);
    assert_eq!(refusal("SELECT * FROM t WHERE pk IN ?", &list), seq);
    let many = (0..101).map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ");
    assert_eq!(
        refusal(&format!("SELECT * FROM t WHERE g IN [{many}]"), &[]),
        "The IN operator is provided with too many operands; number of operands: 101"
    );
    // `IN (?)` is a list of one parameter.
    check_statement(
        "SELECT * FROM t WHERE g IN (?)",
        &[AttributeValue::S("a".into())],
        &schema(),
    )
    .expect("in (?)");
}

#[test]
fn missing_is_compared_with_is_only() {
    let message = "MISSING must be compared using IS operator";
    assert_eq!(refusal("SELECT * FROM t WHERE g = MISSING", &[]), message);
    assert_eq!(refusal("SELECT * FROM t WHERE g <> missing", &[]), message);
    assert_eq!(refusal("SELECT * FROM t WHERE g IN [MISSING]", &[]), message);
    assert_eq!(refusal("SELECT * FROM t WHERE MISSING", &[]), message);
    assert_eq!(
        refusal("UPDATE t SET v = MISSING WHERE pk = 'a' AND sk = 1", &[]),
        message
    );
    assert_eq!(
        refusal("SELECT * FROM t WHERE 'a' IS MISSING", &[]),
        "Operator or function requires a document path; operator or function: attribute_not_exists"
    );
    check_statement("SELECT * FROM t WHERE g IS NOT MISSING", &[], &schema()).expect("is not missing");
}

#[test]
fn writes_name_one_item_of_a_table() {
    assert_eq!(
        refusal("INSERT INTO t VALUE ?", &[AttributeValue::M(Default::default())]),
        "Unsupported format in item expression. Please use struct format {...} to express item values for insert statement."
    );
    assert_eq!(
        refusal("INSERT INTO t VALUE [1]", &[]),
        "Unsupported format in item expression. Please use struct format {...} to express item values for insert statement."
    );
    assert_eq!(
        refusal("INSERT INTO \"t\".\"i\" VALUE {'pk': 'a', 'sk': 1}", &[]),
        "FROM clause may only contain a single table name in data manipulation statements"
    );
    let on_index = "This operation is not supported on an index";
    assert_eq!(
        refusal("UPDATE \"t\".\"i\" SET a = 1 WHERE pk = 'a' AND sk = 1", &[]),
        on_index
    );
    assert_eq!(
        refusal("DELETE FROM \"t\".\"i\" WHERE pk = 'a' AND sk = 1", &[]),
        on_index
    );
    let no_key = "Where clause does not contain a mandatory equality on all key attributes";
    for text in [
        "UPDATE t SET a = 1",
        "UPDATE t SET a = 1;",
        "UPDATE t SET a = 1 RETURNING ALL NEW *",
        "DELETE FROM t",
        "DELETE FROM t;",
        "DELETE FROM t RETURNING ALL OLD *",
    ] {
        assert_eq!(refusal(text, &[]), no_key, "{text}");
    }
    // A key attribute named twice: the same value is one item; two values are refused.
    check_statement(
        "UPDATE t SET a = 1 WHERE pk = 'a' AND sk = 1 AND sk = 1",
        &[],
        &schema(),
    )
    .expect("same key twice");
    assert_eq!(
        refusal("DELETE FROM t WHERE pk = 'a' AND sk = 1 AND sk = 2", &[]),
        "Multiple conditions on same key sk. Only single item Update/Insert/Delete are supported"
    );
}

#[test]
fn the_rest_of_a_writes_where_holds_when_the_item_is_absent() {
    // DynamoDB evaluates the rest of a DELETE's WHERE on the item when it is there; a DELETE of
    // an absent item is a no-op whatever the rest says (UPDATE and EXISTS fail on the absence
    // by themselves).
    let expr = where_of("DELETE FROM t WHERE pk = 'a' AND sk = 1 AND n = 99");
    let keyed = keyed_where(&expr, &schema(), &Parameters(&[])).expect("keyed");
    let condition = Condition {
        root: keyed.rest.expect("a condition"),
    };
    assert!(condition.evaluate(&Item::new()).expect("evaluates"), "absent: holds");
    let item: Item =
        serde_json::from_value(serde_json::json!({"pk": {"S": "a"}, "sk": {"N": "1"}, "n": {"N": "1"}})).expect("item");
    assert!(
        !condition.evaluate(&item).expect("evaluates"),
        "present: the rest decides"
    );
}

#[test]
fn order_by_needs_a_where_clause_and_plain_names() {
    assert_eq!(
        refusal("SELECT * FROM t ORDER BY pk", &[]),
        "Must have WHERE clause in the statement when using ORDER BY clause."
    );
    for path in ["m.a", "l[0]"] {
        assert_eq!(
            refusal(&format!("SELECT * FROM t WHERE pk = 'a' ORDER BY {path}"), &[]),
            "Argument to ORDER BY must be of type VariableReference. Type: PATH"
        );
    }
}

#[test]
fn values_are_refused_in_dynamodbs_words() {
    let insert = |value: &str| {
        refusal(
            &format!("INSERT INTO t VALUE {{'pk': 'a', 'sk': 1, 'v': {value}}}"),
            &[],
        )
    };
    assert_eq!(
        insert("{'a': {'b': 1e300}}"),
        "Number overflow. Attempting to store a number with magnitude larger than supported range"
    );
    assert_eq!(
        insert("1e-131"),
        "Number underflow. Attempting to store a number with magnitude smaller than supported range"
    );
    assert_eq!(
        insert("123456789012345678901234567890123456789"),
        "DynamoDB only supports precision up to 38 digits"
    );
    assert_eq!(
        refusal("SELECT * FROM t WHERE g = 123456789012345678901234567890123456789", &[]),
        "DynamoDB only supports precision up to 38 digits"
    );
    let bag = "Unsupported data type in Bag. DynamoDB only supports either numbers or strings in bags";
    for members in ["1, 'a'", "true", "?", "[1]"] {
        let error = check_statement(
            &format!("INSERT INTO t VALUE {{'pk': 'a', 'sk': 1, 'v': <<{members}>>}}"),
            &[AttributeValue::S("x".into())],
            &schema(),
        )
        .expect_err(members);
        assert_eq!(error.message, bag, "{members}");
    }
    assert_eq!(
        refusal("INSERT INTO t VALUE {'pk': 'a', 'sk': 1, 'v': 1, 'v': 2}", &[]),
        "Duplicate keys in tuple. Key: v under root"
    );
    assert_eq!(insert("{'b': 1, 'b': 2}"), "Duplicate keys in tuple. Key: b under root");
    assert_eq!(
        insert("{'a': {'b': 1, 'b': 2}}"),
        "Duplicate keys in tuple. Key: b under root.a"
    );
    assert_eq!(insert("x"), "Unsupported data type: x under key root");
    assert_eq!(insert("a.b"), "Unsupported data type: PATH under key root");
    assert_eq!(insert("MISSING"), "Unsupported data type: MISSING under key root");
    assert_eq!(insert("size(a)"), "Unsupported data type: size under key root");
    assert_eq!(insert("1 + 2"), "Unsupported data type: + under key root");
    assert_eq!(
        insert("{'a': {'b': x}}"),
        "Unsupported data type: VariableReference under key root.a.b"
    );
    assert_eq!(
        insert("{'a': [1, x]}"),
        "Unsupported data type: VariableReference under key root.a.1"
    );
    assert_eq!(
        insert("[1, missing]"),
        "Unsupported data type: LiteralMissing under key root.1"
    );
    assert_eq!(
        refusal("SELECT * FROM t WHERE g = [x]", &[]),
        "Unsupported data type: VariableReference under key root.0"
    );
}

#[test]
fn set_clauses_are_refused_in_dynamodbs_words() {
    let update = |set: &str| refusal(&format!("UPDATE t SET {set} WHERE pk = 'a' AND sk = 1"), &[]);
    assert_eq!(
        update("s = set_add(n, <<1>>)"),
        "The first argument to SET_ADD must equal the assignment value"
    );
    assert_eq!(
        update("s = set_delete(n, <<1>>)"),
        "The first argument to SET_DELETE must equal the assignment value"
    );
    assert_eq!(
        update("s = set_add(s, 1)"),
        "The second argument to SET_ADD must be a value with type SET"
    );
    assert_eq!(
        update("s = set_delete(s, 1)"),
        "The second argument to SET_DELETE must be a value with type SET"
    );
    assert_eq!(
        update("s = set_add(s, <<1>>, 2)"),
        "SET_ADD must have exactly two arguments"
    );
    let operand = |function: &str, kind: &str| {
        format!(
            "Incorrect operand type for operator or function; operator or function: {function}, operand type: {kind}"
        )
    };
    assert_eq!(update("n = n + 'x'"), operand("+", "S"));
    assert_eq!(update("n = 1 + true"), operand("+", "BOOL"));
    assert_eq!(update("n = 'a' - 1"), operand("-", "S"));
    assert_eq!(update("l = list_append(l, 3)"), operand("list_append", "N"));
    assert_eq!(update("l = list_append('a', l)"), operand("list_append", "S"));
    // Of two overlapping paths, the later one is named first.
    assert_eq!(
        update("m.a = 1, m.a.b = 2"),
        "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [m, a, b], path two: [m, a]"
    );
    assert_eq!(
        update("x = 1, m.a = 2, y = 3, m = 4"),
        "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [m], path two: [m, a]"
    );
}

#[test]
fn a_batch_or_transaction_read_names_one_item_by_its_key_alone() {
    let one = |text: &str, values: &[AttributeValue]| {
        names_one_item(Some(&where_of(text)), &schema(), &Parameters(values)).expect(text)
    };
    assert!(one("SELECT * FROM t WHERE pk = 'a' AND sk = 1", &[]));
    assert!(one(
        "SELECT * FROM t WHERE 'a' = pk AND sk = ?",
        &[AttributeValue::N(Number::from_i64(1))]
    ));
    // The same equality twice is still one item (DynamoDB Local reads it).
    assert!(one("SELECT * FROM t WHERE pk = 'a' AND sk = 1 AND sk = 1", &[]));
    // Anything more, less, or other is not (DynamoDB: "Only single item select is supported").
    for text in [
        "SELECT * FROM t WHERE pk = 'a' AND sk = 1 AND g = 'x'",
        "SELECT * FROM t WHERE pk = 'a'",
        "SELECT * FROM t WHERE pk = 'a' AND sk > 1",
        "SELECT * FROM t WHERE pk = 'a' AND sk = 1 AND sk = 2",
        "SELECT * FROM t WHERE pk IN ['a'] AND sk = 1",
        "SELECT * FROM t WHERE pk = 'a' AND sk = 1 OR g = 'x'",
        "SELECT * FROM t WHERE pk = [1] AND sk = 1",
    ] {
        assert!(!one(text, &[]), "{text}");
    }
    assert!(!names_one_item(None, &schema(), &Parameters(&[])).expect("no where"));
    // A key of the wrong type is one item still: the key check answers it, in its own words.
    assert!(one("SELECT * FROM t WHERE pk = 'a' AND sk = '1'", &[]));
}

#[test]
fn an_exists_reads_one_item_with_a_condition_more() {
    let checked = |text: &str| is_checked_item_read(Some(&where_of(text)), &schema());
    assert!(checked("SELECT * FROM t WHERE pk = 'a' AND sk = 1 AND g = 'x'"));
    assert!(checked("SELECT * FROM t WHERE pk = 'a' AND sk = 1 AND sk = 1"));
    for text in [
        "SELECT * FROM t WHERE pk = 'a' AND sk = 1",
        "SELECT * FROM t WHERE 'a' = pk AND 1 = sk",
        "SELECT * FROM t WHERE pk = 'a'",
        "SELECT * FROM t WHERE pk = 'a' AND g = 'x'",
        "SELECT * FROM t WHERE pk = 'a' AND sk = '1'",
    ] {
        assert!(!checked(text), "{text}");
    }
    assert!(!is_checked_item_read(None, &schema()));
}

#[test]
fn an_insert_item_has_each_key_attribute_of_its_type() {
    let item =
        |pairs: &[(&str, AttributeValue)]| -> Item { pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() };
    let s = |text: &str| AttributeValue::S(text.into());
    let n = |value: i64| AttributeValue::N(Number::from_i64(value));
    let refusal = |item: &Item| check_item_key(item, &schema()).expect_err("refused").message;
    assert!(check_item_key(&item(&[("pk", s("a")), ("sk", n(1))]), &schema()).is_ok());
    assert_eq!(
        refusal(&item(&[("pk", s("a"))])),
        "Key attribute should be present in the item: Key sk"
    );
    assert_eq!(
        refusal(&item(&[("sk", s("1"))])),
        "Key attribute should be present in the item: Key pk"
    );
    assert_eq!(
        refusal(&item(&[("pk", n(1))])),
        "Key attribute's data type should match its data type in table's schema: Key pk"
    );
    assert_eq!(
        refusal(&item(&[("pk", AttributeValue::Null), ("sk", n(1))])),
        "Key attribute's data type should match its data type in table's schema: Key pk"
    );
    let error = check_item_key(&item(&[("pk", s("a")), ("sk", s("1"))]), &schema()).expect_err("refused");
    assert!(cancels_transaction(&error));
    assert!(!cancels_transaction(&ApiError::validation(
        "Duplicate identifiers in select clause: v"
    )));
}

fn sort_operators_of(text: &str, parameters: &[AttributeValue]) -> Vec<KeyOperator> {
    let parsed = parse_statement(text).expect(text);
    let Statement::Select(select) = parsed.statement else {
        panic!("a select")
    };
    sort_key_operators(select.condition.as_ref(), &schema(), &Parameters(parameters))
}

#[test]
fn top_level_sort_key_conditions_become_key_operators() {
    let n = |v: &str| AttributeValue::N(Number::parse(v).expect("a number"));
    assert_eq!(
        sort_operators_of("SELECT * FROM t WHERE pk = 'a' AND sk > 2 AND 5 >= sk", &[]),
        vec![KeyOperator::Gt(n("2")), KeyOperator::Le(n("5"))]
    );
    assert_eq!(
        sort_operators_of(
            "SELECT * FROM t WHERE pk = 'a' AND sk BETWEEN ? AND 9 AND sk = 3",
            &[n("1")]
        ),
        vec![KeyOperator::Between(n("1"), n("9")), KeyOperator::Eq(n("3"))]
    );
    // Under OR or NOT, of another type, `<>`, or on another attribute: a filter only.
    for text in [
        "SELECT * FROM t WHERE pk = 'a' AND (sk > 2 OR sk < 1)",
        "SELECT * FROM t WHERE pk = 'a' AND NOT sk > 2",
        "SELECT * FROM t WHERE pk = 'a' AND sk > 'x'",
        "SELECT * FROM t WHERE pk = 'a' AND sk <> 2",
        "SELECT * FROM t WHERE pk = 'a' AND x > 2",
        "SELECT * FROM t WHERE pk = 'a' AND begins_with(sk, '1')",
        "SELECT * FROM t WHERE pk = 'a' AND sk.x > 2",
    ] {
        assert_eq!(sort_operators_of(text, &[]), Vec::new(), "{text}");
    }
}
