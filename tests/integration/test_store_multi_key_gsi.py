"""Global secondary indexes with multi-attribute keys (DynamoDB, November 2025), black box:
the real `switchyard store` binary driven with boto3 — up to 4 HASH and 4 RANGE attributes in
an index's KeySchema; an item is in the index only with all of them; Query needs `=` on every
partition attribute and, on the sort attributes, `=` on a left-to-right prefix optionally
followed by one range condition; entries sort by their sort values left to right, each by its
type; LastEvaluatedKey carries every key attribute; UpdateTable creates such an index with a
backfill; invalid schemas, queries and items get DynamoDB's errors.

Marked switchyard_only for its messages: against DynamoDB Local 3.3.1 (STORE_ENDPOINT) the
behaviour tests pass and the ones comparing messages fail on wording alone (DynamoDB Local
words schema errors otherwise, e.g. "Invalid key order. Hash Key must be specified first...",
and says only "Type mismatch for Index Key")."""

import itertools

import pytest
from botocore.exceptions import ClientError

from test_store_harness import error_of, store_fixture, wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

names = (f"multi-{i}" for i in itertools.count())
store = store_fixture()

BACKFILL_DEADLINE_S = 10


@pytest.fixture
def client(store):
    return store.client()


def attribute_definitions(types):
    return [{"AttributeName": name, "AttributeType": kind} for name, kind in types.items()]


def key_schema(hash_keys, range_keys=()):
    return ([{"AttributeName": name, "KeyType": "HASH"} for name in hash_keys]
            + [{"AttributeName": name, "KeyType": "RANGE"} for name in range_keys])


def create(client, index_key, types, name=None):
    """A table keyed by `id` with one global index `gsi` whose KeySchema is `index_key`."""
    name = name or next(names)
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=key_schema(["id"]),
        AttributeDefinitions=attribute_definitions({"id": "S", **types}),
        GlobalSecondaryIndexes=[{"IndexName": "gsi", "KeySchema": index_key,
                                 "Projection": {"ProjectionType": "ALL"}}],
    )
    return name


# The tournament table: (tournament, league) is the index's partition, (round, game) its sort.
TYPES = {"tournament": "S", "league": "N", "round": "S", "game": "N"}
INDEX_KEY = key_schema(["tournament", "league"], ["round", "game"])


def match(id, tournament="winter", league=1, round="quarter", game=1, **extra):
    item = {"id": {"S": id}, "tournament": {"S": tournament}, "league": {"N": str(league)},
            "round": {"S": round}, "game": {"N": str(game)}}
    item.update(extra)
    return item


def query(client, table, condition="", values=None, **kwargs):
    """Query `gsi` for winter/league 1, plus `condition`; all pages; the ids in order."""
    values = {":t": {"S": "winter"}, ":l": {"N": "1"}, **(values or {})}
    ids, start = [], None
    while True:
        request = dict(TableName=table, IndexName="gsi",
                       KeyConditionExpression="tournament = :t AND league = :l" + condition,
                       ExpressionAttributeValues=values, **kwargs)
        if start:
            request["ExclusiveStartKey"] = start
        page = client.query(**request)
        ids += [item["id"]["S"] for item in page["Items"]]
        start = page.get("LastEvaluatedKey")
        if not start:
            return ids


def refused(client, table, condition, values=None, **kwargs):
    with pytest.raises(ClientError) as excinfo:
        query(client, table, condition, values, **kwargs)
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400), message
    return message


@pytest.fixture(scope="module")
def tournament(store):
    """A table with the multi-attribute index and matches in two leagues, rounds and games."""
    client = store.client()
    name = create(client, INDEX_KEY, TYPES)
    for item in [
        match("q10", round="quarter", game=10), match("q2", round="quarter", game=2),
        match("s1", round="semi", game=1), match("f1", round="final", game=1),
        match("other-league", league=2, round="final", game=1),
        match("other-tournament", tournament="summer"),
    ]:
        client.put_item(TableName=name, Item=item)
    return name


