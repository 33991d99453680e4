"""Single sign-on, under /sso/ on each org's host: the protocol endpoints the IdP talks to
(SAML metadata/ACS/SLS, the OIDC callback) and the start of every SSO sign-in."""

from django.urls import include, path

urlpatterns = [
    path("saml/", include("admin_portal.saml_urls")),
    path("oidc/", include("admin_portal.oidc_urls")),
]
