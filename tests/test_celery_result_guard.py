"""The guard on Celery's result column (components/airflow/values.py, CELERY_RESULT_GUARD_SQL), on a real PostgreSQL: the
scheduler unpickles `celery_taskmeta.result` when it reads the tasks' states, so what the workers' role may store
there must be plain data. Pickles of the results Celery and Airflow store pass (made by Python's own pickler at
every protocol SQLAlchemy's PickleType may use); pickles that would run code when loaded are refused, as are
truncated ones and data after STOP. The end-to-end tier stores real results through it (tests/e2e/test_dags_e2e.py)."""

from __future__ import annotations

import os
import pickle
import pickletools

import psycopg2
import pytest

from components.airflow.values import CELERY_RESULT_GUARD_SQL, PICKLE_PLAIN_OPCODES, PICKLED_RESULT_MAX_BYTES
from support.servers import servers_session, start_postgres, unavailable_reason


@pytest.fixture(scope="module")
def database():
    reason = unavailable_reason()
    if reason:
        pytest.fail(reason)
    with servers_session("airflow-platform-guard-") as (workdir, started):
        postgres = start_postgres(workdir / "postgres")
        started.append(postgres)
        connection = psycopg2.connect(host=str(postgres.socket_dir), port=postgres.port, user="postgres",
                                      dbname="postgres")
        with connection, connection.cursor() as cursor:
            # Celery's table as its models make it, as far as the guard reads it; the guard as the migration Job
            # adds it (one transaction), twice, as every release runs it again.
            cursor.execute("CREATE TABLE celery_taskmeta (id serial PRIMARY KEY, task_id varchar(155) UNIQUE, "
                           "status varchar(50), result bytea, date_done timestamp, traceback text)")
            cursor.execute(CELERY_RESULT_GUARD_SQL)
        with connection, connection.cursor() as cursor:
            cursor.execute(CELERY_RESULT_GUARD_SQL)
            cursor.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'celery_taskmeta'::regclass "
                           "AND contype = 'c'")
            assert cursor.fetchone() == (1,)
        connection.autocommit = True
        yield connection
        connection.close()


def stored(connection, value: bytes | None) -> bool:
    with connection.cursor() as cursor:
        try:
            cursor.execute("INSERT INTO celery_taskmeta (task_id, status, result) VALUES (md5(random()::text), "
                           "'SUCCESS', %s)", (value,))
            return True
        except psycopg2.errors.CheckViolation:
            return False


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Instance:
    """A plain class: loading it imports a module and builds an object (GLOBAL/STACK_GLOBAL, then a call)."""

    def __init__(self):
        self.x = 1


# What Celery's database backend stores for Airflow's task (celery/backends/base.py, encode_result): its return
# value (None), the STARTED meta (task_track_started), exceptions as the JSON serializer prepares them, and a
# retry's; plus the other plain values a result may hold.
PLAIN = [
    None, {"pid": 4242, "hostname": "celery@airflow-worker-5d8f7c9b6-a1b2c"},
    {"exc_type": "AirflowException", "exc_message": ["Task failed", 3], "exc_module": "airflow.exceptions"},
    ("a", 1, 2.5, True, False, None), [1, -1, 2**70, -(2**40), "é" * 300], {"nested": {"list": [], "n": None}},
    "x" * 10000, 0.1, -5,
]
PLAIN += [{"nested": {"set": {1, 2}, "b": b"\x00" * 300}}, frozenset({"x"}), b"x" * 10000]


@pytest.mark.parametrize("protocol", [4, 5])
def test_the_results_celery_stores_pass_at_the_protocols_pickletype_uses(database, protocol):
    """SQLAlchemy's PickleType pickles with pickle.HIGHEST_PROTOCOL (5 on the supported Pythons; 4 is its
    memo's): every plain value passes. Older protocols put to the memo at an index and pickle sets and bytes as
    calls: refused."""
    import sqlalchemy
    assert sqlalchemy.PickleType().protocol == pickle.HIGHEST_PROTOCOL >= 4
    for value in PLAIN:
        data = pickle.dumps(value, protocol=protocol)
        assert stored(database, data), (value, [op.name for op, _, _ in pickletools.genops(data)])
    assert stored(database, None), "no result (NULL) passes"


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_that_would_run_code_are_refused(database, protocol):
    for value in (RunsCode(), Instance(), os.system, [1, RunsCode()], {"k": Instance()}):
        data = pickle.dumps(value, protocol=protocol)
        assert not stored(database, data), [op.name for op, _, _ in pickletools.genops(data)]
    # ... and loading it would indeed have imported something: the guard is not refusing plain data here.
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for op, _, _ in
               pickletools.genops(pickle.dumps(RunsCode(), protocol=protocol)))


