"""PartiQL for DynamoDB, black box: the real `switchyard store` driven with boto3's
ExecuteStatement, BatchExecuteStatement and ExecuteTransaction — SELECT (key and non-key
conditions, projections of nested paths, indexes, Limit/NextToken, ORDER BY), INSERT (refused
on an existing item), UPDATE (SET/REMOVE, conditions, RETURNING), DELETE, `?` parameters,
DynamoDB's error types and messages, ConsumedCapacity, ReturnValuesOnConditionCheckFailure,
and a PartiQL write showing up in the table's stream like any other write."""

import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from test_store_harness import ACCESS_KEY_ID, REGION, SECRET, create_table, error_of, store_fixture

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

names = (f"partiql-{i}" for i in itertools.count())
MALFORMED = "Statement wasn't well formed, can't be processed: "
NODE_DEADLINE_S = 120


store = store_fixture()


@pytest.fixture(scope="module")
def client(store):
    return store.client()


@pytest.fixture
def table(client):
    """A table keyed by (pk S, sk N) with a GSI on `g`, holding pk 'a' sk 1..5 and pk 'b' sk 1."""
    name = create_table(
        client, next(names), range_key=("sk", "N"), extra_attributes={"g": "S"},
        GlobalSecondaryIndexes=[{
            "IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
    )
    for sk in range(1, 6):
        client.put_item(TableName=name, Item={
            "pk": {"S": "a"}, "sk": {"N": str(sk)}, "g": {"S": "even" if sk % 2 == 0 else "odd"},
            "m": {"M": {"k": {"L": [{"S": "x"}, {"N": str(sk * 10)}]}, "z": {"S": f"z{sk}"}}},
        })
    client.put_item(TableName=name, Item={"pk": {"S": "b"}, "sk": {"N": "1"}, "g": {"S": "odd"}})
    return name


def run(client, statement, **kwargs):
    return client.execute_statement(Statement=statement, **kwargs)


def failure(client, statement, **kwargs):
    with pytest.raises(ClientError) as excinfo:
        run(client, statement, **kwargs)
    code, message, _ = error_of(excinfo)
    return code, message


def test_select_by_key_with_projection_of_nested_paths(client, table):
    items = run(client, f'SELECT sk, m.k[1], m.z FROM "{table}" WHERE pk = ? AND sk >= 4',
                Parameters=[{"S": "a"}])["Items"]
    assert items == [
        {"sk": {"N": "4"}, "k[1]": {"N": "40"}, "z": {"S": "z4"}},
        {"sk": {"N": "5"}, "k[1]": {"N": "50"}, "z": {"S": "z5"}},
    ]


def test_select_non_key_conditions_scan_the_table(client, table):
    items = run(client, f"SELECT pk, sk FROM \"{table}\" WHERE g = 'odd' AND (m IS MISSING OR sk BETWEEN 2 AND 3)")["Items"]
    assert sorted((i["pk"]["S"], i["sk"]["N"]) for i in items) == [("a", "3"), ("b", "1")]
    items = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND begins_with(m.z, 'z') AND contains(m.k, 'x') "
                        "AND size(m.k) = 2 AND attribute_type(m, 'M') AND sk <> 2")["Items"]
    assert [i["sk"]["N"] for i in items] == ["1", "3", "4", "5"]


def test_select_in_order_by_and_index(client, table):
    items = run(client, f"SELECT pk, sk FROM \"{table}\" WHERE pk IN ['b', 'a'] AND sk < 3 ORDER BY pk DESC")["Items"]
    assert [(i["pk"]["S"], i["sk"]["N"]) for i in items] == [("b", "1"), ("a", "1"), ("a", "2")]
    # An OR of key equalities reads those partitions, as IN does (so ORDER BY on the key works).
    items = run(client, f"SELECT pk, sk FROM \"{table}\" WHERE (pk = 'a' OR pk = 'b') AND sk < 3 ORDER BY pk DESC")["Items"]
    assert [(i["pk"]["S"], i["sk"]["N"]) for i in items] == [("b", "1"), ("a", "1"), ("a", "2")]
    items = run(client, f"SELECT pk, sk FROM \"{table}\" WHERE pk = 'b' OR pk IN ['a'] ORDER BY pk")["Items"]
    assert [(i["pk"]["S"], i["sk"]["N"]) for i in items] == [("a", str(n)) for n in range(1, 6)] + [("b", "1")]
    items = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' ORDER BY sk DESC")["Items"]
    assert [i["sk"]["N"] for i in items] == ["5", "4", "3", "2", "1"]
    items = run(client, f'SELECT pk, sk FROM "{table}"."by-g" WHERE g = \'even\'')["Items"]
    assert sorted(i["sk"]["N"] for i in items) == ["2", "4"]
    code, message = failure(client, f"SELECT * FROM \"{table}\" WHERE g = 'odd' ORDER BY sk")
    assert code == "ValidationException" and "hash key condition" in message
    code, message = failure(client, f'SELECT * FROM "{table}"."by-g" WHERE g = \'odd\'', ConsistentRead=True)
    assert (code, message) == ("ValidationException", "Consistent reads are not supported on global secondary indexes")
    code, message = failure(client, f'SELECT * FROM "{table}"."nope"')
    assert (code, message) == ("ValidationException", "The table does not have the specified index: nope")


def test_limit_and_next_token_page_through_everything(client, table):
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"Limit": 2}
        if token:
            kwargs["NextToken"] = token
        page = run(client, f'SELECT sk FROM "{table}" WHERE pk = \'a\'', **kwargs)
        seen += [i["sk"]["N"] for i in page["Items"]]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
        assert pages < 10
    assert seen == ["1", "2", "3", "4", "5"]
    first = run(client, f'SELECT sk FROM "{table}" WHERE pk = \'a\'', Limit=1)["NextToken"]
    code, message = failure(client, f'SELECT sk FROM "{table}" WHERE pk = \'b\'', NextToken=first)
    assert code == "ValidationException" and message.startswith("The provided starting key is invalid")
    code, message = failure(client, f'SELECT sk FROM "{table}"', NextToken="not-a-token")
    assert (code, message) == ("ValidationException", "Invalid NextToken")
    # A token rewritten by the client: its key moved to another partition (the statement would
    # restart, or read rows twice), or its partition past the statement's list.
    decoded = json.loads(base64.b64decode(first))
    moved = dict(decoded, key=dict(decoded["key"], pk={"S": "b"}))
    code, message = failure(client, f'SELECT sk FROM "{table}" WHERE pk = \'a\'',
                            NextToken=base64.b64encode(json.dumps(moved).encode()).decode())
    assert (code, message) == (
        "ValidationException", "The provided starting key is outside query boundaries based on provided conditions")
    past = dict(decoded, partition=1)
    code, message = failure(client, f'SELECT sk FROM "{table}" WHERE pk = \'a\'',
                            NextToken=base64.b64encode(json.dumps(past).encode()).decode())
    assert (code, message) == ("ValidationException", "Invalid NextToken")


