from django.urls import path

from messaging.api import retention_views as views

urlpatterns = [
    path(
        "conversations/<str:conversation_id>/retention",
        views.ConversationRetentionView.as_view(),
        name="conversation-retention",
    ),
    path(
        "compliance/conversations/<str:conversation_id>/retention",
        views.ComplianceConversationRetentionView.as_view(),
        name="compliance-conversation-retention",
    ),
    path("compliance/policy", views.PolicyView.as_view(), name="compliance-policy"),
    path("compliance/holds", views.HoldsView.as_view(), name="compliance-holds"),
    path("compliance/holds/<str:hold_id>", views.HoldDetailView.as_view(), name="compliance-hold"),
]
