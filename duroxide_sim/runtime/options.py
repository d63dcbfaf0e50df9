"""RuntimeOptions: every tunable of the runtime, with the reference defaults (SPEC §14, §17).

duroxide-python's constructor fields (``orchestration_concurrency``, ``worker_concurrency``,
``dispatcher_poll_interval_ms``, ``worker_lock_timeout_ms``, ``log_format``, ``log_level``,
``service_name``, ``service_version``, ``max_sessions_per_runtime``, ``session_idle_timeout_ms``,
``worker_node_id``, ``worker_tag_filter``) are accepted as keywords, plus the core's remaining
knobs. Values are validated at construction so a typo fails at start-up, not mid-run.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..core.texts import text_problem
from ..errors import ConfigurationError
from ..providers.base import TagFilter

__all__ = ["RuntimeOptions", "LOG_LEVELS", "renewal_period_ms", "RENEWAL_MARGIN_MS", "MAX_OPTION_MS", "MAX_OPTION_COUNT"]


#: The largest duration option: ``now + value`` must fit a store's 64-bit column (a larger lock
#: timeout made every fetch fail with an OverflowError inside the SQLite driver).
MAX_OPTION_MS = 2**62
#: The largest count option (threads, sessions, attempts, cached engines), as duroxide-python.
MAX_OPTION_COUNT = 2**31 - 1


def _int_option(lowest: int, highest: int, what: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            raise ConfigurationError(f"RuntimeOptions.{attribute.name} must be {what}, got {value!r}"[:300])
    return check


_non_negative = _int_option(0, MAX_OPTION_MS, "a non-negative integer (ms, at most 2**62)")
_positive = _int_option(1, MAX_OPTION_MS, "a positive integer (ms, at most 2**62)")
_count = _int_option(0, MAX_OPTION_COUNT, "a non-negative integer up to 2**31 - 1")
_positive_count = _int_option(1, MAX_OPTION_COUNT, "a positive integer up to 2**31 - 1")


def _optional_text(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):  # (duroxide-python: "cannot be converted to 'PyString'")
        raise ConfigurationError(f"RuntimeOptions.{attribute.name} must be a string or None, got "
                                 f"{type(value).__name__} {value!r}"[:300])
    problem = text_problem(value) if value else None
    if problem is not None:  # (a worker_node_id with a lone surrogate failed every SQLite fetch)
        raise ConfigurationError(f"RuntimeOptions.{attribute.name} {problem}, got {value!r}"[:300])


#: ``log_level`` names (duroxide-python's levels, case-insensitive) -> ``logging`` levels.
LOG_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "critical": 50, "off": 60}


def _log_level(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    _optional_text(inst, attribute, value)
    if value is not None and value.strip().lower() not in LOG_LEVELS:
        raise ConfigurationError(f"RuntimeOptions.log_level must be one of {', '.join(LOG_LEVELS)} (or None), "
                                 f"got {value!r}"[:300])


def _tag_filter(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, TagFilter):
        raise ConfigurationError(f"RuntimeOptions.worker_tag_filter must be a TagFilter, got {type(value).__name__}")


def _versions(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """``supported_versions``: None, or ``(minimum, maximum)`` engine versions (semver), in order."""
    if value is None:
        return
    from ..core.registry import parse_engine_version

    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigurationError(f"RuntimeOptions.supported_versions must be None or a (minimum, maximum) pair of "
                                 f"versions like ('0.0.0', '0.1.0'), got {value!r}"[:300])
    try:
        low, high = (parse_engine_version(v) for v in value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"RuntimeOptions.supported_versions: {exc}") from None
    if low > high:
        raise ConfigurationError(f"RuntimeOptions.supported_versions: minimum {value[0]!r} is above maximum {value[1]!r}")


def _default(value: Any) -> Any:
    """A field whose ``None`` means "the default" (the peer SDK's convention)."""
    return attrs.converters.default_if_none(value)


@attrs.define
class RuntimeOptions:
    """Runtime settings. The first eighteen parameters are duroxide-python's, in its order (they
    may be passed by position, and ``None`` means the default, as there); the rest are
    keyword-only extras of this runtime."""

    orchestration_concurrency: int = attrs.field(default=2, converter=_default(2), validator=_count)
    worker_concurrency: int = attrs.field(default=2, converter=_default(2), validator=_count)
    dispatcher_poll_interval_ms: int = attrs.field(default=100, converter=_default(100), validator=_positive)
    worker_lock_timeout_ms: int = attrs.field(default=30_000, converter=_default(30_000), validator=_positive)
    log_format: str | None = attrs.field(default=None, validator=_optional_text)
    log_level: str | None = attrs.field(default=None, validator=_log_level)
    service_name: str | None = attrs.field(default=None, validator=_optional_text)
    service_version: str | None = attrs.field(default=None, validator=_optional_text)
    max_sessions_per_runtime: int = attrs.field(default=10, converter=_default(10), validator=_positive_count)
    session_idle_timeout_ms: int = attrs.field(default=300_000, converter=_default(300_000), validator=_positive)
    #: The worker identity for sessions: set, every worker thread of the runtime shares it (any of
    #: them serves the node's sessions, which a restart under the same id keeps); unset, each
    #: worker thread has its own, so a session's activities run one at a time on one thread.
    worker_node_id: str | None = attrs.field(default=None, validator=_optional_text)
    worker_tag_filter: TagFilter = attrs.field(
        factory=TagFilter.default_only, converter=lambda v: TagFilter.default_only() if v is None else (
            TagFilter.from_value(v) if isinstance(v, str) else v),
        validator=_tag_filter)
    orchestrator_lock_timeout_ms: int = attrs.field(default=5_000, converter=_default(5_000), validator=_positive)
    orchestrator_lock_renewal_buffer_ms: int = attrs.field(default=2_000, converter=_default(2_000), validator=_non_negative)
    max_attempts: int = attrs.field(default=10, converter=_default(10), validator=_positive_count)
    worker_lock_renewal_buffer_ms: int = attrs.field(default=5_000, converter=_default(5_000), validator=_non_negative)
    session_lock_timeout_ms: int = attrs.field(default=30_000, converter=_default(30_000), validator=_positive)
    session_lock_renewal_buffer_ms: int = attrs.field(default=5_000, converter=_default(5_000), validator=_non_negative)
    # --- this runtime's extras (keyword-only) ---
    unregistered_backoff_base_ms: int = attrs.field(default=1_000, validator=_non_negative, kw_only=True)
    unregistered_backoff_max_ms: int = attrs.field(default=60_000, validator=_non_negative, kw_only=True)
    activity_cancellation_grace_period_ms: int = attrs.field(default=10_000, validator=_non_negative, kw_only=True)
    session_cleanup_interval_ms: int = attrs.field(default=300_000, validator=_positive, kw_only=True)
    supported_versions: tuple[str, str] | None = attrs.field(default=None, kw_only=True, validator=_versions)
    #: Live orchestration engines kept between turns (0 disables): a turn then costs its new
    #: events instead of a replay of the whole history.
    instance_cache_size: int = attrs.field(default=1024, validator=_count, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.session_idle_timeout_ms <= renewal_period_ms(self.worker_lock_timeout_ms, self.worker_lock_renewal_buffer_ms):
            raise ConfigurationError(
                "RuntimeOptions.session_idle_timeout_ms must exceed the worker lock renewal period "
                f"({renewal_period_ms(self.worker_lock_timeout_ms, self.worker_lock_renewal_buffer_ms)} ms)"
            )

    def unregistered_backoff_ms(self, attempt: int) -> int:
        """min(base * 2^min(attempt-1, 6), max) (SPEC §3.1 step 5)."""
        return min(self.unregistered_backoff_base_ms * 2 ** min(max(attempt - 1, 0), 6), self.unregistered_backoff_max_ms)


#: A renewal is due at least this long before the lock expires: the renewer looks every
#: 100 ms (``realtime.ThreadRenewer``), so a period that ends closer to the expiry than two of
#: its ticks plus some scheduling slack may renew a lock that has already lapsed.
RENEWAL_MARGIN_MS = 250


def renewal_period_ms(timeout_ms: int, buffer_ms: int) -> int:
    """SPEC §1: ``timeout - buffer`` (>= 1 s) when the timeout is >= 15 s, else ``ceil(timeout/2)``
    rounded up to whole seconds (>= 1 s). Where that period would end within
    ``RENEWAL_MARGIN_MS`` of the expiry (a 2,001 ms lock: 2,000 ms; a 1 s lock: 1 s; a 20 s lock
    with a 50 ms buffer), it ends ``RENEWAL_MARGIN_MS`` before it instead (at least half the
    timeout): otherwise the lock can lapse before its renewal, and each long step is cancelled
    and redelivered."""
    if timeout_ms >= 15_000:
        period = max(timeout_ms - buffer_ms, 1_000)
    else:
        half_s = -(-timeout_ms // 2000)  # ceil(timeout/2) in seconds
        period = max(half_s * 1000, 1_000)
    if period > timeout_ms - RENEWAL_MARGIN_MS:
        period = max(timeout_ms - RENEWAL_MARGIN_MS, timeout_ms // 2, 1)
    return period
