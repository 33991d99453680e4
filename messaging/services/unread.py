"""Unread and mention counts: per member of a conversation, kept from metadata only (seqs,
senders, `mentions`); bodies stay encrypted.

- `unread_count`: messages after the member's read marker (`read_seq`) sent by someone
  else, not counting events (membership, title, ...) nor messages that refer to another
  (`refers_to`: edits, deletions, reactions). Counted when asked, up to UNREAD_COUNT_CAP
  (the cap means "that many or more") among the UNREAD_SCAN_MAX messages after the
  marker: however far behind a member is and whatever fills the conversation after it
  (their own messages, a flood of reactions), a count reads at most that many index
  entries. (Without that bound, a member who sent 300,000 messages without marking read
  cost 75 ms of the database for each conversation listing, and every conversation of a
  page of 500 can be such.)
- `mention_count`: messages after the read marker that mention the member, sent by
  someone else, not counting those that refer to another (`refers_to`: an edit that adds
  a mention, a reaction), as unread does not: a mention is never counted where nothing
  is unread. (Their `mentions` are stored and relayed for display.) A stored counter
  (`Member.mention_count`): the send that mentions them raises it in its own statement
  (messaging.services.delivery), and moving the read marker lowers it by the mentions
  the marker passes (`do_mark_read`); reading to the end sets it to zero. The two are
  serialised by the conversation's row: a send holds it (it takes the next seq) and
  `do_mark_read` holds a share lock on it, so no mention is counted twice or lost
  between the two.

A member starts with the conversation read up to its arrival (conversations.
check_add_members), so joining a long conversation does not make it all unread.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from messaging.models import Member, Message
from orgs.accounts.models import User
from siphera.api_errors import not_found
from siphera.events import send_soon
from siphera.tenancy import group_name

UNREAD_COUNT_CAP = 100
UNREAD_SCAN_MAX = 10000  # messages after the read marker a count looks at, at most


@dataclass(frozen=True)
class ReadState:
    conversation_id: str
    last_seq: int
    read_seq: int
    unread_count: int
    mention_count: int

    def payload(self) -> dict:
        """The fields a `Conversation` object carries for its viewer."""
        return {
            "read_seq": self.read_seq,
            "unread_count": self.unread_count,
            "mention_count": self.mention_count,
        }

    def full_payload(self) -> dict:
        """GET /conversations/{id}/read."""
        return {"conversation": self.conversation_id, "last_seq": self.last_seq, **self.payload()}


def read_states(user: User, conversation_ids: list) -> dict[str, ReadState]:
    """`user`'s read state in each of the conversations (those they are a member of), in
    one query: the unread count of each is an index range scan from their read marker,
    stopped at UNREAD_COUNT_CAP matches or UNREAD_SCAN_MAX messages."""
    if not conversation_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.conversation_id, c.last_seq, m.read_seq, m.mention_count,"
            " (SELECT count(*) FROM (SELECT 1 FROM messaging_message x"
            "   WHERE x.conversation_id = m.conversation_id AND x.seq > m.read_seq"
            "   AND x.seq <= m.read_seq + %s"
            "   AND x.kind = %s AND x.refers_to IS NULL"
            "   AND x.sender_id IS DISTINCT FROM m.user_id"
            "   LIMIT %s) u)"
            " FROM messaging_member m"
            " JOIN messaging_conversation c ON c.id = m.conversation_id"
            " WHERE m.user_id = %s AND m.conversation_id = ANY(%s::uuid[])",
            [
                UNREAD_SCAN_MAX,
                Message.MESSAGE,
                UNREAD_COUNT_CAP,
                user.pk,
                [str(c) for c in conversation_ids],
            ],
        )
        rows = cursor.fetchall()
    return {
        str(cid): ReadState(str(cid), last_seq, read_seq, unread, mentions)
        for cid, last_seq, read_seq, mentions, unread in rows
    }


def read_state(user: User, conversation) -> ReadState:
    """`user`'s read state in `conversation` (404 if they are not a member)."""
    state = read_states(user, [conversation.pk]).get(str(conversation.pk))
    if state is None:
        raise not_found("No such conversation.")
    return state


def do_mark_read(member: Member, up_to_seq: int) -> None:
    """Move `member`'s read marker up to `up_to_seq` (never back, never past the
    conversation's last seq), and the delivered marker with it (read implies delivered);
    lower the mention count by the mentions it passes (to zero at the end).

    Holds a share lock on the conversation's row for the transaction: sends, which
    update that row, wait for it, so every mention below the new marker is one the
    counter already holds (and none above it is missed)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT last_seq FROM messaging_conversation WHERE id = %s FOR SHARE",
            [member.conversation_id],
        )
        (last_seq,) = cursor.fetchone()
        cursor.execute(
            "SELECT read_seq FROM messaging_member WHERE id = %s FOR UPDATE", [member.pk]
        )
        row = cursor.fetchone()
        if row is None:
            return  # left meanwhile
        (read_seq,) = row
        target = min(up_to_seq, last_seq)
        if target <= read_seq:
            return
        if target >= last_seq:
            mentions = "0"
            params = [target, target, member.pk]
        else:
            # Only the newly read range is scanned: over time, each message once at most.
            mentions = (
                "GREATEST(0, mention_count - (SELECT count(*) FROM messaging_message x"
                " WHERE x.conversation_id = %s AND x.seq > %s AND x.seq <= %s"
                " AND x.refers_to IS NULL AND x.mentions @> jsonb_build_array(%s::text)"
                " AND x.sender_id IS DISTINCT FROM %s))"
            )
            params = [
                target,
                target,
                member.conversation_id,
                read_seq,
                target,
                str(member.user_id),
                member.user_id,
                member.pk,
            ]
        cursor.execute(
            "UPDATE messaging_member SET read_seq = %s,"
            f" delivered_seq = GREATEST(delivered_seq, %s), mention_count = {mentions}"
            " WHERE id = %s",
            params,
        )


def notify_mentions_on_commit(message: Message, user_ids) -> None:
    """After commit, a `mention` frame to every socket of each mentioned user (members
    other than the sender, as the send found them). Metadata only: no body, no envelope."""
    if not user_ids:
        return
    schema = connection.schema_name
    groups = [group_name(schema, "u", uid) for uid in user_ids]
    frame = {
        "type": "mention.relay",
        "conversation": str(message.conversation_id),
        "message": str(message.pk),
        "seq": message.seq,
        "ts": message.created_at.isoformat(),
        "sender": {"user_id": str(message.sender_id), "device_id": message.sender_device_id},
        "thread": str(message.thread) if message.thread else None,
    }
    transaction.on_commit(lambda: send_soon(groups, frame))
