"""`spindle up` (what `scripts/serve` runs): both services as child
processes, the model-service, then the thread-service (given the arguments
after `up`). Ctrl-C, SIGTERM or SIGHUP stops the thread-service
first, so that its in-flight turns still reach the model-service during their
grace period and are recorded as they end, then the model-service; further
Ctrl-Cs do not cut that short."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import click

# How often the wait for a signal also checks whether a service has exited.
POLL_SECONDS = 0.2
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _in_child() -> None:
    """In the child before exec. The terminal's Ctrl-C (and its hang-up)
    reaches every process of the foreground group, but only `spindle up` may
    act on it, to stop the services in order; a service keeps ignored what
    its parent ignored. And should `spindle up` die without stopping them, the
    kernel sends them SIGTERM (Linux), so no service is left behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """One service process, `python -m MODULE ARGS`."""

    def __init__(self, label: str, module: str, args: Sequence[str]) -> None:
        self.label = label
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], preexec_fn=_in_child)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> int:
        """SIGTERM, then wait for as long as its graceful stop takes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait()


def status_of(returncode: int) -> int:
    """A child's return code as an exit status: 128 + N for a signal N, as shells say."""
    return 128 - returncode if returncode < 0 else returncode


def run(thread_args: Sequence[str]) -> int:
    """Run both services until a stop signal or until one exits. The exit
    status: 0 after a requested stop that both completed, else the status of
    the service that failed."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            # After the terminal's ^C, on a line of its own.
            lead = "\n" if signum == signal.SIGINT else ""
            click.echo(
                f"{lead}spindle up: stopping the thread-service, then the model-service", err=True
            )
        stop.set()

    for signum in _STOP_SIGNALS:
        signal.signal(signum, request_stop)
    services = [Service("model-service", "model_service", [])]
    if not stop.is_set():
        services.append(Service("thread-service", "thread_service", thread_args))
    while not stop.is_set() and not any(service.exited() for service in services):
        stop.wait(POLL_SECONDS)
    status = 0
    exited = [service for service in services if service.exited()]
    if exited and not stop.is_set():
        # It ended by itself: a failure (or `--help`, status 0); stop the other.
        status = status_of(exited[0].proc.returncode)
        if status:
            click.echo(f"spindle up: the {exited[0].label} exited with status {status}", err=True)
    for service in reversed(services):
        code = status_of(service.stop())
        status = status or code
    return status


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("thread_args", nargs=-1, type=click.UNPROCESSED)
def up(thread_args: tuple[str, ...]) -> None:
    """Run the model-service and the thread-service until Ctrl-C.

    Arguments after `up` go to the thread-service (`spindle up -- --help`
    lists them); SPINDLE_* variables reach both. Exit status: 0 after a stop
    asked for, else that of the service that failed (1: unusable settings,
    2: could not start)."""
    sys.exit(run(thread_args))
