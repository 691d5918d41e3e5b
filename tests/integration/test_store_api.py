"""The store's DynamoDB API, black box: the real `switchyard store` binary driven with boto3's
client and resource APIs — tables, items, expressions (and the legacy parameters), ReturnValues,
Query and Scan with pagination and parallel segments, secondary indexes and projections,
batches, transactions, tags, TTL, DescribeEndpoints and number fidelity."""

import decimal
import itertools
import re

import pytest
from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from test_store_harness import create_table, error_of, store_fixture, wait_for

pytestmark = [pytest.mark.process]

TTL_DEADLINE_S = 30
names = (f"table-{i}" for i in itertools.count())


store = store_fixture()


@pytest.fixture
def client(store):
    return store.client()


def new_table(client, **kwargs):
    return create_table(client, next(names), **kwargs)


# ---------------------------------------------------------------------------------------------
# Tables


def test_table_lifecycle_create_describe_update_delete(client):
    name = new_table(client, range_key=("sk", "N"))
    table = client.describe_table(TableName=name)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"},
                                  {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert table["TableArn"].startswith("arn:aws:dynamodb:us-east-1:")
    assert table["TableArn"].endswith(f":table/{name}")
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["ItemCount"] == 0

    with pytest.raises(ClientError) as excinfo:
        create_table(client, name)
    assert error_of(excinfo)[0] == "ResourceInUseException"

    updated = client.update_table(
        TableName=name, BillingMode="PROVISIONED",
        ProvisionedThroughput={"ReadCapacityUnits": 7, "WriteCapacityUnits": 3},
    )["TableDescription"]
    assert updated["ProvisionedThroughput"]["ReadCapacityUnits"] == 7
    assert client.describe_table(TableName=name)["Table"]["ProvisionedThroughput"]["WriteCapacityUnits"] == 3
    # A provisioned table's new capacity is answered as DynamoDB answers it while UPDATING: the
    # old units and decreases, the change's date already set; DescribeTable shows the new ones.
    units = lambda t: (t["ReadCapacityUnits"], t["WriteCapacityUnits"])
    tripled = client.update_table(
        TableName=name, ProvisionedThroughput={"ReadCapacityUnits": 21, "WriteCapacityUnits": 9})["TableDescription"]
    assert tripled["TableStatus"] == "UPDATING" and units(tripled["ProvisionedThroughput"]) == (7, 3)
    assert "LastIncreaseDateTime" in tripled["ProvisionedThroughput"]
    described = client.describe_table(TableName=name)["Table"]["ProvisionedThroughput"]
    assert units(described) == (21, 9) and described["NumberOfDecreasesToday"] == 0
    reduced = client.update_table(
        TableName=name, ProvisionedThroughput={"ReadCapacityUnits": 7, "WriteCapacityUnits": 3})["TableDescription"]
    assert units(reduced["ProvisionedThroughput"]) == (21, 9)
    assert reduced["ProvisionedThroughput"]["NumberOfDecreasesToday"] == 0
    assert "LastDecreaseDateTime" in reduced["ProvisionedThroughput"]
    described = client.describe_table(TableName=name)["Table"]["ProvisionedThroughput"]
    assert units(described) == (7, 3) and described["NumberOfDecreasesToday"] == 1

    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    deleted = client.delete_table(TableName=name)["TableDescription"]
    assert deleted["TableName"] == name
    assert deleted["TableStatus"] == "DELETING" and deleted["TableArn"].endswith(f"table/{name}")
    # DynamoDB's DeleteTable description leaves out the schema and the creation time.
    for left_out in ["KeySchema", "AttributeDefinitions", "CreationDateTime", "GlobalSecondaryIndexes"]:
        assert left_out not in deleted, left_out
    assert "ProvisionedThroughput" in deleted and "BillingModeSummary" in deleted
    with pytest.raises(ClientError) as excinfo:
        client.describe_table(TableName=name)
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ResourceNotFoundException", 400)
    assert name in message or "not found" in message.lower()


def test_update_table_answers_indexes_updating_as_dynamodb_does(client):
    units = lambda t: (t["ReadCapacityUnits"], t["WriteCapacityUnits"])
    client.create_table(
        TableName="capacity-idx", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "g", "AttributeType": "S"}],
        ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
        GlobalSecondaryIndexes=[{"IndexName": name, "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "KEYS_ONLY"},
                                 "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}}
                                for name in ("by-g", "by-g-too")])
    # An index whose capacity changes is UPDATING in the answer, with its old units; the other
    # stays ACTIVE. DescribeTable shows the change made.
    answer = client.update_table(TableName="capacity-idx", GlobalSecondaryIndexUpdates=[{"Update": {
        "IndexName": "by-g", "ProvisionedThroughput": {"ReadCapacityUnits": 15, "WriteCapacityUnits": 15}}}])
    indexes = {i["IndexName"]: i for i in answer["TableDescription"]["GlobalSecondaryIndexes"]}
    assert indexes["by-g"]["IndexStatus"] == "UPDATING" and units(indexes["by-g"]["ProvisionedThroughput"]) == (5, 5)
    assert indexes["by-g-too"]["IndexStatus"] == "ACTIVE"
    described = {i["IndexName"]: i for i in client.describe_table(TableName="capacity-idx")["Table"]["GlobalSecondaryIndexes"]}
    assert described["by-g"]["IndexStatus"] == "ACTIVE" and units(described["by-g"]["ProvisionedThroughput"]) == (15, 15)
    # A switch to on demand: every index UPDATING with the new mode's units, its own decreases
    # not yet counted; DescribeTable counts the switch as each index's decrease.
    answer = client.update_table(TableName="capacity-idx", BillingMode="PAY_PER_REQUEST")["TableDescription"]
    indexes = {i["IndexName"]: i for i in answer["GlobalSecondaryIndexes"]}
    assert all(index["IndexStatus"] == "UPDATING" for index in indexes.values()), indexes
    # (by-g keeps the date of its earlier increase.)
    assert indexes["by-g-too"]["ProvisionedThroughput"] == {
        "NumberOfDecreasesToday": 0, "ReadCapacityUnits": 0, "WriteCapacityUnits": 0}, indexes
    assert "LastDecreaseDateTime" not in indexes["by-g"]["ProvisionedThroughput"]
    assert units(indexes["by-g"]["ProvisionedThroughput"]) == (0, 0)
    for index in client.describe_table(TableName="capacity-idx")["Table"]["GlobalSecondaryIndexes"]:
        assert index["IndexStatus"] == "ACTIVE" and index["ProvisionedThroughput"]["NumberOfDecreasesToday"] == 1, index