def test_insert_update_delete_round_trip(client, table):
    run(client, f"INSERT INTO \"{table}\" VALUE {{'pk': ?, 'sk': 9, 'tags': <<'x', 'y'>>, 'n': 1, 'l': [1, 'two']}}",
        Parameters=[{"S": "c"}])
    item = client.get_item(TableName=table, Key={"pk": {"S": "c"}, "sk": {"N": "9"}})["Item"]
    assert item["tags"] == {"SS": ["x", "y"]} and item["l"] == {"L": [{"N": "1"}, {"S": "two"}]}

    code, message = failure(client, f"INSERT INTO \"{table}\" VALUE {{'pk': 'c', 'sk': 9}}")
    assert (code, message) == ("DuplicateItemException", "Duplicate primary key exists in table")

    answer = run(client, f"UPDATE \"{table}\" SET n = n + 4 SET tags = set_add(tags, <<'z'>>) REMOVE l "
                         f"WHERE pk = 'c' AND sk = 9 AND n = 1 RETURNING ALL NEW *")
    assert answer["Items"][0]["n"] == {"N": "5"} and "l" not in answer["Items"][0]
    assert answer["Items"][0]["tags"] == {"SS": ["x", "y", "z"]}

    code, message = failure(client, f"UPDATE \"{table}\" SET n = 0 WHERE pk = 'c' AND sk = 9 AND n = 1",
                            ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert (code, message) == ("ConditionalCheckFailedException", "The conditional request failed")
    with pytest.raises(ClientError) as excinfo:
        run(client, f"UPDATE \"{table}\" SET n = 0 WHERE pk = 'c' AND sk = 9 AND n = 1",
            ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert excinfo.value.response["Item"]["n"] == {"N": "5"}

    code, _ = failure(client, f"UPDATE \"{table}\" SET n = 0 WHERE pk = 'missing' AND sk = 1")
    assert code == "ConditionalCheckFailedException"
    code, message = failure(client, f"UPDATE \"{table}\" SET n = 0 WHERE pk = 'c'")
    assert (code, message) == ("ValidationException",
                               "Where clause does not contain a mandatory equality on all key attributes")
    code, message = failure(client, f"UPDATE \"{table}\" SET sk = 3 WHERE pk = 'c' AND sk = 9")
    assert code == "ValidationException" and "part of the key" in message

    answer = run(client, f"DELETE FROM \"{table}\" WHERE pk = 'c' AND sk = 9 RETURNING ALL OLD *")
    assert answer["Items"][0]["n"] == {"N": "5"}
    assert "Item" not in client.get_item(TableName=table, Key={"pk": {"S": "c"}, "sk": {"N": "9"}})
    # DELETE of an item that is not there succeeds, as in DynamoDB.
    assert run(client, f"DELETE FROM \"{table}\" WHERE pk = 'c' AND sk = 9")["Items"] == []


def test_errors_read_as_dynamodb_writes_them(client, table, store):
    assert failure(client, f'SELECT * FROM "{table}" WHERE pk = 1 foo') == (
        "ValidationException", f"{MALFORMED}Unexpected token after expression")
    assert failure(client, f'SELECT * FROM "{table}" WHERE') == ("ValidationException", f"{MALFORMED}Unexpected term")
    assert failure(client, f'SELECT * FROM "{table}" t WHERE pk = \'a\'') == (
        "ValidationException", "Aliasing is not supported")
    assert failure(client, f'SELECT * FROM "{table}" WHERE pk = ?') == (
        "ValidationException", "Number of parameters in request and statement don't match.")
    code, message = failure(client, 'SELECT * FROM "no-such-table"')
    assert code == "ResourceNotFoundException"
    # PartiQL's reserved keywords (SQL-92's and PartiQL's) are names only when quoted.
    for word in ("date", "VALUE", "key", "user", "timestamp", "index", "size"):
        assert failure(client, f'SELECT * FROM "{table}" WHERE pk = \'a\' AND {word} = 1') == (
            "ValidationException", f"{MALFORMED}Unexpected keyword"), word
        assert run(client, f'SELECT * FROM "{table}" WHERE pk = \'a\' AND "{word}" = 1')["Items"] == []
    # ...and the keywords that are functions still call them.
    items = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND size(m.z) = 2")["Items"]
    assert len(items) == 5
    code, message = failure(client, f"SELECT * FROM \"{table}\" WHERE pk = 1")
    assert (code, message) == ("ValidationException",
                               "Key attribute's data type should match its data type in table's schema: Key pk")
    # Limit below 1 is refused by the server too (boto3 validates it first, so send it raw).
    status, body = store.raw("ExecuteStatement", {"Statement": f'SELECT * FROM "{table}"', "Limit": 0})
    assert status == 400 and body["__type"].endswith("#ValidationException") and "'limit'" in body["message"]


def test_consumed_capacity(client, table):
    answer = run(client, f"SELECT * FROM \"{table}\" WHERE pk = 'b'", ReturnConsumedCapacity="TOTAL")
    assert answer["ConsumedCapacity"]["TableName"] == table and answer["ConsumedCapacity"]["CapacityUnits"] > 0
    answer = run(client, f"INSERT INTO \"{table}\" VALUE {{'pk': 'cap', 'sk': 1}}", ReturnConsumedCapacity="TOTAL")
    assert answer["ConsumedCapacity"] == {"TableName": table, "CapacityUnits": 1.0}


def test_batch_execute_statement(client, table):
    answer = client.batch_execute_statement(Statements=[
        {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'batch', 'sk': 1, 'v': 1}}"},
        {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'a', 'sk': 1}}"},
        {"Statement": f"UPDATE \"{table}\" SET v = 2 WHERE pk = 'b' AND sk = 1 AND v = 7",
         "ReturnValuesOnConditionCheckFailure": "ALL_OLD"},
        {"Statement": "SLECT nonsense"},
    ], ReturnConsumedCapacity="TOTAL")["Responses"]
    assert answer[0] == {"TableName": table}
    assert answer[1]["Error"] == {"Code": "DuplicateItem", "Message": "Duplicate primary key exists in table"}
    assert answer[2]["Error"]["Code"] == "ConditionalCheckFailed" and answer[2]["Error"]["Item"]["g"] == {"S": "odd"}
    assert answer[3]["Error"]["Code"] == "ValidationError"
    assert answer[3]["Error"]["Message"] == f"{MALFORMED}Expected data manipulation"

    answer = client.batch_execute_statement(Statements=[
        {"Statement": f"SELECT v FROM \"{table}\" WHERE pk = ? AND sk = ?", "Parameters": [{"S": "batch"}, {"N": "1"}]},
        {"Statement": f"SELECT * FROM \"{table}\" WHERE pk = 'nobody' AND sk = 1"},
        {"Statement": f"SELECT * FROM \"{table}\" WHERE pk = 'a'"},
    ])["Responses"]
    assert answer[0] == {"TableName": table, "Item": {"v": {"N": "1"}}}
    assert answer[1] == {"TableName": table}
    assert answer[2]["Error"]["Code"] == "ValidationError"


