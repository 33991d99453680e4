"""Large response bodies that keep memory flat under ASGI (PITFALLS 28).

Django's ASGI handler reads a synchronous iterator (a `FileResponse` over a file, a
`StreamingHttpResponse` over a generator) to the end before sending the first byte, so a
100 MiB download costs 100 MiB of the process that holds every socket, per download.
`streaming_response` hands Django an async iterator instead: each piece is read in the
request's own sync thread (the one its database connection and tenant schema live on)
only when the previous one has been sent, and uvicorn's flow control stops the reads while
the client is slow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

PIECE_BYTES = 256 * 1024


def file_pieces(fileobj, size: int = PIECE_BYTES) -> Iterator[bytes]:
    """The bytes of an open binary file, `size` at a time; closes it when done."""
    try:
        while data := fileobj.read(size):
            yield data
    finally:
        fileobj.close()


async def _pieces(iterable: Iterable, min_bytes: int) -> AsyncIterator[bytes]:
    iterator = iter(iterable)

    def batch() -> bytes:
        # Small items (a line of an export) are joined up to `min_bytes`, so a piece is
        # one thread hop, not one per line.
        parts, size = [], 0
        for item in iterator:
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(data)
            size += len(data)
            if size >= min_bytes:
                break
        return b"".join(parts)

    step = sync_to_async(batch, thread_sensitive=True)
    try:
        while piece := await step():
            yield piece
    finally:
        # A client that goes away mid-download: close the file or the cursor now, in the
        # thread that opened it.
        close = getattr(iterator, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=True)()


def streaming_response(
    iterable: Iterable, *, content_type: str, min_bytes: int = 64 * 1024
) -> StreamingHttpResponse:
    """A response streaming `iterable` (bytes or str items) with flat memory."""
    return StreamingHttpResponse(_pieces(iterable, min_bytes), content_type=content_type)
