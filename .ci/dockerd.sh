#!/usr/bin/env bash
# Start or stop a Docker daemon for the Docker engine's integration tests.
#
#   .ci/dockerd.sh start   make sure a daemon answers: reuse one that already does (a host's
#                          systemd docker, Docker Desktop...), otherwise install docker.io and
#                          busybox-static (the tests build their image from it) with apt-get and
#                          start dockerd in the background as root.
#   .ci/dockerd.sh stop    stop the daemon that `start` started, and nothing else.
#   .ci/dockerd.sh status  say whether a daemon answers and whether it is ours.
#
# Both commands are idempotent. Ownership is recorded by dockerd's own pidfile at a path only this
# script uses, so `stop` never touches a daemon someone else runs.
#
# Environment: DOCKERD_PIDFILE, DOCKERD_LOG, DOCKERD_START_TIMEOUT (seconds, default 60),
# DOCKERD_STOP_TIMEOUT (seconds, default 60), DOCKERD_EXTRA_ARGS (extra dockerd flags, split on
# spaces; none were needed on our CI containers: overlay2, bridge networking and iptables all work
# there as root).
set -euo pipefail

PIDFILE="${DOCKERD_PIDFILE:-/tmp/reconciler-dockerd.pid}"
LOG="${DOCKERD_LOG:-/tmp/reconciler-dockerd.log}"
START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"
STOP_TIMEOUT="${DOCKERD_STOP_TIMEOUT:-60}"

say() { echo "dockerd.sh: $*"; }
die() { echo "dockerd.sh: $*" >&2; exit 1; }

# `docker info` exits non-zero when no daemon answers at DOCKER_HOST (or the default socket).
daemon_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# The pid of the dockerd we started, if it still runs. Checking the process name guards against a
# stale pidfile whose pid was reused by an unrelated process.
our_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "dockerd" ]] || return 1
    echo "$pid"
}

apt_install() {
    [[ "$(id -u)" == 0 ]] || die "installing $* needs root"
    say "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # Recommends (needrestart, apparmor, git...) are not needed to run containers.
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

install_missing() {
    local packages=()
    # docker.io brings both the daemon and the `docker` client this script talks to it with.
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        packages+=(docker.io)
    fi
    # The test image holds /bin/busybox alone: it must be the statically linked build.
    dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
    if ((${#packages[@]})); then apt_install "${packages[@]}"; fi
}

start() {
    if daemon_answers; then
        if pid="$(our_pid)"; then
            say "dockerd already running (ours, pid $pid)"
        else
            say "a Docker daemon already answers (not started by this script); leaving it alone"
        fi
        return 0
    fi
    install_missing
    [[ "$(id -u)" == 0 ]] || die "starting dockerd needs root"
    if our_pid >/dev/null; then
        die "our dockerd (pid $(our_pid)) runs but does not answer; see $LOG or run '$0 stop'"
    fi
    rm -f "$PIDFILE"  # stale: its dockerd is gone
    say "starting dockerd (log: $LOG)"
    # setsid: its own session, so the caller's job control and hangups do not reach it.
    # shellcheck disable=SC2086  # DOCKERD_EXTRA_ARGS is a list of flags on purpose
    setsid dockerd --pidfile "$PIDFILE" ${DOCKERD_EXTRA_ARGS:-} >>"$LOG" 2>&1 </dev/null &
    local waited=0
    until daemon_answers; do
        if ((waited >= START_TIMEOUT)); then
            tail -n 30 "$LOG" >&2 || true
            die "dockerd did not answer within ${START_TIMEOUT}s (log above: $LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "dockerd answers (pid $(our_pid), started by us, log: $LOG)"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        say "no dockerd of ours is running; nothing to stop"
        return 0
    fi
    say "stopping dockerd pid $pid"
    kill -TERM "$pid"
    # dockerd stops its containers and its containerd before it exits.
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT)); then
            say "dockerd pid $pid still runs after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PIDFILE"
    say "dockerd stopped"
}

status() {
    local pid
    if daemon_answers; then
        if pid="$(our_pid)"; then say "answering (ours, pid $pid)"; else say "answering (not ours)"; fi
    else
        say "no Docker daemon answers"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
