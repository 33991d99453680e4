from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class OrgsConfig(AppConfig):
    """Shared app (public schema): the org directory — Org (tenant) and Domain."""

    name = "orgs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A typo in RATE_LIMITS should stop the process at start, not 500 the first request.
        from siphera import ratelimit

        try:
            ratelimit.limits()
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from exc

        from orgs import consumers

        consumers.register()  # the socket's authenticator and identity's frames

        from orgs import presence_socket

        presence_socket.register()  # presence frames (orgs.services.presence)

        _connect_cache_invalidation()

        from orgs.api.views import MeView
        from siphera import fast_http

        # GET /me without Django's request machinery (siphera.fast_http).
        fast_http.route("me", "GET", r"/api/v1/me", view=MeView)(MeView.me)


def _connect_cache_invalidation() -> None:
    """Every process caches which org a host is (siphera.tenancy), which device a token is
    (orgs.services.auth), the org's policy (orgs.services.mfa) and portal sessions
    (siphera.sessions); a save or delete of the rows behind them bumps the cache's
    generation (siphera.generations). Bulk `.update()`s of those rows bump it themselves."""
    from django.contrib.sessions.models import Session
    from django.db.models.signals import post_delete, post_save

    from orgs.accounts.models import Device, OrgPolicy, Role, User
    from orgs.models import Domain, Org
    from orgs.services.auth import forget_cached_auth
    from orgs.services.mfa import forget_cached_policy
    from siphera.sessions import forget_cached_sessions
    from siphera.tenancy import forget_cached_orgs

    for model in (Org, Domain):
        post_save.connect(forget_cached_orgs, sender=model, dispatch_uid=f"orgs-{model.__name__}")
        post_delete.connect(forget_cached_orgs, sender=model, dispatch_uid=f"orgs-{model.__name__}")
    for model in (User, Device, Role):
        post_save.connect(forget_cached_auth, sender=model, dispatch_uid=f"auth-{model.__name__}")
        post_delete.connect(forget_cached_auth, sender=model, dispatch_uid=f"auth-{model.__name__}")
    post_save.connect(forget_cached_sessions, sender=Session, dispatch_uid="sessions")
    post_delete.connect(forget_cached_sessions, sender=Session, dispatch_uid="sessions")
    post_save.connect(forget_cached_policy, sender=OrgPolicy, dispatch_uid="policy")
    post_delete.connect(forget_cached_policy, sender=OrgPolicy, dispatch_uid="policy")
