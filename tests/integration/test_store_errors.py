"""Bad input against the real `switchyard store` binary: every kind gets HTTP 400 with the
`__type` a DynamoDB client matches on and a message naming the problem — never a 500, a hang
or a dropped connection — and what was stored before stays intact. Also DynamoDB's limits
(25 BatchWrite requests, 100 BatchGet keys and transaction items, 400 KB items, nesting)."""

import datetime
import json

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from test_store_harness import REGION, create_table, error_of, started_store, wait_for

pytestmark = [pytest.mark.process]

NS = "com.amazonaws.dynamodb.v20120810#"
TABLE = "errors-table"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = started_store(tmp_path_factory)
    client = store.client()
    create_table(client, TABLE)
    client.put_item(TableName=TABLE, Item={"pk": {"S": "survivor"}, "v": {"N": "1"}})
    yield store
    # Nothing any test sent damaged what was stored before.
    assert client.get_item(TableName=TABLE, Key={"pk": {"S": "survivor"}}, ConsistentRead=True)["Item"] == \
        {"pk": {"S": "survivor"}, "v": {"N": "1"}}
    store.stop()


def raw_error(store, operation, body):
    status, response = store.raw(operation, body)
    assert status == 400, f"{operation} {body!r:.200}: HTTP {status} {response}"
    kind = response.get("__type", "")
    assert kind.startswith(NS) or kind.startswith("com.amazon.coral."), response
    message = response.get("message") or response.get("Message") or ""
    if body in NOT_JSON:
        # DynamoDB answers a body that is not JSON with the bare type, no message.
        assert response == {"__type": "com.amazon.coral.service#SerializationException"}, response
        return "SerializationException", ""
    assert message, f"error without a message: {response}"
    if kind.endswith("#SerializationException"):
        # DynamoDB spells this one's key "Message".
        assert "Message" in response and "message" not in response, response
    return kind.split("#")[-1], message


NOT_JSON = (b"{not json", b"\xff\xfe\x00garbage", b"", b'{"TableName": "errors-table", "Key": {"pk": {"S": "a"}}} x')


@pytest.mark.parametrize("body, expected", [
    (b"{not json", "SerializationException"),
    (b"[1, 2, 3]", "SerializationException"),
    (b'{"TableName": 5}', "SerializationException"),
    (b'{"TableName": "errors-table", "Key": "pk"}', "SerializationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"S": 1}}}', "SerializationException"),
    # DynamoDB ignores a member it does not know: the value is then empty, a validation error.
    (b'{"TableName": "errors-table", "Key": {"pk": {"X": "y"}}}', "ValidationException"),
    (b'{"TableName": "errors-table"}', "ValidationException"),
    (b'{"Key": {"pk": {"S": "a"}}}', "ValidationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"S": "a"}, "extra": {"S": "b"}}}', "ValidationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"N": "1"}}}', "ValidationException"),
    (b'{"TableName": "no-such-table", "Key": {"pk": {"S": "a"}}}', "ResourceNotFoundException"),
    (b"\xff\xfe\x00garbage", "SerializationException"),
    # Text after a JSON value: not JSON.
    (b'{"TableName": "errors-table", "Key": {"pk": {"S": "a"}}} x', "SerializationException"),
    (b"", "SerializationException"),
])
def test_malformed_and_wrong_type_get_item_requests(store, body, expected):
    kind, message = raw_error(store, "GetItem", body)
    assert kind == expected, message


def test_unknown_operation_and_missing_target(store):
    kind, message = raw_error(store, "DropEverything", {"TableName": TABLE})
    assert kind == "UnknownOperationException"
    status, response = store.raw(None, {"TableName": TABLE})
    assert status == 400 and "__type" in response, response


def test_unknown_table_message_names_it(store):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName="ghost-table", Item={"pk": {"S": "a"}})
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ResourceNotFoundException", 400)
    assert "Requested resource not found" in message


@pytest.mark.parametrize("expression, fragment", [
    ("pk = ", "Syntax error"),
    ("pk === :v", "Syntax error"),
    ("attribute_exists(pk", "Syntax error"),
    ("no_such_function(pk)", "Invalid function name"),
    ("size = :v", "reserved keyword"),
    ("pk = :undefined", "not defined"),
    ("#undefined = :v", "not defined"),
    ("pk BETWEEN :v", "Syntax error"),
])
def test_invalid_condition_expressions(store, expression, fragment):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.delete_item(TableName=TABLE, Key={"pk": {"S": "survivor"}}, ConditionExpression=expression,
                           ExpressionAttributeValues={":v": {"S": "x"}})
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert "Invalid ConditionExpression" in message and fragment in message, message


def test_unused_expression_values_and_bad_update_expressions(store):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key={"pk": {"S": "survivor"}}, UpdateExpression="SET v = :a",
                           ExpressionAttributeValues={":a": {"N": "1"}, ":unused": {"N": "2"}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "unused" in message.lower() and ":unused" in message
    for bad in ["SET", "SET v = :a, v = :a", "ADD v", "REMOVE v SET v = :a REMOVE w", "DELETE v :a + :a"]:
        with pytest.raises(ClientError) as excinfo:
            client.update_item(TableName=TABLE, Key={"pk": {"S": "survivor"}}, UpdateExpression=bad,
                               ExpressionAttributeValues={":a": {"N": "1"}})
        code, message, _ = error_of(excinfo)
        assert code == "ValidationException" and "Invalid UpdateExpression" in message, (bad, message)
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key={"pk": {"S": "survivor"}}, UpdateExpression="SET v = v + :s",
                           ExpressionAttributeValues={":s": {"S": "text"}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "operand type" in message.lower()
    # list_append inside list_append is refused (DynamoDB's words); inside if_not_exists it is not.
    lists = {":a": {"L": [{"S": "a"}]}, ":b": {"L": [{"S": "b"}]}, ":c": {"L": [{"S": "c"}]}}
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key={"pk": {"S": "survivor"}},
                           UpdateExpression="SET l = list_append(list_append(:a, :b), :c)",
                           ExpressionAttributeValues=lists)
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException", message
    assert "The function is not allowed to be used this way in an expression; function: list_append" in message
    client.update_item(TableName=TABLE, Key={"pk": {"S": "nested-ok"}},
                       UpdateExpression="SET l = list_append(if_not_exists(l, :a), :b)",
                       ExpressionAttributeValues={":a": lists[":a"], ":b": lists[":b"]})
    item = client.get_item(TableName=TABLE, Key={"pk": {"S": "nested-ok"}}, ConsistentRead=True)["Item"]
    assert item["l"] == {"L": [{"S": "a"}, {"S": "b"}]}


def test_expression_too_long(store):
    client = store.client()
    long_expression = " OR ".join(["attribute_exists(v)"] * 300)
    with pytest.raises(ClientError) as excinfo:
        client.delete_item(TableName=TABLE, Key={"pk": {"S": "survivor"}}, ConditionExpression=long_expression)
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "Expression size has exceeded the maximum allowed size" in message


def test_oversize_item_is_refused_with_dynamodbs_message(store):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=TABLE, Item={"pk": {"S": "huge"}, "blob": {"S": "x" * (400 * 1024)}})
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert message == "Item size has exceeded the maximum allowed size"
    # Just under the limit is fine (name and value bytes count).
    client.put_item(TableName=TABLE, Item={"pk": {"S": "big"}, "blob": {"S": "x" * (400 * 1024 - 20)}})
    client.delete_item(TableName=TABLE, Key={"pk": {"S": "big"}})
    # Growing an item past the limit by UpdateItem is refused too.
    client.put_item(TableName=TABLE, Item={"pk": {"S": "grow"}, "a": {"S": "x" * 300_000}})
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key={"pk": {"S": "grow"}}, UpdateExpression="SET b = :b",
                           ExpressionAttributeValues={":b": {"S": "y" * 200_000}})
    # DynamoDB's (and DynamoDB Local's) words for an update that grows an item too far.
    assert error_of(excinfo)[:2] == ("ValidationException", "Item size to update has exceeded the maximum allowed size")
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key={"pk": {"S": "grow"}}, AttributeUpdates={"b": {"Value": {"S": "y" * 200_000}}})
    assert error_of(excinfo)[:2] == ("ValidationException", "Item size to update has exceeded the maximum allowed size")
    assert client.get_item(TableName=TABLE, Key={"pk": {"S": "grow"}}, ConsistentRead=True)["Item"]["a"] == \
        {"S": "x" * 300_000}
    client.delete_item(TableName=TABLE, Key={"pk": {"S": "grow"}})


