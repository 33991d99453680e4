"""The admin portal lives under /portal/ on each org's host; "/" leads there."""

from django.urls import include, path
from django.views.generic import RedirectView

from admin_portal import (
    account_views,
    admin_views,
    call_views,
    compliance_views,
    login_views,
    password_views,
    scim_views,
    sso_views,
    views,
)

app_name = "portal"

portal = [
    path("", views.dashboard, name="dashboard"),
    path("login", login_views.login_view, name="login"),
    path("login/code", login_views.login_otp, name="login-otp"),
    path("login/setup-mfa", login_views.login_enroll, name="login-enroll"),
    path("logout", login_views.logout_view, name="logout"),
    path("invite/<str:token>", login_views.invitation, name="invitation"),
    path("password/forgot", password_views.forgot, name="password-forgot"),
    path("password/reset/<str:token>", password_views.reset, name="password-reset"),
    path("account/mfa", account_views.account_mfa, name="account-mfa"),
    path("users/", views.user_list, name="users"),
    path("users/new", views.user_new, name="user-new"),
    path("users/<uuid:user_id>/", views.user_detail, name="user"),
    path("users/<uuid:user_id>/role", views.user_role, name="user-role"),
    path("users/<uuid:user_id>/deactivate", views.user_deactivate, name="user-deactivate"),
    path("users/<uuid:user_id>/reactivate", views.user_reactivate, name="user-reactivate"),
    path("users/<uuid:user_id>/mfa-reset", views.user_mfa_reset, name="user-mfa-reset"),
    path(
        "users/<uuid:user_id>/password-reset",
        password_views.user_password_reset,
        name="user-password-reset",
    ),
    path(
        "users/<uuid:user_id>/devices/<int:device_id>/revoke",
        views.revoke_device,
        name="revoke-device",
    ),
    path("roles/", admin_views.role_list, name="roles"),
    path("roles/<str:slug>/", admin_views.role_edit, name="role"),
    path("roles/<str:slug>/delete", admin_views.role_delete, name="role-delete"),
    path("policies/", admin_views.policies, name="policies"),
    path("sso/", sso_views.settings_page, name="sso"),
    path("scim/", scim_views.scim_page, name="scim"),
    path("compliance/", compliance_views.compliance_page, name="compliance"),
    path("compliance/export", compliance_views.compliance_export, name="compliance-export"),
    path(
        "compliance/users/<uuid:user_id>/personal-data",
        compliance_views.personal_data_export,
        name="personal-data",
    ),
    path("compliance/users/<uuid:user_id>/erase", compliance_views.erase_user, name="erase-user"),
    path("audit/", admin_views.audit_log, name="audit"),
    path("calls/", call_views.call_log, name="calls"),
    path("audit/export", admin_views.audit_export, name="audit-export"),
    path("audit/verify", admin_views.audit_verify, name="audit-verify"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/portal/", permanent=False), name="home"),
    path("portal/", include(portal)),
]
