"""moto's server for `switchyard lab --providers`, with one correction to its Route 53.

moto is the lab's stand-in for the AWS API. Its ChangeResourceRecordSets (moto 5.2.5) checks
every CREATE of a batch against the zone as it was *before* the batch: a CREATE identical to
one it journaled earlier is refused as "already exists" even when the same batch DELETEs that
record first. Route 53 validates and applies a batch in order, and DELETE then CREATE in one
batch is its documented way to change a record (the compare-and-set the `route53` step does),
so with plain moto the second move to a value written before (a failback) was refused, and
the controller, taking the refusal for a stale write, fenced itself.

Before moto runs such a batch, this drops the journal's identical CREATEs of records the batch
deletes first; everything else is moto's own code. Run as `python3 moto_lab.py ARGS...` with
moto_server's arguments.
"""

import sys

from moto.route53.models import Route53Backend
from moto.server import main

_change_resource_record_sets = Route53Backend.change_resource_record_sets


def _record_key(change):
    record = change.get("ResourceRecordSet", {})
    return (
        str(record.get("Name", "")).rstrip(".").lower(),
        record.get("Type"),
        record.get("SetIdentifier"),
    )


def change_resource_record_sets(self, zoneid, change_list):
    zone = self.get_hosted_zone(zoneid)
    deleted = set()
    for change in change_list:
        key = _record_key(change)
        if change.get("Action") == "DELETE":
            deleted.add(key)
        elif change.get("Action") == "CREATE" and key in deleted:
            # moto's journal normalises the name on lookup; remove every identical entry.
            while change in zone.rr_changes:
                zone.rr_changes.remove(change)
    return _change_resource_record_sets(self, zoneid, change_list)


Route53Backend.change_resource_record_sets = change_resource_record_sets

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