def test_execute_transaction(client, table):
    # A transaction of writes answers an empty Responses list, as DynamoDB does.
    answer = client.execute_transaction(TransactStatements=[
        {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'tx', 'sk': 1, 'n': 1}}"},
        {"Statement": f"UPDATE \"{table}\" SET seen = true WHERE pk = 'a' AND sk = 1"},
        {"Statement": f"EXISTS(SELECT * FROM \"{table}\" WHERE pk = 'b' AND sk = 1 AND g = 'odd')"},
    ], ClientRequestToken="token-1")
    assert answer["Responses"] == [] and "ConsumedCapacity" not in answer
    assert client.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"N": "1"}})["Item"]["seen"] == {"BOOL": True}

    # The same token and statements again: success, nothing runs twice (the INSERT would fail).
    again = client.execute_transaction(TransactStatements=[
        {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'tx', 'sk': 1, 'n': 1}}"},
        {"Statement": f"UPDATE \"{table}\" SET seen = true WHERE pk = 'a' AND sk = 1"},
        {"Statement": f"EXISTS(SELECT * FROM \"{table}\" WHERE pk = 'b' AND sk = 1 AND g = 'odd')"},
    ], ClientRequestToken="token-1")
    assert again["Responses"] == []

    with pytest.raises(ClientError) as excinfo:
        client.execute_transaction(TransactStatements=[
            {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'tx2', 'sk': 1}}"},
            {"Statement": f"UPDATE \"{table}\" SET n = 2 WHERE pk = 'nobody' AND sk = 1"},
            {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'tx', 'sk': 1}}"},
        ])
    assert excinfo.value.response["Error"]["Code"] == "TransactionCanceledException"
    codes = [r["Code"] for r in excinfo.value.response["CancellationReasons"]]
    assert codes == ["None", "ConditionalCheckFailed", "DuplicateItem"]
    assert "Item" not in client.get_item(TableName=table, Key={"pk": {"S": "tx2"}, "sk": {"N": "1"}})

    answer = client.execute_transaction(TransactStatements=[
        {"Statement": f"SELECT n FROM \"{table}\" WHERE pk = 'tx' AND sk = 1"},
        {"Statement": f"SELECT * FROM \"{table}\" WHERE pk = 'nobody' AND sk = 1"},
    ])["Responses"]
    assert answer == [{"Item": {"n": {"N": "1"}}}, {}]

    with pytest.raises(ClientError) as excinfo:
        client.execute_transaction(TransactStatements=[
            {"Statement": f"SELECT * FROM \"{table}\" WHERE pk = 'tx' AND sk = 1"},
            {"Statement": f"DELETE FROM \"{table}\" WHERE pk = 'tx' AND sk = 1"},
        ])
    assert error_of(excinfo)[:2] == (
        "ValidationException",
        "ExecuteTransaction API does not support both read and write operations in the same request.")
    with pytest.raises(ClientError) as excinfo:
        client.execute_transaction(TransactStatements=[{"Statement": f"SELECT * FROM \"{table}\" WHERE"}])
    assert error_of(excinfo)[:2] == (
        "ValidationException", f"Validation failed in TransactStatements[0]: {MALFORMED}Unexpected term")


