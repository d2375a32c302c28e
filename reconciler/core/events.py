"""Event kinds: the one list of what the event log, metrics, notifications and the CLI speak of."""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    start = "start"
    stop = "stop"
    preempt = "preempt"
    restart = "restart"
    ready = "ready"
    crashed = "crashed"
    gave_up = "gave-up"
    error = "error"
    desired_invalid = "desired-invalid"
    applied = "applied"
    state_rebuilt = "state-rebuilt"
    duplicate = "duplicate"
    restart_requested = "restart-requested"
    unschedulable = "unschedulable"
    recovered = "recovered"
    memory_exceeded = "memory-exceeded"
    """an engine uses more memory than the planner reserved for it: the host is overbooked"""
    remote_refused = "remote-refused"
    remote_forced = "remote-forced"
    webhook = "webhook"
