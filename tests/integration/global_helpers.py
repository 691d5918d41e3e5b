"""What the tests of settings that follow a global table across its replicas share (TTL,
global secondary indexes): two real `switchyard store` processes (`two_regions`, from
test_streams), a table made global from the first region, and the table as a region
describes it."""

from botocore.exceptions import ClientError

from test_store_harness import wait_for
from test_streams import REPLICATION_DEADLINE_S, error_code, two_regions

__all__ = ["REPLICATION_DEADLINE_S", "create_table", "error_code", "make_global", "table_in", "two_regions"]


def create_table(region, name, **extra):
    """An on-demand table keyed by the string `id`, in `region`; `extra` goes to CreateTable
    (AttributeDefinitions given there replace the key's own)."""
    extra.setdefault("AttributeDefinitions", [])
    definitions = [{"AttributeName": "id", "AttributeType": "S"}]
    definitions += [d for d in extra.pop("AttributeDefinitions") if d["AttributeName"] != "id"]
    region.client().create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                                 KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                                 AttributeDefinitions=definitions, **extra)


def table_in(region, name):
    """`region`'s DescribeTable of `name`, or None while it has no such table."""
    try:
        return region.client().describe_table(TableName=name)["Table"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        return None


def make_global(east, south, name):
    """Makes `name` (in `east`) global with a replica in `south`, and waits for the replica."""
    east.client().update_table(TableName=name, ReplicaUpdates=[{"Create": {"RegionName": south.name}}])
    wait_for(lambda: table_in(south, name), REPLICATION_DEADLINE_S, f"the replica of {name} in {south.name}")
