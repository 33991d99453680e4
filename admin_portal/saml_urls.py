"""/sso/saml/ on an org's host (included by admin_portal.sso_urls)."""

from django.urls import path

from admin_portal import saml_views

urlpatterns = [
    path("metadata", saml_views.metadata, name="sso-saml-metadata"),
    path("acs", saml_views.acs, name="sso-saml-acs"),
    path("sls", saml_views.sls, name="sso-saml-sls"),
]
