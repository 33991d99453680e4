"""Machine-readable error codes of the calls API and frames."""

from enum import StrEnum


class CallError(StrEnum):
    NOT_FOUND = "not_found"  # unknown call, or not yours to act on
    INVALID_CALL = "invalid_call"  # 400: a field of a call.* frame is wrong
    SDP_TOO_LARGE = "sdp_too_large"  # 413: over CALL_SDP_MAX_BYTES
    CALL_ID_IN_USE = "call_id_in_use"  # 409: another call already has this call_id
    CANNOT_CALL_SELF = "cannot_call_self"  # 400
    CALLEE_UNAVAILABLE = "callee_unavailable"  # 409: the callee's role cannot take calls
    GROUP_CALL_NEEDS_ROOM = "group_call_needs_room"  # 400: ring a group via a room
    EMERGENCY_UNAVAILABLE = "emergency_unavailable"  # 501: E911 is not built yet
    ALREADY_ANSWERED = "already_answered"  # 409: another device accepted first
    CALL_ENDED = "call_ended"  # 410: the call is over
    NOT_RINGING = "not_ringing"  # 409: accept/reject of a call no longer ringing
    # The recorder cannot be reached (its channel, in Redis): offer the leg again after
    # `retry_after`; also the `call.ended` reason of a recorded call whose recorder never
    # came up.
    RECORDER_UNAVAILABLE = "recorder_unavailable"
    # Reading a stored recording's audio (GET .../recordings/{id}/audio): 503 either way
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the blob store cannot give it now
    RECORDING_UNREADABLE = "recording_unreadable"  # it does not decrypt as this recording
    # 409: the org's policy requires this user's calls to be recorded, and group calls
    # (LiveKit rooms) cannot be recorded yet: they may take 1:1 calls only.
    RECORDING_UNSUPPORTED = "recording_unsupported"
