"""A small fake of the Amazon RDS Query API (API version 2014-10-31), for the operations the
`rds_promote` and `aurora_global_failover` steps call, because moto 5.2.5 never clears
`ReadReplicaSourceDBInstanceIdentifier` after PromoteReadReplica and has no
FailoverGlobalCluster or SwitchoverGlobalCluster.

It follows AWS's documented API exactly for what it implements
(https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/):

- Requests: `POST /` with a form body (or a query string) carrying `Action=...&Version=2014-10-31`
  and the action's parameters in the Query protocol's encoding (lists as `Tags.Tag.1.Key`).
  The AWS region is the one in the SigV4 `Authorization` header's credential scope, as each
  regional endpoint would be; signatures are not verified.
- Responses: `<{Action}Response xmlns="http://rds.amazonaws.com/doc/2014-10-31/">` holding
  `<{Action}Result>` and `<ResponseMetadata><RequestId>`; errors are
  `<ErrorResponse><Error><Type>Sender</Type><Code>...</Code><Message>...</Message></Error>
  <RequestId>...</RequestId></ErrorResponse>` with the documented HTTP status.
- Operations: DescribeDBInstances (DBInstanceNotFound, 404), PromoteReadReplica
  (DBInstanceNotFound; InvalidDBInstanceState, 400, when the instance is not a read replica or
  not available), ListTagsForResource and AddTagsToResource (by ARN; DBInstanceNotFound or
  DBClusterNotFoundFault, 404), DescribeGlobalClusters (GlobalClusterNotFoundFault, 404),
  SwitchoverGlobalCluster and FailoverGlobalCluster (GlobalClusterNotFoundFault;
  DBClusterNotFoundFault when the target is not a member; InvalidGlobalClusterStateFault, 400,
  while another operation is in progress or when the target is the writer already;
  FailoverGlobalCluster refuses AllowDataLoss together with Switchover with
  InvalidParameterCombination, 400, as documented), RemoveFromGlobalCluster (GlobalClusterNotFoundFault;
  DBClusterNotFoundFault when not a member; InvalidGlobalClusterStateFault for the writer while
  secondaries remain) and DescribeDBClusters (by ARN or identifier; DBClusterNotFoundFault).
- Asynchrony: a promoted replica keeps its source for `delay_s`, then is `available` with no
  `ReadReplicaSourceDBInstanceIdentifier` (and gone from the source's
  `ReadReplicaDBInstanceIdentifiers`), as documented; which status AWS shows meanwhile is not
  documented for PromoteReadReplica, so the fake guesses `modifying` (one of the documented DB
  instance statuses). A global switchover or failover shows a `FailoverState` (`pending`, then
  `switching-over` or `failing-over`, the documented values) for `delay_s`, then the target
  member `IsWriter` and the FailoverState empty (left out, or with `empty_failover_state` an
  empty `<FailoverState/>` element: the API reference says the data type "is empty unless a
  switchover or failover operation is scheduled or is in progress", and both forms parse as
  such); the global cluster's own `Status` stays
  `available` meanwhile (also not documented). A detached cluster leaves the member list at once
  and is `modifying` for `delay_s`, then `available` (the status meanwhile is a guess too).

Test control (not AWS): `GET /_fake/calls` lists the actions received, `POST /_fake/down` with a
JSON list of AWS regions makes requests signed for them answer 503 ServiceUnavailable.
"""

import json
import re
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

NS = "http://rds.amazonaws.com/doc/2014-10-31/"
BODY_BYTES_MAX = 1 << 20


class RdsError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def arn_region(arn):
    parts = arn.split(":")
    return parts[3] if len(parts) == 7 else None


