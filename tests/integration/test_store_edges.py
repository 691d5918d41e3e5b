"""Edge cases of the store's DynamoDB behaviour, black box with boto3: pagination through
indexes with duplicate index keys and in reverse, limits with filters, nested ReturnValues,
index key validation, number normalisation in keys and sets, and TTL removing index entries."""

import itertools
import time

import pytest
from botocore.exceptions import ClientError

from test_store_harness import create_table, error_of, store_fixture, wait_for

pytestmark = [pytest.mark.process]

TTL_DEADLINE_S = 30
names = (f"edge-{i}" for i in itertools.count())


store = store_fixture("edges")


@pytest.fixture
def client(store):
    return store.client()


def indexed_table(client):
    name = next(names)
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in
                              [("pk", "S"), ("sk", "N"), ("status", "S"), ("rank", "N")]],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{"IndexName": "by_status", "Projection": {"ProjectionType": "ALL"},
                                 "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}]}],
        LocalSecondaryIndexes=[{"IndexName": "by_rank", "Projection": {"ProjectionType": "KEYS_ONLY"},
                                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                              {"AttributeName": "rank", "KeyType": "RANGE"}]}],
    )
    return name


def paginate(client, **kwargs):
    items, start, pages = [], None, 0
    while True:
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = client.query(**kwargs) if "KeyConditionExpression" in kwargs else client.scan(**kwargs)
        pages += 1
        assert pages < 1000, "pagination does not end"
        items += page["Items"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items, pages


def test_gsi_pagination_with_duplicate_index_keys_returns_each_item_once(client):
    name = indexed_table(client)
    for p in range(3):
        for s in range(5):
            client.put_item(TableName=name, Item={"pk": {"S": f"p{p}"}, "sk": {"N": str(s)}, "status": {"S": "open"},
                                                  "rank": {"N": str(10 - s)}})
    items, pages = paginate(client, TableName=name, IndexName="by_status", KeyConditionExpression="#s = :o",
                            ExpressionAttributeNames={"#s": "status"},
                            ExpressionAttributeValues={":o": {"S": "open"}}, Limit=2)
    keys = [(i["pk"]["S"], i["sk"]["N"]) for i in items]
    assert len(keys) == 15 and len(set(keys)) == 15, keys
    assert pages >= 8
    page = client.query(TableName=name, IndexName="by_status", KeyConditionExpression="#s = :o",
                        ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":o": {"S": "open"}},
                        Limit=1)
    assert set(page["LastEvaluatedKey"]) == {"pk", "sk", "status"}, "an index's LastEvaluatedKey has both keys"

    scanned, _ = paginate(client, TableName=name, IndexName="by_status", Limit=4)
    assert len({(i["pk"]["S"], i["sk"]["N"]) for i in scanned}) == 15 and len(scanned) == 15


def test_lsi_query_in_reverse_with_pagination_and_consistent_read(client):
    name = indexed_table(client)
    for s in range(7):
        client.put_item(TableName=name, Item={"pk": {"S": "p"}, "sk": {"N": str(s)}, "rank": {"N": str(s % 3)},
                                              "extra": {"S": "x"}})
    items, _ = paginate(client, TableName=name, IndexName="by_rank", KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "p"}}, ScanIndexForward=False, Limit=2,
                        ConsistentRead=True)
    ranks = [int(i["rank"]["N"]) for i in items]
    assert ranks == sorted(ranks, reverse=True) and len(items) == 7
    assert all(set(i) == {"pk", "sk", "rank"} for i in items), "KEYS_ONLY"
    # Items without the LSI sort key are not in the LSI.
    client.put_item(TableName=name, Item={"pk": {"S": "p"}, "sk": {"N": "100"}})
    items, _ = paginate(client, TableName=name, IndexName="by_rank", KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "p"}})
    assert len(items) == 7
    # Fetching non-projected attributes from an LSI (ALL_ATTRIBUTES) reads them from the table.
    full = client.query(TableName=name, IndexName="by_rank", KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "p"}}, Select="ALL_ATTRIBUTES")["Items"]
    assert all(i.get("extra") == {"S": "x"} for i in full)


def test_query_reverse_pagination_on_the_table(client):
    name = create_table(client, next(names), range_key=("sk", "N"))
    for s in range(10):
        client.put_item(TableName=name, Item={"pk": {"S": "r"}, "sk": {"N": str(s)}})
    items, _ = paginate(client, TableName=name, KeyConditionExpression="pk = :p AND sk BETWEEN :a AND :b",
                        ExpressionAttributeValues={":p": {"S": "r"}, ":a": {"N": "2"}, ":b": {"N": "8"}},
                        ScanIndexForward=False, Limit=3)
    assert [int(i["sk"]["N"]) for i in items] == [8, 7, 6, 5, 4, 3, 2]


