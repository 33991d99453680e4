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