class FakeRds:
    def __init__(self, delay_s=0.5, empty_failover_state=False):
        self.delay_s = delay_s
        self.empty_failover_state = empty_failover_state
        self.lock = threading.Lock()
        self.instances = {}  # arn -> dict
        self.clusters = {}  # arn -> tags
        self.detached_at = {}  # arn -> when RemoveFromGlobalCluster detached it
        self.globals = {}  # id -> dict
        self.calls = []
        self.down = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # --- seeding (what an account would already hold) ---------------------------------------
    def add_instance(self, arn, source=None):
        with self.lock:
            self.instances[arn] = {"arn": arn, "id": arn.split(":")[-1], "status": "available", "source": source,
                                   "tags": {}, "promoted_at": None}

    def add_global(self, identifier, writer, secondaries):
        with self.lock:
            for arn in [writer, *secondaries]:
                self.clusters.setdefault(arn, {})
            self.globals[identifier] = {"id": identifier, "writer": writer, "members": [writer, *secondaries],
                                        "failover": None}

    def instance(self, arn):
        with self.lock:
            self._settle()
            return dict(self.instances[arn])

    def members(self, identifier):
        with self.lock:
            return list(self.globals[identifier]["members"])

    def writer(self, identifier):
        with self.lock:
            self._settle()
            g = self.globals[identifier]
            return g["writer"], g["failover"]

    def tags(self, arn):
        with self.lock:
            item = self.instances.get(arn)
            return dict(item["tags"] if item else self.clusters[arn])

    def actions(self, name):
        with self.lock:
            return [c for c in self.calls if c["Action"] == name]

    # --- time passes --------------------------------------------------------------------------
    def _settle(self):
        now = time.monotonic()
        for item in self.instances.values():
            if item["promoted_at"] is not None and now - item["promoted_at"] >= self.delay_s:
                item.update(status="available", source=None, promoted_at=None)
        for g in self.globals.values():
            f = g["failover"]
            if f and now - f["at"] >= self.delay_s:
                g["writer"], g["failover"] = f["to"], None
            elif f and now - f["at"] >= self.delay_s / 3:
                f["status"] = "failing-over" if f["loss"] else "switching-over"

    # --- the API ----------------------------------------------------------------------------
    def _instance_xml(self, item):
        replicas = "".join(f"<ReadReplicaDBInstanceIdentifier>{escape(i['arn'])}</ReadReplicaDBInstanceIdentifier>"
                           for i in self.instances.values() if i["source"] == item["arn"])
        source = (f"<ReadReplicaSourceDBInstanceIdentifier>{escape(item['source'])}</ReadReplicaSourceDBInstanceIdentifier>"
                  if item["source"] else "")
        return (f"<DBInstance><DBInstanceIdentifier>{escape(item['id'])}</DBInstanceIdentifier>"
                f"<DBInstanceArn>{escape(item['arn'])}</DBInstanceArn><Engine>mysql</Engine>"
                f"<DBInstanceStatus>{item['status']}</DBInstanceStatus>{source}"
                f"<ReadReplicaDBInstanceIdentifiers>{replicas}</ReadReplicaDBInstanceIdentifiers></DBInstance>")

    def _global_xml(self, g):
        members = "".join(
            f"<GlobalClusterMember><DBClusterArn>{escape(m)}</DBClusterArn>"
            f"<IsWriter>{'true' if m == g['writer'] else 'false'}</IsWriter>"
            f"<SynchronizationStatus>connected</SynchronizationStatus></GlobalClusterMember>" for m in g["members"])
        f = g["failover"]
        idle = "<FailoverState/>" if self.empty_failover_state else ""
        failover = idle if not f else (
            f"<FailoverState><Status>{f['status']}</Status><FromDbClusterArn>{escape(f['from'])}</FromDbClusterArn>"
            f"<ToDbClusterArn>{escape(f['to'])}</ToDbClusterArn>"
            f"<IsDataLossAllowed>{'true' if f['loss'] else 'false'}</IsDataLossAllowed></FailoverState>")
        return (f"<GlobalClusterIdentifier>{escape(g['id'])}</GlobalClusterIdentifier>"
                f"<GlobalClusterArn>arn:aws:rds::111122223333:global-cluster:{escape(g['id'])}</GlobalClusterArn>"
                f"<Status>available</Status><Engine>aurora-mysql</Engine>"
                f"<GlobalClusterMembers>{members}</GlobalClusterMembers>{failover}")

    def _find_instance(self, region, identifier):
        for item in self.instances.values():
            if arn_region(item["arn"]) == region and identifier in (item["id"], item["arn"]):
                return item
        raise RdsError(404, "DBInstanceNotFound", f"DBInstance {identifier} not found.")

    def _global(self, identifier):
        g = self.globals.get(identifier)
        if not g:
            raise RdsError(404, "GlobalClusterNotFoundFault", f"GlobalCluster {identifier} not found.")
        return g

    def _tags_of(self, arn):
        if arn in self.clusters:
            return self.clusters[arn]
        if arn in self.instances:
            return self.instances[arn]["tags"]
        if ":cluster:" in arn:
            raise RdsError(404, "DBClusterNotFoundFault", f"DBCluster {arn} not found.")
        raise RdsError(404, "DBInstanceNotFound", f"DBInstance {arn} not found.")

    def _move(self, params, loss):
        g = self._global(params.get("GlobalClusterIdentifier", ""))
        target = params.get("TargetDbClusterIdentifier", "")
        if target not in g["members"]:
            raise RdsError(404, "DBClusterNotFoundFault", f"DBCluster {target} is not a member of {g['id']}.")
        if g["failover"]:
            raise RdsError(400, "InvalidGlobalClusterStateFault",
                           f"Global cluster {g['id']} is already being switched over or failed over.")
        if target == g["writer"]:
            raise RdsError(400, "InvalidGlobalClusterStateFault",
                           f"DB cluster {target} is already the primary cluster of {g['id']}.")
        g["failover"] = {"status": "pending", "from": g["writer"], "to": target, "loss": loss, "at": time.monotonic()}
        return f"<GlobalCluster>{self._global_xml(g)}</GlobalCluster>"

    def call(self, region, params):
        action = params.get("Action", "")
        with self.lock:
            self.calls.append(dict(params, region=region))
            if region in self.down:
                raise RdsError(503, "ServiceUnavailable", f"The service in {region} is unavailable.")
            self._settle()
            if action == "DescribeDBInstances":
                wanted = params.get("DBInstanceIdentifier")
                items = [self._find_instance(region, wanted)] if wanted else [
                    i for i in self.instances.values() if arn_region(i["arn"]) == region]
                return f"<DBInstances>{''.join(self._instance_xml(i) for i in items)}</DBInstances>"
            if action == "PromoteReadReplica":
                item = self._find_instance(region, params.get("DBInstanceIdentifier", ""))
                if not item["source"] or item["promoted_at"] is not None:
                    raise RdsError(400, "InvalidDBInstanceState", f"DB Instance {item['id']} is not a read replica.")
                if item["status"] != "available":
                    raise RdsError(400, "InvalidDBInstanceState", f"DB Instance {item['id']} is not available.")
                item.update(status="modifying", promoted_at=time.monotonic())
                return self._instance_xml(item)
            if action == "ListTagsForResource":
                tags = self._tags_of(params.get("ResourceName", ""))
                return "<TagList>" + "".join(f"<Tag><Key>{escape(k)}</Key><Value>{escape(v)}</Value></Tag>"
                                             for k, v in tags.items()) + "</TagList>"
            if action == "AddTagsToResource":
                tags = self._tags_of(params.get("ResourceName", ""))
                n = 1
                while f"Tags.Tag.{n}.Key" in params:
                    tags[params[f"Tags.Tag.{n}.Key"]] = params.get(f"Tags.Tag.{n}.Value", "")
                    n += 1
                return None
            if action == "DescribeGlobalClusters":
                wanted = params.get("GlobalClusterIdentifier")
                items = [self._global(wanted)] if wanted else list(self.globals.values())
                return "<GlobalClusters>" + "".join(
                    f"<GlobalClusterMember>{self._global_xml(g)}</GlobalClusterMember>" for g in items) + "</GlobalClusters>"
            if action == "RemoveFromGlobalCluster":
                g = self._global(params.get("GlobalClusterIdentifier", ""))
                arn = params.get("DbClusterIdentifier", "")
                if arn not in g["members"]:
                    raise RdsError(404, "DBClusterNotFoundFault", f"DBCluster {arn} is not a member of {g['id']}.")
                if arn == g["writer"] and len(g["members"]) > 1:
                    raise RdsError(400, "InvalidGlobalClusterStateFault",
                                   f"The primary cluster {arn} cannot be removed while secondaries remain.")
                g["members"].remove(arn)
                self.detached_at[arn] = time.monotonic()
                return f"<GlobalCluster>{self._global_xml(g)}</GlobalCluster>"
            if action == "DescribeDBClusters":
                wanted = params.get("DBClusterIdentifier", "")
                for arn in self.clusters:
                    if arn_region(arn) == region and wanted in (arn, arn.split(":")[-1]):
                        at = self.detached_at.get(arn)
                        status = "modifying" if at is not None and time.monotonic() - at < self.delay_s else "available"
                        return (f"<DBClusters><DBCluster><DBClusterIdentifier>{escape(arn.split(':')[-1])}</DBClusterIdentifier>"
                                f"<DBClusterArn>{escape(arn)}</DBClusterArn><Status>{status}</Status>"
                                f"<Engine>aurora-mysql</Engine></DBCluster></DBClusters>")
                raise RdsError(404, "DBClusterNotFoundFault", f"DBCluster {wanted} not found.")
            if action == "SwitchoverGlobalCluster":
                return self._move(params, loss=False)
            if action == "FailoverGlobalCluster":
                loss = params.get("AllowDataLoss") == "true"
                if loss and params.get("Switchover") == "true":
                    raise RdsError(400, "InvalidParameterCombination",
                                   "AllowDataLoss and Switchover cannot be specified together.")
                return self._move(params, loss=loss)
            raise RdsError(400, "InvalidAction", f"The action {action} is not valid for this web service.")

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body, content_type="text/xml"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/_fake/calls":
                    with fake.lock:
                        return self.reply(200, json.dumps(fake.calls), "application/json")
                self.handle_query(urllib.parse.urlsplit(self.path).query)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length > BODY_BYTES_MAX:
                    return self.reply(413, "")
                body = self.rfile.read(length).decode()
                if self.path == "/_fake/down":
                    with fake.lock:
                        fake.down = set(json.loads(body))
                    return self.reply(200, "{}", "application/json")
                self.handle_query(body)

            def handle_query(self, text):
                params = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
                scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/rds/aws4_request", self.headers.get("Authorization", ""))
                region = scope.group(1) if scope else "us-east-1"
                request_id = str(uuid.uuid4())
                action = params.get("Action", "")
                try:
                    if params.get("Version") != "2014-10-31":
                        raise RdsError(400, "InvalidParameterValue", "Version must be 2014-10-31.")
                    result = fake.call(region, params)
                except RdsError as e:
                    return self.reply(e.status, (
                        f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{e.code}</Code>'
                        f"<Message>{escape(e.message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"))
                inner = "" if result is None else f"<{action}Result>{result}</{action}Result>"
                self.reply(200, f'<{action}Response xmlns="{NS}">{inner}<ResponseMetadata><RequestId>{request_id}'
                                f"</RequestId></ResponseMetadata></{action}Response>")

        return Handler