def test_limit_counts_items_evaluated_before_the_filter(client):
    name = create_table(client, next(names), range_key=("sk", "N"))
    for s in range(10):
        client.put_item(TableName=name, Item={"pk": {"S": "f"}, "sk": {"N": str(s)}, "even": {"BOOL": s % 2 == 0}})
    page = client.query(TableName=name, KeyConditionExpression="pk = :p", FilterExpression="even = :t",
                        ExpressionAttributeValues={":p": {"S": "f"}, ":t": {"BOOL": True}}, Limit=3)
    assert page["ScannedCount"] == 3 and page["Count"] == 2
    assert page["LastEvaluatedKey"]["sk"] == {"N": "2"}
    # Limit equal to the number of remaining items still returns a LastEvaluatedKey (DynamoDB does).
    page = client.query(TableName=name, KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "f"}}, Limit=10)
    assert page["Count"] == 10 and "LastEvaluatedKey" in page
    page = client.query(TableName=name, KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "f"}}, Limit=11)
    assert "LastEvaluatedKey" not in page


def test_update_return_values_for_nested_paths(client):
    name = create_table(client, next(names))
    key = {"pk": {"S": "n"}}
    client.put_item(TableName=name, Item={**key, "m": {"M": {"a": {"N": "1"}, "b": {"N": "2"}}},
                                          "l": {"L": [{"S": "x"}, {"S": "y"}]}})
    old = client.update_item(TableName=name, Key=key, UpdateExpression="SET m.a = :v, l[1] = :s",
                             ExpressionAttributeValues={":v": {"N": "10"}, ":s": {"S": "z"}},
                             ReturnValues="UPDATED_OLD")["Attributes"]
    assert old == {"m": {"M": {"a": {"N": "1"}}}, "l": {"L": [{"S": "y"}]}}
    new = client.update_item(TableName=name, Key=key, UpdateExpression="SET m.c = :v",
                             ExpressionAttributeValues={":v": {"N": "3"}}, ReturnValues="UPDATED_NEW")["Attributes"]
    assert new == {"m": {"M": {"c": {"N": "3"}}}}
    nothing = client.update_item(TableName=name, Key=key, UpdateExpression="SET fresh = :v",
                                 ExpressionAttributeValues={":v": {"N": "3"}}, ReturnValues="UPDATED_OLD")
    assert "Attributes" not in nothing, "an attribute that did not exist has no old value"
    # Setting a path under a missing parent is an error, not an upsert of the parent.
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=name, Key=key, UpdateExpression="SET nosuchparent.child = :v",
                           ExpressionAttributeValues={":v": {"N": "1"}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "document path" in message
    # Appending past the end of a list appends.
    appended = client.update_item(TableName=name, Key=key, UpdateExpression="SET l[10] = :s",
                                  ExpressionAttributeValues={":s": {"S": "end"}}, ReturnValues="ALL_NEW")
    assert appended["Attributes"]["l"] == {"L": [{"S": "x"}, {"S": "z"}, {"S": "end"}]}


def test_index_key_values_are_validated(client):
    name = indexed_table(client)
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"S": "p"}, "sk": {"N": "1"}, "status": {"S": ""}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "empty" in message.lower()
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=name, Key={"pk": {"S": "p"}, "sk": {"N": "1"}}, UpdateExpression="SET #r = :v",
                           ExpressionAttributeNames={"#r": "rank"}, ExpressionAttributeValues={":v": {"S": "high"}})
    assert error_of(excinfo)[0] == "ValidationException"
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "p"}, "sk": {"N": "1"}})


def test_numbers_normalise_in_keys_and_sets(client):
    name = create_table(client, next(names), hash_key=("pk", "N"))
    client.put_item(TableName=name, Item={"pk": {"N": "100"}, "v": {"S": "a"}})
    client.put_item(TableName=name, Item={"pk": {"N": "1E2"}, "v": {"S": "b"}})
    items = client.scan(TableName=name)["Items"]
    assert len(items) == 1 and items[0]["v"] == {"S": "b"}, "100 and 1E2 are the same key"
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"N": "1"}, "ns": {"NS": ["1", "1.0"]}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "duplicate" in message.lower()
    client.put_item(TableName=name, Item={"pk": {"N": "2"}, "ns": {"NS": ["1", "2"]}})
    added = client.update_item(TableName=name, Key={"pk": {"N": "2"}}, UpdateExpression="ADD ns :n",
                               ExpressionAttributeValues={":n": {"NS": ["2.0", "3"]}}, ReturnValues="UPDATED_NEW")
    assert sorted(float(n) for n in added["Attributes"]["ns"]["NS"]) == [1.0, 2.0, 3.0]


