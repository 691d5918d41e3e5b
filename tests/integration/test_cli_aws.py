"""The AWS CLI (`aws dynamodb ... --endpoint-url`) against the real `switchyard store` binary:
the table lifecycle, items, expressions, the CLI's own auto-pagination of Scan and Query,
batches, transactions, TTL, tags, and errors as the CLI reports them."""

import json

import pytest

from test_store_harness import AWS_CLI, started_store

pytestmark = [pytest.mark.process]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    if not AWS_CLI.exists():
        pytest.skip(f"{AWS_CLI} missing: run scripts/install-test-deps.sh")
    store = started_store(tmp_path_factory, "cli")
    yield store
    store.stop()


def j(value):
    return json.dumps(value)


def test_cli_table_lifecycle_items_and_queries(store):
    aws = store.aws
    _, created, _ = aws("create-table", "--table-name", "cli-orders", "--billing-mode", "PAY_PER_REQUEST",
                        "--attribute-definitions", "AttributeName=customer,AttributeType=S",
                        "AttributeName=order,AttributeType=N",
                        "--key-schema", "AttributeName=customer,KeyType=HASH", "AttributeName=order,KeyType=RANGE")
    # CREATING, as DynamoDB answers CreateTable; the waiter then sees it ACTIVE.
    assert created["TableDescription"]["TableStatus"] == "CREATING"
    aws("wait", "table-exists", "--table-name", "cli-orders")
    assert aws("describe-table", "--table-name", "cli-orders")[1]["Table"]["TableStatus"] == "ACTIVE"
    # UPDATING, as DynamoDB answers UpdateTable; the change is made, and the table ACTIVE.
    _, changed, _ = aws("update-table", "--table-name", "cli-orders", "--billing-mode", "PROVISIONED",
                        "--provisioned-throughput", "ReadCapacityUnits=3,WriteCapacityUnits=2")
    assert changed["TableDescription"]["TableStatus"] == "UPDATING"
    aws("wait", "table-exists", "--table-name", "cli-orders")
    described = aws("describe-table", "--table-name", "cli-orders")[1]["Table"]
    assert described["TableStatus"] == "ACTIVE"
    assert described["ProvisionedThroughput"]["ReadCapacityUnits"] == 3
    assert "cli-orders" in aws("list-tables")[1]["TableNames"]
    assert aws("describe-table", "--table-name", "cli-orders")[1]["Table"]["KeySchema"][1]["AttributeName"] == "order"

    aws("put-item", "--table-name", "cli-orders", "--item",
        j({"customer": {"S": "ann"}, "order": {"N": "1"}, "total": {"N": "1.50"}}))
    aws("batch-write-item", "--request-items", j({"cli-orders": [
        {"PutRequest": {"Item": {"customer": {"S": "ann"}, "order": {"N": str(order)}, "total": {"N": f"{order}.50"}}}}
        for order in range(2, 13)]}))
    _, got, _ = aws("get-item", "--table-name", "cli-orders", "--key",
                    j({"customer": {"S": "ann"}, "order": {"N": "3"}}), "--consistent-read")
    assert got["Item"]["total"] == {"N": "3.5"} or got["Item"]["total"] == {"N": "3.50"}

    _, updated, _ = aws("update-item", "--table-name", "cli-orders",
                        "--key", j({"customer": {"S": "ann"}, "order": {"N": "3"}}),
                        "--update-expression", "SET #t = #t + :x, note = :n",
                        "--expression-attribute-names", j({"#t": "total"}),
                        "--expression-attribute-values", j({":x": {"N": "1"}, ":n": {"S": "rush"}}),
                        "--return-values", "ALL_NEW")
    assert updated["Attributes"]["total"] == {"N": "4.5"} and updated["Attributes"]["note"] == {"S": "rush"}

    # The CLI pages by itself: --page-size 5 makes it follow LastEvaluatedKey three times.
    _, queried, _ = aws("query", "--table-name", "cli-orders", "--key-condition-expression",
                        "customer = :c AND #o BETWEEN :a AND :b", "--expression-attribute-names", j({"#o": "order"}),
                        "--expression-attribute-values", j({":c": {"S": "ann"}, ":a": {"N": "2"}, ":b": {"N": "11"}}),
                        "--page-size", "3")
    assert [i["order"]["N"] for i in queried["Items"]] == [str(n) for n in range(2, 12)]
    _, scanned, _ = aws("scan", "--table-name", "cli-orders", "--page-size", "5",
                        "--filter-expression", "#t > :t", "--expression-attribute-names", j({"#t": "total"}),
                        "--expression-attribute-values", j({":t": {"N": "6"}}))
    assert sorted(int(i["order"]["N"]) for i in scanned["Items"]) == list(range(6, 13))
    _, limited, _ = aws("scan", "--table-name", "cli-orders", "--max-items", "4")
    assert len(limited["Items"]) == 4 and limited.get("NextToken")
    _, counted, _ = aws("scan", "--table-name", "cli-orders", "--select", "COUNT")
    assert counted["Count"] == 12

    aws("delete-item", "--table-name", "cli-orders", "--key", j({"customer": {"S": "ann"}, "order": {"N": "1"}}))
    code, _, stderr = aws("delete-item", "--table-name", "cli-orders",
                          "--key", j({"customer": {"S": "ann"}, "order": {"N": "2"}}),
                          "--condition-expression", "attribute_not_exists(#t)",
                          "--expression-attribute-names", j({"#t": "total"}), check=False)
    assert code != 0 and "ConditionalCheckFailedException" in stderr
    aws("delete-table", "--table-name", "cli-orders")
    code, _, stderr = aws("describe-table", "--table-name", "cli-orders", check=False)
    assert code != 0 and "ResourceNotFoundException" in stderr