def test_update_table_adds_and_removes_a_global_secondary_index(client):
    name = new_table(client)
    client.put_item(TableName=name, Item={"pk": {"S": "a"}, "color": {"S": "red"}})
    client.update_table(
        TableName=name, AttributeDefinitions=[{"AttributeName": "color", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": {
            "IndexName": "by_color", "KeySchema": [{"AttributeName": "color", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"}}}],
    )

    def backfilled():
        indexes = client.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes", [])
        return indexes and indexes[0]["IndexStatus"] == "ACTIVE"

    wait_for(backfilled, 10, "index by_color active")
    items = client.query(TableName=name, IndexName="by_color", KeyConditionExpression="color = :c",
                         ExpressionAttributeValues={":c": {"S": "red"}})["Items"]
    assert [i["pk"]["S"] for i in items] == ["a"]
    client.update_table(TableName=name, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by_color"}}])
    wait_for(lambda: not client.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes"), 10,
             "index by_color deleted")


def test_an_index_backfill_skips_items_that_violate_its_key(client):
    """DynamoDB's backfill leaves out items whose value for the new index's key has the wrong
    type, is empty or is too long (an "index key violation"); the items stay in the table."""
    name = new_table(client)
    good = [{"pk": {"S": f"good{i}"}, "x": {"S": f"v{i}"}} for i in range(3)]
    violating = [
        {"pk": {"S": "number"}, "x": {"N": "7"}},
        {"pk": {"S": "missing"}, "y": {"S": "no x"}},
        {"pk": {"S": "too-long"}, "x": {"S": "a" * 2049}},
    ]
    for item in good + violating:
        client.put_item(TableName=name, Item=item)
    client.update_table(
        TableName=name, AttributeDefinitions=[{"AttributeName": "x", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": {
            "IndexName": "by_x", "KeySchema": [{"AttributeName": "x", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"}}}],
    )
    wait_for(lambda: client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"][0]["IndexStatus"]
             == "ACTIVE", 10, "index by_x active")
    indexed = client.scan(TableName=name, IndexName="by_x")["Items"]
    assert sorted(i["pk"]["S"] for i in indexed) == ["good0", "good1", "good2"]
    index = client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"][0]
    assert index["ItemCount"] == 3
    assert client.scan(TableName=name, Select="COUNT")["Count"] == 6
    # Deleting a violating item leaves the index (and its count) alone.
    client.delete_item(TableName=name, Key={"pk": {"S": "number"}})
    assert client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"][0]["ItemCount"] == 3


def test_concurrent_tag_changes_all_land(store):
    """TagResource and UntagResource change the tags as committed when they run: two clients
    tagging one table at once both keep their tags."""
    import threading

    client = store.client()
    name = new_table(client)
    arn = client.describe_table(TableName=name)["Table"]["TableArn"]
    failures = []

    def tag(prefix):
        own = store.client()
        try:
            for i in range(20):
                own.tag_resource(ResourceArn=arn, Tags=[{"Key": f"{prefix}{i}", "Value": "v"}])
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=tag, args=(prefix,)) for prefix in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    keys = sorted(t["Key"] for t in client.list_tags_of_resource(ResourceArn=arn)["Tags"])
    assert keys == sorted(f"{p}{i}" for p in "ab" for i in range(20))


def test_list_tables_pages_with_limit_and_paginator(client):
    created = sorted(new_table(client) for _ in range(7))
    seen, start = [], None
    while True:
        kwargs = {"Limit": 3}
        if start:
            kwargs["ExclusiveStartTableName"] = start
        page = client.list_tables(**kwargs)
        assert len(page["TableNames"]) <= 3
        seen += page["TableNames"]
        start = page.get("LastEvaluatedTableName")
        if not start:
            break
    assert seen == sorted(seen), "ListTables returns names in order"
    assert set(created) <= set(seen)
    paginated = [n for p in client.get_paginator("list_tables").paginate(PaginationConfig={"PageSize": 2})
                 for n in p["TableNames"]]
    assert paginated == seen


def test_describe_endpoints(client):
    endpoints = client.describe_endpoints()["Endpoints"]
    assert endpoints and endpoints[0]["Address"]
    assert endpoints[0]["CachePeriodInMinutes"] > 0


def test_tags_tag_untag_list(client):
    name = new_table(client)
    arn = client.describe_table(TableName=name)["Table"]["TableArn"]
    client.tag_resource(ResourceArn=arn, Tags=[{"Key": "team", "Value": "payments"}, {"Key": "env", "Value": "prod"}])
    tags = client.list_tags_of_resource(ResourceArn=arn)["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "prod"), ("team", "payments")]
    client.untag_resource(ResourceArn=arn, TagKeys=["env"])
    assert client.list_tags_of_resource(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "payments"}]
    with pytest.raises(ClientError) as excinfo:
        client.list_tags_of_resource(ResourceArn=arn.replace(name, "no-such-table"))
    assert error_of(excinfo)[0] in ("ResourceNotFoundException", "AccessDeniedException")


def test_ttl_expired_item_disappears_in_the_background(client):
    import time

    name = new_table(client)
    assert client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
    spec = client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True,
                                                                               "AttributeName": "expires"})
    assert spec["TimeToLiveSpecification"] == {"Enabled": True, "AttributeName": "expires"}
    described = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert described["TimeToLiveStatus"] == "ENABLED" and described["AttributeName"] == "expires"

    now = int(time.time())
    client.put_item(TableName=name, Item={"pk": {"S": "gone"}, "expires": {"N": str(now - 10)}})
    client.put_item(TableName=name, Item={"pk": {"S": "later"}, "expires": {"N": str(now + 3600)}})
    client.put_item(TableName=name, Item={"pk": {"S": "no-ttl"}})
    client.put_item(TableName=name, Item={"pk": {"S": "text-ttl"}, "expires": {"S": "not a number"}})
    # Fractional seconds expire too, as on DynamoDB.
    client.put_item(TableName=name, Item={"pk": {"S": "fractional"}, "expires": {"N": f"{time.time() - 10:.6f}"}})
    client.put_item(TableName=name, Item={"pk": {"S": "exponent"}, "expires": {"N": f"{(now - 60) // 10}e1"}})

    def expired_gone():
        return all("Item" not in client.get_item(TableName=name, Key={"pk": {"S": key}}, ConsistentRead=True)
                   for key in ["gone", "fractional", "exponent"])

    wait_for(expired_gone, TTL_DEADLINE_S, "expired item removed by the TTL sweep", interval_s=0.2)
    remaining = sorted(i["pk"]["S"] for i in client.scan(TableName=name, ConsistentRead=True)["Items"])
    assert remaining == ["later", "no-ttl", "text-ttl"]

    with pytest.raises(ClientError) as excinfo:
        client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True,
                                                                             "AttributeName": "other"})
    assert error_of(excinfo)[0] == "ValidationException"


# ---------------------------------------------------------------------------------------------
# Items and ReturnValues


ALL_TYPES = {
    "pk": {"S": "all-types"},
    "s": {"S": "héllo ✓"},
    "n": {"N": "-12.5"},
    "b": {"B": b"\x00\x01\xff"},
    "bool": {"BOOL": True},
    "null": {"NULL": True},
    "m": {"M": {"inner": {"L": [{"N": "1"}, {"S": "x"}, {"M": {}}]}}},
    "l": {"L": []},
    "ss": {"SS": ["b", "a"]},
    "ns": {"NS": ["10", "2", "-1"]},
    "bs": {"BS": [b"\x02", b"\x01"]},
}


def test_put_get_delete_round_trips_every_type(client):
    name = new_table(client)
    client.put_item(TableName=name, Item=ALL_TYPES)
    item = client.get_item(TableName=name, Key={"pk": {"S": "all-types"}}, ConsistentRead=True)["Item"]
    assert {k: v for k, v in item.items() if k not in ("ss", "ns", "bs")} == \
        {k: v for k, v in ALL_TYPES.items() if k not in ("ss", "ns", "bs")}
    assert sorted(item["ss"]["SS"]) == ["a", "b"]
    assert sorted(item["ns"]["NS"], key=decimal.Decimal) == ["-1", "2", "10"]
    assert sorted(item["bs"]["BS"]) == [b"\x01", b"\x02"]

    old = client.delete_item(TableName=name, Key={"pk": {"S": "all-types"}}, ReturnValues="ALL_OLD")["Attributes"]
    assert old["s"] == {"S": "héllo ✓"}
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "all-types"}})
    assert "Attributes" not in client.delete_item(TableName=name, Key={"pk": {"S": "all-types"}},
                                                  ReturnValues="ALL_OLD")


def test_put_item_return_values_and_conditions(client):
    name = new_table(client)
    assert "Attributes" not in client.put_item(TableName=name, Item={"pk": {"S": "k"}, "v": {"N": "1"}},
                                               ReturnValues="ALL_OLD")
    old = client.put_item(TableName=name, Item={"pk": {"S": "k"}, "v": {"N": "2"}}, ReturnValues="ALL_OLD")
    assert old["Attributes"] == {"pk": {"S": "k"}, "v": {"N": "1"}}

    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"S": "k"}}, ConditionExpression="attribute_not_exists(pk)",
                        ReturnValuesOnConditionCheckFailure="ALL_OLD")
    code, message, status = error_of(excinfo)
    assert (code, message, status) == ("ConditionalCheckFailedException", "The conditional request failed", 400)
    assert excinfo.value.response["Item"] == {"pk": {"S": "k"}, "v": {"N": "2"}}

    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"S": "k"}}, ReturnValues="ALL_NEW")
    assert error_of(excinfo)[0] == "ValidationException"