def test_ttl_removes_index_entries_too(client):
    name = indexed_table(client)
    client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
    client.put_item(TableName=name, Item={"pk": {"S": "t"}, "sk": {"N": "1"}, "status": {"S": "doomed"},
                                          "ttl": {"N": str(int(time.time()) - 5)}})

    def gone_from_index():
        return client.query(TableName=name, IndexName="by_status", KeyConditionExpression="#s = :d",
                            ExpressionAttributeNames={"#s": "status"},
                            ExpressionAttributeValues={":d": {"S": "doomed"}})["Count"] == 0

    wait_for(gone_from_index, TTL_DEADLINE_S, "expired item removed from the GSI", interval_s=0.2)
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "t"}, "sk": {"N": "1"}},
                                         ConsistentRead=True)
    assert client.describe_table(TableName=name)["Table"]["ItemCount"] == 0


def test_batch_write_to_unknown_table_and_conditional_failure_values(client):
    with pytest.raises(ClientError) as excinfo:
        client.batch_write_item(RequestItems={"ghost-table": [{"PutRequest": {"Item": {"pk": {"S": "a"}}}}]})
    assert error_of(excinfo)[0] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        client.batch_get_item(RequestItems={"ghost-table": {"Keys": [{"pk": {"S": "a"}}]}})
    assert error_of(excinfo)[0] == "ResourceNotFoundException"
    name = create_table(client, next(names))
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=name, Key={"pk": {"S": "nobody"}}, UpdateExpression="SET a = :v",
                           ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues={":v": {"N": "1"}},
                           ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert error_of(excinfo)[0] == "ConditionalCheckFailedException"
    assert "Item" not in excinfo.value.response, "no old item to return"
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "nobody"}}), "no upsert on failure"


def test_scan_with_segments_and_limit_and_count(client):
    name = create_table(client, next(names))
    for i in range(50):
        client.put_item(TableName=name, Item={"pk": {"S": f"s{i}"}})
    seen, per_segment = [], []
    for segment in range(3):
        items, _ = paginate(client, TableName=name, Segment=segment, TotalSegments=3, Limit=4)
        seen += [i["pk"]["S"] for i in items]
        per_segment.append(len(items))
    assert sorted(seen) == sorted(f"s{i}" for i in range(50)) and len(seen) == 50
    # Short, similar keys still spread over the segments (a plain FNV-1a prefix put all 50 in
    # the last one), so parallel scan workers share the work.
    assert min(per_segment) >= 8, per_segment
    counted = client.scan(TableName=name, Select="COUNT")
    assert counted["Count"] == 50 and counted["ScannedCount"] == 50
    # A LastEvaluatedKey of segment 0 does not continue segment 1: segments stay disjoint.
    first = client.scan(TableName=name, Segment=0, TotalSegments=3, Limit=1)
    assert "LastEvaluatedKey" in first, first
    with pytest.raises(ClientError) as excinfo:
        client.scan(TableName=name, Segment=1, TotalSegments=3, ExclusiveStartKey=first["LastEvaluatedKey"])
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "does not map to the provided Segment" in message, message
    again = client.scan(TableName=name, Segment=0, TotalSegments=3, ExclusiveStartKey=first["LastEvaluatedKey"])
    assert again["Count"] >= 1


