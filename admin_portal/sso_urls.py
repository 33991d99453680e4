"""Single sign-on, under /sso/ on each org's host: the protocol endpoints the IdP talks to
(SAML metadata/ACS/SLS, the OIDC callback) and the start of every SSO sign-in."""

from django.urls import include, path

from admin_portal import sso_views

urlpatterns = [
    path("login", sso_views.start, name="sso-login"),
    path("saml/", include("admin_portal.saml_urls")),
    path("oidc/", include("admin_portal.oidc_urls")),
]
