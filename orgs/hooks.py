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

in_call = Hook(
    "in_call",
    "fn(user_id) -> bool: whether the user is in a call now (runs in the org's schema). "
    "Calls registers it; presence shows such a user `in_call`, and calls "
    "orgs.services.presence.notify_changed(user_id) when a call starts or ends.",
)

user_deactivated = Hook(
    "user_deactivated",
    "fn(user, actor): a user was deactivated (orgs.services.users), inside the deactivating "
    "transaction, after their devices were revoked. Messaging hands each group they leave "
    "without an active admin to its longest-standing active member.",
)

user_erasing = Hook(
    "user_erasing",
    "fn(user, report): a user's personal data is being erased (orgs.services."
    "personal_data), inside the erasing transaction, after their devices were revoked. "
    "Each app removes or pseudonymises what it holds about them, except what a legal hold "
    "keeps, and says so with report.remove(what, n) / report.keep(what, n, why); one that "
    "must keep the profile (a hold names its custodian) sets report.profile to 'kept'.",
)
