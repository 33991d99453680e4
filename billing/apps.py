from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Tenant app: Stripe customers, subscriptions, seats (not built yet)."""

    name = "billing"