def test_update_item_return_values_variants(client):
    name = new_table(client)
    key = {"pk": {"S": "u"}}
    client.put_item(TableName=name, Item={**key, "a": {"N": "1"}, "b": {"S": "keep"}})

    def update(return_values, expression="SET a = a + :one"):
        return client.update_item(TableName=name, Key=key, UpdateExpression=expression,
                                  ExpressionAttributeValues={":one": {"N": "1"}},
                                  ReturnValues=return_values).get("Attributes")

    assert update("NONE") is None
    assert update("UPDATED_OLD") == {"a": {"N": "2"}}
    assert update("UPDATED_NEW") == {"a": {"N": "4"}}
    assert update("ALL_OLD") == {**key, "a": {"N": "4"}, "b": {"S": "keep"}}
    assert update("ALL_NEW") == {**key, "a": {"N": "6"}, "b": {"S": "keep"}}


def test_update_expression_set_remove_add_delete_functions(client):
    name = new_table(client)
    key = {"pk": {"S": "x"}}
    client.put_item(TableName=name, Item={
        **key, "count": {"N": "10"}, "tags": {"SS": ["a", "b", "c"]}, "list": {"L": [{"N": "1"}]},
        "dels": {"SS": ["a", "z"]}, "nested": {"M": {"deep": {"M": {"v": {"S": "old"}}}, "arr": {"L": [{"S": "0"}, {"S": "1"}, {"S": "2"}]}}},
        "gone": {"S": "bye"},
    })
    new = client.update_item(
        TableName=name, Key=key,
        UpdateExpression=("SET #c = #c - :two, #l = list_append(#l, :more), nested.deep.v = :new, "
                          "fresh = if_not_exists(fresh, :init), kept = if_not_exists(#c, :init) "
                          "REMOVE gone, nested.arr[1] ADD tags :addset, #ctr :five DELETE dels :delset"),
        ExpressionAttributeNames={"#c": "count", "#l": "list", "#ctr": "counter"},
        ExpressionAttributeValues={":two": {"N": "2"}, ":more": {"L": [{"N": "2"}, {"N": "3"}]},
                                   ":new": {"S": "new"}, ":init": {"N": "100"}, ":addset": {"SS": ["d"]},
                                   ":five": {"N": "5"}, ":delset": {"SS": ["a"]}},
        ReturnValues="ALL_NEW",
    )["Attributes"]
    assert new["count"] == {"N": "8"}
    assert new["list"] == {"L": [{"N": "1"}, {"N": "2"}, {"N": "3"}]}
    assert new["nested"]["M"]["deep"]["M"]["v"] == {"S": "new"}
    assert new["nested"]["M"]["arr"] == {"L": [{"S": "0"}, {"S": "2"}]}
    assert new["fresh"] == {"N": "100"}
    assert new["kept"] == {"N": "10"}, "if_not_exists sees the value before the update"
    assert "gone" not in new
    assert sorted(new["tags"]["SS"]) == ["a", "b", "c", "d"]
    assert new["dels"] == {"SS": ["z"]}
    assert new["counter"] == {"N": "5"}

    # Creating an item by UpdateItem (upsert), and DELETE emptying a set removes it.
    created = client.update_item(TableName=name, Key={"pk": {"S": "new"}}, UpdateExpression="ADD s :s",
                                 ExpressionAttributeValues={":s": {"NS": ["1"]}}, ReturnValues="ALL_NEW")
    assert created["Attributes"] == {"pk": {"S": "new"}, "s": {"NS": ["1"]}}
    emptied = client.update_item(TableName=name, Key={"pk": {"S": "new"}}, UpdateExpression="DELETE s :s",
                                 ExpressionAttributeValues={":s": {"NS": ["1"]}}, ReturnValues="ALL_NEW")
    assert emptied["Attributes"] == {"pk": {"S": "new"}}

    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=name, Key=key, UpdateExpression="SET pk = :v",
                           ExpressionAttributeValues={":v": {"S": "other"}})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "key" in message.lower()


