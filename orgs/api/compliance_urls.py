from django.urls import path

from orgs.api import compliance_views as views

urlpatterns = [
    path("compliance/export", views.ComplianceExportView.as_view(), name="compliance-export"),
    path(
        "users/<str:user_id>/personal-data",
        views.PersonalDataView.as_view(),
        name="user-personal-data",
    ),
    path("users/<str:user_id>/erase", views.UserEraseView.as_view(), name="user-erase"),
]
