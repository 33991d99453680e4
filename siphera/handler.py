"""The HTTP handler: Django's ASGI handler with one hand-over to a thread per request.

Django's ASGIHandler builds an async middleware chain. Ours (like most of Django's own
middleware and DRF's views) is synchronous, and each request crossed between the event
loop and its thread five times: `request_started` (closing stale connections), the sync
middleware, back to the loop (async_to_sync) for URL resolution, the view, and
`response.close()` (`request_finished`, which hands the database connection back). Each
crossing is a context switch and a few hundred microseconds of asgiref bookkeeping under
load.

Here the chain is built synchronous, as under WSGI, and `request_started`, the middleware,
the view and, for a response that is not streamed, `response.close()` run in one call in
the request's thread. Everything else is Django's: the request's own thread
(ThreadSensitiveContext: a streamed response's async iterator reads from the thread its
database connection lives on, siphera.streaming), reading the body and sending the
response on the loop, and the watch for a client that disconnects. A streamed response is
closed after it has been sent, as Django does. An async view, should one appear, still
works (Django wraps it in async_to_sync).

The request's thread comes from a set kept for reuse (`_RequestThreads`) instead of a new
one per request (asgiref's default: a thread started, and joined by yet another thread,
for every request: a third of the CPU of a small API request went there). A thread serves
one request at a time, as under a threaded WSGI server; Django resets what it keeps per
thread when a request finishes (its database connection goes back to the pool).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse
from django.urls import set_script_prefix

from siphera import events


class _RequestThread(concurrent.futures.Executor):
    """One thread running what it is given in order: the executor of one request at a
    time (asgiref's ThreadSensitiveContext sends every thread-sensitive call of the request
    to it). `idle` when everything submitted has finished."""

    _names = itertools.count()

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._submitted = 0  # written by the event loop's thread only
        self._finished = 0  # written by this executor's thread only
        name = f"request-{next(self._names)}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._submitted += 1
        self._jobs.put((future, fn, args, kwargs))
        return future

    @property
    def idle(self) -> bool:
        return self._finished == self._submitted

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._jobs.put(None)  # the thread ends once what it was given before is done

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, job  # drop references while waiting for the next request
            self._finished += 1


class _RequestThreads:
    """Request threads kept between requests (used from the event loop's thread only)."""

    def __init__(self, keep: int = 64) -> None:
        self._idle: list[_RequestThread] = []
        self._keep = keep

    def take(self) -> _RequestThread:
        return self._idle.pop() if self._idle else _RequestThread()

    def give_back(self, thread: _RequestThread) -> None:
        # A thread still running a request whose client went away (Django cancels the
        # wait, not the view) is not lent again: it ends when the view does.
        if thread.idle and len(self._idle) < self._keep:
            self._idle.append(thread)
        else:
            thread.shutdown()


_request_threads = _RequestThreads()


class SipheraASGIHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Wake-ups the request's sync code sends (a REST message for a socket) are posted to
        # this loop instead of waiting for Redis on the request's thread, and a socket of
        # this process gets its wake-up without Redis (siphera.events.send_soon).
        events.bind_loop()
        thread = _request_threads.take()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            _request_threads.give_back(thread)

    async def handle(self, scope, receive, send):
        """Django's ASGIHandler.handle, with the synchronous part in one hop (`_respond`)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))

        async def process_request(send):
            response = await sync_to_async(self._respond, thread_sensitive=True)(scope, body_file)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while the response was being sent
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass  # the client went away
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            if response.streaming:
                await sync_to_async(response.close)()
        body_file.close()

    def _respond(self, scope, body_file):
        """In the request's thread: the request from start to (unless streamed) close."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            # request_finished: the database connection goes back to the pool before the
            # bytes go out, and the body's bytes are all in memory already.
            response.close()
        return response


def get_asgi_application() -> SipheraASGIHandler:
    """django.core.asgi.get_asgi_application, with the handler above."""
    django.setup(set_prefix=False)
    return SipheraASGIHandler()
