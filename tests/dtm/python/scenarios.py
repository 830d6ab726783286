"""The DTM compatibility scenarios, driven by the unmodified dtmcli from
PyPI exactly as its README shows, against Tandem's DTM API.

Usage: scenarios.py DTM_URL BUSI_URL SCENARIO USER_OUT USER_IN
Prints one JSON line: {"gid": ...}. MariaDB from MYSQL_* (the msg producer's
local transaction).
"""

import json
import os
import signal
import sys

from db import connect
from dtmcli import msg, saga, tcc, utils

dtm, busi, scenario, out_user, in_user = sys.argv[1:6]
out_user, in_user = int(out_user), int(in_user)
AMOUNT = 30


def body(user, **extra):
    return dict({"user": user, "amount": AMOUNT}, **extra)


def debit(cursor):
    cursor.execute("update account set balance = balance - %s where user_id = %s", (AMOUNT, out_user))


def done(gid, **extra):
    print(json.dumps(dict({"gid": gid}, **extra)), flush=True)


gid = utils.gen_gid(dtm)

if scenario in ("saga", "saga-fail"):
    s = saga.Saga(dtm, gid)
    s.add(body(out_user), busi + "/api/TransOut", busi + "/api/TransOutCompensate")
    s.add(body(in_user, fail=scenario == "saga-fail"), busi + "/api/TransIn", busi + "/api/TransInCompensate")
    s.submit()
    done(gid)

elif scenario in ("tcc", "tcc-abort"):

    def branches(t):
        t.call_branch(body(out_user), busi + "/api/TransOutTry", busi + "/api/TransOutConfirm", busi + "/api/TransOutCancel")
        t.call_branch(
            body(in_user, fail=scenario == "tcc-abort"),
            busi + "/api/TransInTry",
            busi + "/api/TransInConfirm",
            busi + "/api/TransInCancel",
        )

    # tcc_global_transaction makes its own gid-less calls with this gid.
    got = tcc.tcc_global_transaction(dtm, gid, branches)
    done(gid, committed=got != "")

elif scenario == "msg":
    m = msg.Msg(dtm, gid)
    m.add(body(in_user), busi + "/api/TransIn")
    conn = connect()
    m.do_and_submit_db(busi + "/api/QueryPrepared", conn.cursor(), debit)
    done(gid)

elif scenario in ("msg-die-after-commit", "msg-die-before-commit"):
    m = msg.Msg(dtm, gid)
    m.add(body(in_user), busi + "/api/TransIn")
    # Back-checked two seconds after the prepare if nobody submits.
    m.trans_base.timeout_to_fail = 2
    m.prepare(busi + "/api/QueryPrepared")
    done(gid)
    if scenario == "msg-die-after-commit":
        # The local transaction commits (its barrier row with it)...
        conn = connect()
        bb = msg.barrier.BranchBarrier("msg", gid, "00", "msg")
        bb.call(conn.cursor(), debit)
    # ...and the producer dies before it could submit.
    os.kill(os.getpid(), signal.SIGKILL)

else:
    sys.exit("unknown scenario " + scenario)
