from django.urls import path

from messaging.api import attachment_views as views

urlpatterns = [
    path("attachments", views.AttachmentsView.as_view(), name="attachments"),
    path(
        "attachments/<str:attachment_id>",
        views.AttachmentDetailView.as_view(),
        name="attachment-detail",
    ),
]