def test_cli_batches_transactions_ttl_and_tags(store):
    aws = store.aws
    aws("create-table", "--table-name", "cli-batch", "--billing-mode", "PAY_PER_REQUEST",
        "--attribute-definitions", "AttributeName=pk,AttributeType=S", "--key-schema", "AttributeName=pk,KeyType=HASH")
    _, written, _ = aws("batch-write-item", "--request-items", j({"cli-batch": [
        {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(25)]}))
    assert written["UnprocessedItems"] == {}
    _, got, _ = aws("batch-get-item", "--request-items",
                    j({"cli-batch": {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(30)]}}))
    assert len(got["Responses"]["cli-batch"]) == 25
    code, _, stderr = aws("batch-write-item", "--request-items", j({"cli-batch": [
        {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(26)]}), check=False)
    assert code != 0 and "ValidationException" in stderr

    aws("transact-write-items", "--transact-items", j([
        {"Put": {"TableName": "cli-batch", "Item": {"pk": {"S": "t1"}}}},
        {"Delete": {"TableName": "cli-batch", "Key": {"pk": {"S": "k0"}}}},
    ]))
    _, txget, _ = aws("transact-get-items", "--transact-items", j([
        {"Get": {"TableName": "cli-batch", "Key": {"pk": {"S": "t1"}}}},
        {"Get": {"TableName": "cli-batch", "Key": {"pk": {"S": "k0"}}}},
    ]))
    assert txget["Responses"] == [{"Item": {"pk": {"S": "t1"}}}, {}]
    code, _, stderr = aws("transact-write-items", "--transact-items", j([
        {"ConditionCheck": {"TableName": "cli-batch", "Key": {"pk": {"S": "t1"}},
                            "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Put": {"TableName": "cli-batch", "Item": {"pk": {"S": "t2"}}}},
    ]), check=False)
    assert code != 0 and "TransactionCanceledException" in stderr and "ConditionalCheckFailed" in stderr

    _, ttl, _ = aws("update-time-to-live", "--table-name", "cli-batch",
                    "--time-to-live-specification", "Enabled=true,AttributeName=expires")
    assert ttl["TimeToLiveSpecification"]["AttributeName"] == "expires"
    assert aws("describe-time-to-live", "--table-name", "cli-batch")[1]["TimeToLiveDescription"][
        "TimeToLiveStatus"] == "ENABLED"

    arn = aws("describe-table", "--table-name", "cli-batch")[1]["Table"]["TableArn"]
    aws("tag-resource", "--resource-arn", arn, "--tags", "Key=owner,Value=cli")
    assert aws("list-tags-of-resource", "--resource-arn", arn)[1]["Tags"] == [{"Key": "owner", "Value": "cli"}]
    aws("untag-resource", "--resource-arn", arn, "--tag-keys", "owner")
    assert aws("list-tags-of-resource", "--resource-arn", arn)[1]["Tags"] == []
    assert aws("describe-endpoints")[1]["Endpoints"]


def test_cli_reports_validation_errors(store):
    code, _, stderr = store.aws("get-item", "--table-name", "no-such-table", "--key", j({"pk": {"S": "a"}}),
                                check=False)
    assert code != 0 and "ResourceNotFoundException" in stderr
    code, _, stderr = store.aws("scan", "--table-name", "no-such-table", "--filter-expression", "a = = b",
                                check=False)
    assert code != 0 and ("ValidationException" in stderr or "ResourceNotFoundException" in stderr)
