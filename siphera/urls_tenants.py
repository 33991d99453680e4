"""URLs served on an org's host (its Domain)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

api_v1 = [
    path("", include("orgs.api.urls")),
    path("", include("orgs.api.compliance_urls")),
    path("", include("messaging.api.urls")),
    path("", include("messaging.api.conversation_urls")),
    path("", include("calls.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("sso/", include("admin_portal.sso_urls")),
    path("scim/v2/", include("orgs.scim.urls")),
    path("", include("admin_portal.urls")),
]

handler404 = "siphera.api_errors.handler404"
handler500 = "siphera.api_errors.handler500"