def test_too_deep_nesting_is_refused(store):
    value = {"S": "leaf"}
    for _ in range(40):
        value = {"M": {"m": value}}
    kind, message = raw_error(store, "PutItem", {"TableName": TABLE, "Item": {"pk": {"S": "deep"}, "v": value}})
    assert (kind, message) == ("ValidationException", "Nesting Levels have exceeded supported limits: "
                               "Attributes in the item have nested levels beyond supported limit")
    # Very deep JSON (beyond any parser's comfort) is refused, not a crash.
    body = b'{"TableName": "errors-table", "Item": {"pk": {"S": "deeper"}, "v": ' + b'{"L": [' * 5000 + \
        b'{"S": "x"}' + b']}' * 5000 + b"}}"
    kind, _ = raw_error(store, "PutItem", body)
    assert kind in ("ValidationException", "SerializationException")
    # Within the limit works: 31 levels of maps or lists under the attribute (its leaf is a
    # 32-element path), as DynamoDB counts its 32 levels; 32 is refused, put or updated.
    value = {"S": "leaf"}
    for _ in range(31):
        value = {"L": [value]}
    store.client().put_item(TableName=TABLE, Item={"pk": {"S": "ok-depth"}, "v": value})
    kind, message = raw_error(store, "PutItem", {"TableName": TABLE, "Item": {"pk": {"S": "deep"},
                                                                             "v": {"M": {"m": value}}}})
    assert kind == "ValidationException" and message.startswith("Nesting Levels have exceeded"), message
    kind, message = raw_error(store, "UpdateItem", {
        "TableName": TABLE, "Key": {"pk": {"S": "deep"}}, "UpdateExpression": "SET v = :v",
        "ExpressionAttributeValues": {":v": {"M": {"m": value}}}})
    assert kind == "ValidationException" and message.startswith("Nesting Levels have exceeded"), message


def test_batch_and_transaction_size_limits(store):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}}
                                                      for i in range(26)]})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "25" in message
    with pytest.raises(ClientError) as excinfo:
        client.batch_get_item(RequestItems={TABLE: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(101)]}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and message.endswith(
        f"at 'requestItems.{TABLE}.member.keys' failed to satisfy constraint: "
        "Member must have length less than or equal to 100"), message
    # Each table within its limit, not all together: DynamoDB's sentence.
    other = create_table(client, "errors-batch-other")
    with pytest.raises(ClientError) as excinfo:
        client.batch_get_item(RequestItems={TABLE: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(100)]},
                                            other: {"Keys": [{"pk": {"S": "x"}}]}})
    assert error_of(excinfo)[:2] == ("ValidationException", "Too many items requested for the BatchGetItem call")
    with pytest.raises(ClientError) as excinfo:
        client.batch_write_item(RequestItems={
            TABLE: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(20)],
            other: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(6)]})
    assert error_of(excinfo)[:2] == ("ValidationException", "Too many items requested for the BatchWriteItem call")
    with pytest.raises(ClientError) as excinfo:
        client.transact_write_items(TransactItems=[{"Put": {"TableName": TABLE, "Item": {"pk": {"S": f"t{i}"}}}}
                                                   for i in range(101)])
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "100" in message
    with pytest.raises(ClientError) as excinfo:
        client.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": {"pk": {"S": f"t{i}"}}}}
                                                 for i in range(101)])
    assert error_of(excinfo)[0] == "ValidationException"
    # Exactly at the limits works.
    client.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}}
                                                  for i in range(25)]})
    got = client.batch_get_item(RequestItems={TABLE: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(100)]}})
    assert len(got["Responses"][TABLE]) == 25
    client.transact_write_items(TransactItems=[{"Delete": {"TableName": TABLE, "Key": {"pk": {"S": f"k{i}"}}}}
                                               for i in range(100)])
    assert "Item" not in client.get_item(TableName=TABLE, Key={"pk": {"S": "k3"}})


def test_key_limits_and_empty_values(store):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=TABLE, Item={"pk": {"S": "x" * 2049}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "2048" in message
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=TABLE, Item={"pk": {"S": ""}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "empty" in message.lower()
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=TABLE, Item={"pk": {"S": "s"}, "set": {"SS": []}})
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=TABLE, Item={"pk": {"S": "s"}, "set": {"SS": ["a", "a"]}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "duplicate" in message.lower()
    client.put_item(TableName=TABLE, Item={"pk": {"S": "s"}, "empty": {"S": ""}})  # allowed for non-keys


def test_create_table_validation(store):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.create_table(TableName="bad-table", BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "other", "KeyType": "HASH"}])
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.create_table(TableName="bad table!", BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "tableName" in message
    with pytest.raises(ClientError) as excinfo:
        client.create_table(TableName="bad-table", BillingMode="PROVISIONED",
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    assert error_of(excinfo)[0] == "ValidationException"


def test_provisioned_throughput_is_bounded_and_judged_before_the_keys(store):
    """DynamoDB takes at most 10^12 units in a ProvisionedThroughput ("Given value ... is out of
    bounds", reads first), and judges the billing mode and throughput of a CreateTable before its
    keys (dynalite's suite recorded both)."""
    huge = 1_000_000_000_001
    for throughput, named in [({"ReadCapacityUnits": huge, "WriteCapacityUnits": huge}, "ReadCapacityUnits"),
                              ({"ReadCapacityUnits": 5, "WriteCapacityUnits": huge}, "WriteCapacityUnits")]:
        expected = ("ValidationException", f"Given value {huge} for {named} is out of bounds")
        assert raw_error(store, "CreateTable", {
            "TableName": "bounded", "AttributeDefinitions": [],
            "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"}], "ProvisionedThroughput": throughput}) == expected
        assert raw_error(store, "UpdateTable", {"TableName": GHOST, "ProvisionedThroughput": throughput}) == expected
    # At the bound, taken.
    client = store.client()
    client.create_table(TableName="bounded", AttributeDefinitions=[{"AttributeName": "a", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "a", "KeyType": "HASH"}],
                        ProvisionedThroughput={"ReadCapacityUnits": 10**12, "WriteCapacityUnits": 1})
    described = client.describe_table(TableName="bounded")["Table"]["ProvisionedThroughput"]
    assert described["ReadCapacityUnits"] == 10**12


def test_query_and_scan_parameter_errors(store):
    client = store.client()
    cases = [
        dict(Limit=0),
        dict(Segment=1, TotalSegments=1),
        dict(Select="SPECIFIC_ATTRIBUTES"),
        dict(ExclusiveStartKey={"pk": {"N": "1"}}),
        dict(Select="COUNT", ProjectionExpression="v"),
    ]
    for extra in cases:
        with pytest.raises((ClientError, ParamValidationError)) as excinfo:
            client.scan(TableName=TABLE, **extra)
        if isinstance(excinfo.value, ClientError):
            assert error_of(excinfo)[0] == "ValidationException", extra


def test_errors_never_500_on_hostile_bodies(store):
    hostile = [b"", b"null", b"{}", b'{"TableName": null}', b'{"TableName": "' + b"a" * 100_000 + b'"}',
               json.dumps({"TableName": TABLE, "Item": {"pk": {"S": "a"}, "n": {"N": "1" * 1000}}}).encode(),
               json.dumps({"TableName": TABLE, "Key": {"pk": {"S": "hostile"}},
                           "ConditionExpression": "(" * 5000 + "v = v" + ")" * 5000}).encode()]
    for operation in ["PutItem", "GetItem", "DeleteItem", "UpdateItem", "Query", "Scan", "CreateTable",
                      "BatchWriteItem", "TransactWriteItems", "DescribeTable", "UpdateTimeToLive"]:
        for body in hostile:
            status, response = store.raw(operation, body)
            assert status in (200, 400), (operation, body[:80], status, response)
            if status == 400:
                assert "__type" in response


def test_oversize_request_body_gets_413_with_a_validation_exception(store):
    # Refused from Content-Length before the body is read; the rest is discarded so the client
    # reads the answer rather than a reset.
    body = b'{"TableName": "errors-table", "Item": {"pk": {"S": "' + b"x" * (17 * 1024 * 1024) + b'"}}}'
    status, response = store.raw("PutItem", body)
    assert status == 413, response
    assert response["__type"] == "com.amazon.coral.validate#ValidationException", response
    assert "16777216" in response["message"], response


SORTED = "errors-sorted"


def sorted_table(store):
    client = store.client(parameter_validation=False)
    if SORTED not in client.list_tables()["TableNames"]:
        create_table(client, SORTED, range_key=("sk", "N"))
        client.put_item(TableName=SORTED, Item={"pk": {"S": "p"}, "sk": {"N": "1"}, "v": {"N": "1"}})
    return client