def test_condition_expressions_every_function_and_operator(client):
    name = new_table(client)
    key = {"pk": {"S": "c"}}
    client.put_item(TableName=name, Item={
        **key, "n": {"N": "5"}, "s": {"S": "hello world"}, "ss": {"SS": ["x", "y"]}, "l": {"L": [{"S": "a"}]},
        "m": {"M": {"k": {"N": "1"}}}, "b": {"B": b"abc"},
    })
    values = {":3": {"N": "3"}, ":5": {"N": "5"}, ":9": {"N": "9"}, ":he": {"S": "hello"}, ":x": {"S": "x"},
              ":S": {"S": "S"}, ":SS": {"S": "SS"}, ":11": {"N": "11"}, ":a": {"S": "a"}, ":ab": {"B": b"ab"}}
    holds = [
        "n = :5", "n <> :3", "n > :3", "n >= :5", "n < :9", "n <= :5", "n BETWEEN :3 AND :9", "n IN (:3, :5)",
        "begins_with(s, :he)", "contains(s, :he)", "contains(ss, :x)", "contains(l, :a)", "begins_with(b, :ab)",
        "attribute_exists(m.k)", "attribute_not_exists(m.z)", "attribute_type(s, :S)", "attribute_type(ss, :SS)",
        "size(s) = :11", "size(l) < :3", "NOT n = :3", "n = :3 OR n = :5", "(n = :5 AND s <> :he) AND NOT (n > :9)",
    ]
    fails = ["n = :3", "n BETWEEN :9 AND :11", "begins_with(s, :x)", "attribute_exists(nope)", "size(s) > :11",
             "attribute_type(s, :SS)", "n IN (:3, :9)", "NOT (n = :5)", "n > :he"]
    for expression in holds:
        used = {k: v for k, v in values.items() if k in re.findall(r":\w+", expression)}
        client.put_item(TableName=name, Item={**key, **client.get_item(TableName=name, Key=key)["Item"]},
                        ConditionExpression=expression, **({"ExpressionAttributeValues": used} if used else {}))
    for expression in fails:
        used = {k: v for k, v in values.items() if k in re.findall(r":\w+", expression)}
        with pytest.raises(ClientError) as excinfo:
            client.delete_item(TableName=name, Key=key, ConditionExpression=expression,
                               **({"ExpressionAttributeValues": used} if used else {}))
        assert error_of(excinfo)[0] == "ConditionalCheckFailedException", expression
    assert "Item" in client.get_item(TableName=name, Key=key), "failed conditions deleted nothing"


def test_projection_expression_nested_paths_and_list_indexes(client):
    name = new_table(client)
    key = {"pk": {"S": "p"}}
    client.put_item(TableName=name, Item={
        **key, "a": {"M": {"b": {"L": [{"S": "zero"}, {"M": {"c": {"N": "1"}, "d": {"N": "2"}}}]}}},
        "other": {"S": "x"}, "name": {"S": "reserved"},
    })
    item = client.get_item(TableName=name, Key=key, ProjectionExpression="a.b[1].c, #n",
                           ExpressionAttributeNames={"#n": "name"})["Item"]
    assert item == {"a": {"M": {"b": {"L": [{"M": {"c": {"N": "1"}}}]}}}, "name": {"S": "reserved"}}
    legacy = client.get_item(TableName=name, Key=key, AttributesToGet=["other"])["Item"]
    assert legacy == {"other": {"S": "x"}}
    with pytest.raises(ClientError) as excinfo:
        client.get_item(TableName=name, Key=key, ProjectionExpression="name")
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "reserved keyword" in message


def test_legacy_parameters_expected_attribute_updates_key_conditions_filters(client):
    name = new_table(client, range_key=("sk", "N"))
    for i in range(6):
        client.put_item(TableName=name, Item={"pk": {"S": "h"}, "sk": {"N": str(i)}, "v": {"N": str(i * 10)}})
    client.update_item(TableName=name, Key={"pk": {"S": "h"}, "sk": {"N": "1"}},
                       AttributeUpdates={"v": {"Action": "ADD", "Value": {"N": "5"}},
                                         "w": {"Action": "PUT", "Value": {"S": "new"}}},
                       Expected={"v": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "10"}]}})
    item = client.get_item(TableName=name, Key={"pk": {"S": "h"}, "sk": {"N": "1"}})["Item"]
    assert item["v"] == {"N": "15"} and item["w"] == {"S": "new"}
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"S": "h"}, "sk": {"N": "1"}},
                        Expected={"v": {"Exists": False}})
    assert error_of(excinfo)[0] == "ConditionalCheckFailedException"

    queried = client.query(TableName=name, KeyConditions={
        "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "h"}]},
        "sk": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "1"}, {"N": "4"}]}},
        QueryFilter={"v": {"ComparisonOperator": "GE", "AttributeValueList": [{"N": "20"}]}})
    assert [i["sk"]["N"] for i in queried["Items"]] == ["2", "3", "4"]
    assert queried["ScannedCount"] == 4 and queried["Count"] == 3
    scanned = client.scan(TableName=name, ScanFilter={"v": {"ComparisonOperator": "LT",
                                                            "AttributeValueList": [{"N": "20"}]}})
    assert sorted(i["sk"]["N"] for i in scanned["Items"]) == ["0", "1"]
    with pytest.raises(ClientError) as excinfo:
        client.scan(TableName=name, ScanFilter={"v": {"ComparisonOperator": "LT",
                                                      "AttributeValueList": [{"N": "20"}]}},
                    FilterExpression="v < :x", ExpressionAttributeValues={":x": {"N": "1"}})
    assert error_of(excinfo)[0] == "ValidationException"


def test_return_consumed_capacity_is_plausible(client):
    name = new_table(client)
    put = client.put_item(TableName=name, Item={"pk": {"S": "c"}, "blob": {"S": "x" * 3000}},
                          ReturnConsumedCapacity="TOTAL")
    assert put["ConsumedCapacity"]["TableName"] == name
    assert put["ConsumedCapacity"]["CapacityUnits"] >= 3
    get = client.get_item(TableName=name, Key={"pk": {"S": "c"}}, ReturnConsumedCapacity="TOTAL")
    assert get["ConsumedCapacity"]["CapacityUnits"] == 0.5