def test_create_and_describe_keep_the_key_schema_as_given(client, tournament):
    table = client.describe_table(TableName=tournament)["Table"]
    index = table["GlobalSecondaryIndexes"][0]
    assert index["KeySchema"] == INDEX_KEY
    assert index["IndexStatus"] == "ACTIVE"
    assert sorted((d["AttributeName"], d["AttributeType"]) for d in table["AttributeDefinitions"]) == sorted(
        [("id", "S")] + list(TYPES.items()))
    # The most: 4 HASH and 4 RANGE attributes.
    most = {f"h{i}": "S" for i in range(4)} | {f"r{i}": "N" for i in range(4)}
    name = create(client, key_schema([f"h{i}" for i in range(4)], [f"r{i}" for i in range(4)]), most)
    described = client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"][0]["KeySchema"]
    assert [(e["AttributeName"], e["KeyType"]) for e in described] == (
        [(f"h{i}", "HASH") for i in range(4)] + [(f"r{i}", "RANGE") for i in range(4)])


def test_only_items_with_every_key_attribute_are_indexed(client, tournament):
    for missing in ["tournament", "league", "round", "game"]:
        item = match(f"without-{missing}")
        del item[missing]
        client.put_item(TableName=tournament, Item=item)
        assert f"without-{missing}" not in query(client, tournament)
    # Adding the missing attribute puts the item in; removing one takes it out again.
    client.update_item(TableName=tournament, Key={"id": {"S": "without-game"}},
                       UpdateExpression="SET game = :g", ExpressionAttributeValues={":g": {"N": "3"}})
    assert "without-game" in query(client, tournament)
    client.update_item(TableName=tournament, Key={"id": {"S": "without-game"}}, UpdateExpression="REMOVE league")
    assert "without-game" not in query(client, tournament)
    assert len(client.scan(TableName=tournament, IndexName="gsi")["Items"]) == 6


def test_entries_sort_by_their_sort_values_left_to_right_each_by_type(client, tournament):
    # round bytewise (final < quarter < semi), then game numerically (2 < 10).
    assert query(client, tournament) == ["f1", "q2", "q10", "s1"]
    assert query(client, tournament, ScanIndexForward=False) == ["s1", "q10", "q2", "f1"]


def test_query_with_a_prefix_of_sort_equalities_and_one_range_condition(client, tournament):
    quarter = {":r": {"S": "quarter"}}
    assert query(client, tournament, " AND round = :r", quarter) == ["q2", "q10"]
    assert query(client, tournament, " AND round = :r AND game = :g", {**quarter, ":g": {"N": "10"}}) == ["q10"]
    # The range condition on the last sort attribute given, in every form.
    for condition, values, expected in [
        (" AND game > :g", {":g": {"N": "2"}}, ["q10"]),
        (" AND game >= :g", {":g": {"N": "2"}}, ["q2", "q10"]),
        (" AND game < :g", {":g": {"N": "10"}}, ["q2"]),
        (" AND game <= :g", {":g": {"N": "10"}}, ["q2", "q10"]),
        (" AND game BETWEEN :a AND :b", {":a": {"N": "3"}, ":b": {"N": "10"}}, ["q10"]),
    ]:
        assert query(client, tournament, " AND round = :r" + condition, {**quarter, **values}) == expected, condition
    # On the first sort attribute, the others unmentioned; conditions in any textual order.
    assert query(client, tournament, " AND round >= :r", quarter) == ["q2", "q10", "s1"]
    assert query(client, tournament, " AND begins_with(round, :p)", {":p": {"S": "qu"}}) == ["q2", "q10"]
    reordered = client.query(
        TableName=tournament, IndexName="gsi",
        KeyConditionExpression="game = :g AND league = :l AND round = :r AND tournament = :t",
        ExpressionAttributeValues={":t": {"S": "winter"}, ":l": {"N": "1"}, ":r": {"S": "semi"}, ":g": {"N": "1"}})
    assert [i["id"]["S"] for i in reordered["Items"]] == ["s1"]
    # The legacy KeyConditions too.
    legacy = client.query(TableName=tournament, IndexName="gsi", KeyConditions={
        "tournament": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "winter"}]},
        "league": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "1"}]},
        "round": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "quarter"}]},
        "game": {"ComparisonOperator": "LT", "AttributeValueList": [{"N": "5"}]},
    })
    assert [i["id"]["S"] for i in legacy["Items"]] == ["q2"]


