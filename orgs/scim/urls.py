"""/scim/v2/ on an org's host (included from siphera/urls_tenants.py). Paths take an
optional trailing slash: IdPs differ."""

from django.urls import re_path

from orgs.scim import views

app_name = "scim"

urlpatterns = [
    re_path(r"^ServiceProviderConfig/?$", views.service_provider_config, name="spc"),
    re_path(r"^Schemas/?$", views.schemas, name="schemas"),
    re_path(r"^Schemas/(?P<schema_id>[^/]+)/?$", views.schemas, name="schema"),
    re_path(r"^ResourceTypes/?$", views.resource_types, name="resource-types"),
    re_path(r"^ResourceTypes/(?P<name>[^/]+)/?$", views.resource_types, name="resource-type"),
    re_path(r"^Users/?$", views.user_collection, name="users"),
    re_path(r"^Users/\.search/?$", views.user_search, name="users-search"),
    re_path(r"^Users/(?P<user_id>[^/]+)/?$", views.user_detail, name="user"),
    re_path(r"^Groups/?$", views.group_collection, name="groups"),
    re_path(r"^Groups/\.search/?$", views.group_search, name="groups-search"),
    re_path(r"^Groups/(?P<group_id>[^/]+)/?$", views.group_detail, name="group"),
    re_path(r"^\.search/?$", views.root_search, name="search"),
    re_path(r"^(?P<rest>.*)$", views.unknown, name="unknown"),
]