def test_return_consumed_capacity_indexes_splits_table_and_index_units(client):
    """ReturnConsumedCapacity=INDEXES as DynamoDB documents it: `Table` and each index touched
    (GlobalSecondaryIndexes / LocalSecondaryIndexes), the total their sum. A write consumes an
    index's capacity only when it puts, changes or deletes the item's entry there (twice when
    the entry's index key changes); a read of an index consumes only the index's (`Table` says
    0, as DynamoDB reports it)."""
    name = new_table(
        client, range_key=("sk", "S"), extra_attributes={"x": "S"},
        GlobalSecondaryIndexes=[{"IndexName": "by-x", "KeySchema": [{"AttributeName": "x", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}],
        LocalSecondaryIndexes=[{"IndexName": "local-x",
                                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                              {"AttributeName": "x", "KeyType": "RANGE"}],
                                "Projection": {"ProjectionType": "KEYS_ONLY"}}])
    key = {"pk": {"S": "p"}, "sk": {"S": "s"}}

    def units(total, table=None, gsi=None, lsi=None):
        expected = {"TableName": name, "CapacityUnits": total}
        if table is not None:
            expected["Table"] = {"CapacityUnits": table}
        if gsi is not None:
            expected["GlobalSecondaryIndexes"] = {"by-x": {"CapacityUnits": gsi}}
        if lsi is not None:
            expected["LocalSecondaryIndexes"] = {"local-x": {"CapacityUnits": lsi}}
        return expected

    put = client.put_item(TableName=name, Item={**key, "x": {"S": "one"}, "a": {"S": "v"}},
                          ReturnConsumedCapacity="INDEXES")
    assert put["ConsumedCapacity"] == units(3.0, table=1.0, gsi=1.0, lsi=1.0)
    # "a" is in the GSI's entry (ALL) but not in the KEYS_ONLY local index's.
    update = client.update_item(TableName=name, Key=key, UpdateExpression="SET a = :a",
                                ExpressionAttributeValues={":a": {"S": "w"}}, ReturnConsumedCapacity="INDEXES")
    assert update["ConsumedCapacity"] == units(2.0, table=1.0, gsi=1.0)
    # A new index key: the old entry is deleted and a new one put, in both indexes.
    moved = client.update_item(TableName=name, Key=key, UpdateExpression="SET x = :x",
                               ExpressionAttributeValues={":x": {"S": "two"}}, ReturnConsumedCapacity="INDEXES")
    assert moved["ConsumedCapacity"] == units(5.0, table=1.0, gsi=2.0, lsi=2.0)
    total = client.update_item(TableName=name, Key=key, UpdateExpression="SET a = :a",
                               ExpressionAttributeValues={":a": {"S": "z"}}, ReturnConsumedCapacity="TOTAL")
    assert total["ConsumedCapacity"] == {"TableName": name, "CapacityUnits": 2.0}

    get = client.get_item(TableName=name, Key=key, ReturnConsumedCapacity="INDEXES")
    assert get["ConsumedCapacity"] == units(0.5, table=0.5)
    on_gsi = client.query(TableName=name, IndexName="by-x", KeyConditionExpression="x = :x",
                          ExpressionAttributeValues={":x": {"S": "two"}}, ReturnConsumedCapacity="INDEXES")
    assert on_gsi["Count"] == 1 and on_gsi["ConsumedCapacity"] == units(0.5, table=0.0, gsi=0.5)
    on_lsi = client.query(TableName=name, IndexName="local-x", ConsistentRead=True,
                          KeyConditionExpression="pk = :p AND x = :x",
                          ExpressionAttributeValues={":p": {"S": "p"}, ":x": {"S": "two"}},
                          ReturnConsumedCapacity="INDEXES")
    assert on_lsi["Count"] == 1 and on_lsi["ConsumedCapacity"] == units(1.0, table=0.0, lsi=1.0)

    deleted = client.delete_item(TableName=name, Key=key, ReturnConsumedCapacity="INDEXES")
    assert deleted["ConsumedCapacity"] == units(3.0, table=1.0, gsi=1.0, lsi=1.0)
    # No index key before or after: the indexes are not touched.
    plain = client.put_item(TableName=name, Item={**key, "a": {"S": "v"}}, ReturnConsumedCapacity="INDEXES")
    assert plain["ConsumedCapacity"] == units(1.0, table=1.0)

    batch = client.batch_write_item(RequestItems={name: [
        {"PutRequest": {"Item": {"pk": {"S": "b"}, "sk": {"S": "1"}, "x": {"S": "one"}}}},
        {"PutRequest": {"Item": {"pk": {"S": "b"}, "sk": {"S": "2"}}}},
    ]}, ReturnConsumedCapacity="INDEXES")
    assert batch["ConsumedCapacity"] == [units(4.0, table=2.0, gsi=1.0, lsi=1.0)]
    # A transaction writes twice (prepare and commit).
    transaction = client.transact_write_items(TransactItems=[
        {"Put": {"TableName": name, "Item": {"pk": {"S": "t"}, "sk": {"S": "1"}, "x": {"S": "one"}}}},
    ], ReturnConsumedCapacity="INDEXES")
    assert transaction["ConsumedCapacity"] == [units(6.0, table=2.0, gsi=2.0, lsi=2.0)]
    inserted = client.execute_statement(
        Statement=f"INSERT INTO \"{name}\" VALUE {{'pk': 'q', 'sk': 'q', 'x': 'one'}}",
        ReturnConsumedCapacity="INDEXES")
    assert inserted["ConsumedCapacity"] == units(3.0, table=1.0, gsi=1.0, lsi=1.0)


def test_transact_get_items_reports_capacity_per_table(client):
    first, second = new_table(client), new_table(client)
    client.put_item(TableName=first, Item={"pk": {"S": "a"}})
    answer = client.transact_get_items(TransactItems=[
        {"Get": {"TableName": first, "Key": {"pk": {"S": "a"}}}},
        {"Get": {"TableName": second, "Key": {"pk": {"S": "missing"}}}},
        {"Get": {"TableName": second, "Key": {"pk": {"S": "also-missing"}}}},
    ], ReturnConsumedCapacity="TOTAL")
    assert sorted(answer["ConsumedCapacity"], key=lambda c: c["TableName"]) == sorted([
        {"TableName": first, "CapacityUnits": 2.0},
        {"TableName": second, "CapacityUnits": 4.0},
    ], key=lambda c: c["TableName"])


# ---------------------------------------------------------------------------------------------
# Query and Scan


def test_query_key_conditions_order_limit_and_filters(client):
    name = new_table(client, range_key=("sk", "S"))
    for sk in ["a", "ab", "abc", "b", "c"]:
        client.put_item(TableName=name, Item={"pk": {"S": "q"}, "sk": {"S": sk}, "even": {"BOOL": sk != "b"}})
    client.put_item(TableName=name, Item={"pk": {"S": "other"}, "sk": {"S": "a"}})

    def query(condition, values, **kwargs):
        return client.query(TableName=name, KeyConditionExpression=condition,
                            ExpressionAttributeValues={":p": {"S": "q"}, **values}, **kwargs)

    def sks(response):
        return [i["sk"]["S"] for i in response["Items"]]

    assert sks(query("pk = :p", {})) == ["a", "ab", "abc", "b", "c"]
    assert sks(query("pk = :p AND sk = :s", {":s": {"S": "b"}})) == ["b"]
    assert sks(query("pk = :p AND sk < :s", {":s": {"S": "b"}})) == ["a", "ab", "abc"]
    assert sks(query("pk = :p AND sk <= :s", {":s": {"S": "b"}})) == ["a", "ab", "abc", "b"]
    assert sks(query("pk = :p AND sk > :s", {":s": {"S": "abc"}})) == ["b", "c"]
    assert sks(query("pk = :p AND sk >= :s", {":s": {"S": "abc"}})) == ["abc", "b", "c"]
    assert sks(query("pk = :p AND sk BETWEEN :x AND :y", {":x": {"S": "ab"}, ":y": {"S": "b"}})) == ["ab", "abc", "b"]
    assert sks(query("pk = :p AND begins_with(sk, :s)", {":s": {"S": "ab"}})) == ["ab", "abc"]
    assert sks(query("pk = :p", {}, ScanIndexForward=False)) == ["c", "b", "abc", "ab", "a"]
    limited = query("pk = :p", {}, Limit=2)
    assert sks(limited) == ["a", "ab"] and limited["LastEvaluatedKey"] == {"pk": {"S": "q"}, "sk": {"S": "ab"}}
    resumed = query("pk = :p", {}, ExclusiveStartKey=limited["LastEvaluatedKey"])
    assert sks(resumed) == ["abc", "b", "c"]
    filtered = query("pk = :p", {":t": {"BOOL": True}}, FilterExpression="even = :t")
    assert sks(filtered) == ["a", "ab", "abc", "c"] and filtered["ScannedCount"] == 5
    assert query("pk = :p", {}, Select="COUNT")["Count"] == 5
    assert "Items" not in query("pk = :p", {}, Select="COUNT")

    with pytest.raises(ClientError) as excinfo:
        query("sk = :s", {":s": {"S": "a"}})
    assert error_of(excinfo)[0] == "ValidationException"


def test_numeric_sort_key_order_and_binary_order(client):
    name = new_table(client, range_key=("sk", "N"))
    numbers = ["-1e10", "-100", "-2.5", "-0.001", "0", "0.001", "1", "2", "10", "100", "1e10", "1E+38"]
    for n in reversed(numbers):
        client.put_item(TableName=name, Item={"pk": {"S": "n"}, "sk": {"N": n}})
    got = [decimal.Decimal(i["sk"]["N"]) for i in client.query(
        TableName=name, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "n"}})["Items"]]
    assert got == sorted(decimal.Decimal(n) for n in numbers)

    binary = new_table(client, range_key=("sk", "B"))
    values = [b"\xff", b"\x00", b"\x00\x00", b"\x7f", b"\x80", b"a"]
    for v in values:
        client.put_item(TableName=binary, Item={"pk": {"S": "b"}, "sk": {"B": v}})
    got = [i["sk"]["B"] for i in client.query(
        TableName=binary, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "b"}})["Items"]]
    assert got == sorted(values), "binary sort keys order bytewise (unsigned)"