@pytest.mark.parametrize("request_, expected", [
    # A Query filters on non-key attributes only.
    (dict(KeyConditionExpression="pk = :p", FilterExpression="sk > :n",
          ExpressionAttributeValues={":p": {"S": "p"}, ":n": {"N": "0"}}),
     "Filter Expression can only contain non-primary key attributes: Primary key attribute: sk"),
    (dict(KeyConditionExpression="pk = :p", FilterExpression="v = pk",
          ExpressionAttributeValues={":p": {"S": "p"}}),
     "Primary key attribute: pk"),
    (dict(KeyConditions={"pk": {"AttributeValueList": [{"S": "p"}], "ComparisonOperator": "EQ"}},
          QueryFilter={"sk": {"AttributeValueList": [{"N": "1"}], "ComparisonOperator": "EQ"}}),
     "QueryFilter can only contain non-primary key attributes: Primary key attribute: sk"),
    # Expression and legacy parameters do not mix, across kinds too.
    (dict(KeyConditionExpression="pk = :p", FilterExpression="v = :p", AttributesToGet=["v"],
          ExpressionAttributeValues={":p": {"S": "p"}}),
     "Can not use both expression and non-expression parameters"),
    (dict(KeyConditions={"pk": {"AttributeValueList": [{"S": "p"}], "ComparisonOperator": "EQ"}},
          QueryFilter={"v": {"AttributeValueList": [{"N": "1"}], "ComparisonOperator": "EQ"}},
          ProjectionExpression="v"),
     "Can not use both expression and non-expression parameters"),
    # ConditionalOperator joins two or more conditions.
    (dict(KeyConditions={"pk": {"AttributeValueList": [{"S": "p"}], "ComparisonOperator": "EQ"}},
          QueryFilter={"v": {"AttributeValueList": [{"N": "1"}], "ComparisonOperator": "EQ"}},
          ConditionalOperator="OR"),
     "ConditionalOperator can only be used when Filter or Expected has two or more elements"),
    (dict(KeyConditions={"pk": {"AttributeValueList": [{"S": "p"}], "ComparisonOperator": "EQ"}},
          AttributesToGet=[]),
     "attributesToGet"),
    (dict(KeyConditions={"pk": {"AttributeValueList": [{"S": "p"}], "ComparisonOperator": "EQ"}},
          AttributesToGet=["v", "v"]),
     "Duplicate value in attribute name: v"),
])
def test_query_parameters_are_checked_as_dynamodb_checks_them(store, request_, expected):
    client = sorted_table(store)
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=SORTED, **request_)
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and expected in message, message


def test_key_conditions_go_with_a_projection_expression(store):
    client = sorted_table(store)
    items = client.query(TableName=SORTED, ProjectionExpression="v",
                         KeyConditions={"pk": {"AttributeValueList": [{"S": "p"}], "ComparisonOperator": "EQ"}})
    assert items["Items"] == [{"v": {"N": "1"}}]


@pytest.mark.parametrize("request_, expected", [
    (dict(UpdateExpression="SET v = :v", ExpressionAttributeValues={":v": {"N": "2"}},
          Expected={"v": {"Value": {"N": "1"}}}),
     "Can not use both expression and non-expression parameters"),
    (dict(AttributeUpdates={"z": {"Value": {"N": "4"}, "Action": "PUT"}}, ConditionalOperator="OR"),
     "ConditionalOperator can only be used"),
    (dict(AttributeUpdates={"z": {"Value": {"N": "4"}, "Action": "PUT"}}, Expected={}, ConditionalOperator="AND"),
     "ConditionalOperator can only be used"),
    (dict(AttributeUpdates={"z": {"Value": {"N": "4"}, "Action": "PUT"}},
          Expected={"v": {"Value": {"N": "1"}}}, ConditionalOperator="AND"),
     "ConditionalOperator can only be used"),
])
def test_update_item_legacy_parameters_are_checked(store, request_, expected):
    client = sorted_table(store)
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=SORTED, Key={"pk": {"S": "p"}, "sk": {"N": "1"}}, **request_)
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and expected in message, message


def test_document_paths_are_bounded_in_depth_and_list_index(store):
    client = sorted_table(store)
    key = {"pk": {"S": "p"}, "sk": {"N": "1"}}
    client.get_item(TableName=SORTED, Key=key, ProjectionExpression="a" + ".b" * 31)
    for projection, expected in [("a" + ".b" * 32, "too many nesting levels; nesting levels: 33"),
                                 ("a[99999999999999]", "List index is not within the allowable range")]:
        with pytest.raises(ClientError) as excinfo:
            client.get_item(TableName=SORTED, Key=key, ProjectionExpression=projection)
        code, message, _ = error_of(excinfo)
        assert code == "ValidationException" and "ProjectionExpression" in message and expected in message, message


