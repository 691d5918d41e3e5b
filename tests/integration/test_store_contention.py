"""Concurrent writers on the same items against the real binary: conditions hold under
contention. Optimistic-locking increments count exactly, transfers by TransactWriteItems
conserve the total and never overdraw, and of many racing creates exactly one wins."""

import os
import random
import threading

import pytest
from botocore.exceptions import ClientError

from test_store_harness import create_table, started_store

pytestmark = [pytest.mark.process]

THREADS = 8
INCREMENTS_PER_THREAD = 25
TRANSFERS_PER_THREAD = 30
ACCOUNTS = 4
INITIAL_BALANCE = 50
SEED = int(os.environ.get("SWITCHYARD_SEED", random.randrange(1 << 32)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    print(f"SWITCHYARD_SEED={SEED}")
    store = started_store(tmp_path_factory)
    yield store
    store.stop()


def run_threads(target):
    errors = []

    def guarded(index):
        try:
            target(index)
        except BaseException as error:  # reported below, with the thread that raised it
            errors.append((index, error))

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a writer thread hung"
    assert not errors, f"writer threads failed: {errors[:3]}"


def test_optimistic_increments_count_exactly(store):
    table = create_table(store.client(), "counters")
    store.client().put_item(TableName=table, Item={"pk": {"S": "c"}, "n": {"N": "0"}, "version": {"N": "0"}})
    conflicts = [0] * THREADS

    def worker(index):
        client = store.client()
        done = 0
        while done < INCREMENTS_PER_THREAD:
            item = client.get_item(TableName=table, Key={"pk": {"S": "c"}}, ConsistentRead=True)["Item"]
            try:
                client.update_item(
                    TableName=table, Key={"pk": {"S": "c"}},
                    UpdateExpression="SET n = n + :one, version = version + :one",
                    ConditionExpression="version = :seen",
                    ExpressionAttributeValues={":one": {"N": "1"}, ":seen": item["version"]},
                )
                done += 1
            except ClientError as error:
                assert error.response["Error"]["Code"] == "ConditionalCheckFailedException", error
                conflicts[index] += 1

    run_threads(worker)
    item = store.client().get_item(TableName=table, Key={"pk": {"S": "c"}}, ConsistentRead=True)["Item"]
    assert int(item["n"]["N"]) == THREADS * INCREMENTS_PER_THREAD
    assert item["version"] == item["n"]
    print(f"optimistic conflicts per thread: {conflicts}")


def test_transactional_transfers_conserve_the_total(store):
    table = create_table(store.client(), "accounts")
    client = store.client()
    for a in range(ACCOUNTS):
        client.put_item(TableName=table, Item={"pk": {"S": f"acct-{a}"}, "balance": {"N": str(INITIAL_BALANCE)}})
    committed = [0] * THREADS

    def worker(index):
        rng = random.Random(SEED + index)
        client = store.client()
        for _ in range(TRANSFERS_PER_THREAD):
            source, target = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 30)
            try:
                client.transact_write_items(TransactItems=[
                    {"Update": {"TableName": table, "Key": {"pk": {"S": f"acct-{source}"}},
                                "UpdateExpression": "SET balance = balance - :x",
                                "ConditionExpression": "balance >= :x",
                                "ExpressionAttributeValues": {":x": {"N": str(amount)}}}},
                    {"Update": {"TableName": table, "Key": {"pk": {"S": f"acct-{target}"}},
                                "UpdateExpression": "ADD balance :x",
                                "ExpressionAttributeValues": {":x": {"N": str(amount)}}}},
                    {"Update": {"TableName": table, "Key": {"pk": {"S": "ledger"}},
                                "UpdateExpression": "ADD transfers :one, moved :x",
                                "ExpressionAttributeValues": {":one": {"N": "1"}, ":x": {"N": str(amount)}}}},
                ])
                committed[index] += 1
            except ClientError as error:
                code = error.response["Error"]["Code"]
                assert code in ("TransactionCanceledException", "TransactionConflictException"), error
                if code == "TransactionCanceledException":
                    reasons = [r["Code"] for r in error.response["CancellationReasons"]]
                    assert reasons[0] in ("ConditionalCheckFailed", "TransactionConflict"), reasons

    run_threads(worker)
    items = {i["pk"]["S"]: i for i in client.scan(TableName=table, ConsistentRead=True)["Items"]}
    balances = [int(items[f"acct-{a}"]["balance"]["N"]) for a in range(ACCOUNTS)]
    assert sum(balances) == ACCOUNTS * INITIAL_BALANCE, f"money created or lost: {balances}"
    assert min(balances) >= 0, f"an account was overdrawn: {balances}"
    assert int(items["ledger"]["transfers"]["N"]) == sum(committed), "the ledger counts every committed transfer"


def test_racing_conditional_creates_have_one_winner(store):
    table = create_table(store.client(), "claims")
    for round_ in range(5):
        winners = []
        barrier = threading.Barrier(THREADS)

        def worker(index):
            client = store.client()
            barrier.wait(timeout=30)
            try:
                client.put_item(TableName=table, Item={"pk": {"S": f"lock-{round_}"}, "owner": {"N": str(index)}},
                                ConditionExpression="attribute_not_exists(pk)")
                winners.append(index)
            except ClientError as error:
                assert error.response["Error"]["Code"] == "ConditionalCheckFailedException", error

        run_threads(worker)
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        owner = store.client().get_item(TableName=table, Key={"pk": {"S": f"lock-{round_}"}},
                                        ConsistentRead=True)["Item"]["owner"]["N"]
        assert int(owner) == winners[0]
