from django.urls import path

from messaging.api import stats_views, views

urlpatterns = [
    path("devices", views.DevicesView.as_view(), name="devices"),
    path("keys", views.KeysView.as_view(), name="keys"),
    path("keys/count", views.KeyCountView.as_view(), name="keys-count"),
    path("keys/<str:user_id>", views.KeyBundlesView.as_view(), name="keys-claim"),
    path("org/activity", stats_views.OrgActivityView.as_view(), name="org-activity"),
]
