"""Counting what JAX compiles while a block runs, for the tests that promise it compiles nothing."""

import contextlib
from collections.abc import Iterator

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
ANY_COMPILE_STEP = "/jax/core/compile/"  # tracing, lowering and compiling


@contextlib.contextmanager
def compile_events(prefix: str = BACKEND_COMPILE) -> Iterator[list[str]]:
    """The names of JAX's compile events starting with `prefix`, gathered while the block runs."""
    events: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event.startswith(prefix):
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
