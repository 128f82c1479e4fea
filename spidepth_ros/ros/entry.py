"""Console entry of ``depth_node``: signals are caught before the heavy imports.

Importing the node (numpy, rclpy, OpenCV, the runtimes) takes a quarter of a second or more. A SIGTERM in that
window would kill the process with -15, and a Ctrl-C would print a KeyboardInterrupt traceback from inside some
import. Nothing exists yet that needs stopping (no context, no DDS participant), so the early handler simply
leaves with exit code 0, as the node does after any signal; :func:`spidepth_ros.ros.depth_node.main` installs
its own handlers before it creates anything. This module imports nothing heavy.
"""
from __future__ import annotations

import os
import signal
import sys

QUIET_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_now(signum, frame) -> None:
    sys.stderr.write(f"[INFO] [depth_node]: {signal.Signals(signum).name} during start-up: exiting\n")
    sys.stderr.flush()
    os._exit(0)


def exit_quietly_on_signals() -> None:
    """Until the node installs its own handlers, SIGINT/SIGTERM end the process at once with exit code 0."""
    for sig in QUIET_SIGNALS:
        signal.signal(sig, _exit_now)


def depth_node_main() -> int:
    """The ``depth_node`` console script: early handlers, then the node."""
    exit_quietly_on_signals()
    from .depth_node import main

    return main()
