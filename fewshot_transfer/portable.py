"""Portable floats (``run.portable``): one kernel setting whose bits do not depend on the x86-64 CPU.

A native run uses the fastest kernels each CPU offers, and their float rounding differs from
one instruction set to the next (and between vendors with the same one: an Intel and an AMD
AVX-512 box disagreed on all 57 cells of the default run). Portable mode pins every library
that dispatches on the instruction set to code that every x86-64 CPU runs the same way:

* torch's own kernels (ATen) at their ``default`` capability, never the AVX2 / AVX-512 ones;
* no oneDNN and no NNPACK: convolutions go through ATen's im2col and MKL's GEMM (oneDNN jits
  kernels per instruction set; NNPACK needs AVX2 and serves batches of 16 and more);
* MKL in its reproducibility branch ``COMPATIBLE``, the one branch it honours on non-Intel CPUs;
* glibc's libm without its FMA variants (they round ``x ** y`` and ``math.exp`` differently in
  a few cases per ten thousand: Adam's bias corrections, the consistency ramps), numpy
  without its AVX2 / AVX-512 loops, oneDNN capped at SSE4.1 should anything still reach it.

``benchmarks/bench_portable.py`` measures it: the same bits under every instruction set this
setting was emulated on, at about 2.5x the fit time of the native kernels. Bits are promised
for the same software (torch build, numpy, glibc) and thread count; the cells record both.

The variables are read once: glibc's by the dynamic loader when the process starts, the others
when torch, MKL and numpy start. So a portable command restarts itself with them
(:func:`enter`), before it imports torch, and its worker processes inherit them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: The setting's name, recorded in every cell (``provenance.float_mode``); a new setting gets a new name.
NAME = "portable-1"
#: What a native cell records.
NATIVE = "native"
#: Pinned before the process starts. ``GLIBC_TUNABLES`` and ``NPY_DISABLE_CPU_FEATURES`` are
#: merged into what is there (see :func:`pinned_env`).
ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
}
#: Features hidden from glibc's ifunc resolvers, which then pick libm's baseline (SSE2) functions.
GLIBC_HIDDEN = ("-AVX2", "-FMA", "-FMA4")


def _numpy_dispatch() -> list[str]:
    """numpy's optional SIMD targets (everything above its build's baseline)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return list(__cpu_dispatch__)


def _merge(items: str, sep: str, extra: list[str] | tuple[str, ...]) -> str:
    have = [i for i in items.split(sep) if i]
    return sep.join([*have, *(e for e in extra if e not in have)])


def pinned_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the portable setting's variables added; what it already hides from glibc
    and numpy stays hidden (other tunables and variables are kept)."""
    env = {**environ, **ENV}
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    hwcaps = next((t.split("=", 1)[1] for t in tunables if t.startswith("glibc.cpu.hwcaps=")), "")
    tunables = [t for t in tunables if not t.startswith("glibc.cpu.hwcaps=")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, "glibc.cpu.hwcaps=" + _merge(hwcaps, ",", GLIBC_HIDDEN)])
    env["NPY_DISABLE_CPU_FEATURES"] = _merge(env.get("NPY_DISABLE_CPU_FEATURES", ""), " ", _numpy_dispatch())
    return env


def pinned(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``environ`` already holds the setting's variables."""
    return all(environ.get(k) == v for k, v in pinned_env(environ).items())


def enter(restart: bool) -> None:
    """Give this process the portable setting's variables before torch starts.

    Restarts the command (same arguments) with them when they are missing and ``restart`` is
    true (a command line); otherwise, or once torch is running, raises: the variables would
    come too late to take effect.
    """
    if pinned():
        return
    if not restart or "torch" in sys.modules:
        raise RuntimeError(
            "run.portable needs its kernel settings before the process starts (glibc reads them at "
            "start, torch at import): run it as a command (`ftbench run --portable`), which restarts "
            "itself with them, or start Python with them (fewshot_transfer.portable.pinned_env)"
        )
    log.info("portable floats (%s): restarting with the pinned kernel settings", NAME)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], pinned_env(os.environ))


def start(restart: bool) -> None:
    """:func:`enter`, then :func:`activate`: what a portable command does before it imports torch."""
    enter(restart)
    activate()


def activate() -> None:
    """Switch torch's oneDNN and NNPACK off and check that the setting holds (after ``import torch``)."""
    import torch

    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    if float_mode() != NAME:
        raise RuntimeError(
            f"portable floats requested, but this process runs torch's {torch.backends.cpu.get_cpu_capability()} "
            "kernels or lacks the pinned variables (torch started before they were set): start the command "
            "with --portable (ftbench run / worker), which restarts it with them"
        )


def float_mode() -> str:
    """:data:`NAME` when this process computes with the portable setting, else :data:`NATIVE`."""
    import torch

    portable = (
        pinned()
        and torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        and not torch.backends.mkldnn.enabled
        and not torch._C._get_nnpack_enabled()
    )
    return NAME if portable else NATIVE


def modes_of(records: list[dict]) -> list[str]:
    """The distinct float modes of cell records (cells from before the field are native)."""
    return sorted({r["provenance"].get("float_mode", NATIVE) for r in records if r.get("provenance")})