def test_a_global_index_refuses_attributes_it_does_not_project(store):
    client = store.client()
    name = "errors-keys-only-gsi"
    create_table(client, name, extra_attributes={"g": "S"},
                 GlobalSecondaryIndexes=[{"IndexName": "by_g",
                                          "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                          "Projection": {"ProjectionType": "KEYS_ONLY"}}])
    client.put_item(TableName=name, Item={"pk": {"S": "a"}, "g": {"S": "x"}, "v": {"N": "1"}})
    values = {":g": {"S": "x"}}
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=name, IndexName="by_g", KeyConditionExpression="g = :g",
                     ExpressionAttributeValues=values, ProjectionExpression="pk, v")
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "Global secondary index by_g does not project [v]" in message, message
    # What the index holds (its key and the table's) can be asked for.
    items = client.query(TableName=name, IndexName="by_g", KeyConditionExpression="g = :g",
                         ExpressionAttributeValues=values, ProjectionExpression="pk, g")["Items"]
    assert items == [{"pk": {"S": "a"}, "g": {"S": "x"}}]


def test_attribute_names_are_bounded_everywhere_they_appear(store):
    client = sorted_table(store)
    key = {"pk": {"S": "p"}, "sk": {"N": "1"}}
    too_long = "n" * 65_536
    for name, expected in [(too_long, "65536 bytes long"), ("", "Empty attribute name")]:
        attempts = [
            lambda: client.put_item(TableName=SORTED, Item={**key, name: {"N": "1"}}),
            lambda: client.get_item(TableName=SORTED, Key=key, ProjectionExpression="#n",
                                    ExpressionAttributeNames={"#n": name}),
            lambda: client.get_item(TableName=SORTED, Key=key, AttributesToGet=[name]),
            lambda: client.update_item(TableName=SORTED, Key=key,
                                       AttributeUpdates={name: {"Value": {"N": "2"}, "Action": "PUT"}}),
            lambda: client.update_item(TableName=SORTED, Key=key, UpdateExpression="SET #n = :v",
                                       ExpressionAttributeNames={"#n": name},
                                       ExpressionAttributeValues={":v": {"N": "3"}}),
        ]
        for attempt in attempts:
            with pytest.raises(ClientError) as excinfo:
                attempt()
            code, message, _ = error_of(excinfo)
            assert code == "ValidationException" and expected in message, message


def test_key_attribute_names_are_at_most_255_bytes(store):
    client = store.client()
    long_name = "k" * 256
    for schema, definitions in [
        ([{"AttributeName": long_name, "KeyType": "HASH"}], [{"AttributeName": long_name, "AttributeType": "S"}]),
        ([{"AttributeName": "short", "KeyType": "HASH"}], [{"AttributeName": long_name, "AttributeType": "S"}]),
        ([{"AttributeName": long_name, "KeyType": "HASH"}], [{"AttributeName": "short", "AttributeType": "S"}]),
    ]:
        with pytest.raises(ClientError) as excinfo:
            client.create_table(TableName="errors-long-key", BillingMode="PAY_PER_REQUEST",
                                KeySchema=schema, AttributeDefinitions=definitions)
        code, message, _ = error_of(excinfo)
        assert code == "ValidationException" and "less than or equal to 255" in message, message


@pytest.mark.parametrize("expression", [
    "SET v = :a + :a + :a", "SET v = if_not_exists(v, :a + :a)", "SET _v = :a", "SET v = _f(:a)",
])
def test_update_expressions_follow_dynamodbs_grammar(store, expression):
    client = sorted_table(store)
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=SORTED, Key={"pk": {"S": "p"}, "sk": {"N": "1"}},
                           UpdateExpression=expression, ExpressionAttributeValues={":a": {"N": "1"}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "Syntax error" in message, message


def test_a_global_index_refuses_consistent_scans_too(store):
    client = store.client()
    name = create_table(client, "errors-gsi-consistent", extra_attributes={"g": "S"}, GlobalSecondaryIndexes=[{
        "IndexName": "by_g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "ALL"}}])
    for call in (lambda: client.scan(TableName=name, IndexName="by_g", ConsistentRead=True),
                 lambda: client.query(TableName=name, IndexName="by_g", ConsistentRead=True,
                                      KeyConditionExpression="g = :g", ExpressionAttributeValues={":g": {"S": "x"}})):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_of(excinfo) == ("ValidationException",
                                     "Consistent reads are not supported on global secondary indexes", 400)
    assert client.scan(TableName=name, IndexName="by_g", ConsistentRead=False)["Items"] == []


def test_legacy_delete_from_a_set_of_another_type_is_a_type_mismatch(store):
    client = store.client()
    key = {"pk": {"S": "legacy-delete"}}
    client.put_item(TableName=TABLE, Item={**key, "a": {"S": "text"}})
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key=key,
                           AttributeUpdates={"a": {"Action": "DELETE", "Value": {"NS": ["1", "2"]}}})
    assert error_of(excinfo) == ("ValidationException", "Type mismatch for attribute to update", 400)
    # The expression API words the same mismatch its own way.
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key=key, UpdateExpression="DELETE a :s",
                           ExpressionAttributeValues={":s": {"NS": ["1"]}})
    assert error_of(excinfo) == ("ValidationException",
                                 "An operand in the update expression has an incorrect data type", 400)
    assert client.get_item(TableName=TABLE, Key=key)["Item"]["a"] == {"S": "text"}


def test_update_table_creates_one_index_per_call_from_its_own_definitions(store):
    client = store.client()
    name = create_table(client, "errors-gsi-updates", extra_attributes={"x": "S"}, GlobalSecondaryIndexes=[{
        "IndexName": "by_x", "KeySchema": [{"AttributeName": "x", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "ALL"}}])

    def create(index, attribute):
        return {"Create": {"IndexName": index, "KeySchema": [{"AttributeName": attribute, "KeyType": "HASH"}],
                           "Projection": {"ProjectionType": "ALL"}}}

    definitions = [{"AttributeName": "y", "AttributeType": "S"}]
    for updates in ([create("idx1", "y"), create("idx2", "y")], [create("idx1", "y"), {"Delete": {"IndexName": "by_x"}}]):
        with pytest.raises(ClientError) as excinfo:
            client.update_table(TableName=name, AttributeDefinitions=definitions, GlobalSecondaryIndexUpdates=updates)
        code, message, status = error_of(excinfo)
        assert (code, status) == ("LimitExceededException", 400) and "Only 1 online index" in message, message
    # x is defined by the table already, but a new index must define its keys in the request.
    with pytest.raises(ClientError) as excinfo:
        client.update_table(TableName=name, GlobalSecondaryIndexUpdates=[create("idx3", "x")])
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "not defined in AttributeDefinitions" in message, message
    with pytest.raises(ClientError) as excinfo:
        client.update_table(TableName=name, AttributeDefinitions=[{"AttributeName": "x", "AttributeType": "N"}],
                            GlobalSecondaryIndexUpdates=[create("idx3", "x")])
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "Attributes cannot be redefined" in message, message
    indexes = client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"]
    assert [index["IndexName"] for index in indexes] == ["by_x"]


@pytest.mark.parametrize("expression", [
    "((v = :v))", "(v = :v) OR (((v = :w)))",
    pytest.param("(" * 2000 + "v = :v" + ")" * 2000, id="2000-deep"),
])
def test_redundant_parentheses_are_refused_as_dynamodb_refuses_them(store, expression):
    client = store.client()
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=TABLE, Key={"pk": {"S": "parens"}}, UpdateExpression="SET z = :v",
                           ConditionExpression=expression,
                           ExpressionAttributeValues={":v": {"N": "1"}, ":w": {"N": "2"}})
    assert error_of(excinfo) == ("ValidationException",
                                 "Invalid ConditionExpression: The expression has redundant parentheses;", 400)
    # One pair per level is fine.
    client.update_item(TableName=TABLE, Key={"pk": {"S": "parens"}}, UpdateExpression="SET z = :v",
                       ConditionExpression="((attribute_not_exists(z)) AND (attribute_not_exists(y)))",
                       ExpressionAttributeValues={":v": {"N": "1"}})
    client.delete_item(TableName=TABLE, Key={"pk": {"S": "parens"}})


def test_arithmetic_beyond_38_digits_is_dynamodbs_overflow(store):
    client = store.client()
    for expression in ["SET n = :a + :b", "SET n = :a - :b"]:
        with pytest.raises(ClientError) as excinfo:
            client.update_item(TableName=TABLE, Key={"pk": {"S": "imprecise"}}, UpdateExpression=expression,
                               ExpressionAttributeValues={":a": {"N": "1e50"}, ":b": {"N": "1"}})
        assert error_of(excinfo) == (
            "ValidationException",
            "Number overflow. Attempting to store a number with magnitude larger than supported range", 400)
    assert "Item" not in client.get_item(TableName=TABLE, Key={"pk": {"S": "imprecise"}})


def test_missing_capacity_units_are_named_with_their_structure(store):
    for missing, present in [("readCapacityUnits", "WriteCapacityUnits"), ("writeCapacityUnits", "ReadCapacityUnits")]:
        status, answer = store.raw("CreateTable", {
            "TableName": "errors-units", "BillingMode": "PROVISIONED",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "ProvisionedThroughput": {present: 1}})
        assert status == 400, answer
        assert f"Value null at 'provisionedThroughput.{missing}'" in answer["message"], answer


def test_tags_follow_dynamodbs_tagging_restrictions(store):
    client = store.client()
    arn = client.describe_table(TableName=TABLE)["Table"]["TableArn"]
    for key, value in [("hi!", "v"), ("k", "d%g"), ("k", '"quoted"'), ("aws:owner", "me"), ("k" * 129, "v"),
                       ("k", "v" * 257)]:
        with pytest.raises(ClientError) as excinfo:
            client.tag_resource(ResourceArn=arn, Tags=[{"Key": key, "Value": value}])
        code, message, status = error_of(excinfo)
        assert (code, status) == ("ValidationException", 400), (key, value, message)
    with pytest.raises(ClientError) as excinfo:
        client.tag_resource(ResourceArn="I_do_not_exist", Tags=[{"Key": "k", "Value": "v"}])
    assert "ARNs must start with 'arn:'" in error_of(excinfo)[1]
    # Letters of any script, digits, white space and + - = . _ : / are allowed; an empty value too.
    allowed = [{"Key": "équipe 1", "Value": "a+b-c=d.e_f:g/h"}, {"Key": "empty", "Value": ""}]
    client.tag_resource(ResourceArn=arn, Tags=allowed)
    # 50 tags at most, counted with those the table has (2 here).
    with pytest.raises(ClientError) as excinfo:
        client.tag_resource(ResourceArn=arn, Tags=[{"Key": f"t{i}", "Value": "v"} for i in range(49)])
    assert error_of(excinfo)[0] == "ValidationException"
    client.tag_resource(ResourceArn=arn, Tags=[{"Key": f"t{i}", "Value": "v"} for i in range(48)])
    assert len(client.list_tags_of_resource(ResourceArn=arn)["Tags"]) == 50
    client.untag_resource(ResourceArn=arn, TagKeys=["équipe 1", "empty"] + [f"t{i}" for i in range(48)])
    assert client.list_tags_of_resource(ResourceArn=arn)["Tags"] == []
    # CreateTable checks its Tags the same way, and creates nothing when they are refused.
    for tags in ([{"Key": f"t{i}", "Value": "v"} for i in range(51)], [{"Key": "bad!", "Value": "v"}]):
        with pytest.raises(ClientError) as excinfo:
            create_table(client, "errors-tagged", Tags=tags)
        assert error_of(excinfo)[0] == "ValidationException"
        assert "errors-tagged" not in client.list_tables()["TableNames"]


def test_tag_resource_and_untag_resource_answer_with_an_empty_body(store):
    import urllib.request

    arn = store.client().describe_table(TableName=TABLE)["Table"]["TableArn"]
    for operation, body in [("TagResource", {"ResourceArn": arn, "Tags": [{"Key": "k", "Value": "v"}]}),
                            ("UntagResource", {"ResourceArn": arn, "TagKeys": ["k"]})]:
        request = urllib.request.Request(store.url + "/", data=json.dumps(body).encode(), headers={
            "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"DynamoDB_20120810.{operation}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and response.read() == b"", operation


def test_disabling_ttl_by_another_attribute_names_the_enabled_one(store):
    client = store.client()
    name = create_table(client, "errors-ttl")
    client.update_time_to_live(TableName=name, TimeToLiveSpecification={"AttributeName": "expires", "Enabled": True})
    with pytest.raises(ClientError) as excinfo:
        client.update_time_to_live(TableName=name, TimeToLiveSpecification={"AttributeName": "dog", "Enabled": False})
    assert error_of(excinfo) == (
        "ValidationException",
        "TimeToLive is active on a different AttributeName: current AttributeName is expires", 400)
    assert client.describe_time_to_live(TableName=name)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": "expires"}
    # Enabling by another attribute is refused the same way (DynamoDB checks the name before
    # "already enabled"): the TTL attribute changes only by disabling first.
    with pytest.raises(ClientError) as excinfo:
        client.update_time_to_live(TableName=name, TimeToLiveSpecification={"AttributeName": "dog", "Enabled": True})
    assert error_of(excinfo) == (
        "ValidationException",
        "TimeToLive is active on a different AttributeName: current AttributeName is expires", 400)
    with pytest.raises(ClientError) as excinfo:
        client.update_time_to_live(TableName=name, TimeToLiveSpecification={"AttributeName": "expires", "Enabled": True})
    assert error_of(excinfo) == ("ValidationException", "TimeToLive is already enabled", 400)
    assert client.describe_time_to_live(TableName=name)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": "expires"}


def test_update_table_keeps_the_billing_mode_and_refuses_a_throughput_that_does_not_change(store):
    client = store.client()
    name = "errors-billing"
    create_table(client, name)
    # Throughput for an on-demand table, without BillingMode: refused, not a silent switch.
    with pytest.raises(ClientError) as excinfo:
        client.update_table(TableName=name, ProvisionedThroughput={"ReadCapacityUnits": 1, "WriteCapacityUnits": 1})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and message == (
        "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be "
        "specified when BillingMode is PAY_PER_REQUEST"), message
    assert client.describe_table(TableName=name)["Table"]["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    client.update_table(TableName=name, BillingMode="PROVISIONED",
                        ProvisionedThroughput={"ReadCapacityUnits": 3, "WriteCapacityUnits": 4})
    with pytest.raises(ClientError) as excinfo:
        client.update_table(TableName=name, ProvisionedThroughput={"ReadCapacityUnits": 3, "WriteCapacityUnits": 4})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and message.startswith(
        "The provisioned throughput for the table will not change. The requested value equals the current value. "
        "Current ReadCapacityUnits provisioned for the table: 3. Requested ReadCapacityUnits: 3."), message
    # A real change goes through, and keeps the mode.
    client.update_table(TableName=name, ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 4})
    described = client.describe_table(TableName=name)["Table"]
    assert described["ProvisionedThroughput"]["ReadCapacityUnits"] == 5
    assert described["BillingModeSummary"]["BillingMode"] == "PROVISIONED"


def test_billing_mode_summary_says_when_the_table_last_became_on_demand(store):
    """DynamoDB's BillingModeSummary: an on-demand table's LastUpdateToPayPerRequestDateTime is
    when it became on demand (its creation, or the UpdateTable that switched it); a provisioned
    table keeps the last such time, and one that has never been on demand has no summary."""
    client = store.client()
    provisioned = "errors-billing-provisioned"
    client.create_table(TableName=provisioned, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                        ProvisionedThroughput={"ReadCapacityUnits": 1, "WriteCapacityUnits": 1})
    table = client.describe_table(TableName=provisioned)["Table"]
    assert "BillingModeSummary" not in table, table.get("BillingModeSummary")
    created = table["CreationDateTime"]
    # So that the switch's time cannot equal the creation's (milliseconds).
    wait_for(lambda: datetime.datetime.now(datetime.timezone.utc) > created + datetime.timedelta(milliseconds=20), 5,
             "the clock to pass the table's creation")
    client.update_table(TableName=provisioned, BillingMode="PAY_PER_REQUEST")
    switched = client.describe_table(TableName=provisioned)["Table"]["BillingModeSummary"]
    assert switched["BillingMode"] == "PAY_PER_REQUEST"
    assert switched["LastUpdateToPayPerRequestDateTime"] > created
    client.update_table(TableName=provisioned, BillingMode="PROVISIONED",
                        ProvisionedThroughput={"ReadCapacityUnits": 2, "WriteCapacityUnits": 2})
    back = client.describe_table(TableName=provisioned)["Table"]["BillingModeSummary"]
    assert back == {"BillingMode": "PROVISIONED",
                    "LastUpdateToPayPerRequestDateTime": switched["LastUpdateToPayPerRequestDateTime"]}
    on_demand = "errors-billing-on-demand"
    create_table(client, on_demand)
    table = client.describe_table(TableName=on_demand)["Table"]
    assert table["BillingModeSummary"] == {"BillingMode": "PAY_PER_REQUEST",
                                           "LastUpdateToPayPerRequestDateTime": table["CreationDateTime"]}


def test_an_index_query_refuses_a_filter_on_attributes_the_index_does_not_project(store):
    client = store.client()
    name = "errors-filter-projection"
    create_table(client, name, range_key=("sk", "S"), extra_attributes={"g": "S", "l": "N"},
                 GlobalSecondaryIndexes=[{"IndexName": "by-g",
                                          "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                          "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["y"]}}],
                 LocalSecondaryIndexes=[{"IndexName": "by-l",
                                         "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                                       {"AttributeName": "l", "KeyType": "RANGE"}],
                                         "Projection": {"ProjectionType": "KEYS_ONLY"}}])
    for i in range(5):
        client.put_item(TableName=name, Item={"pk": {"S": "p"}, "sk": {"S": str(i)}, "g": {"S": "x"},
                                              "l": {"N": str(i)}, "y": {"N": str(i)}, "z": {"N": str(i)}})
    for index, key, unprojected in (("by-l", "pk = :k", "[y, z]"), ("by-g", "g = :k", "[z]")):
        with pytest.raises(ClientError) as excinfo:
            client.query(TableName=name, IndexName=index, KeyConditionExpression=key,
                         FilterExpression="y > :n AND #z < :m", ExpressionAttributeNames={"#z": "z"},
                         ExpressionAttributeValues={":k": {"S": "p" if index == "by-l" else "x"},
                                                    ":n": {"N": "2"}, ":m": {"N": "9"}})
        code, message, _ = error_of(excinfo)
        assert code == "ValidationException" and message == (
            f"One or more parameter values were invalid: Secondary index {index} does not project one or more "
            f"filter attributes: {unprojected}"), message
    # What the index projects filters as usual.
    matched = client.query(TableName=name, IndexName="by-g", KeyConditionExpression="g = :k",
                           FilterExpression="y > :n", ExpressionAttributeValues={":k": {"S": "x"}, ":n": {"N": "2"}})
    assert matched["Count"] == 2 and matched["ScannedCount"] == 5


@pytest.mark.parametrize("value, problem", [
    ({"SS": []}, "One or more parameter values were invalid: An string set  may not be empty"),
    ({"SS": ["a", "a"]}, "One or more parameter values were invalid: Input collection [a, a] contains duplicates."),
    ({"BS": ["Yg==", "Yg=="]},
     "One or more parameter values were invalid: Input collection [Yg==, Yg==]of type BS contains duplicates."),
    ({"N": "abc"}, "The parameter cannot be converted to a numeric value: abc"),
    ({"N": ""}, "The parameter cannot be converted to a numeric value"),
    ({"NULL": False}, "One or more parameter values were invalid: Null attribute value types must have the value of true"),
])
def test_a_bad_expression_attribute_value_is_named_with_its_placeholder(store, value, problem):
    kind, message = raw_error(store, "UpdateItem", {
        "TableName": TABLE, "Key": {"pk": {"S": "survivor"}}, "UpdateExpression": "SET v2 = :b",
        "ExpressionAttributeValues": {":b": value}})
    assert (kind, message) == ("ValidationException",
                               f"ExpressionAttributeValues contains invalid value: {problem} for key :b"), message
    # In an item, the same number is named without the wrapper.
    if value == {"N": "abc"}:
        kind, message = raw_error(store, "PutItem", {"TableName": TABLE, "Item": {"pk": {"S": "n"}, "v": value}})
        assert (kind, message) == ("ValidationException", problem), message


def test_expression_names_and_values_need_an_expression_to_use_them(store):
    """DynamoDB refuses the maps in a request without an expression for them, naming which
    expressions it lacks, before it looks at the maps (dynalite's suite recorded these against
    DynamoDB)."""
    key = {"pk": {"S": "survivor"}}
    names_only = "ExpressionAttributeNames can only be specified when using expressions"
    for operation, body, message in [
        ("GetItem", {"Key": key, "ExpressionAttributeNames": {"#a": "a"}}, names_only),
        ("PutItem", {"Item": key, "ExpressionAttributeNames": {}}, names_only),
        ("DeleteItem", {"Key": key, "ExpressionAttributeValues": {":a": {"S": "x"}}},
         "ExpressionAttributeValues can only be specified when using expressions: ConditionExpression is null"),
        ("UpdateItem", {"Key": key, "ExpressionAttributeValues": {}},
         "ExpressionAttributeValues can only be specified when using expressions: "
         "UpdateExpression and ConditionExpression are null"),
        ("Query", {"KeyConditions": {"pk": {"AttributeValueList": [{"S": "x"}], "ComparisonOperator": "EQ"}},
                   "ExpressionAttributeValues": {":a": {"S": "x"}}},
         "ExpressionAttributeValues can only be specified when using expressions: "
         "FilterExpression and KeyConditionExpression are null"),
        ("Scan", {"ExpressionAttributeValues": {":a": {"S": "x"}}, "ProjectionExpression": "pk"},
         "ExpressionAttributeValues can only be specified when using expressions: FilterExpression is null"),
    ]:
        kind, got = raw_error(store, operation, {"TableName": TABLE, **body})
        assert (kind, got) == ("ValidationException", message), (operation, got)
    # Inside transactions and batches too.
    for operation, body, message in [
        ("TransactWriteItems", {"TransactItems": [{"Delete": {"TableName": TABLE, "Key": key,
                                                              "ExpressionAttributeValues": {":v": {"S": "x"}}}}]},
         "ExpressionAttributeValues can only be specified when using expressions: ConditionExpression is null"),
        ("TransactWriteItems", {"TransactItems": [{"Put": {"TableName": TABLE, "Item": key,
                                                           "ExpressionAttributeNames": {"#a": "a"}}}]}, names_only),
        ("TransactGetItems", {"TransactItems": [{"Get": {"TableName": TABLE, "Key": key,
                                                         "ExpressionAttributeNames": {"#a": "a"}}}]}, names_only),
        ("BatchGetItem", {"RequestItems": {TABLE: {"Keys": [key], "ExpressionAttributeNames": {"#a": "a"}}}},
         names_only),
    ]:
        kind, got = raw_error(store, operation, body)
        assert (kind, got) == ("ValidationException", message), (operation, got)
    # Names with only a projection are fine.
    assert store.client().get_item(TableName=TABLE, Key=key, ProjectionExpression="#v",
                                   ExpressionAttributeNames={"#v": "v"})["Item"] == {"v": {"N": "1"}}


def test_tagging_names_its_problems_as_dynamodb_does(store):
    client = store.client()
    arn = client.describe_table(TableName=TABLE)["Table"]["TableArn"]
    missing = arn.replace(f"table/{TABLE}", "table/no-such-table")
    for operation, body, code, message in [
        # Nothing to do is refused before the table is looked for.
        ("TagResource", {"ResourceArn": missing, "Tags": []}, "ValidationException",
         "Atleast one Tag needs to be provided as Input."),
        ("UntagResource", {"ResourceArn": arn, "TagKeys": []}, "ValidationException",
         "Atleast one Tag Key needs to be provided as Input."),
        ("ListTagsOfResource", {"ResourceArn": arn.replace(f"table/{TABLE}", "table/ab")}, "ValidationException",
         "Invalid TableArn: Invalid ResourceArn provided as input"),
        ("ListTagsOfResource", {"ResourceArn": arn.replace(":dynamodb:", ":sqs:")}, "ValidationException",
         "Invalid TableArn: Invalid ResourceArn provided as input"),
        # Another region's table is not this endpoint's.
        ("TagResource", {"ResourceArn": arn.replace(f":{REGION}:", ":ap-south-1:"),
                         "Tags": [{"Key": "k", "Value": "v"}]}, "ResourceNotFoundException",
         "Requested resource not found"),
    ]:
        status, response = store.raw(operation, body)
        assert status == 400 and response["__type"].endswith(code), (operation, response)
        assert response["message"].startswith(message), (operation, response)
    assert client.list_tags_of_resource(ResourceArn=arn)["Tags"] == []


def test_list_tables_checks_its_members_as_the_api_model_does(store):
    for body, message in [
        ({"ExclusiveStartTableName": "a;", "Limit": 500},
         "3 validation errors detected: Value 'a;' at 'exclusiveStartTableName' failed to satisfy constraint: Member "
         "must have length greater than or equal to 3; Value 'a;' at 'exclusiveStartTableName' failed to satisfy "
         "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+; Value '500' at 'limit' failed "
         "to satisfy constraint: Member must have value less than or equal to 100"),
        ({"Limit": 0}, "1 validation error detected: Value '0' at 'limit' failed to satisfy constraint: Member must "
                       "have value greater than or equal to 1"),
        ({"ExclusiveStartTableName": "a" * 256}, "1 validation error detected: Value '" + "a" * 256 +
         "' at 'exclusiveStartTableName' failed to satisfy constraint: Member must have length less than or equal to 255"),
    ]:
        assert raw_error(store, "ListTables", body) == ("ValidationException", message), body


def test_a_missing_member_is_named_by_its_whole_path(store):
    """As DynamoDB's generated messages name it: camel case, a list element by its 1-based index
    and `member`, a RequestItems table by its name and `member` (dynalite's suite recorded these
    against DynamoDB)."""
    for operation, body, path in [
        ("CreateTable", {"TableName": "errors-path", "BillingMode": "PAY_PER_REQUEST",
                         "KeySchema": [{"AttributeName": "pk"}],
                         "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]},
         "keySchema.1.member.keyType"),
        ("UpdateTimeToLive", {"TableName": TABLE, "TimeToLiveSpecification": {"AttributeName": "ttl"}},
         "timeToLiveSpecification.enabled"),
        ("BatchGetItem", {"RequestItems": {TABLE: {"ConsistentRead": True}}}, f"requestItems.{TABLE}.member.keys"),
        ("TransactWriteItems", {"TransactItems": [{"Delete": {"TableName": TABLE, "Key": {"pk": {"S": "x"}}}},
                                                  {"Put": {"TableName": TABLE}}]}, "transactItems.2.member.put.item"),
    ]:
        kind, message = raw_error(store, operation, body)
        assert (kind, message) == ("ValidationException", f"1 validation error detected: Value null at '{path}' "
                                   "failed to satisfy constraint: Member must not be null"), (operation, message)


def test_a_canceled_transaction_spells_its_message_as_dynamodb_does(store):
    # DynamoDB sends a TransactionCanceledException's text under "Message" (capital M, beside
    # CancellationReasons), unlike most errors' "message"; SDKs that read only one key see it.
    body = json.dumps({"TransactItems": [{"ConditionCheck": {
        "TableName": TABLE, "Key": {"pk": {"S": "survivor"}}, "ConditionExpression": "attribute_not_exists(pk)"}}]})
    status, response = store.raw("TransactWriteItems", body.encode())
    assert status == 400 and response["__type"].endswith("#TransactionCanceledException"), response
    assert "message" not in response and "[ConditionalCheckFailed]" in response["Message"], response
    assert [r["Code"] for r in response["CancellationReasons"]] == ["ConditionalCheckFailed"], response


GHOST = "no-such-table"
BIG = "x" * (400 * 1024)


@pytest.mark.parametrize("operation, body, message", [
    ("GetItem", {"TableName": GHOST, "Key": {"pk": {"S": "a"}}, "ProjectionExpression": "pk",
                 "AttributesToGet": ["pk"]}, "Can not use both expression and non-expression parameters"),
    ("GetItem", {"TableName": GHOST, "Key": {"pk": {"S": "a"}}, "ProjectionExpression": "a, a"},
     "Invalid ProjectionExpression: Two document paths overlap with each other"),
    ("PutItem", {"TableName": GHOST, "Item": {"pk": {"S": "a"}, "big": {"S": BIG}}},
     "Item size has exceeded the maximum allowed size"),
    ("PutItem", {"TableName": GHOST, "Item": {"pk": {"S": "a"}}, "ConditionExpression": "a ="},
     "Invalid ConditionExpression: Syntax error"),
    ("DeleteItem", {"TableName": GHOST, "Key": {"pk": {"S": "a"}}, "ConditionExpression": "attribute_exists(a)",
                    "Expected": {"a": {"Exists": False}}},
     "Can not use both expression and non-expression parameters"),
    ("UpdateItem", {"TableName": GHOST, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET"},
     "Invalid UpdateExpression: Syntax error"),
    ("UpdateItem", {"TableName": GHOST, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET a = :v",
                    "ExpressionAttributeValues": {":v": {"S": "x"}, ":unused": {"S": "y"}}},
     "Value provided in ExpressionAttributeValues unused in expressions: keys: {:unused}"),
    ("Query", {"TableName": GHOST, "KeyConditionExpression": "pk = :p OR pk = :q",
               "ExpressionAttributeValues": {":p": {"S": "a"}, ":q": {"S": "b"}}},
     "Invalid operator used in KeyConditionExpression: OR"),
    ("Query", {"TableName": GHOST, "IndexName": "by-ix", "Limit": 0,
               "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "a"}}},
     "at 'limit' failed to satisfy constraint"),
    # The maps are judged before the expressions that use them.
    ("PutItem", {"TableName": GHOST, "Item": {"pk": {"S": "a"}}, "ConditionExpression": "",
                 "ExpressionAttributeNames": {}}, "ExpressionAttributeNames must not be empty"),
    ("Scan", {"TableName": GHOST, "FilterExpression": "a = ", "ExpressionAttributeValues": {"v": {"S": "x"}}},
     'ExpressionAttributeValues contains invalid key: Syntax error; key: "v"'),
    ("Scan", {"TableName": GHOST, "Segment": 1}, "The TotalSegments parameter is required"),
    ("Scan", {"TableName": GHOST, "FilterExpression": "((a = :v))", "ExpressionAttributeValues": {":v": {"S": "x"}}},
     "The expression has redundant parentheses"),
    ("BatchGetItem", {"RequestItems": {GHOST: {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "a"}}]}}},
     "Provided list of item keys contains duplicates"),
    ("BatchGetItem", {"RequestItems": {GHOST: {"Keys": [{"pk": {"S": "a"}}], "ProjectionExpression": "pk",
                                               "AttributesToGet": ["pk"]}}},
     "Can not use both expression and non-expression parameters"),
    ("BatchWriteItem", {"RequestItems": {GHOST: [{"PutRequest": {"Item": {"pk": {"S": "a"}, "big": {"S": BIG}}}}]}},
     "Item size has exceeded the maximum allowed size"),
    ("BatchWriteItem", {"RequestItems": {GHOST: [{}]}}, "Supplied AttributeValue has more than one datatypes set"),
    ("UpdateTable", {"TableName": GHOST, "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 1}},
     "1 validation error detected: Value '0' at 'provisionedThroughput.readCapacityUnits' failed to satisfy "
     "constraint: Member must have value greater than or equal to 1"),
    ("UpdateTable", {"TableName": GHOST, "GlobalSecondaryIndexUpdates": []},
     "At least one of ProvisionedThroughput, BillingMode, UpdateStreamEnabled"),
    ("UpdateTable", {"TableName": GHOST, "GlobalSecondaryIndexUpdates": [{}]},
     "One of GlobalSecondaryIndexUpdate.Update, GlobalSecondaryIndexUpdate.Create, "
     "GlobalSecondaryIndexUpdate.Delete must not be null"),
    ("UpdateTable", {"TableName": GHOST, "GlobalSecondaryIndexUpdates": [{"Delete": {"IndexName": "ixx"}},
                                                                         {"Delete": {"IndexName": "ixx"}}]},
     "Only one global secondary index update per index is allowed simultaneously. Index: ixx"),
])
def test_a_request_is_checked_before_its_table_is_looked_up(store, operation, body, message):
    """DynamoDB judges what a request says before it looks its table up: an invalid request
    names its problem whether or not the table exists (dynalite's suite recorded these against
    DynamoDB, on tables that do not exist). Made valid, the same request finds no table."""
    kind, got = raw_error(store, operation, body)
    assert kind == "ValidationException" and message in got, (operation, got)


@pytest.mark.parametrize("operation, body, count, parts", [
    ("PutItem", {"TableName": "abc;", "ReturnConsumedCapacity": "hi", "ReturnValues": "hi"}, 4, [
        "Value 'abc;' at 'tableName' failed to satisfy constraint: Member must satisfy regular expression pattern",
        "Value null at 'item' failed to satisfy constraint: Member must not be null",
        "Value 'hi' at 'returnConsumedCapacity' failed to satisfy constraint: Member must satisfy enum value set: "
        "[INDEXES, TOTAL, NONE]",
        "Value 'hi' at 'returnValues' failed to satisfy constraint: Member must satisfy enum value set"]),
    ("Query", {"TableName": "ab", "Limit": 0, "IndexName": "i;"}, 4, [
        "Value 'ab' at 'tableName' failed to satisfy constraint: Member must have length greater than or equal to 3",
        "Value 'i;' at 'indexName' failed to satisfy constraint: Member must have length greater than or equal to 3",
        "Value 'i;' at 'indexName' failed to satisfy constraint: Member must satisfy regular expression pattern",
        "Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"]),
    ("CreateTable", {"TableName": "abc", "AttributeDefinitions": [{"AttributeName": "a"}],
                     "KeySchema": [{"AttributeName": "a", "KeyType": "SIDEWAYS"}],
                     "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 1}}, 3, [
        "Value null at 'attributeDefinitions.1.member.attributeType' failed to satisfy constraint: Member must not be null",
        "Value 'SIDEWAYS' at 'keySchema.1.member.keyType' failed to satisfy constraint: Member must satisfy enum "
        "value set: [HASH, RANGE]",
        "Value '0' at 'provisionedThroughput.readCapacityUnits' failed to satisfy constraint: Member must have value "
        "greater than or equal to 1"]),
    ("BatchGetItem", {"RequestItems": {"a": {"Keys": []}}, "ReturnConsumedCapacity": "hi"}, 3, [
        "at 'requestItems' failed to satisfy constraint: Map keys must satisfy constraint: [Member must have length "
        "less than or equal to 255, Member must have length greater than or equal to 3, Member must satisfy regular "
        "expression pattern: [a-zA-Z0-9_.-]+]",
        "Value '[]' at 'requestItems.a.member.keys' failed to satisfy constraint: Member must have length greater "
        "than or equal to 1",
        "Value 'hi' at 'returnConsumedCapacity'"]),
])
def test_every_broken_constraint_is_named_in_one_answer(store, operation, body, count, parts):
    """DynamoDB checks every member's constraints before the operation runs and names every one
    broken, "N validation errors detected: a; b" (dynalite's suite recorded these against
    DynamoDB). The store named only the first one before."""
    kind, message = raw_error(store, operation, body)
    assert kind == "ValidationException", message
    assert message.startswith(f"{count} validation errors detected: "), message
    named = message.split(": ", 1)[1].split("; ")
    assert len(named) == count, message
    for part in parts:
        assert any(part in each for each in named), (part, message)


@pytest.mark.parametrize("operation, body, expected", [
    ("PutItem", {"TableName": "abc", "Item": {"a": {}}, "Expected": {"a": {}}, "ConditionExpression": "a = :a"},
     "Can not use both expression and non-expression parameters in the same request: "
     "Non-expression parameters: {Expected} Expression parameters: {ConditionExpression}"),
    ("UpdateItem", {"TableName": "abc", "Key": {"a": {}}, "ExpressionAttributeNames": {"#a": "a"}},
     "ExpressionAttributeNames can only be specified when using expressions"),
    ("DeleteItem", {"TableName": "abc", "Key": {"a": {}}, "ExpressionAttributeValues": {":a": {"S": "x"}}},
     "ExpressionAttributeValues can only be specified when using expressions: ConditionExpression is null"),
    ("Query", {"TableName": "abc", "KeyConditions": {"a": {"ComparisonOperator": "EQ", "AttributeValueList": [{}]}},
               "ExclusiveStartKey": {"a": {"S": "x", "N": "1"}}},
     "The provided starting key is invalid: Supplied AttributeValue has more than one datatypes set, "
     "must contain exactly one of the supported datatypes"),
    ("Scan", {"TableName": "abc", "ExclusiveStartKey": {"a": {"NULL": False}}},
     "The provided starting key is invalid: One or more parameter values were invalid: "
     "Null attribute value types must have the value of true"),
])
def test_expression_parameters_and_the_starting_key_come_before_a_bad_attribute_value(store, operation, body, expected):
    """DynamoDB judges mixed or unused expression parameters, and a Query's or Scan's starting
    key, before the attribute values it reads later (dynalite's suite recorded the order); the
    store's decoder meets an empty `{}` value first, and the operation answers DynamoDB's."""
    assert raw_error(store, operation, body) == ("ValidationException", expected), body


@pytest.mark.parametrize("operation", ["CreateTable", "UpdateTable", "DeleteTable", "DescribeTable",
                                       "DescribeTimeToLive"])
def test_the_table_operations_judge_a_table_name_first_in_their_own_words(store, operation):
    """The table operations judge TableName's presence and length before any constraint, in
    their own sentences (as dynalite's suite recorded DynamoDB answering); its pattern is a
    constraint like the others."""
    for body, expected in [
        ({}, "The parameter 'TableName' is required but was not present in the request"),
        ({"TableName": "a;"}, "TableName must be at least 3 characters long and at most 255 characters long"),
        ({"TableName": "a" * 256}, "TableName must be at least 3 characters long and at most 255 characters long"),
    ]:
        assert raw_error(store, operation, body) == ("ValidationException", expected), body
    kind, message = raw_error(store, operation, {"TableName": "abc;"})
    assert kind == "ValidationException" and "Value 'abc;' at 'tableName' failed to satisfy constraint: " \
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+" in message, message


@pytest.mark.parametrize("body, expected", [
    ({"TableName": True}, "TRUE_VALUE cannot be converted to String"),
    ({"TableName": 1.5}, "DECIMAL_VALUE cannot be converted to String"),
    ({"TableName": [], "Key": 5}, "Unrecognized collection type class java.lang.String"),
    ({"Key": "pk"}, "Unexpected field type"),
    ({"Key": {"pk": "a"}}, "Unexpected value type in payload"),
    ({"Key": {"pk": {"S": {}}}}, "Start of structure or map found where not expected"),
    ({"Key": {"pk": {"B": "abcde"}}}, "Base64 encoded length is expected a multiple of 4 bytes but found: 5"),
    ({"ConsistentRead": 1}, "NUMBER_VALUE cannot be converted to Boolean"),
    ({"ConsistentRead": "perhaps"}, "Unexpected token received from parser"),
])
def test_a_member_of_the_wrong_json_type_is_named_in_dynamodbs_words(store, body, expected):
    """A wrong JSON type is a SerializationException in the words of DynamoDB's deserializer,
    before any constraint (the request has no TableName or Key and still gets these)."""
    status, response = store.raw("GetItem", json.dumps(body).encode())
    assert status == 400, response
    assert response == {"__type": "com.amazon.coral.service#SerializationException", "Message": expected}, response


def test_booleans_and_integers_are_read_leniently_as_dynamodb_reads_them(store):
    """DynamoDB reads a Boolean from "true"/"yes"/"1" (and their opposites) and an integer from
    a number with a fraction; the request then runs as if written properly."""
    client = store.client()
    create_table(client, "lenient-table")
    client.put_item(TableName="lenient-table", Item={"pk": {"S": "a"}, "v": {"N": "1"}})
    for consistent in ("true", "YES", "1", "no"):
        status, response = store.raw("GetItem", json.dumps({
            "TableName": "lenient-table", "Key": {"pk": {"S": "a"}}, "ConsistentRead": consistent}).encode())
        assert status == 200 and response["Item"]["v"] == {"N": "1"}, (consistent, response)
    status, response = store.raw("Scan", json.dumps({"TableName": "lenient-table", "Limit": 1.7}).encode())
    assert status == 200 and response["Count"] == 1 and response["ScannedCount"] == 1, response


def test_a_stream_specifications_boolean_is_read_leniently(store):
    """StreamSpecification.StreamEnabled is a Boolean like any other: "true" enables the stream
    (CreateTable and UpdateTable), a number is the deserializer's refusal."""
    body = {"TableName": "lenient-stream", "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "StreamSpecification": {"StreamEnabled": "true", "StreamViewType": "KEYS_ONLY"}}
    status, response = store.raw("CreateTable", json.dumps(body).encode())
    assert status == 200, response
    assert response["TableDescription"]["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}
    status, response = store.raw("UpdateTable", json.dumps({
        "TableName": "lenient-stream", "StreamSpecification": {"StreamEnabled": "no"}}).encode())
    assert status == 200, response
    assert "LatestStreamArn" in response["TableDescription"], response
    assert store.client().describe_table(TableName="lenient-stream")["Table"].get("StreamSpecification") is None
    kind, message = raw_error(store, "UpdateTable", {
        "TableName": "lenient-stream", "StreamSpecification": {"StreamEnabled": 1, "StreamViewType": "KEYS_ONLY"}})
    assert (kind, message) == ("SerializationException", "NUMBER_VALUE cannot be converted to Boolean")


@pytest.mark.parametrize("operation, body", [
    ("GetItem", {"TableName": GHOST, "Key": {"pk": {"S": "a"}}, "ProjectionExpression": "pk"}),
    ("PutItem", {"TableName": GHOST, "Item": {"pk": {"S": "a"}, "v": {"S": "x" * 1000}}}),
    ("Query", {"TableName": GHOST, "IndexName": "by-ix", "KeyConditionExpression": "pk = :p",
               "ExpressionAttributeValues": {":p": {"S": "a"}}}),
    ("BatchWriteItem", {"RequestItems": {GHOST: [{"PutRequest": {"Item": {"pk": {"S": "a"}}}},
                                                 {"DeleteRequest": {"Key": {"pk": {"S": "a"}}}}]}}),
    ("UpdateTable", {"TableName": GHOST, "ProvisionedThroughput": {"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}}),
])
def test_a_valid_request_for_a_missing_table_is_resource_not_found(store, operation, body):
    # BatchWriteItem looks its tables up before it looks for duplicate keys (as dynalite's suite
    # recorded), so the put and the delete of one key find no table first.
    kind, got = raw_error(store, operation, body)
    assert kind == "ResourceNotFoundException" and GHOST in got, (operation, got)


def test_a_path_inside_a_key_attribute_is_refused_in_every_expression(store):
    """Key attributes are scalars: a document path into one (`a.b`, `a[0]`) is DynamoDB's
    "Key attributes must be scalars" in a projection, a condition, a filter or an update, naming
    the table's key (`Key`) or an index's (`IndexKey`); DynamoDB Local answers the same."""
    client = store.client()
    name = create_table(client, "scalar-keys", hash_key=("a", "S"), range_key=("b", "S"),
                        extra_attributes={"d": "S"},
                        LocalSecondaryIndexes=[{"IndexName": "by-d", "Projection": {"ProjectionType": "ALL"},
                                                "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"},
                                                              {"AttributeName": "d", "KeyType": "RANGE"}]}])
    key = {"a": {"S": "x"}, "b": {"S": "y"}}
    client.put_item(TableName=name, Item={**key, "d": {"S": "z"}, "m": {"M": {"q": {"S": "1"}}}})
    value = {":v": {"S": "x"}}
    for operation, body, role in [
        ("GetItem", {"Key": key, "ProjectionExpression": "a.b"}, "Key: a"),
        ("GetItem", {"Key": key, "ProjectionExpression": "m.q, b[0]"}, "Key: b"),
        ("GetItem", {"Key": key, "ProjectionExpression": "d.b"}, "IndexKey: d"),
        ("Query", {"KeyConditionExpression": "a = :v", "ExpressionAttributeValues": value,
                   "ProjectionExpression": "a.b"}, "Key: a"),
        ("Query", {"KeyConditionExpression": "a = :v", "ExpressionAttributeValues": value,
                   "FilterExpression": "attribute_exists(d.c)"}, "IndexKey: d"),
        ("Query", {"KeyConditionExpression": "a.b = :v", "ExpressionAttributeValues": value}, "Key: a"),
        ("Scan", {"FilterExpression": "a.b = :v", "ExpressionAttributeValues": value}, "Key: a"),
        ("PutItem", {"Item": key, "ConditionExpression": "attribute_exists(a.b)"}, "Key: a"),
        ("DeleteItem", {"Key": key, "ConditionExpression": "size(d[1]) > :n",
                        "ExpressionAttributeValues": {":n": {"N": "1"}}}, "IndexKey: d"),
        ("UpdateItem", {"Key": key, "UpdateExpression": "SET d.b = :v", "ExpressionAttributeValues": value},
         "IndexKey: d"),
        ("UpdateItem", {"Key": key, "UpdateExpression": "SET q = a.b"}, "Key: a"),
        ("UpdateItem", {"Key": key, "UpdateExpression": "SET q = :v", "ConditionExpression": "a.b = :v",
                        "ExpressionAttributeValues": value}, "Key: a"),
        ("BatchGetItem", {"RequestItems": {name: {"Keys": [key], "ProjectionExpression": "b.c"}}}, "Key: b"),
        ("TransactWriteItems", {"TransactItems": [{"ConditionCheck": {
            "TableName": name, "Key": key, "ConditionExpression": "attribute_exists(a[0])"}}]}, "Key: a"),
    ]:
        if operation not in ("BatchGetItem", "TransactWriteItems"):
            body = {"TableName": name, **body}
        kind, got = raw_error(store, operation, body)
        assert (kind, got) == ("ValidationException", "Key attributes must be scalars; list random access '[]' and "
                                                      f"map lookup '.' are not allowed: {role}"), (operation, body)
    # For a table that does not exist, a nested key condition is named as such (no key known).
    kind, got = raw_error(store, "Query", {"TableName": "no-such-table", "KeyConditionExpression": "a.b = :v",
                                           "ExpressionAttributeValues": value})
    assert (kind, got) == ("ValidationException", "KeyConditionExpressions cannot have conditions on nested attributes")
    # A key's own name, and paths inside other attributes, are fine; the item is as it was.
    assert client.get_item(TableName=name, Key=key, ProjectionExpression="a, m.q")["Item"] == \
        {"a": {"S": "x"}, "m": {"M": {"q": {"S": "1"}}}}
    assert client.get_item(TableName=name, Key=key, ConsistentRead=True)["Item"]["d"] == {"S": "z"}


def test_a_write_names_a_bad_key_before_a_path_inside_a_key_attribute(store):
    """DynamoDB Local judges a write's key (PutItem, DeleteItem, UpdateItem, a transaction's
    writes, BatchGetItem's keys) before a path into a key attribute; GetItem and
    TransactGetItems judge the path first. The check of such paths came before the key's."""
    client = store.client()
    name = create_table(client, "scalar-keys-order", hash_key=("a", "S"), range_key=("b", "S"),
                        extra_attributes={"d": "S"},
                        LocalSecondaryIndexes=[{"IndexName": "by-d", "Projection": {"ProjectionType": "ALL"},
                                                "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"},
                                                              {"AttributeName": "d", "KeyType": "RANGE"}]}])
    half = {"a": {"S": "x"}}
    # (DynamoDB Local words it "The number of conditions on the keys is invalid".)
    keys = "The provided key element does not match the schema"
    for operation, body, message in [
        ("PutItem", {"TableName": name, "Item": half, "ConditionExpression": "attribute_not_exists(d.z)"},
         "Missing the key b in the item"),
        ("PutItem", {"TableName": name, "Item": {**half, "b": {"N": "1"}},
                     "ConditionExpression": "attribute_not_exists(d.z)"}, "Type mismatch for key"),
        ("DeleteItem", {"TableName": name, "Key": half, "ConditionExpression": "attribute_not_exists(d.z)"}, keys),
        ("UpdateItem", {"TableName": name, "Key": half, "UpdateExpression": "SET q = a.b"}, keys),
        ("UpdateItem", {"TableName": name, "Key": half, "UpdateExpression": "SET a = :v",
                        "ExpressionAttributeValues": {":v": {"S": "y"}}}, keys),
        ("BatchGetItem", {"RequestItems": {name: {"Keys": [half], "ProjectionExpression": "d.b"}}}, keys),
        ("TransactWriteItems", {"TransactItems": [{"ConditionCheck": {
            "TableName": name, "Key": half, "ConditionExpression": "attribute_exists(d.b)"}}]}, keys),
        ("TransactWriteItems", {"TransactItems": [{"Update": {
            "TableName": name, "Key": half, "UpdateExpression": "SET q = d.b"}}]}, keys),
        ("GetItem", {"TableName": name, "Key": half, "ProjectionExpression": "d.b"}, "Key attributes must be scalars"),
    ]:
        kind, got = raw_error(store, operation, body)
        assert kind == "ValidationException" and message in got, (operation, got)


def test_scan_names_a_missing_index_before_judging_its_filter(store):
    """Scan looked the index up before parsing the filter, as Query still does and as DynamoDB
    Local does; moving the table lookup after the parse turned these into the filter's error."""
    client = store.client()
    name = create_table(client, "scan-index-order", hash_key=("a", "S"), extra_attributes={"g": "S"},
                        GlobalSecondaryIndexes=[{"IndexName": "by-g", "Projection": {"ProjectionType": "ALL"},
                                                 "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}])
    for body, message in [
        ({"IndexName": "nope", "FilterExpression": "a ="}, "The table does not have the specified index: nope"),
        ({"IndexName": "by-g", "ConsistentRead": True, "FilterExpression": "a ="},
         "Consistent reads are not supported on global secondary indexes"),
    ]:
        kind, got = raw_error(store, "Scan", {"TableName": name, **body})
        assert kind == "ValidationException" and message in got, (body, got)
