"""Stop signals by name or number, as containerd parses them (moby's ``signal.ParseSignal``):
``SIGQUIT``, ``quit``, ``RTMIN+3``, ``9``; and the CRI's enum spelling (``SIGRTMINPLUS3``)."""

from __future__ import annotations

import signal

__all__ = ["cri_signal_name", "oci_signal_name", "oci_stop_signal", "parse_signal"]

_RTMIN, _RTMAX = int(signal.SIGRTMIN), int(signal.SIGRTMAX)


def _names() -> dict[str, int]:
    names = {
        s.name.removeprefix("SIG"): int(s)
        for s in signal.Signals
        if s.name.startswith("SIG")
        and not s.name.startswith("SIG_")
        and s.name not in ("SIGRTMIN", "SIGRTMAX")
    }
    names.update({"CLD": int(signal.SIGCHLD), "POLL": int(signal.SIGIO), "IOT": int(signal.SIGABRT)})
    names["RTMIN"], names["RTMAX"] = _RTMIN, _RTMAX
    for i in range(1, 16):
        names[f"RTMIN+{i}"] = _RTMIN + i
        names[f"RTMAX-{i}"] = _RTMAX - i
    return names


SIGNALS = _names()


def parse_signal(raw: str) -> int:
    """The signal's number; ValueError ``invalid signal: <raw>`` for 0 or an unknown name."""
    try:
        number = int(raw)
    except ValueError:
        found = SIGNALS.get(raw.upper().removeprefix("SIG"))
        if found is None:
            raise ValueError(f"invalid signal: {raw}") from None
        return found
    if number == 0:
        raise ValueError(f"invalid signal: {raw}")
    return number


def oci_signal_name(cri_name: str) -> str:
    """containerd's convertFromCRISignal: ``SIGRTMINPLUS3`` → ``SIGRTMIN+3``."""
    return cri_name.replace("PLUS", "+", 1).replace("MINUS", "-", 1)


def cri_signal_name(oci_name: str) -> str:
    """containerd's toCRISignal, before the enum lookup: ``SIGRTMIN+3`` → ``SIGRTMINPLUS3``."""
    return oci_name.replace("+", "PLUS", 1).replace("-", "MINUS", 1)


def oci_stop_signal(cri_name: str) -> str:
    """containerd's criSignalToOCIStopSignal for the CRI enum's name ("" for RUNTIME_DEFAULT); a
    number (a value the enum does not know) is refused."""
    if cri_name in ("", "RUNTIME_DEFAULT"):
        return ""
    if cri_name.isdigit():
        raise ValueError(f"unknown CRI stop signal {cri_name}: invalid argument")
    return oci_signal_name(cri_name)
