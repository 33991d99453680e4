"""/sso/oidc/ on an org's host (included by admin_portal.sso_urls)."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
