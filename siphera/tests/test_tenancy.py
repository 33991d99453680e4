"""siphera.tenancy's schema check asks PostgreSQL, not django-tenants' own note."""

import pytest
from django.db import connection

from siphera.tenancy import SchemaMismatch, tenant_context, verify_schema


def test_verify_schema_catches_a_search_path_django_tenants_does_not_know_about(org_a, org_b):
    try:
        with tenant_context(org_a):
            verify_schema(org_a)  # the connection really is in org A
            # Move the connection to org B behind django-tenants' back (as a leaked
            # search_path from another thread's call would): its note still says org A.
            with connection.cursor() as cursor:
                cursor.execute(f'SET search_path TO "{org_b.schema_name}", public')
            assert connection.schema_name == org_a.schema_name
            with pytest.raises(SchemaMismatch, match=org_b.schema_name):
                verify_schema(org_a)
    finally:
        connection.close()  # drop the tampered session; the next query reconnects


def test_a_prepared_statement_reads_the_schema_of_each_org_it_runs_in(org_a, org_b):
    # Queries are prepared on the server after DATABASE_PREPARE_THRESHOLD runs; one
    # connection serves every org. PostgreSQL must resolve the table names of a prepared
    # statement again when search_path changes, or org B would read org A's rows.
    from tests.fixtures import make_user

    username = make_user(org_a).username
    sql = "SELECT count(*) FROM accounts_user WHERE username = %s"
    threshold = connection.settings_dict["OPTIONS"]["prepare_threshold"]
    try:
        with tenant_context(org_a):
            for _ in range(threshold + 2):
                with connection.cursor() as cursor:
                    cursor.execute(sql, [username])
                    assert cursor.fetchone() == (1,)
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                    ["SELECT count(*) FROM accounts_user WHERE username = $1%"],
                )
                assert cursor.fetchone() == (1,)  # it really was prepared
        with tenant_context(org_b):
            with connection.cursor() as cursor:
                cursor.execute(sql, [username])
                assert cursor.fetchone() == (0,)
        with tenant_context(org_a):
            with connection.cursor() as cursor:
                cursor.execute(sql, [username])
                assert cursor.fetchone() == (1,)
    finally:
        connection.close()