def test_recreated_table_and_index_start_empty(client):
    name = next(names)
    create_table(client, name, extra_attributes={"g": "S"},
                 GlobalSecondaryIndexes=[{"IndexName": "by_g", "Projection": {"ProjectionType": "ALL"},
                                          "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}])
    for i in range(5):
        client.put_item(TableName=name, Item={"pk": {"S": f"old{i}"}, "g": {"S": "x"}})
    client.delete_table(TableName=name)
    create_table(client, name, extra_attributes={"g": "S"},
                 GlobalSecondaryIndexes=[{"IndexName": "by_g", "Projection": {"ProjectionType": "ALL"},
                                          "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}])
    assert client.scan(TableName=name)["Items"] == [], "a deleted table's items do not come back"
    assert client.query(TableName=name, IndexName="by_g", KeyConditionExpression="g = :x",
                        ExpressionAttributeValues={":x": {"S": "x"}})["Items"] == []
    assert client.describe_table(TableName=name)["Table"]["ItemCount"] == 0
    arn = client.describe_table(TableName=name)["Table"]["TableArn"]
    assert client.list_tags_of_resource(ResourceArn=arn)["Tags"] == []

    # The same for an index deleted and created again under the same name.
    client.put_item(TableName=name, Item={"pk": {"S": "new"}, "g": {"S": "y"}})
    client.update_table(TableName=name, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by_g"}}])
    wait_for(lambda: not client.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes"), 10,
             "index deleted")
    client.delete_item(TableName=name, Key={"pk": {"S": "new"}})
    client.update_table(TableName=name, AttributeDefinitions=[{"AttributeName": "g", "AttributeType": "S"}],
                        GlobalSecondaryIndexUpdates=[{"Create": {
                            "IndexName": "by_g", "Projection": {"ProjectionType": "ALL"},
                            "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}}])
    wait_for(lambda: client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"][0]["IndexStatus"]
             == "ACTIVE", 10, "index recreated")
    assert client.query(TableName=name, IndexName="by_g", KeyConditionExpression="g = :y",
                        ExpressionAttributeValues={":y": {"S": "y"}})["Items"] == []


def test_string_keys_sort_by_utf8_bytes(client):
    name = create_table(client, next(names), range_key=("sk", "S"))
    values = ["😀", "\uffff", "\ue000", "é", "z", "a", "A", "aa"]
    for v in values:
        client.put_item(TableName=name, Item={"pk": {"S": "u"}, "sk": {"S": v}})
    got = [i["sk"]["S"] for i in client.query(TableName=name, KeyConditionExpression="pk = :p",
                                              ExpressionAttributeValues={":p": {"S": "u"}})["Items"]]
    assert got == sorted(values, key=lambda s: s.encode("utf-8"))


def test_update_item_without_expression_creates_the_key_only_item(client):
    name = create_table(client, next(names))
    response = client.update_item(TableName=name, Key={"pk": {"S": "bare"}}, ReturnValues="ALL_NEW")
    assert response["Attributes"] == {"pk": {"S": "bare"}}
    assert client.get_item(TableName=name, Key={"pk": {"S": "bare"}})["Item"] == {"pk": {"S": "bare"}}


def test_more_validation_dynamodb_performs(client):
    name = create_table(client, next(names), range_key=("sk", "N"))
    client.put_item(TableName=name, Item={"pk": {"S": "v"}, "sk": {"N": "1"}, "data": {"S": "x"}})
    cases = [
        ("query on a non-key attribute", lambda: client.query(
            TableName=name, KeyConditionExpression="pk = :p AND #d = :d", ExpressionAttributeNames={"#d": "data"},
            ExpressionAttributeValues={":p": {"S": "v"}, ":d": {"S": "x"}})),
        ("begins_with on the partition key", lambda: client.query(
            TableName=name, KeyConditionExpression="begins_with(pk, :p)",
            ExpressionAttributeValues={":p": {"S": "v"}})),
        ("unused attribute names", lambda: client.get_item(
            TableName=name, Key={"pk": {"S": "v"}, "sk": {"N": "1"}}, ProjectionExpression="pk",
            ExpressionAttributeNames={"#unused": "x"})),
        ("overlapping projection paths", lambda: client.get_item(
            TableName=name, Key={"pk": {"S": "v"}, "sk": {"N": "1"}}, ProjectionExpression="#d, #d.x",
            ExpressionAttributeNames={"#d": "data"})),
        ("an invalid attribute_type", lambda: client.delete_item(
            TableName=name, Key={"pk": {"S": "v"}, "sk": {"N": "1"}}, ConditionExpression="attribute_type(pk, :t)",
            ExpressionAttributeValues={":t": {"S": "XX"}})),
        ("ReturnValues UPDATED_OLD on PutItem", lambda: client.put_item(
            TableName=name, Item={"pk": {"S": "v"}, "sk": {"N": "1"}}, ReturnValues="UPDATED_OLD")),
        ("duplicate keys in BatchGetItem", lambda: client.batch_get_item(RequestItems={
            name: {"Keys": [{"pk": {"S": "v"}, "sk": {"N": "1"}}, {"pk": {"S": "v"}, "sk": {"N": "1.0"}}]}})),
        ("TotalSegments over the maximum", lambda: client.scan(TableName=name, Segment=0, TotalSegments=1000001)),
        ("a key without its sort key", lambda: client.get_item(TableName=name, Key={"pk": {"S": "v"}})),
    ]
    for what, call in cases:
        with pytest.raises(ClientError) as excinfo:
            call()
        code, message, status = error_of(excinfo)
        assert (code, status) == ("ValidationException", 400), f"{what}: {code} {message}"
    assert client.get_item(TableName=name, Key={"pk": {"S": "v"}, "sk": {"N": "1"}})["Item"]["data"] == {"S": "x"}


def test_size_and_contains_on_every_type(client):
    name = create_table(client, next(names))
    key = {"pk": {"S": "sz"}}
    client.put_item(TableName=name, Item={**key, "b": {"B": b"\x00\x01\x02"}, "m": {"M": {"a": {"N": "1"}}},
                                          "ns": {"NS": ["1", "2"]}, "bs": {"BS": [b"\x01"]}, "l": {"L": []}})
    checks = ["size(b) = :3", "size(m) = :1", "size(ns) = :2", "size(bs) = :1", "size(l) = :0",
              "contains(ns, :1)", "contains(bs, :bin)"]
    values = {":0": {"N": "0"}, ":1": {"N": "1"}, ":2": {"N": "2"}, ":3": {"N": "3"}, ":bin": {"B": b"\x01"}}
    for check in checks:
        used = {k: v for k, v in values.items() if k in check.replace(")", " ").split()}
        client.put_item(TableName=name, Item=client.get_item(TableName=name, Key=key)["Item"],
                        ConditionExpression=check, ExpressionAttributeValues=used)


def test_legacy_conditional_operator_or(client):
    name = create_table(client, next(names))
    client.put_item(TableName=name, Item={"pk": {"S": "o"}, "a": {"N": "1"}, "b": {"N": "2"}})
    client.put_item(TableName=name, Item={"pk": {"S": "o"}, "a": {"N": "5"}}, ConditionalOperator="OR",
                    Expected={"a": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "9"}]},
                              "b": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "2"}]}})
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"S": "o"}}, ConditionalOperator="AND",
                        Expected={"a": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "5"}]},
                                  "b": {"ComparisonOperator": "NOT_NULL"}})
    assert error_of(excinfo)[0] == "ConditionalCheckFailedException"
    scanned = client.scan(TableName=name, ConditionalOperator="OR", ScanFilter={
        "a": {"ComparisonOperator": "IN", "AttributeValueList": [{"N": "5"}, {"N": "6"}]},
        "zzz": {"ComparisonOperator": "NOT_NULL"}})
    assert scanned["Count"] == 1