def test_partiql_writes_reach_the_stream(client, store):
    name = create_table(client, next(names),
                        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    arn = client.describe_table(TableName=name)["Table"]["LatestStreamArn"]
    run(client, f"INSERT INTO \"{name}\" VALUE {{'pk': 'k', 'v': 1}}")
    run(client, f"UPDATE \"{name}\" SET v = 2 WHERE pk = 'k'")
    run(client, f"DELETE FROM \"{name}\" WHERE pk = 'k'")
    streams = boto3.client(
        "dynamodbstreams", region_name=REGION, endpoint_url=store.url,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    assert records[1]["dynamodb"]["OldImage"]["v"] == {"N": "1"}
    assert records[1]["dynamodb"]["NewImage"]["v"] == {"N": "2"}


def test_js_sdk_runs_statements(store):
    js = Path(__file__).resolve().parents[1] / "js"
    if not shutil.which("node") or not (js / "node_modules" / "@aws-sdk" / "client-dynamodb").exists():
        pytest.skip("node and tests/js/node_modules are needed (scripts/install-test-deps.sh installs them)")
    result = subprocess.run(["node", str(js / "partiql.mjs"), store.url, "js-partiql"],
                            capture_output=True, text=True, timeout=NODE_DEADLINE_S)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["selected"] == [{"l[2]": {"N": "3"}, "n": {"N": "1"}}]
    assert seen["updated"] == [{"n": {"N": "2"}}]
    assert seen["duplicate"] == {"name": "DuplicateItemException", "message": "Duplicate primary key exists in table"}
    assert seen["batch"][0] == {"TableName": "js-partiql"}
    assert seen["batch"][1]["Error"]["Code"] == "DuplicateItem"
    assert seen["after"] == [{"Item": {"t": {"BOOL": True}}}, {}]


def test_key_values_a_select_pins_are_checked_as_a_query_checks_them(client, table):
    """An empty partition value, or a sort-key value of the wrong type, is DynamoDB's
    ValidationException, not an empty page."""
    code, message = failure(client, f"SELECT * FROM \"{table}\" WHERE pk = '' AND sk = 1")
    assert code == "ValidationException"
    assert "cannot contain an empty string value. Key: pk" in message
    code, message = failure(client, f'SELECT * FROM "{table}" WHERE pk = ? AND sk = ?',
                            Parameters=[{"S": "a"}, {"S": "1"}])
    assert (code, message) == ("ValidationException",
                               "Key attribute's data type should match its data type in table's schema: Key sk")
    code, message = failure(client, f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk BETWEEN 5 AND 0")
    assert code == "ValidationException" and "requires upper bound to be greater than or equal to lower bound" in message
    code, message = failure(client, f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND begins_with(sk, 1)")
    assert (code, message) == ("ValidationException", "Incorrect operand type for operator or function; "
                                                      "operator or function: begins_with, operand type: N")
    assert len(run(client, f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk BETWEEN 2 AND 4")["Items"]) == 3


def test_a_batch_naming_one_item_twice_is_refused_whole(client, table):
    update = f"UPDATE \"{table}\" SET note = ? WHERE pk = 'a' AND sk = 1"
    with pytest.raises(ClientError) as excinfo:
        client.batch_execute_statement(Statements=[
            {"Statement": update, "Parameters": [{"S": "first"}]},
            {"Statement": f"UPDATE \"{table}\" SET note = 'other' WHERE pk = 'a' AND sk = 2"},
            {"Statement": update, "Parameters": [{"S": "second"}]},
        ])
    assert error_of(excinfo)[:2] == ("ValidationException", "Provided list of item keys contains duplicates")
    for sk in ("1", "2"):
        item = client.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"N": sk}})["Item"]
        assert "note" not in item, "nothing of a refused batch is written"
    select = f"SELECT * FROM \"{table}\" WHERE pk = 'b' AND sk = 1"
    with pytest.raises(ClientError) as excinfo:
        client.batch_execute_statement(Statements=[{"Statement": select}, {"Statement": select}])
    assert error_of(excinfo)[:2] == ("ValidationException", "Provided list of item keys contains duplicates")


def test_a_replayed_transaction_reports_the_reads_it_consumed(client, table):
    """DynamoDB: "Subsequent calls with the same client token return the number of read
    capacity units consumed in reading the item" (a transactional read: two units per 4 KB)."""
    statements = [{"Statement": f"UPDATE \"{table}\" SET note = 'once' WHERE pk = 'b' AND sk = 1"}]
    first = client.execute_transaction(TransactStatements=statements, ClientRequestToken="replayed-token-1",
                                       ReturnConsumedCapacity="TOTAL")
    again = client.execute_transaction(TransactStatements=statements, ClientRequestToken="replayed-token-1",
                                       ReturnConsumedCapacity="TOTAL")
    assert first["ConsumedCapacity"][0]["TableName"] == table
    assert again["ConsumedCapacity"] == [{"TableName": table, "CapacityUnits": 2.0}]


def test_a_delete_of_an_absent_item_checks_nothing(client, table):
    """DynamoDB evaluates the rest of a DELETE's WHERE on the item when it is there (a false
    one is ConditionalCheckFailedException); a DELETE of an absent item is a no-op, whatever
    the rest says — alone and in a transaction (DynamoDB Local answers so too)."""
    statement = f"DELETE FROM \"{table}\" WHERE pk = 'nobody' AND sk = 1 AND g = 'odd'"
    assert run(client, statement)["Items"] == []
    assert client.execute_transaction(TransactStatements=[{"Statement": statement}])["Responses"] == []
    code, _ = failure(client, f"DELETE FROM \"{table}\" WHERE pk = 'b' AND sk = 1 AND g = 'even'")
    assert code == "ConditionalCheckFailedException"
    assert run(client, f"DELETE FROM \"{table}\" WHERE pk = 'b' AND sk = 1 AND g = 'odd' RETURNING ALL OLD *")[
        "Items"][0]["g"] == {"S": "odd"}
    # UPDATE still needs the item.
    code, _ = failure(client, f"UPDATE \"{table}\" SET v = 1 WHERE pk = 'nobody' AND sk = 1 AND attribute_not_exists(v)")
    assert code == "ConditionalCheckFailedException"


def test_statements_dynamodb_refuses(client, table):
    """What DynamoDB refuses that the store used to run, in DynamoDB's words."""
    items = [{"M": {"pk": {"S": "p"}, "sk": {"N": "1"}}}]
    assert failure(client, f'INSERT INTO "{table}" VALUE ?', Parameters=items) == (
        "ValidationException", "Unsupported format in item expression. Please use struct format {...} "
                               "to express item values for insert statement.")
    assert "Item" not in client.get_item(TableName=table, Key={"pk": {"S": "p"}, "sk": {"N": "1"}})
    # Functions: the PartiQL reference's list (EXISTS takes a subquery, MISSING is `IS MISSING`).
    assert failure(client, f'SELECT * FROM "{table}" WHERE exists(m)') == (
        "ValidationException", "Unrecognized function: exists")
    assert failure(client, f'SELECT * FROM "{table}" WHERE missing(m)')[1].startswith(MALFORMED)
    assert failure(client, f'SELECT * FROM "{table}" WHERE g = MISSING') == (
        "ValidationException", "MISSING must be compared using IS operator")
    # IN takes a list: `IN ?` is refused, `IN (?)` is a list of one.
    assert failure(client, f'SELECT * FROM "{table}" WHERE g IN ?', Parameters=[{"L": [{"S": "odd"}]}]) == (
        "ValidationException", "IN operator must have a left hand argument of type Variable Reference and right hand "
                               "argument of type Seq with at least one member")
    assert len(run(client, f'SELECT * FROM "{table}" WHERE g IN (?)', Parameters=[{"S": "odd"}])["Items"]) == 4
    assert failure(client, f'SELECT * FROM "{table}" ORDER BY pk') == (
        "ValidationException", "Must have WHERE clause in the statement when using ORDER BY clause.")
    no_key = ("ValidationException", "Where clause does not contain a mandatory equality on all key attributes")
    assert failure(client, f'DELETE FROM "{table}"') == no_key
    assert failure(client, f'UPDATE "{table}" SET v = 1') == no_key
    assert failure(client, f'UPDATE "{table}"."by-g" SET v = 1 WHERE pk = \'a\' AND sk = 1') == (
        "ValidationException", "This operation is not supported on an index")


def test_a_key_named_twice_by_one_value_is_one_item(client, table):
    answer = run(client, f"UPDATE \"{table}\" SET v = 1 WHERE pk = 'a' AND sk = 2 AND sk = 2 RETURNING MODIFIED NEW *")
    assert answer["Items"] == [{"v": {"N": "1"}}]
    assert failure(client, f"UPDATE \"{table}\" SET v = 1 WHERE pk = 'a' AND sk = 2 AND sk = 3") == (
        "ValidationException", "Multiple conditions on same key sk. Only single item Update/Insert/Delete are supported")


def test_values_are_refused_in_dynamodbs_words(client, table):
    def insert(value):
        return failure(client, f"INSERT INTO \"{table}\" VALUE {{'pk': 'v', 'sk': 1, 'v': {value}}}")
    assert insert("123456789012345678901234567890123456789") == (
        "ValidationException", "DynamoDB only supports precision up to 38 digits")
    assert insert("{'a': [1e300]}") == (
        "ValidationException", "Number overflow. Attempting to store a number with magnitude larger than supported range")
    assert insert("<<1, 'a'>>") == (
        "ValidationException", "Unsupported data type in Bag. DynamoDB only supports either numbers or strings in bags")
    assert insert("{'b': 1, 'b': 2}") == ("ValidationException", "Duplicate keys in tuple. Key: b under root")
    assert failure(client, f"UPDATE \"{table}\" SET n = n + 'x' WHERE pk = 'a' AND sk = 1") == (
        "ValidationException", "Incorrect operand type for operator or function; operator or function: +, operand type: S")
    assert failure(client, f"UPDATE \"{table}\" SET s = set_add(t, <<'x'>>) WHERE pk = 'a' AND sk = 1") == (
        "ValidationException", "The first argument to SET_ADD must equal the assignment value")


# What follows is DynamoDB's behaviour as DynamoDB Local (AWS's own PartiQL front end) answers it.

def transaction_failure(client, statements):
    with pytest.raises(ClientError) as excinfo:
        client.execute_transaction(TransactStatements=[{"Statement": s} for s in statements])
    return excinfo.value.response


def test_reads_in_batches_and_transactions_name_one_item_by_its_key_alone(client, table):
    """A SELECT in a batch or a transaction is a GetItem: DynamoDB refuses any condition beyond
    the key (it does not filter the item), and index reads."""
    key = f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk = 1"
    single = {"Code": "ValidationError", "Message": "Only single item select is supported"}
    answer = client.batch_execute_statement(Statements=[
        {"Statement": f"{key} AND g = 'odd'"},
        {"Statement": f"{key} AND g = 'even'"},
        {"Statement": f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk > 1"},
        {"Statement": f"SELECT * FROM \"{table}\".\"by-g\" WHERE g = 'odd'"},
        {"Statement": f"SELECT sk FROM \"{table}\" WHERE pk = 'b' AND sk = 1 AND sk = 1"},
    ])["Responses"]
    assert [r.get("Error") for r in answer[:4]] == [single] * 4
    assert answer[4]["Item"] == {"sk": {"N": "1"}}

    prefix = "Validation failed in TransactStatements[1]: "
    for statement, message in [
        (f"{key} AND g = 'odd'", "Select statements within ExecuteTransaction must specify the primary key in the where clause."),
        (f"SELECT * FROM \"{table}\" WHERE pk = 'a'", "Select statements within ExecuteTransaction must specify the primary key in the where clause."),
        (f"SELECT * FROM \"{table}\".\"by-g\" WHERE g = 'odd'", "Reads on indices are not supported within transactions."),
    ]:
        error = transaction_failure(client, [f"SELECT * FROM \"{table}\" WHERE pk = 'b' AND sk = 1", statement])["Error"]
        assert (error["Code"], error["Message"]) == ("ValidationException", prefix + message)
    answer = client.execute_transaction(TransactStatements=[{"Statement": f"{key} AND sk = 1"}])["Responses"]
    assert answer[0]["Item"]["g"] == {"S": "odd"}


def test_batch_writes_answer_what_returning_asks(client, table):
    """BatchStatementResponse's Item: a batch's UPDATE and DELETE return what their RETURNING
    asks, as ExecuteStatement does."""
    answer = client.batch_execute_statement(Statements=[
        {"Statement": f"UPDATE \"{table}\" SET w = 5 WHERE pk = 'a' AND sk = 1 RETURNING MODIFIED NEW *"},
        {"Statement": f"UPDATE \"{table}\" SET w = 6 WHERE pk = 'a' AND sk = 2 RETURNING ALL OLD *"},
        {"Statement": f"UPDATE \"{table}\" SET w = 7 WHERE pk = 'a' AND sk = 3 RETURNING MODIFIED OLD *"},
        {"Statement": f"DELETE FROM \"{table}\" WHERE pk = 'b' AND sk = 1 RETURNING ALL OLD *"},
        {"Statement": f"DELETE FROM \"{table}\" WHERE pk = 'nobody' AND sk = 1 RETURNING ALL OLD *"},
        {"Statement": f"UPDATE \"{table}\" SET w = 8 WHERE pk = 'a' AND sk = 4"},
    ])["Responses"]
    assert answer[0] == {"TableName": table, "Item": {"w": {"N": "5"}}}
    assert answer[1]["Item"]["sk"] == {"N": "2"} and "w" not in answer[1]["Item"]
    assert answer[2] == {"TableName": table}, "nothing modified was there before"
    assert answer[3] == {"TableName": table, "Item": {"pk": {"S": "b"}, "sk": {"N": "1"}, "g": {"S": "odd"}}}
    assert answer[4] == {"TableName": table}
    assert answer[5] == {"TableName": table}


def test_exists_reads_one_item_with_a_condition_more(client, table):
    update = f"UPDATE \"{table}\" SET seen = true WHERE pk = 'a' AND sk = 2"
    for where in ["pk = 'a' AND sk = 1", "pk = 'a'", "pk = 'a' AND g = 'odd'"]:
        error = transaction_failure(client, [update, f"EXISTS(SELECT * FROM \"{table}\" WHERE {where})"])["Error"]
        assert (error["Code"], error["Message"]) == (
            "ValidationException",
            "Validation failed in TransactStatements[1]: EXISTS() must contain a single item read with additional condition")
    error = transaction_failure(client, [update, f"EXISTS(SELECT * FROM \"{table}\".\"by-g\" WHERE pk = 'a' AND sk = 1 AND v = 1)"])["Error"]
    assert error["Message"] == "Validation failed in TransactStatements[1]: Operations on indices are not supported in transactions"
    assert "seen" not in client.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"N": "2"}})["Item"]
    # The key named twice is a condition more.
    assert client.execute_transaction(TransactStatements=[
        {"Statement": update}, {"Statement": f"EXISTS(SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk = 1 AND sk = 1)"},
    ])["Responses"] == []
    exists = f"EXISTS(SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk = 1 AND g = 'odd')"
    outside = "EXISTS can only be used in ExecuteTransaction write requests."
    assert failure(client, exists) == ("ValidationException", outside)
    answer = client.batch_execute_statement(Statements=[{"Statement": exists}])["Responses"]
    assert answer[0]["Error"] == {"Code": "ValidationError", "Message": outside}


def test_order_by_and_insert_keys_in_dynamodbs_words(client, table):
    assert failure(client, f"SELECT * FROM \"{table}\" WHERE pk = 'a' ORDER BY g") == (
        "ValidationException", "Variable reference g in ORDER BY clause must be part of the primary key")
    assert failure(client, f"SELECT * FROM \"{table}\".\"by-g\" WHERE g = 'odd' ORDER BY sk") == (
        "ValidationException", "Variable reference sk in ORDER BY clause must be part of the primary key")
    present = "Key attribute should be present in the item: Key "
    typed = "Key attribute's data type should match its data type in table's schema: Key "
    for value, message in [("{'pk': 'x'}", present + "sk"), ("{'v': 1}", present + "pk"),
                           ("{'pk': 'x', 'sk': '1'}", typed + "sk"), ("{'pk': 1}", typed + "pk"),
                           ("{'pk': null, 'sk': 1}", typed + "pk"), ("{'pk': '', 'sk': '1'}", typed + "sk")]:
        assert failure(client, f"INSERT INTO \"{table}\" VALUE {value}") == ("ValidationException", message), value
    answer = client.batch_execute_statement(Statements=[
        {"Statement": f"INSERT INTO \"{table}\" VALUE {{'pk': 'x'}}"}])["Responses"]
    assert answer[0]["Error"] == {"Code": "ValidationError", "Message": present + "sk"}


def test_a_mistyped_key_cancels_the_transaction(client, table):
    """DynamoDB answers a key of the wrong type (or an INSERT without its key) inside
    ExecuteTransaction as a ValidationError cancellation reason; no other statement is checked."""
    typed = "Key attribute's data type should match its data type in table's schema: Key sk"
    cases = [
        ([f"UPDATE \"{table}\" SET n = 1 WHERE pk = 'a' AND sk = 2 AND g = 'nope'",
          f"UPDATE \"{table}\" SET n = 1 WHERE pk = 'a' AND sk = '1'"], 1, typed),
        ([f"DELETE FROM \"{table}\" WHERE pk = 'a' AND sk = '1'",
          f"UPDATE \"{table}\" SET n = 1 WHERE pk = 'a'"], 0, typed),
        ([f"INSERT INTO \"{table}\" VALUE {{'pk': 'new', 'sk': 1}}",
          f"INSERT INTO \"{table}\" VALUE {{'pk': 'new', 'sk': '2'}}"], 1, typed),
        ([f"INSERT INTO \"{table}\" VALUE {{'pk': 'new'}}"], 0, "Key attribute should be present in the item: Key sk"),
        ([f"EXISTS(SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk = '1' AND g = 'odd')",
          f"UPDATE \"{table}\" SET n = 1 WHERE pk = 'a' AND sk = 2"], 0, typed),
        ([f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk = 2",
          f"SELECT * FROM \"{table}\" WHERE pk = 'a' AND sk = '1'"], 1, typed),
    ]
    for statements, position, message in cases:
        response = transaction_failure(client, statements)
        assert response["Error"]["Code"] == "TransactionCanceledException", statements
        expected = [{"Code": "None"}] * len(statements)
        expected[position] = {"Code": "ValidationError", "Message": message}
        assert response["CancellationReasons"] == expected, statements
    assert "n" not in client.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"N": "2"}})["Item"]
    assert "Item" not in client.get_item(TableName=table, Key={"pk": {"S": "new"}, "sk": {"N": "1"}})


