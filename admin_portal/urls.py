"""The admin portal lives under /portal/ on each org's host; "/" leads there."""

from django.urls import include, path
from django.views.generic import RedirectView

from admin_portal import (
    account_views,
    admin_views,
    call_views,
    compliance_views,
    domain_views,
    login_views,
    password_views,
    recording_views,
    retention_views,
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
    path("account/", account_views.account, name="account"),
    path("account/avatar", account_views.account_avatar, name="account-avatar"),
    path("account/avatar.png", account_views.account_avatar_image, name="account-avatar-image"),
    path("account/password", account_views.account_password, name="account-password"),
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
    path(
        "users/<uuid:user_id>/sessions/<uuid:session_id>/end",
        views.end_session,
        name="end-session",
    ),
    path(
        "users/<uuid:user_id>/sign-out-everywhere",
        views.sign_out_everywhere,
        name="sign-out-everywhere",
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
    path("retention/", retention_views.retention_page, name="retention"),
    path("retention/policy", retention_views.retention_policy, name="retention-policy"),
    path("retention/quotas", retention_views.retention_quotas, name="retention-quotas"),
    path("retention/override", retention_views.retention_override, name="retention-override"),
    path("retention/holds", retention_views.hold_place, name="hold-place"),
    path(
        "retention/holds/<uuid:hold_id>/release", retention_views.hold_release, name="hold-release"
    ),
    path("domains/", domain_views.domain_list, name="domains"),
    path("domains/<str:domain>/verify", domain_views.domain_verify, name="domain-verify"),
    path("domains/<str:domain>/remove", domain_views.domain_remove, name="domain-remove"),
    path("audit/", admin_views.audit_log, name="audit"),
    path("calls/", call_views.call_log, name="calls"),
    path("recordings/", recording_views.recording_list, name="recordings"),
    path("recordings/policy", recording_views.recording_policy_page, name="recording-policy"),
    path("recordings/<uuid:recording_id>/", recording_views.recording_detail, name="recording"),
    path(
        "recordings/<uuid:recording_id>/audio.wav",
        recording_views.recording_audio,
        name="recording-audio",
    ),
    path("audit/export", admin_views.audit_export, name="audit-export"),
    path("audit/verify", admin_views.audit_verify, name="audit-verify"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/portal/", permanent=False), name="home"),
    path("portal/", include(portal)),
]
