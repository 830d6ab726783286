"""Schemathesis hooks for scripts/schemathesis.sh.

They change generated requests only where a rule of the API cannot be
written in JSON Schema, or where a request would leave the machine:

- `Idempotency-Key`: a key names one request; reusing it for a different
  one is refused by design (422 `idempotency_key_reused`, as the IETF
  Idempotency-Key draft says). Every generated request gets a fresh key.
- 3PC phase timeouts: each is bounded in the schema, but the rules between
  them (`can_commit < pre_commit`, `do_commit > 2 x pre_commit + takeover`)
  compare fields, which JSON Schema cannot. A schema-valid request that
  breaks them is sent without its `three_phase` (the defaults).
- `callback_url`, a saga step's `action_url` and `compensate_url`: the
  coordinator calls them. A valid URL (of the document's pattern) keeps its
  shape but points at 127.0.0.1:9 (nothing listens), so no callback leaves
  the machine; an invalid one is left as generated, to be refused.
- A saga's `after`: JSON Schema cannot say "an index of another step, and
  no cycle". Indexes of a schema-valid `after` are kept only where they name
  an earlier step (which can make no cycle). A saga submit without `wait_ms`
  gets `wait_ms=0`: its actions go to 127.0.0.1:9 and would be retried for
  the whole default wait.
- A message's `check_url` and its deliveries' `url`: as `callback_url`
  (127.0.0.1:9). A delivery's `destination` must name a destination in the
  coordinator's configuration, and the fuzzed coordinator has none: a
  delivery with a destination string and no `url` gets a url instead. Its
  `Idempotency-Key`: fresh, as for a saga. A submit without `wait_ms` gets
  `wait_ms=0`.
"""

import math
import os
import re
import uuid

import schemathesis

TAKEOVER_MS = int(os.environ.get("TANDEM_TAKEOVER_MS", "16000"))
MAX_TIMEOUT_MS = int(os.environ.get("TANDEM_MAX_TIMEOUT_MS", "86400000"))
MAX_SAGA_STEPS = 256
KEY = re.compile(r"^[!-~]{1,255}$")
# The `pattern` of `callback_url` in the served document (scripts/schemathesis.sh).
URL_SHAPE = re.compile(os.environ["TANDEM_CALLBACK_URL_PATTERN"]) if os.environ.get("TANDEM_CALLBACK_URL_PATTERN") else None
URL_HOST = re.compile(r"^(https?)://(\[[^\]]*\]|[^/:?\[]*)(:[0-9]+)?(.*)$", re.S)


def _valid_timeout(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == int(v) and 1 <= v <= MAX_TIMEOUT_MS


def _fix_three_phase(body):
    options = body.get("three_phase")
    if not isinstance(options, dict):
        return
    fields = ("can_commit_timeout_ms", "pre_commit_timeout_ms", "do_commit_timeout_ms")
    values = {f: options.get(f) for f in fields}
    if not all(v is None or _valid_timeout(v) for v in values.values()):
        return  # a value outside its schema: the request is meant to be refused
    can = values["can_commit_timeout_ms"] if values["can_commit_timeout_ms"] is not None else 3000
    pre = values["pre_commit_timeout_ms"] if values["pre_commit_timeout_ms"] is not None else 5000
    done = values["do_commit_timeout_ms"]
    least_do = 2 * pre + TAKEOVER_MS
    if done is None:
        done = max(40000, least_do + 10000)
    if not (can < pre and done > least_do and done <= MAX_TIMEOUT_MS):
        del body["three_phase"]


def _local(url):
    # Only a URL of the documented shape is pointed at the machine: one
    # outside it is meant to be refused, and is (nothing is called).
    if isinstance(url, str) and (URL_SHAPE is None or URL_SHAPE.fullmatch(url)):
        m = URL_HOST.match(url)
        if m:
            return f"{m.group(1)}://127.0.0.1:9{m.group(4)}"
    return url


def _integral(v):
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _fix_saga(body):
    steps = body.get("steps")
    if not isinstance(steps, list):
        return
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        for field in ("action_url", "compensate_url"):
            if field in step:
                step[field] = _local(step[field])
        after = step.get("after")
        # Only a schema-valid list is changed: an invalid one is meant to be refused.
        if isinstance(after, list) and all(_integral(j) and 0 <= j < MAX_SAGA_STEPS for j in after):
            step["after"] = [j for j in after if j < i]


@schemathesis.hook
def before_call(context, case, kwargs):
    operation = context.operation
    if operation is None:
        return
    if operation.method.upper() == "POST" and operation.path == "/v1/transactions":
        for name in list(case.headers or {}):
            if name.lower() == "idempotency-key":
                case.headers[name] = str(uuid.uuid4())
        if isinstance(case.body, dict):
            _fix_three_phase(case.body)
    if operation.method.upper() == "POST" and operation.path == "/v1/sagas":
        for name in list(case.headers or {}):
            value = case.headers[name]
            if name.lower() == "idempotency-key" and isinstance(value, str) and KEY.match(value):
                case.headers[name] = str(uuid.uuid4())
        if isinstance(case.body, dict):
            _fix_saga(case.body)
        if case.query is None:
            case.query = {}
        if isinstance(case.query, dict) and "wait_ms" not in case.query:
            case.query["wait_ms"] = 0
    if operation.method.upper() == "POST" and operation.path == "/v1/messages":
        for name in list(case.headers or {}):
            value = case.headers[name]
            if name.lower() == "idempotency-key" and isinstance(value, str) and KEY.match(value):
                case.headers[name] = str(uuid.uuid4())
        if isinstance(case.body, dict):
            if "check_url" in case.body:
                case.body["check_url"] = _local(case.body["check_url"])
            deliveries = case.body.get("deliveries")
            if isinstance(deliveries, list):
                for d in deliveries:
                    if not isinstance(d, dict):
                        continue
                    dest = d.get("destination")
                    # Only a schema-valid destination: an invalid one is meant to be refused.
                    valid = isinstance(dest, str) and 1 <= len(dest) <= 128 and "\x00" not in dest
                    if valid and d.get("url") is None:
                        del d["destination"]
                        d["url"] = "http://127.0.0.1:9/deliver"
                    if "url" in d:
                        d["url"] = _local(d["url"])
    if operation.method.upper() == "POST" and operation.path.startswith("/v1/messages/"):
        if case.query is None:
            case.query = {}
        if isinstance(case.query, dict) and "wait_ms" not in case.query:
            case.query["wait_ms"] = 0
    if operation.path.endswith("/branches") and isinstance(case.body, dict):
        url = case.body.get("callback_url")
        if isinstance(url, str):
            m = URL_HOST.match(url)
            if m:
                case.body["callback_url"] = f"{m.group(1)}://127.0.0.1:9{m.group(4)}"