def test_number_fidelity_38_digits_exact(client):
    name = new_table(client, hash_key=("pk", "N"))
    exact = [
        "12345678901234567890123456789012345678",
        "-0.12345678901234567890123456789012345678",
        "9.9999999999999999999999999999999999999E+125",
        "1E-130",
        "0.1",
    ]
    for n in exact:
        client.put_item(TableName=name, Item={"pk": {"N": n}, "copy": {"N": n}})
        got = client.get_item(TableName=name, Key={"pk": {"N": n}})["Item"]["copy"]["N"]
        assert decimal.Decimal(got) == decimal.Decimal(n), (n, got)
    # Arithmetic stays exact where a float would not.
    client.put_item(TableName=name, Item={"pk": {"N": "1"}, "v": {"N": "0.1"}})
    result = client.update_item(TableName=name, Key={"pk": {"N": "1"}}, UpdateExpression="SET v = v + :x",
                                ExpressionAttributeValues={":x": {"N": "0.2"}}, ReturnValues="UPDATED_NEW")
    assert decimal.Decimal(result["Attributes"]["v"]["N"]) == decimal.Decimal("0.3")
    big = "99999999999999999999999999999999999999"
    client.put_item(TableName=name, Item={"pk": {"N": "2"}, "v": {"N": big}})
    result = client.update_item(TableName=name, Key={"pk": {"N": "2"}}, UpdateExpression="SET v = v - :x",
                                ExpressionAttributeValues={":x": {"N": "1"}}, ReturnValues="UPDATED_NEW")
    assert result["Attributes"]["v"]["N"] == "99999999999999999999999999999999999998"
    # Trailing zeros and exponents name the same number (same key).
    client.put_item(TableName=name, Item={"pk": {"N": "1.50"}, "v": {"S": "first"}})
    assert client.get_item(TableName=name, Key={"pk": {"N": "15E-1"}})["Item"]["v"] == {"S": "first"}

    for bad in ["123456789012345678901234567890123456789", "1E+126", "1E-131", "NaN", "Infinity", "0x10", "", "1e"]:
        with pytest.raises(ClientError) as excinfo:
            client.put_item(TableName=name, Item={"pk": {"N": "3"}, "v": {"N": bad}})
        assert error_of(excinfo)[0] == "ValidationException", bad
    with pytest.raises(ClientError) as excinfo:
        client.update_item(TableName=name, Key={"pk": {"N": "2"}}, UpdateExpression="SET v = v + :x",
                           ExpressionAttributeValues={":x": {"N": "9E+125"}})
    assert error_of(excinfo)[0] == "ValidationException"


def test_scan_and_query_paginate_at_1_mb_with_boto3_paginators(client):
    name = new_table(client, range_key=("sk", "N"))
    blob = "x" * 100_000  # ~100 KB each: 30 items are ~3 MB, so at least 3 pages
    for i in range(30):
        client.put_item(TableName=name, Item={"pk": {"S": "big"}, "sk": {"N": str(i)}, "blob": {"S": blob}})
    pages = list(client.get_paginator("scan").paginate(TableName=name))
    assert len(pages) >= 3, "Scan stops each page at 1 MB"
    for page in pages[:-1]:
        assert "LastEvaluatedKey" in page and page["Count"] <= 11
    assert sorted(int(i["sk"]["N"]) for p in pages for i in p["Items"]) == list(range(30))

    qpages = list(client.get_paginator("query").paginate(
        TableName=name, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "big"}}))
    assert len(qpages) >= 3
    assert [int(i["sk"]["N"]) for p in qpages for i in p["Items"]] == list(range(30))
    # A filter that matches nothing still pages (empty pages with LastEvaluatedKey).
    fpages = list(client.get_paginator("scan").paginate(
        TableName=name, FilterExpression="attribute_exists(nothing)"))
    assert len(fpages) >= 3 and sum(p["Count"] for p in fpages) == 0
    assert sum(p["ScannedCount"] for p in fpages) == 30


