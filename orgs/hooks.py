"""What identity tells the apps above it, and asks of them (siphera.hooks).

Filled from the higher apps' AppConfig.ready(): messaging and calls register here; orgs
never imports them.
"""

from siphera.hooks import Hook

device_revoked = Hook(
    "device_revoked",
    "fn(device): a device is being revoked, inside the revoking transaction (its token is "
    "already cleared). Messaging deletes its keys and queue; calls ends its calls.",
)

are_contacts = Hook(
    "are_contacts",
    "fn(viewer, user) -> bool: whether `viewer` is in touch with `user` (guests see only "
    "such people in the directory). Messaging: they share a conversation.",
)
