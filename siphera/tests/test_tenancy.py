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