def test_parallel_scan_segments_partition_the_table(client):
    name = new_table(client)
    for i in range(200):
        client.put_item(TableName=name, Item={"pk": {"S": f"item-{i}"}})
    total, seen = 4, []
    for segment in range(total):
        pages = client.get_paginator("scan").paginate(TableName=name, Segment=segment, TotalSegments=total,
                                                      PaginationConfig={"PageSize": 17})
        items = [i["pk"]["S"] for p in pages for i in p["Items"]]
        assert items, f"segment {segment} of {total} is empty: the hash spreads 200 keys"
        seen += items
    assert sorted(seen) == sorted(f"item-{i}" for i in range(200)), "segments are disjoint and complete"
    with pytest.raises(ClientError) as excinfo:
        client.scan(TableName=name, Segment=4, TotalSegments=4)
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.scan(TableName=name, Segment=0)
    assert error_of(excinfo)[0] == "ValidationException"


# ---------------------------------------------------------------------------------------------
# Secondary indexes


def test_global_and_local_secondary_indexes_with_projections(client):
    name = next(names)
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in
                              [("pk", "S"), ("sk", "N"), ("status", "S"), ("created", "N"), ("score", "N")]],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {"IndexName": "by_status_keys", "Projection": {"ProjectionType": "KEYS_ONLY"},
             "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                           {"AttributeName": "created", "KeyType": "RANGE"}]},
            {"IndexName": "by_status_incl", "Projection": {"ProjectionType": "INCLUDE",
                                                           "NonKeyAttributes": ["title"]},
             "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}]},
        ],
        LocalSecondaryIndexes=[
            {"IndexName": "by_score", "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "score", "KeyType": "RANGE"}]},
        ],
    )
    described = client.describe_table(TableName=name)["Table"]
    assert {i["IndexName"] for i in described["GlobalSecondaryIndexes"]} == {"by_status_keys", "by_status_incl"}
    assert described["LocalSecondaryIndexes"][0]["IndexName"] == "by_score"

    for i in range(6):
        item = {"pk": {"S": "user"}, "sk": {"N": str(i)}, "score": {"N": str(100 - i)},
                "title": {"S": f"t{i}"}, "body": {"S": "long"}, "created": {"N": str(1000 + i)}}
        if i % 2 == 0:
            item["status"] = {"S": "open"}  # odd items are absent from the sparse GSIs
        client.put_item(TableName=name, Item=item)

    keys_only = client.query(TableName=name, IndexName="by_status_keys", KeyConditionExpression="#s = :o",
                             ExpressionAttributeNames={"#s": "status"},
                             ExpressionAttributeValues={":o": {"S": "open"}})["Items"]
    assert [i["created"]["N"] for i in keys_only] == ["1000", "1002", "1004"]
    assert set(keys_only[0]) == {"pk", "sk", "status", "created"}, "KEYS_ONLY projects the keys only"

    included = client.query(TableName=name, IndexName="by_status_incl", KeyConditionExpression="#s = :o",
                            ExpressionAttributeNames={"#s": "status"},
                            ExpressionAttributeValues={":o": {"S": "open"}})["Items"]
    assert len(included) == 3 and set(included[0]) == {"pk", "sk", "status", "title"}

    by_score = client.query(TableName=name, IndexName="by_score", KeyConditionExpression="pk = :p AND score < :s",
                            ExpressionAttributeValues={":p": {"S": "user"}, ":s": {"N": "98"}})["Items"]
    assert [i["score"]["N"] for i in by_score] == ["95", "96", "97"], "LSI orders by its sort key"
    assert by_score[0]["body"] == {"S": "long"}, "ALL projects everything"

    scanned = client.scan(TableName=name, IndexName="by_status_keys")
    assert scanned["Count"] == 3

    # Index entries follow updates and deletes.
    client.update_item(TableName=name, Key={"pk": {"S": "user"}, "sk": {"N": "0"}}, UpdateExpression="REMOVE #s",
                       ExpressionAttributeNames={"#s": "status"})
    client.delete_item(TableName=name, Key={"pk": {"S": "user"}, "sk": {"N": "2"}})
    remaining = client.query(TableName=name, IndexName="by_status_keys", KeyConditionExpression="#s = :o",
                             ExpressionAttributeNames={"#s": "status"},
                             ExpressionAttributeValues={":o": {"S": "open"}})["Items"]
    assert [i["sk"]["N"] for i in remaining] == ["4"]

    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=name, IndexName="by_status_keys", KeyConditionExpression="#s = :o",
                     ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":o": {"S": "open"}},
                     ConsistentRead=True)
    assert error_of(excinfo)[0] == "ValidationException", "GSIs do not support consistent reads"
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=name, IndexName="nope", KeyConditionExpression="pk = :p",
                     ExpressionAttributeValues={":p": {"S": "user"}})
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"pk": {"S": "user"}, "sk": {"N": "9"}, "status": {"N": "1"}})
    assert error_of(excinfo)[0] == "ValidationException", "an index key of the wrong type is refused"


# ---------------------------------------------------------------------------------------------
# Batches and transactions


def test_batch_write_and_batch_get(client):
    name = new_table(client)
    other = new_table(client)
    client.batch_write_item(RequestItems={
        name: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "v": {"N": str(i)}}}} for i in range(20)],
        other: [{"PutRequest": {"Item": {"pk": {"S": "o"}}}}],
    })
    response = client.batch_write_item(RequestItems={name: [{"DeleteRequest": {"Key": {"pk": {"S": "k0"}}}}]})
    assert response["UnprocessedItems"] == {}
    got = client.batch_get_item(RequestItems={
        name: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(20)], "ProjectionExpression": "v"},
        other: {"Keys": [{"pk": {"S": "o"}}, {"pk": {"S": "missing"}}], "ConsistentRead": True},
    })
    assert sorted(int(i["v"]["N"]) for i in got["Responses"][name]) == list(range(1, 20))
    assert all(set(i) == {"v"} for i in got["Responses"][name])
    assert got["Responses"][other] == [{"pk": {"S": "o"}}]
    assert got["UnprocessedKeys"] == {}
    # Each key is read as a GetItem: k0 (deleted) and "missing" cost a read like the others
    # (half a unit eventually consistent, one strongly consistent).
    got = client.batch_get_item(RequestItems={
        name: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(4)]},
        other: {"Keys": [{"pk": {"S": "o"}}, {"pk": {"S": "missing"}}], "ConsistentRead": True},
    }, ReturnConsumedCapacity="TOTAL")
    assert sorted(got["ConsumedCapacity"], key=lambda c: c["TableName"] != name) == [
        {"TableName": name, "CapacityUnits": 2.0}, {"TableName": other, "CapacityUnits": 2.0}]

    with pytest.raises(ClientError) as excinfo:
        client.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": {"pk": {"S": "d"}}}},
                                                     {"DeleteRequest": {"Key": {"pk": {"S": "d"}}}}]})
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "duplicate" in message.lower()