def test_query_start_key_outside_the_key_condition_is_refused(client):
    name = create_table(client, next(names), range_key=("sk", "N"))
    for p in ("a", "b"):
        for s in range(5):
            client.put_item(TableName=name, Item={"pk": {"S": p}, "sk": {"N": str(s)}})
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=name, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "a"}},
                     ExclusiveStartKey={"pk": {"S": "b"}, "sk": {"N": "1"}})
    code, message, _ = error_of(excinfo)
    assert (code, message) == ("ValidationException",
                               "The provided starting key is outside query boundaries based on provided conditions")
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=name, KeyConditionExpression="pk = :p AND sk > :s",
                     ExpressionAttributeValues={":p": {"S": "a"}, ":s": {"N": "2"}},
                     ExclusiveStartKey={"pk": {"S": "a"}, "sk": {"N": "1"}})
    code, message, _ = error_of(excinfo)
    assert (code, message) == ("ValidationException", "The provided starting key does not match the range key predicate")


def test_update_item_with_only_remove_or_delete_does_not_create_the_item(client):
    name = create_table(client, next(names))
    for expression, values in [("REMOVE gone", None), ("DELETE tags :t", {":t": {"SS": ["a"]}})]:
        kwargs = {"ExpressionAttributeValues": values} if values else {}
        response = client.update_item(TableName=name, Key={"pk": {"S": "absent"}}, UpdateExpression=expression,
                                      ReturnValues="ALL_NEW", **kwargs)
        assert "Attributes" not in response, response
        assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "absent"}}, ConsistentRead=True)
    client.update_item(TableName=name, Key={"pk": {"S": "absent"}},
                       AttributeUpdates={"gone": {"Action": "DELETE"}})
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "absent"}}, ConsistentRead=True)
    client.transact_write_items(TransactItems=[{"Update": {
        "TableName": name, "Key": {"pk": {"S": "absent"}}, "UpdateExpression": "REMOVE gone"}}])
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "absent"}}, ConsistentRead=True)
    # A SET beside the REMOVE creates it, as before.
    client.update_item(TableName=name, Key={"pk": {"S": "absent"}}, UpdateExpression="SET a = :a REMOVE gone",
                       ExpressionAttributeValues={":a": {"N": "1"}})
    assert client.get_item(TableName=name, Key={"pk": {"S": "absent"}})["Item"]["a"] == {"N": "1"}


