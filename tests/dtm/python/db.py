"""The business database of the DTM compatibility tests (MariaDB, from
MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DB)."""

import os

import pymysql


def connect():
    """A connection in a transaction of its own (autocommit off, as dtmcli's barrier needs)."""
    return pymysql.connect(
        host=os.environ.get("MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("MYSQL_PORT", "3306")),
        user=os.environ.get("MYSQL_USER", "root"),
        password=os.environ.get("MYSQL_PASSWORD", ""),
        database=os.environ["MYSQL_DB"],
        autocommit=False,
    )