def test_plain_data_that_would_exhaust_the_scheduler_is_refused(database):
    """Plain data can still hurt the unpickler: a memo index makes it allocate up to that index (8 bytes: about
    2 GB at 0x08000000), a tuple nested 200,000 deep used as a key overflows its stack while it is hashed, and a
    result of any size is loaded whole. Only MEMOIZE may fill the memo, and a result is at most
    PICKLED_RESULT_MAX_BYTES."""
    assert not stored(database, b"\x80\x05Nr\x00\x00\x00\x08.")   # LONG_BINPUT 0x08000000
    assert not stored(database, b"\x80\x05Nq\x05.")                # BINPUT 5
    assert stored(database, b"\x80\x05N\x94.")                     # MEMOIZE
    assert not stored(database, b"\x80\x05}N" + b"\x85" * 200_000 + b"Ns.")
    assert stored(database, pickle.dumps("x" * (PICKLED_RESULT_MAX_BYTES - 100), protocol=5))
    assert not stored(database, pickle.dumps("x" * PICKLED_RESULT_MAX_BYTES, protocol=5))


def test_a_writer_cannot_swap_the_functions_the_guard_calls(database):
    """Where a writer may create in `public` (PostgreSQL 14, or a database upgraded from it), its own `length` and
    `get_byte` first on its search_path would make any pickle pass, unless the guard resolves names in the
    catalog alone."""
    with database.cursor() as cursor:
        cursor.execute("CREATE ROLE guard_attacker NOLOGIN; GRANT CREATE, USAGE ON SCHEMA public TO guard_attacker; "
                       "GRANT INSERT ON celery_taskmeta TO guard_attacker; "
                       "GRANT USAGE ON SEQUENCE celery_taskmeta_id_seq TO guard_attacker")
        try:
            cursor.execute("SET ROLE guard_attacker")
            cursor.execute("CREATE FUNCTION public.length(bytea) RETURNS integer LANGUAGE sql AS 'SELECT 1'; "
                           "CREATE FUNCTION public.get_byte(bytea, integer) RETURNS integer LANGUAGE sql AS 'SELECT 46'")
            cursor.execute("SET search_path = public, pg_catalog")
            assert not stored(database, pickle.dumps(RunsCode(), protocol=5))
        finally:
            cursor.execute("RESET ROLE; RESET search_path")


def test_broken_and_padded_pickles_are_refused(database):
    data = pickle.dumps({"pid": 1}, protocol=5)
    assert stored(database, data)
    for broken in (data[:-1], data[:5], data + b"cos\nsystem\n", b"", b"\x80\x05\x8c\xff", b"\x80\x05X\xff\xff\xff\x7f."):
        assert not stored(database, broken), broken


def test_the_admitted_opcodes_are_the_plain_data_ones_of_pickletools():
    """Every admitted opcode builds data or manages the stack, memo or frames (pickletools' own descriptions), and
    the argument widths match pickletools' (fixed, or a 1/4/8-byte length before the data)."""
    by_code = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
    never = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2",
             "EXT4", "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER", "BINPUT", "LONG_BINPUT", "PUT"}
    assert not {by_code[code].name for code in PICKLE_PLAIN_OPCODES} & never
    length_prefixed = {pickletools.TAKEN_FROM_ARGUMENT1: -1, pickletools.TAKEN_FROM_ARGUMENT4: -4,
                       pickletools.TAKEN_FROM_ARGUMENT4U: -4, pickletools.TAKEN_FROM_ARGUMENT8U: -8}
    for code, width in PICKLE_PLAIN_OPCODES.items():
        argument = by_code[code].arg
        expected = 0 if argument is None else length_prefixed.get(argument.n, argument.n)
        assert width == expected, by_code[code].name