def test_table_names_breaking_the_rules_are_validation_errors_everywhere(client):
    bad = "bad$name"
    key = {"pk": {"S": "k"}}
    calls = {
        "GetItem": lambda: client.get_item(TableName=bad, Key=key),
        "PutItem": lambda: client.put_item(TableName=bad, Item=key),
        "UpdateItem": lambda: client.update_item(TableName=bad, Key=key),
        "DeleteItem": lambda: client.delete_item(TableName=bad, Key=key),
        "Query": lambda: client.query(TableName=bad, KeyConditionExpression="pk = :p",
                                      ExpressionAttributeValues={":p": {"S": "k"}}),
        "Scan": lambda: client.scan(TableName=bad),
        "DescribeTable": lambda: client.describe_table(TableName=bad),
        "DeleteTable": lambda: client.delete_table(TableName=bad),
        "UpdateTable": lambda: client.update_table(TableName=bad, BillingMode="PAY_PER_REQUEST"),
        "DescribeTimeToLive": lambda: client.describe_time_to_live(TableName=bad),
        "BatchGetItem": lambda: client.batch_get_item(RequestItems={bad: {"Keys": [key]}}),
        "BatchWriteItem": lambda: client.batch_write_item(RequestItems={bad: [{"PutRequest": {"Item": key}}]}),
    }
    for operation, call in calls.items():
        with pytest.raises(ClientError) as excinfo:
            call()
        code, message, _ = error_of(excinfo)
        assert code == "ValidationException", (operation, code, message)
        assert "[a-zA-Z0-9_.-]+" in message, (operation, message)