def test_sort_key_conditions_narrow_the_range_read_as_a_querys_key_condition(client, table):
    """DynamoDB runs a SELECT pinning the partition key as a Query: its conditions on the sort
    key are the key condition, so Limit counts (and capacity is charged for) only the items in
    that range, not the partition's items before it."""
    cases = [
        ("sk > 2", ["3", "4"]), ("2 < sk", ["3", "4"]), ("sk >= 4", ["4", "5"]),
        ("sk BETWEEN 3 AND 5", ["3", "4"]), ("sk = 5", ["5"]), ("sk > 1 AND sk >= 3 AND sk < 5", ["3", "4"]),
    ]
    for condition, expected in cases:
        page = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND {condition}", Limit=2)
        assert [i["sk"]["N"] for i in page["Items"]] == expected, condition
    items = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk > 2 ORDER BY sk DESC", Limit=2)["Items"]
    assert [i["sk"]["N"] for i in items] == ["5", "4"]
    items = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk > 4 AND sk < 2")["Items"]
    assert items == []
    # Paging through a narrowed range ends inside it.
    seen, token = [], None
    for _ in range(5):
        page = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk >= 2 AND sk <= 4", Limit=2,
                   **({"NextToken": token} if token else {}))
        seen += [i["sk"]["N"] for i in page["Items"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == ["2", "3", "4"]
    seen, token = [], None
    for _ in range(5):
        page = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk BETWEEN 2 AND 4 ORDER BY sk DESC",
                   Limit=1, **({"NextToken": token} if token else {}))
        seen += [i["sk"]["N"] for i in page["Items"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == ["4", "3", "2"]
    # With IN, each partition's range is narrowed.
    items = run(client, f"SELECT pk, sk FROM \"{table}\" WHERE pk IN ['a', 'b'] AND sk >= 1 AND sk < 2", Limit=2)["Items"]
    assert [(i["pk"]["S"], i["sk"]["N"]) for i in items] == [("a", "1"), ("b", "1")]
    # A begins_with on a string sort key.
    name = create_table(client, next(names), range_key=("s", "S"))
    for s in ("a1", "b1", "b2", "c1"):
        client.put_item(TableName=name, Item={"pk": {"S": "p"}, "s": {"S": s}})
    items = run(client, f"SELECT s FROM \"{name}\" WHERE pk = 'p' AND begins_with(s, 'b')", Limit=2)["Items"]
    assert [i["s"]["S"] for i in items] == ["b1", "b2"]
    # Capacity is charged for the range read, not the whole partition.
    big = create_table(client, next(names), range_key=("sk", "N"))
    for sk in range(12):
        client.put_item(TableName=big, Item={"pk": {"S": "p"}, "sk": {"N": str(sk)}, "v": {"S": "x" * 100_000}})
    page = run(client, f"SELECT sk FROM \"{big}\" WHERE pk = 'p' AND sk = 11", ReturnConsumedCapacity="TOTAL")
    # One item of ~100 KB read eventually consistent: 25 units of 4 KB, halved; and no page cut
    # at 1 MB before reaching it.
    assert page["Items"] == [{"sk": {"N": "11"}}] and "NextToken" not in page
    assert page["ConsumedCapacity"]["CapacityUnits"] == 12.5


def test_a_global_index_refuses_a_projection_of_what_it_does_not_hold(client):
    name = create_table(
        client, next(names), range_key=("sk", "N"), extra_attributes={"g": "S"},
        GlobalSecondaryIndexes=[{
            "IndexName": "keys", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }],
    )
    client.put_item(TableName=name, Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "g": {"S": "x"}, "o": {"S": "v"}})
    assert failure(client, f'SELECT o, sk FROM "{name}"."keys" WHERE g = \'x\'') == (
        "ValidationException",
        "One or more parameter values were invalid: Global secondary index keys does not project [o]")
    items = run(client, f'SELECT pk, sk FROM "{name}"."keys" WHERE g = \'x\'')["Items"]
    assert items == [{"pk": {"S": "a"}, "sk": {"N": "1"}}]


def test_sort_key_conditions_are_checked_as_a_querys_key_condition(client, table):
    """Beside a pinned partition key, a condition on the sort key is a Query's key condition:
    its value must be of the key's type and not empty (DynamoDB refuses the statement)."""
    typed = ("ValidationException", "Key attribute's data type should match its data type in table's schema: Key sk")
    for condition in ("sk > 'x'", "'x' < sk", "sk >= ?", "sk BETWEEN 'a' AND 'b'"):
        kwargs = {"Parameters": [{"S": "1"}]} if "?" in condition else {}
        assert failure(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND {condition}", **kwargs) == typed, condition
    assert failure(client, f"SELECT sk FROM \"{table}\" WHERE pk IN ['a', 'b'] AND sk < 'x'") == typed
    assert failure(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk <= true") == (
        "ValidationException", "Incorrect operand type for operator or function; operator or function: <=, operand type: BOOL")
    assert failure(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk BETWEEN 1 AND 'b'") == (
        "ValidationException", "The BETWEEN operator requires same data type for lower and upper bounds; "
        "lower bound operand: AttributeValue: {N:1}, upper bound operand: AttributeValue: {S:b}")
    assert failure(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND sk BETWEEN 3 AND 1") == (
        "ValidationException", "The BETWEEN operator requires upper bound to be greater than or equal to lower bound; "
        "lower bound operand: AttributeValue: {N:3}, upper bound operand: AttributeValue: {N:1}")
    name = create_table(client, next(names), range_key=("s", "S"))
    empty = ("ValidationException", "One or more parameter values are not valid. The AttributeValue for a key "
             "attribute cannot contain an empty string value. Key: s")
    for condition in ("s > ''", "s BETWEEN '' AND 'z'", "begins_with(s, '')"):
        assert failure(client, f"SELECT s FROM \"{name}\" WHERE pk = 'p' AND {condition}") == empty, condition
    assert failure(client, f"SELECT s FROM \"{name}\" WHERE pk = 'p' AND begins_with(s, 1)") == (
        "ValidationException", "Incorrect operand type for operator or function; operator or function: begins_with, operand type: N")
    # Inside an OR it is no key condition: a filter, as before.
    items = run(client, f"SELECT sk FROM \"{table}\" WHERE pk = 'a' AND (sk > 'x' OR sk = 1)")["Items"]
    assert items == [{"sk": {"N": "1"}}]


def test_a_select_from_an_index_consumes_the_indexs_capacity(client, table):
    """As a Query on the index does: ReturnConsumedCapacity INDEXES names the global index read."""
    statement = f'SELECT * FROM "{table}"."by-g" WHERE g = \'even\''
    query = client.query(TableName=table, IndexName="by-g", KeyConditionExpression="g = :g",
                         ExpressionAttributeValues={":g": {"S": "even"}}, ReturnConsumedCapacity="INDEXES")
    capacity = run(client, statement, ReturnConsumedCapacity="INDEXES")["ConsumedCapacity"]
    assert capacity == query["ConsumedCapacity"]
    assert capacity["GlobalSecondaryIndexes"]["by-g"]["CapacityUnits"] == capacity["CapacityUnits"] > 0
    assert run(client, statement, ReturnConsumedCapacity="TOTAL")["ConsumedCapacity"] == {
        "TableName": table, "CapacityUnits": capacity["CapacityUnits"]}


def test_is_tests_the_types_dynamodb_names(client):
    """IS takes a PartiQL type (DynamoDB's PartiQL operators): BOOLEAN, STRING, NUMERIC, BLOB,
    LIST, STRUCT/TUPLE besides NULL and MISSING; other PartiQL types are refused by name."""
    name = create_table(client, next(names))
    values = {"t": {"BOOL": True}, "s": {"S": "x"}, "n": {"N": "1.5"}, "b": {"B": b"x"}, "l": {"L": []},
              "m": {"M": {}}, "z": {"NULL": True}, "ss": {"SS": ["a"]}}
    client.put_item(TableName=name, Item={"pk": {"S": "a"}, **values})
    expected = {"BOOLEAN": "t", "bool": "t", "STRING": "s", "NUMERIC": "n", "BLOB": "b", "LIST": "l",
                "STRUCT": "m", "tuple": "m", "NULL": "z"}
    for type_name, attribute in expected.items():
        matching = [a for a in values
                    if run(client, f"SELECT pk FROM \"{name}\" WHERE pk = 'a' AND {a} IS {type_name}")["Items"]]
        assert matching == [attribute], type_name
    assert run(client, f"SELECT pk FROM \"{name}\" WHERE pk = 'a' AND nope IS NOT BOOLEAN")["Items"] == [{"pk": {"S": "a"}}]
    assert run(client, f"SELECT pk FROM \"{name}\" WHERE pk = 'a' AND t IS NOT BOOLEAN")["Items"] == []
    supported = "Supported data types are [MISSING, NULL, BOOLEAN, BLOB, STRING, NUMERIC, STRUCT, TUPLE, LIST]"
    for type_name, shown in [("INT", "INTEGER"), ("DECIMAL", "DECIMAL"), ("BAG", "BAG"), ("VARCHAR", "CHARACTER_VARYING")]:
        assert failure(client, f"SELECT pk FROM \"{name}\" WHERE t IS {type_name}") == (
            "ValidationException", f"Unsupported data type for IS operator: {shown}. {supported}"), type_name
    code, message = failure(client, f"SELECT pk FROM \"{name}\" WHERE t IS NUMBER")
    assert code == "ValidationException" and message.startswith(MALFORMED)