def test_pages_resume_from_a_last_evaluated_key_naming_every_key_attribute(client, tournament):
    first = client.query(TableName=tournament, IndexName="gsi", Limit=2,
                         KeyConditionExpression="tournament = :t AND league = :l",
                         ExpressionAttributeValues={":t": {"S": "winter"}, ":l": {"N": "1"}})
    assert [i["id"]["S"] for i in first["Items"]] == ["f1", "q2"]
    assert sorted(first["LastEvaluatedKey"]) == ["game", "id", "league", "round", "tournament"]
    assert first["LastEvaluatedKey"]["id"] == {"S": "q2"}
    for limit in [1, 2, 3]:
        assert query(client, tournament, Limit=limit) == ["f1", "q2", "q10", "s1"], limit
    # An ExclusiveStartKey missing an index key attribute, or with another one, is refused.
    start = dict(first["LastEvaluatedKey"])
    del start["game"]
    assert "The provided starting key is invalid" in refused(client, tournament, "", ExclusiveStartKey=start)
    extra = {**first["LastEvaluatedKey"], "winner": {"S": "ann"}}
    assert "The provided starting key is invalid" in refused(client, tournament, "", ExclusiveStartKey=extra)
    # Scan pages too.
    page = client.scan(TableName=tournament, IndexName="gsi", Limit=1)
    assert sorted(page["LastEvaluatedKey"]) == ["game", "id", "league", "round", "tournament"]


def test_queries_that_break_the_rules_are_refused(client, tournament):
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=tournament, IndexName="gsi", KeyConditionExpression="tournament = :t",
                        ExpressionAttributeValues={":t": {"S": "winter"}})
    assert error_of(excinfo)[1] == "HASH key attributes league must have equality conditions specified in the query"
    with pytest.raises(ClientError) as excinfo:
        client.query(TableName=tournament, IndexName="gsi", KeyConditionExpression="tournament = :t AND league > :l",
                        ExpressionAttributeValues={":t": {"S": "winter"}, ":l": {"N": "0"}})
    assert error_of(excinfo)[1] == "HASH key attributes league must have equality conditions specified in the query"
    skip = "RANGE key attributes round must have equality conditions specified in the query because a condition is present on key attribute game"
    assert refused(client, tournament, " AND game = :g", {":g": {"N": "1"}}) == skip
    assert refused(client, tournament, " AND round > :r AND game = :g", {":r": {"S": "a"}, ":g": {"N": "1"}}) == skip
    assert refused(client, tournament, " AND round > :r AND game > :g", {":r": {"S": "a"}, ":g": {"N": "1"}}) == skip
    assert "Condition parameter type does not match schema type" in refused(
        client, tournament, " AND round = :r", {":r": {"N": "1"}})
    assert "begins_with" in refused(client, tournament, " AND round = :r AND begins_with(game, :g)",
                                    {":r": {"S": "semi"}, ":g": {"S": "1"}})
    assert "Filter Expression can only contain non-primary key attributes: Primary key attribute: game" in refused(
        client, tournament, "", {":g": {"N": "1"}}, FilterExpression="game = :g")
    assert "Consistent reads are not supported on global secondary indexes" in refused(
        client, tournament, "", ConsistentRead=True)


def test_items_with_bad_index_key_values_are_refused(client, tournament):
    for attribute, value, words in [
        ("league", {"S": "one"}, "Type mismatch for Index Key league Expected: N Actual: S IndexName: gsi"),
        ("round", {"S": ""}, "cannot contain an empty string value. IndexName: gsi, IndexKey: round"),
        ("round", {"S": "x" * 1025}, "Size of sort key attribute round of index gsi is 1025 bytes"),
        ("tournament", {"S": "x" * 2049}, "Size of partition key attribute tournament of index gsi is 2049 bytes"),
    ]:
        with pytest.raises(ClientError) as excinfo:
            client.put_item(TableName=tournament, Item=match("bad") | {attribute: value})
        code, message, _ = error_of(excinfo)
        assert code == "ValidationException" and words in message, message
    # The sort values together are bounded like one sort key value.
    many = {f"r{i}": "S" for i in range(2)} | {"h": "S"}
    name = create(client, key_schema(["h"], ["r0", "r1"]), many)
    with pytest.raises(ClientError) as excinfo:
        client.put_item(TableName=name, Item={"id": {"S": "a"}, "r0": {"S": "x" * 600}, "r1": {"S": "y" * 600}})
    assert error_of(excinfo)[1] == (
        "Aggregate size for RANGE key attributes r0, r1 of index gsi has exceeded limit 1024 bytes, "
        "with actual size 1200 bytes")
    assert "Item" not in client.get_item(TableName=name, Key={"id": {"S": "a"}})