def test_batch_get_returns_unprocessed_keys_over_16_mb_and_client_retries_them(client):
    name = new_table(client)
    blob = "y" * 380_000
    for first in range(0, 50, 25):
        client.batch_write_item(RequestItems={name: [
            {"PutRequest": {"Item": {"pk": {"S": f"b{i:02d}"}, "blob": {"S": blob}}}} for i in range(first, first + 25)]})
    request = {name: {"Keys": [{"pk": {"S": f"b{i:02d}"}} for i in range(50)]}}
    first = client.batch_get_item(RequestItems=request)
    assert first["UnprocessedKeys"], "50 items of 380 KB exceed the 16 MB response limit"
    fetched, rounds = [i["pk"]["S"] for i in first["Responses"][name]], 1
    unprocessed = first["UnprocessedKeys"]
    while unprocessed:
        rounds += 1
        assert rounds < 10, "UnprocessedKeys must shrink"
        page = client.batch_get_item(RequestItems=unprocessed)
        fetched += [i["pk"]["S"] for i in page["Responses"].get(name, [])]
        unprocessed = page["UnprocessedKeys"]
    assert sorted(fetched) == [f"b{i:02d}" for i in range(50)]


def test_resource_api_batch_writer_query_and_scan(store):
    resource = store.resource()
    name = next(names)
    table = resource.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "N"}],
    )
    table.wait_until_exists()
    with table.batch_writer() as writer:  # sends batches of 25
        for i in range(60):
            writer.put_item(Item={"pk": "r", "sk": i, "price": decimal.Decimal(f"{i}.25"), "tags": {"a", "b"}})
    table.put_item(Item={"pk": "r", "sk": 1000, "nested": {"list": [1, "two", None, True]}})
    assert table.get_item(Key={"pk": "r", "sk": 1000})["Item"]["nested"] == {"list": [1, "two", None, True]}
    response = table.query(KeyConditionExpression=Key("pk").eq("r") & Key("sk").between(10, 14),
                           FilterExpression=Attr("price").gt(decimal.Decimal("11")))
    assert [int(i["sk"]) for i in response["Items"]] == [11, 12, 13, 14]
    assert response["Items"][0]["price"] == decimal.Decimal("11.25")
    assert response["Items"][0]["tags"] == {"a", "b"}
    scanned = table.scan(FilterExpression=Attr("tags").contains("a") & Attr("sk").lt(5))
    assert sorted(int(i["sk"]) for i in scanned["Items"]) == [0, 1, 2, 3, 4]
    updated = table.update_item(Key={"pk": "r", "sk": 0}, UpdateExpression="SET price = price + :x",
                                ExpressionAttributeValues={":x": decimal.Decimal("0.75")}, ReturnValues="UPDATED_NEW")
    assert updated["Attributes"]["price"] == decimal.Decimal("1")
    table.delete()


def test_transact_write_and_get(client):
    name = new_table(client)
    client.put_item(TableName=name, Item={"pk": {"S": "acct-a"}, "balance": {"N": "100"}})
    client.put_item(TableName=name, Item={"pk": {"S": "acct-b"}, "balance": {"N": "0"}})
    client.put_item(TableName=name, Item={"pk": {"S": "gone"}})
    client.transact_write_items(TransactItems=[
        {"Update": {"TableName": name, "Key": {"pk": {"S": "acct-a"}}, "UpdateExpression": "SET balance = balance - :x",
                    "ConditionExpression": "balance >= :x", "ExpressionAttributeValues": {":x": {"N": "30"}}}},
        {"Update": {"TableName": name, "Key": {"pk": {"S": "acct-b"}}, "UpdateExpression": "SET balance = balance + :x",
                    "ExpressionAttributeValues": {":x": {"N": "30"}}}},
        {"Put": {"TableName": name, "Item": {"pk": {"S": "log-1"}, "amount": {"N": "30"}},
                 "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Delete": {"TableName": name, "Key": {"pk": {"S": "gone"}}}},
    ])
    got = client.transact_get_items(TransactItems=[
        {"Get": {"TableName": name, "Key": {"pk": {"S": "acct-a"}}}},
        {"Get": {"TableName": name, "Key": {"pk": {"S": "acct-b"}}, "ProjectionExpression": "balance"}},
        {"Get": {"TableName": name, "Key": {"pk": {"S": "gone"}}}},
    ])["Responses"]
    assert got[0]["Item"]["balance"] == {"N": "70"}
    assert got[1]["Item"] == {"balance": {"N": "30"}}
    assert got[2] == {}


def test_transaction_canceled_with_cancellation_reasons_applies_nothing(client):
    name = new_table(client)
    client.put_item(TableName=name, Item={"pk": {"S": "a"}, "v": {"N": "1"}})
    with pytest.raises(ClientError) as excinfo:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": name, "Item": {"pk": {"S": "new"}}}},
            {"ConditionCheck": {"TableName": name, "Key": {"pk": {"S": "a"}}, "ConditionExpression": "v = :two",
                                "ExpressionAttributeValues": {":two": {"N": "2"}},
                                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            {"Update": {"TableName": name, "Key": {"pk": {"S": "b"}}, "UpdateExpression": "SET v = :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        ])
    code, message, status = error_of(excinfo)
    assert (code, status) == ("TransactionCanceledException", 400)
    assert "[None, ConditionalCheckFailed, None]" in message
    reasons = excinfo.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed", "None"]
    assert reasons[1]["Item"] == {"pk": {"S": "a"}, "v": {"N": "1"}}
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "new"}}, ConsistentRead=True)
    assert "Item" not in client.get_item(TableName=name, Key={"pk": {"S": "b"}}, ConsistentRead=True)

    with pytest.raises(ClientError) as excinfo:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": name, "Item": {"pk": {"S": "same"}}}},
            {"Delete": {"TableName": name, "Key": {"pk": {"S": "same"}}}},
        ])
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "multiple operations on one item" in message


def test_transact_write_idempotency_token(client):
    name = new_table(client)
    request = {"TransactItems": [{"Update": {"TableName": name, "Key": {"pk": {"S": "t"}},
                                             "UpdateExpression": "ADD n :one",
                                             "ExpressionAttributeValues": {":one": {"N": "1"}}}}],
               "ClientRequestToken": "token-1"}
    client.transact_write_items(**request)
    client.transact_write_items(**request)
    assert client.get_item(TableName=name, Key={"pk": {"S": "t"}})["Item"]["n"] == {"N": "1"}
    request["TransactItems"][0]["Update"]["ExpressionAttributeValues"] = {":one": {"N": "2"}}
    with pytest.raises(ClientError) as excinfo:
        client.transact_write_items(**request)
    assert error_of(excinfo)[0] == "IdempotentParameterMismatchException"