def test_http_extras_as_dynamodb_answers(store):
    import gzip
    import json
    import urllib.request
    import zlib

    client = store.client()
    name = create_table(client, next(names))
    body = json.dumps({"TableName": name, "Item": {"pk": {"S": "zipped"}, "v": {"S": "x" * 500}}}).encode()
    for encoding, data in [("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))]:
        status, answer = store.raw("PutItem", data, {"Content-Encoding": encoding})
        assert status == 200, (encoding, answer)
    assert client.get_item(TableName=name, Key={"pk": {"S": "zipped"}})["Item"]["v"]["S"] == "x" * 500
    # DynamoDB answers a body that does not inflate with a 500 InternalServerError.
    status, answer = store.raw("PutItem", b"not gzip at all", {"Content-Encoding": "gzip"})
    assert status == 500 and "gzip" in answer.get("message", answer.get("Message", "")), answer
    for encoding in ["gzip", "deflate"]:
        status, answer = store.raw("PutItem", b"", {"Content-Encoding": encoding})
        assert status == 500 and "empty" in answer.get("message", ""), (encoding, answer)
    status, answer = store.raw("PutItem", gzip.compress(body), {"Content-Encoding": "garbage"})
    assert status == 500 and "'garbage' is not supported" in answer.get("message", ""), answer
    # 17 MiB of spaces gzip to a few KB: inflating past the request limit is a 413.
    bomb = gzip.compress(b" " * (17 * 1024 * 1024))
    status, answer = store.raw("PutItem", bomb, {"Content-Encoding": "gzip"})
    assert status == 413, answer

    with urllib.request.urlopen(store.url + "/", timeout=10) as response:
        assert response.status == 200
        assert response.read().decode().strip() == "healthy: " + store.url.split("://", 1)[1]
        assert response.headers["Access-Control-Allow-Origin"] is None

    preflight = urllib.request.Request(store.url + "/", method="OPTIONS", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-amz-target,authorization"})
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "POST"
        assert response.headers["Access-Control-Allow-Headers"] == "content-type,x-amz-target,authorization"
        assert response.headers["Access-Control-Max-Age"]
    # Without an Origin an OPTIONS is no preflight and no answer carries CORS headers.
    bare = urllib.request.Request(store.url + "/", method="OPTIONS")
    with urllib.request.urlopen(bare, timeout=10) as response:
        assert response.status == 200 and response.headers["Access-Control-Allow-Methods"] is None
    answered = client.describe_table(TableName=name)["ResponseMetadata"]["HTTPHeaders"]
    assert "access-control-allow-origin" not in answered
    browser = urllib.request.Request(store.url + "/", data=json.dumps({"TableName": name}).encode(), headers={
        "Origin": "http://app.example", "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.DescribeTable"})
    with urllib.request.urlopen(browser, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "x-amzn-requestid" in response.headers["Access-Control-Expose-Headers"]

    # A response over 4096 bytes is compressed when the client accepts gzip or deflate.
    client.put_item(TableName=name, Item={"pk": {"S": "big"}, "v": {"S": "y" * 8000}})
    get = json.dumps({"TableName": name, "Key": {"pk": {"S": "big"}}}).encode()
    for accept, encoding, inflate in [("gzip", "gzip", gzip.decompress), ("br, deflate;q=0.5", "deflate", zlib.decompress),
                                      ("identity", None, None)]:
        request = urllib.request.Request(store.url + "/", data=get, headers={
            "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.GetItem",
            "Accept-Encoding": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Encoding"] == encoding, accept
            data = response.read()
            item = json.loads(inflate(data) if inflate else data)["Item"]
            assert item["v"]["S"] == "y" * 8000, accept
            if inflate:
                assert len(data) < 1000, accept
    small = urllib.request.Request(store.url + "/", data=json.dumps({"TableName": name}).encode(), headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.DescribeTable",
        "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(small, timeout=10) as response:
        assert response.headers["Content-Encoding"] is None

    endpoint = client.describe_endpoints()["Endpoints"][0]["Address"]
    assert endpoint.endswith(":" + store.url.rsplit(":", 1)[1]), endpoint


def test_batch_get_consumed_capacity_per_table_rounds_each_item(client):
    first, second = create_table(client, next(names)), create_table(client, next(names))
    for n in range(3):
        client.put_item(TableName=first, Item={"pk": {"S": f"k{n}"}, "v": {"S": "x" * 100}})
    client.put_item(TableName=second, Item={"pk": {"S": "big"}, "v": {"S": "x" * 5000}})
    response = client.batch_get_item(RequestItems={
        first: {"Keys": [{"pk": {"S": f"k{n}"}} for n in range(3)]},
        second: {"Keys": [{"pk": {"S": "big"}}], "ConsistentRead": True},
    }, ReturnConsumedCapacity="TOTAL")
    units = {c["TableName"]: c["CapacityUnits"] for c in response["ConsumedCapacity"]}
    # Three small items read eventually consistent: 3 x 0.5; one 5 KB item read strongly: 2.
    assert units == {first: 1.5, second: 2.0}, units


def test_oversized_request_heads_are_refused_with_400(store):
    """DynamoDB answers 400 to headers over 16 KB in all and to a request target over 16 KB,
    before reading the body; a request with a few extra headers still goes through."""
    import http.client
    import json
    from urllib.parse import urlparse

    client = store.client()
    name = create_table(client, next(names))
    address = urlparse(store.url)
    body = json.dumps({"TableName": name}).encode()

    def post(path, extra):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        try:
            headers = {"Content-Type": "application/x-amz-json-1.0",
                       "X-Amz-Target": "DynamoDB_20120810.DescribeTable", **extra}
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    status, _ = post("/", {"header1": "dog", "header2": "cat"})
    assert status == 200
    status, text = post("/", {"header1": "x" * 8192, "header2": "y" * 8192})
    assert status == 400 and "16384 bytes" in text and "headers" in text, (status, text)
    status, text = post("/" + "x" * 17000, {})
    assert status == 400 and "InvalidSignatureException" not in text and "target" in text, (status, text)
    # A browser SDK can read the refusal (CORS), as it reads any other error.
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("POST", "/", body=body, headers={
            "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.DescribeTable",
            "Origin": "http://app.example", "header1": "x" * 17000})
        response = connection.getresponse()
        response.read()
        assert response.status == 400
        assert response.getheader("Access-Control-Allow-Origin") == "*"
    finally:
        connection.close()
    # The table is still there, and the store still answers.
    assert client.describe_table(TableName=name)["Table"]["TableName"] == name


def test_a_table_arn_works_wherever_a_table_name_does_and_answers_come_back_keyed_by_it(client):
    """DynamoDB takes a table's ARN in TableName, in RequestItems and in transactions, and
    answers with the ARN where it names the table (Responses, ConsumedCapacity)."""
    name = indexed_table(client)
    arn = client.describe_table(TableName=name)["Table"]["TableArn"]
    assert client.describe_table(TableName=arn)["Table"]["TableName"] == name
    client.put_item(TableName=arn, Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "status": {"S": "new"}})
    assert client.get_item(TableName=arn, Key={"pk": {"S": "a"}, "sk": {"N": "1"}})["Item"]["status"] == {"S": "new"}
    client.update_item(TableName=arn, Key={"pk": {"S": "a"}, "sk": {"N": "1"}},
                       UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
                       ExpressionAttributeValues={":s": {"S": "paid"}})
    found = client.query(TableName=arn, IndexName="by_status", KeyConditionExpression="#s = :s",
                         ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": {"S": "paid"}},
                         ReturnConsumedCapacity="TOTAL")
    assert found["Count"] == 1 and found["ConsumedCapacity"]["TableName"] == arn
    client.batch_write_item(RequestItems={arn: [{"PutRequest": {"Item": {"pk": {"S": "b"}, "sk": {"N": "2"}}}}]})
    got = client.batch_get_item(RequestItems={arn: {"Keys": [{"pk": {"S": "a"}, "sk": {"N": "1"}},
                                                              {"pk": {"S": "b"}, "sk": {"N": "2"}}]}},
                                ReturnConsumedCapacity="TOTAL")
    assert list(got["Responses"]) == [arn] and len(got["Responses"][arn]) == 2
    assert [c["TableName"] for c in got["ConsumedCapacity"]] == [arn]
    client.transact_write_items(TransactItems=[{"Delete": {"TableName": arn, "Key": {"pk": {"S": "b"}, "sk": {"N": "2"}}}}])
    assert client.scan(TableName=name)["Count"] == 1
    other_region = arn.replace(":us-east-1:", ":eu-central-1:")
    assert other_region != arn
    for table_name, words in ((other_region, "region eu-central-1"), (arn + "/index/by_status", "Invalid table ARN")):
        with pytest.raises(ClientError) as raised:
            client.get_item(TableName=table_name, Key={"pk": {"S": "a"}, "sk": {"N": "1"}})
        assert error_of(raised)[0] == "ValidationException" and words in error_of(raised)[1]


def test_empty_key_values_in_a_key_condition_are_refused(client):
    name = create_table(client, next(names), range_key=("sk", "S"))
    client.put_item(TableName=name, Item={"pk": {"S": "a"}, "sk": {"S": "x"}})
    cases = [("pk = :e", {":e": {"S": ""}}, "pk"),
             ("pk = :p AND sk > :e", {":p": {"S": "a"}, ":e": {"S": ""}}, "sk"),
             ("pk = :p AND begins_with(sk, :e)", {":p": {"S": "a"}, ":e": {"S": ""}}, "sk")]
    for condition, values, key in cases:
        with pytest.raises(ClientError) as raised:
            client.query(TableName=name, KeyConditionExpression=condition, ExpressionAttributeValues=values)
        assert error_of(raised)[:2] == ("ValidationException", (
            "One or more parameter values are not valid. The AttributeValue for a key "
            f"attribute cannot contain an empty string value. Key: {key}")), condition
    b_table = create_table(client, next(names), hash_key=("pk", "B"))
    with pytest.raises(ClientError) as raised:
        client.query(TableName=b_table, KeyConditionExpression="pk = :e", ExpressionAttributeValues={":e": {"B": b""}})
    assert "cannot contain an empty binary value. Key: pk" in error_of(raised)[1]


def test_a_replayed_transact_write_reports_the_reads_it_consumed(client):
    name = indexed_table(client)
    items = [{"Put": {"TableName": name, "Item": {"pk": {"S": "a"}, "sk": {"N": "1"}}}}]
    client.transact_write_items(TransactItems=items, ClientRequestToken="edge-token-1", ReturnConsumedCapacity="TOTAL")
    again = client.transact_write_items(TransactItems=items, ClientRequestToken="edge-token-1",
                                        ReturnConsumedCapacity="TOTAL")
    assert again["ConsumedCapacity"] == [{"TableName": name, "CapacityUnits": 2.0}]


def test_a_ttl_attribute_name_out_of_bounds_is_named_with_its_bound(store):
    client = store.client(parameter_validation=False)
    name = indexed_table(client)
    for attribute, bound in (("t" * 256, "less than or equal to 255"), ("", "greater than or equal to 1")):
        with pytest.raises(ClientError) as raised:
            client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})
        code, message, _ = error_of(raised)
        assert code == "ValidationException" and f"Value '{attribute}'" in message and bound in message