def test_update_table_creates_a_multi_attribute_index_with_a_backfill(client):
    name = next(names)
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", KeySchema=key_schema(["id"]),
                        AttributeDefinitions=attribute_definitions({"id": "S"}))
    items = [match("q10", round="quarter", game=10), match("q2", round="quarter", game=2),
             match("s1", round="semi"), {"id": {"S": "bare"}, "tournament": {"S": "winter"}}]
    for item in items:
        client.put_item(TableName=name, Item=item)
    client.update_table(
        TableName=name, AttributeDefinitions=attribute_definitions(TYPES),
        GlobalSecondaryIndexUpdates=[{"Create": {"IndexName": "gsi", "KeySchema": INDEX_KEY,
                                                 "Projection": {"ProjectionType": "ALL"}}}])

    def active():
        indexes = client.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes", [])
        return indexes and indexes[0]["IndexStatus"] == "ACTIVE"

    wait_for(active, BACKFILL_DEADLINE_S, "index gsi active")
    assert query(client, name) == ["q2", "q10", "s1"]
    client.put_item(TableName=name, Item=match("q5", round="quarter", game=5))
    assert query(client, name, " AND round = :r", {":r": {"S": "quarter"}}) == ["q2", "q5", "q10"]
    assert client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"][0]["KeySchema"] == INDEX_KEY


@pytest.mark.parametrize("index_key, types, words", [
    (key_schema([f"a{i}" for i in range(5)]), {f"a{i}": "S" for i in range(5)},
     "Too many partition keys. GSI can have at most 4 partition keys"),
    (key_schema(["h"], [f"r{i}" for i in range(5)]), {"h": "S"} | {f"r{i}": "S" for i in range(5)},
     "Too many sort keys. GSI can have at most 4 sort keys"),
    (key_schema(["a"], ["b"]) + key_schema(["c"]), {"a": "S", "b": "S", "c": "S"},
     "every HASH key element must precede the RANGE key elements"),
    (key_schema(["a", "a"]), {"a": "S"}, "Two keys can not have the same name: a"),
    (key_schema(["a", "b"], ["a"]), {"a": "S", "b": "S"}, "Two keys can not have the same name: a"),
    (key_schema(["a", "b"]), {"a": "S"}, "Some index key attributes are not defined in AttributeDefinitions"),
], ids=["five-hash", "five-range", "hash-after-range", "hash-twice", "hash-and-range", "undeclared"])
def test_invalid_multi_attribute_key_schemas_are_refused(client, index_key, types, words):
    for how in ["create", "update"]:
        with pytest.raises(ClientError) as excinfo:
            if how == "create":
                create(client, index_key, types)
            else:
                name = next(names)
                client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", KeySchema=key_schema(["id"]),
                                    AttributeDefinitions=attribute_definitions({"id": "S"}))
                client.update_table(TableName=name, AttributeDefinitions=attribute_definitions(types),
                                    GlobalSecondaryIndexUpdates=[{"Create": {
                                        "IndexName": "gsi", "KeySchema": index_key,
                                        "Projection": {"ProjectionType": "ALL"}}}])
        code, message, status = error_of(excinfo)
        assert (code, status) == ("ValidationException", 400) and words in message, (how, message)


def test_tables_and_local_indexes_keep_one_hash_and_one_range_attribute(client):
    with pytest.raises(ClientError) as excinfo:
        client.create_table(TableName=next(names), BillingMode="PAY_PER_REQUEST",
                            KeySchema=key_schema(["a", "b"]), AttributeDefinitions=attribute_definitions({"a": "S", "b": "S"}))
    assert "The second KeySchemaElement is not a RANGE key type" in error_of(excinfo)[1]
    with pytest.raises(ClientError) as excinfo:
        client.create_table(
            TableName=next(names), BillingMode="PAY_PER_REQUEST", KeySchema=key_schema(["a"], ["b"]),
            AttributeDefinitions=attribute_definitions({"a": "S", "b": "S", "c": "S"}),
            LocalSecondaryIndexes=[{"IndexName": "lsi", "KeySchema": key_schema(["a"], ["b", "c"]),
                                    "Projection": {"ProjectionType": "ALL"}}])
    assert "Member must have length less than or equal to 2" in error_of(excinfo)[1]
