import time
import uuid

from siphera.ids import uuid7


def test_uuid7_has_version_7_the_rfc_variant_and_the_time_in_its_first_48_bits():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_uuid7s_made_later_sort_later_and_never_repeat():
    first = [uuid7() for _ in range(1000)]
    time.sleep(0.002)
    second = [uuid7() for _ in range(1000)]
    assert max(first) < min(second)
    assert len(set(first + second)) == 2000
