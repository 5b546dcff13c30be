#!/usr/bin/env python3
"""Fails if the daemon makes a system call that systemd/hookgate.service's
SystemCallFilter= denies: a denied call kills the daemon (SIGSYS), which no
other test would see, since none runs under systemd.

The daemon runs under strace on a copy of the shipped routes.toml (ports
moved, `--dev` secrets) through an event's whole path: signed samples sent
and routed to the log sink, the admin listener asked, SIGTERM. Every call
it made is checked against the unit's filter, expanded with
`systemd-analyze syscall-filter`.

  .ci/syscalls.py path/to/hookgate
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "systemd", "hookgate.service")
TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROUTES = os.path.join(TOP, "routes.toml")
PORT, ADMIN = 18480, 18481


def expand(name, cache={}):
    """A syscall-filter group's calls, nested groups expanded."""
    if not name.startswith("@"):
        return {name}
    if name not in cache:
        out = subprocess.run(
            ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
        ).stdout
        calls = set()
        for line in out.splitlines()[1:]:
            item = line.strip()
            if item and not item.startswith("#"):
                calls |= expand(item)
        cache[name] = calls
    return cache[name]


def allowed():
    """The unit's allow list: its first SystemCallFilter= line, less each
    `~` line's calls, plus each later plain line's, in order."""
    calls = None
    for line in open(UNIT):
        m = re.match(r"SystemCallFilter=(~?)(.*)", line.strip())
        if not m:
            continue
        names = set().union(*(expand(n) for n in m.group(2).split()))
        if calls is None:
            if m.group(1):
                sys.exit("the unit's first SystemCallFilter= is a deny list; this check reads allow lists")
            calls = names
        elif m.group(1):
            calls -= names
        else:
            calls |= names
    if calls is None:
        sys.exit("no SystemCallFilter= in the unit")
    return calls


# Loopback only: never through a proxy the environment names.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url):
    with OPENER.open(url, timeout=5) as r:
        return r.status


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp()
    daemon = None
    try:
        routes = open(ROUTES).read()
        routes = routes.replace("127.0.0.1:8080", f"127.0.0.1:{PORT}").replace(
            "127.0.0.1:9090", f"127.0.0.1:{ADMIN}"
        )
        with open(os.path.join(work, "routes.toml"), "w") as f:
            f.write(routes)
        shutil.copytree(os.path.join(TOP, "templates"), os.path.join(work, "templates"))
        trace = os.path.join(work, "trace")
        log = open(os.path.join(work, "log"), "w")
        daemon = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", trace, binary, "--config", "routes.toml", "serve", "--dev"],
            cwd=work,
            stdout=log,
            stderr=log,
            # strace and the daemon in a group of their own, killed
            # together should anything below fail.
            start_new_session=True,
        )
        deadline = time.time() + 60
        while True:
            try:
                if get(f"http://127.0.0.1:{ADMIN}/readyz") == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or daemon.poll() is not None:
                sys.exit(f"the daemon did not become ready under strace; its log:\n{open(log.name).read()}")
            time.sleep(0.2)
        if daemon.poll() is not None:
            sys.exit(f"another process answers on port {ADMIN}; the daemon under strace stopped:\n{open(log.name).read()}")
        with open(f"/proc/{daemon.pid}/task/{daemon.pid}/children") as f:
            (child,) = map(int, f.read().split())
        for sample in ["github push", "github pull_request", "zendesk ticket.created"]:
            subprocess.run(
                [binary, "--config", "routes.toml", "send", *sample.split(), "--dev"],
                cwd=work,
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )
        get(f"http://127.0.0.1:{ADMIN}/metrics")
        time.sleep(2)  # routed, delivered to the log sink, a checkpoint
        # The daemon is strace's child: the signal goes to it, as systemd's
        # would, and strace ends with it.
        os.kill(child, signal.SIGTERM)
        if daemon.wait(timeout=60) != 0:
            sys.exit(f"the daemon did not stop cleanly; its log:\n{open(log.name).read()}")
        made = set()
        for line in open(trace):
            m = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
            if m:
                made.add(m.group(1))
        denied = sorted(made - allowed())
        print(f"the daemon made {len(made)} kinds of system call")
        if denied:
            sys.exit(
                "systemd/hookgate.service's SystemCallFilter= would kill the daemon for: "
                + ", ".join(denied)
                + " (allow them in the unit, or stop making them)"
            )
        print("every one of them is allowed by systemd/hookgate.service")
    finally:
        if daemon is not None and daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        shutil.rmtree(work, ignore_errors=True)


main()
