from django.urls import path

from orgs.api import (
    access_views,
    admin_views,
    mfa_views,
    presence_views,
    profile_views,
    sso_views,
    views,
)

urlpatterns = [
    path("auth/login", views.LoginView.as_view(), name="auth-login"),
    path("auth/sso", sso_views.SsoInfoView.as_view(), name="auth-sso"),
    path("auth/sso/token", sso_views.SsoTokenView.as_view(), name="auth-sso-token"),
    path("auth/password-reset", profile_views.PasswordResetView.as_view(), name="pw-reset"),
    path(
        "auth/password-reset/confirm",
        profile_views.PasswordResetConfirmView.as_view(),
        name="pw-reset-confirm",
    ),
    path("me", views.MeView.as_view(), name="me"),
    path("me/password", profile_views.PasswordChangeView.as_view(), name="me-password"),
    path("me/avatar", profile_views.MyAvatarView.as_view(), name="me-avatar"),
    path("directory", profile_views.DirectoryView.as_view(), name="directory"),
    path("me/presence", presence_views.MyPresenceView.as_view(), name="me-presence"),
    path("devices/<int:device_id>", views.DeviceDetailView.as_view(), name="device-detail"),
    path("users", admin_views.UsersView.as_view(), name="users"),
    path("users/<str:user_id>", views.UserDetailView.as_view(), name="user-detail"),
    path("users/<str:user_id>/role", admin_views.UserRoleView.as_view(), name="user-role"),
    path(
        "users/<str:user_id>/deactivate",
        admin_views.UserDeactivateView.as_view(),
        name="user-deactivate",
    ),
    path(
        "users/<str:user_id>/reactivate",
        admin_views.UserReactivateView.as_view(),
        name="user-reactivate",
    ),
    path("users/<str:user_id>/avatar", profile_views.UserAvatarView.as_view(), name="user-avatar"),
    path(
        "users/<str:user_id>/profile", profile_views.UserProfileView.as_view(), name="user-profile"
    ),
    path(
        "users/<str:user_id>/profile/avatar",
        profile_views.UserAvatarAdminView.as_view(),
        name="user-profile-avatar",
    ),
    path(
        "users/<str:user_id>/password-reset",
        profile_views.UserPasswordResetView.as_view(),
        name="user-password-reset",
    ),
    path("users/<str:user_id>/mfa", mfa_views.UserMfaResetView.as_view(), name="user-mfa"),
    path(
        "users/<str:user_id>/sessions",
        access_views.UserSessionsView.as_view(),
        name="user-sessions",
    ),
    path(
        "users/<str:user_id>/sessions/<str:session_id>",
        access_views.UserSessionDetailView.as_view(),
        name="user-session",
    ),
    path(
        "users/<str:user_id>/devices", access_views.UserDevicesView.as_view(), name="user-devices"
    ),
    path(
        "users/<str:user_id>/devices/<int:device_id>",
        access_views.UserDeviceDetailView.as_view(),
        name="user-device",
    ),
    path("org/domains", access_views.DomainsView.as_view(), name="org-domains"),
    path(
        "org/domains/<str:domain>/verify",
        access_views.DomainVerifyView.as_view(),
        name="org-domain-verify",
    ),
    path("org/domains/<str:domain>", access_views.DomainDetailView.as_view(), name="org-domain"),
    path("mfa", mfa_views.MfaStatusView.as_view(), name="mfa"),
    path("mfa/totp", mfa_views.TotpView.as_view(), name="mfa-totp"),
    path("mfa/totp/enroll", mfa_views.TotpEnrollView.as_view(), name="mfa-totp-enroll"),
    path("mfa/totp/confirm", mfa_views.TotpConfirmView.as_view(), name="mfa-totp-confirm"),
    path("mfa/recovery-codes", mfa_views.RecoveryCodesView.as_view(), name="mfa-recovery"),
    path("org/policy", admin_views.OrgPolicyView.as_view(), name="org-policy"),
    path("org/sso", sso_views.SsoSettingsView.as_view(), name="org-sso"),
    path("org/sso/group-roles", sso_views.SsoGroupRolesView.as_view(), name="org-sso-groups"),
    path("roles", admin_views.RolesView.as_view(), name="roles"),
    path("roles/<str:slug>", admin_views.RoleDetailView.as_view(), name="role-detail"),
    path("permissions", admin_views.PermissionsView.as_view(), name="permissions"),
    path("audit", admin_views.AuditLogView.as_view(), name="audit"),
    path("audit/export", admin_views.AuditExportView.as_view(), name="audit-export"),
    path("audit/verify", admin_views.AuditVerifyView.as_view(), name="audit-verify"),
]
