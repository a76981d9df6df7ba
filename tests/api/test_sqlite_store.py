"""The store's transactions keep the first error, whatever SQLite did about it."""

import sqlite3

import pytest

from app.stores.sqlite import SqliteDatabase


def test_an_error_after_sqlite_rolled_back_by_itself_is_the_one_raised(tmp_path):
    store = SqliteDatabase(tmp_path)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"), \
            store.transaction() as db:
        db.execute("INSERT INTO tombstones VALUES ('a', 'b')")
        db.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL at COMMIT
        raise sqlite3.OperationalError("database or disk is full")
    with store.transaction() as db:  # and the connection is usable again
        db.execute("INSERT INTO tombstones VALUES ('c', 'd')")
    assert store.tombstoned_paths() == {"c"}
