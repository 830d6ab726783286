"""Business services of the DTM compatibility tests, written the way DTM's
Python examples write them: every branch handler runs its SQL inside dtmcli's
own BranchBarrier on MariaDB (dtm_barrier.barrier), which makes it idempotent
and turns a cancel without its try into an empty compensation.

Accounts: account(user_id, balance, trading_balance). Saga and msg move
`balance`; TCC freezes in `trading_balance` (try), then applies (confirm) or
releases (cancel).

Usage: busi.py PORT (MariaDB from MYSQL_HOST, MYSQL_PORT, MYSQL_DB).
"""

import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from db import connect
from dtmcli import barrier, utils

BARRIER_DDL = [
    "create database if not exists dtm_barrier",
    """create table if not exists dtm_barrier.barrier(
      id bigint(22) PRIMARY KEY AUTO_INCREMENT,
      trans_type varchar(45) default '',
      gid varchar(128) default '',
      branch_id varchar(128) default '',
      op varchar(45) default '',
      barrier_id varchar(45) default '',
      reason varchar(45) default '' comment 'the branch type who insert this record',
      create_time datetime DEFAULT now(),
      update_time datetime DEFAULT now(),
      key(create_time),
      key(update_time),
      UNIQUE key(gid, branch_id, op, barrier_id)
    )""",
]


def adjust(column, sign):
    """A business step: `column += sign * amount` for the body's user."""

    def step(body):
        def busi(cursor):
            if body.get("fail"):
                raise utils.DTMFailureError("declined by the business rule")
            amount = sign * int(body["amount"])
            if column == "trading_balance" and sign < 0:
                # A try that freezes money checks there is enough of it.
                cursor.execute("select balance + trading_balance from account where user_id = %s", (body["user"],))
                (available,) = cursor.fetchone()
                if available + amount < 0:
                    raise utils.DTMFailureError("insufficient balance")
            cursor.execute(
                "update account set %s = %s + %%s where user_id = %%s" % (column, column), (amount, body["user"])
            )

        return busi

    return step


def confirm(sign):
    """TCC confirm: the frozen amount becomes a change of balance."""

    def step(body):
        def busi(cursor):
            amount = int(body["amount"])
            cursor.execute(
                "update account set balance = balance + %s, trading_balance = trading_balance - %s where user_id = %s",
                (sign * amount, sign * amount, body["user"]),
            )

        return busi

    return step


ROUTES = {
    "/api/TransOut": adjust("balance", -1),
    "/api/TransOutCompensate": adjust("balance", +1),
    "/api/TransIn": adjust("balance", +1),
    "/api/TransInCompensate": adjust("balance", -1),
    # TCC: trading_balance holds what a try froze (negative: money leaving).
    "/api/TransOutTry": adjust("trading_balance", -1),
    "/api/TransOutConfirm": confirm(-1),
    "/api/TransOutCancel": adjust("trading_balance", +1),
    "/api/TransInTry": adjust("trading_balance", +1),
    "/api/TransInConfirm": confirm(+1),
    "/api/TransInCancel": adjust("trading_balance", -1),
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("busi: " + fmt % args + "\n")

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def barrier_of(self, q):
        return barrier.BranchBarrier(q["trans_type"], q["gid"], q["branch_id"], q["op"])

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path != "/api/QueryPrepared":
            return self.answer(404, {"message": "no such route"})
        conn = connect()
        try:
            self.barrier_of(q).query_prepared(conn.cursor())
            self.answer(200, {"dtm_result": "SUCCESS"})
        except utils.DTMFailureError as e:
            self.answer(409, {"dtm_result": "FAILURE", "message": str(e)})
        finally:
            conn.close()

    def do_POST(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        step = ROUTES.get(url.path)
        if step is None:
            return self.answer(404, {"message": "no such route"})
        body = json.loads(raw or b"{}")
        conn = connect()
        try:
            self.barrier_of(q).call(conn.cursor(), step(body))
            self.answer(200, {"dtm_result": "SUCCESS"})
        except utils.DTMFailureError as e:
            self.answer(409, {"dtm_result": "FAILURE", "message": str(e)})
        except Exception as e:  # noqa: BLE001 - anything else is retried by the coordinator
            traceback.print_exc()
            self.answer(500, {"message": repr(e)})
        finally:
            conn.close()


def main():
    conn = connect()
    with conn.cursor() as c:
        for ddl in BARRIER_DDL:
            c.execute(ddl)
    conn.commit()
    conn.close()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("listening", server.server_address[1], flush=True)
    # The test reads only that line; dtmcli prints every barrier statement.
    sys.stdout = sys.stderr
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # runs until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
