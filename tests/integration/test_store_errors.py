"""Bad input against the real `switchyard store` binary: every kind gets HTTP 400 with the
`__type` a DynamoDB client matches on and a message naming the problem — never a 500, a hang
or a dropped connection — and what was stored before stays intact. Also DynamoDB's limits
(25 BatchWrite requests, 100 BatchGet keys and transaction items, 400 KB items, nesting)."""

import json

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from test_store_harness import create_table, error_of, started_store

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
    assert message, f"error without a message: {response}"
    return kind.split("#")[-1], message


@pytest.mark.parametrize("body, expected", [
    (b"{not json", "SerializationException"),
    (b"[1, 2, 3]", "SerializationException"),
    (b'{"TableName": 5}', "SerializationException"),
    (b'{"TableName": "errors-table", "Key": "pk"}', "SerializationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"S": 1}}}', "SerializationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"X": "y"}}}', "SerializationException"),
    (b'{"TableName": "errors-table"}', "ValidationException"),
    (b'{"Key": {"pk": {"S": "a"}}}', "ValidationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"S": "a"}, "extra": {"S": "b"}}}', "ValidationException"),
    (b'{"TableName": "errors-table", "Key": {"pk": {"N": "1"}}}', "ValidationException"),
    (b'{"TableName": "no-such-table", "Key": {"pk": {"S": "a"}}}', "ResourceNotFoundException"),
    (b"\xff\xfe\x00garbage", "SerializationException"),
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
    assert error_of(excinfo)[0] == "ValidationException"
    client.delete_item(TableName=TABLE, Key={"pk": {"S": "grow"}})


def test_too_deep_nesting_is_refused(store):
    value = {"S": "leaf"}
    for _ in range(40):
        value = {"M": {"m": value}}
    kind, message = raw_error(store, "PutItem", {"TableName": TABLE, "Item": {"pk": {"S": "deep"}, "v": value}})
    assert kind == "ValidationException" and "nest" in message.lower() and "32" in message
    # Very deep JSON (beyond any parser's comfort) is refused, not a crash.
    body = b'{"TableName": "errors-table", "Item": {"pk": {"S": "deeper"}, "v": ' + b'{"L": [' * 5000 + \
        b'{"S": "x"}' + b']}' * 5000 + b"}}"
    kind, _ = raw_error(store, "PutItem", body)
    assert kind in ("ValidationException", "SerializationException")
    # Within the limit works.
    value = {"S": "leaf"}
    for _ in range(31):
        value = {"L": [value]}
    store.client().put_item(TableName=TABLE, Item={"pk": {"S": "ok-depth"}, "v": value})


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
    assert code == "ValidationException" and "100" in message
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
