from django.urls import include, path

from messaging.api import conversation_views as views

urlpatterns = [
    path("conversations", views.ConversationsView.as_view(), name="conversations"),
    path(
        "conversations/<str:conversation_id>",
        views.ConversationDetailView.as_view(),
        name="conversation-detail",
    ),
    path(
        "conversations/<str:conversation_id>/members",
        views.MembersView.as_view(),
        name="conversation-members",
    ),
    path(
        "conversations/<str:conversation_id>/members/<str:user_id>",
        views.MemberDetailView.as_view(),
        name="conversation-member",
    ),
    path(
        "conversations/<str:conversation_id>/messages",
        views.MessagesView.as_view(),
        name="conversation-messages",
    ),
    path(
        "conversations/<str:conversation_id>/read",
        views.ReadStateView.as_view(),
        name="conversation-read",
    ),
    path("messages", views.QueueView.as_view(), name="message-queue"),
    path("messages/ack", views.AckView.as_view(), name="message-ack"),
    path("", include("messaging.api.attachment_urls")),
    path("", include("messaging.api.retention_urls")),
]
