"""/sso/oidc/ on an org's host (included by admin_portal.sso_urls)."""

from django.urls import path

from admin_portal import oidc_views

urlpatterns = [
    path("callback", oidc_views.callback, name="sso-oidc-callback"),
    path("initiate", oidc_views.initiate, name="sso-oidc-initiate"),
]
