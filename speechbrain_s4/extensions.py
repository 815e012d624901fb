"""C++ CPU kernels compiled on first use.

The package ships the sources of its C++ kernels (the selective scan of
``speechbrain_s4.ssm.scan_cpp``, the fused conv/norm layers of
``speechbrain_s4.cpu_kernels``) and compiles each with
``torch.utils.cpp_extension`` the first time it is needed (a C++ compiler,
ninja and the Python headers; 15-30 s). torch caches the binary in its
extensions folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) and its file lock lets concurrent processes
share one build. Kernels are compiled with ``-march=native``, so the cached
binary's name includes a digest of what "native" means for this compiler on
this CPU: a cache shared by different machines holds one build each.

A missing tool or a failed build raises ``ImportError`` saying what is
missing and how to install it; the failure is remembered, so callers with a
PyTorch fallback pay for it once.

Example
-------
>>> from pathlib import Path
>>> kernel = CppExtension(Path("missing.cpp"), "a test kernel", "use PyTorch")
>>> kernel.available()
False
>>> "missing.cpp" in kernel.missing_build_tools()[0]
True

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import threading
from pathlib import Path

__all__ = ["CppExtension", "CFLAGS", "LDFLAGS"]

# The kernels are leaves below ``ssm`` and never import SpeechBrain
# (DEVELOPING.md); this is the standard logger that
# speechbrain.utils.logger.get_logger(__name__) would wrap.
logger = logging.getLogger(__name__)

#: -O3 and FMA contraction (off by default under -std=c++XX) matter: the
#: kernels are chains of multiply-adds. OpenMP for ``#pragma omp simd`` and
#: torch's thread pool.
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-Wno-psabi"]
LDFLAGS = ["-fopenmp"]


class CppExtension:
    """One C++ source, compiled on first ``load()`` and cached.

    Arguments
    ---------
    source : pathlib.Path
        The ``.cpp`` file (package data).
    what : str
        What the kernel is, for messages ("selective_scan backend 'cpp'").
    fallback : str
        What the user can do instead, for messages ("use backend='torch'").
    extra_cflags : list of str
        Compiler flags beyond ``CFLAGS``.

    Attributes
    ----------
    state : dict
        ``{"module": loaded module or None, "error": message or None}``.
    """

    def __init__(self, source: Path, what: str, fallback: str, extra_cflags=()):
        self.source = Path(source)
        self.what = what
        self.fallback = fallback
        self.cflags = [*CFLAGS, *extra_cflags]
        self.state = {"module": None, "error": None}
        self._lock = threading.Lock()

    def load(self):
        """Compile (first use) or load the extension; return its module.

        Raises
        ------
        ImportError
            When a build tool is missing (the message names each one and
            how to install it) or the compilation fails (with the
            compiler's message). The failure is remembered: later calls
            raise at once.
        """
        with self._lock:
            if self.state["module"] is not None:
                return self.state["module"]
            if self.state["error"] is None:
                try:
                    self.state["module"] = self._build()
                except ImportError as err:
                    self.state["error"] = str(err)
            if self.state["error"] is not None:
                raise ImportError(self.state["error"])
            return self.state["module"]

    def available(self) -> bool:
        """True when the extension builds or loads (it is built if needed)."""
        try:
            self.load()
        except ImportError:
            return False
        return True

    def missing_build_tools(self) -> list[str]:
        """What the build needs and cannot find, each with how to install it."""
        from torch.utils.cpp_extension import is_ninja_available

        missing = []
        if not self.source.is_file():
            missing.append(
                f"the kernel's source {self.source} (not installed; reinstall "
                "speechbrain_s4 with its package data)"
            )
        if shutil.which(_compiler()) is None:
            missing.append(
                f"a C++ compiler ({_compiler()!r} not found; e.g. apt-get "
                "install g++, or set CXX)"
            )
        if not is_ninja_available():
            missing.append("ninja (pip install ninja)")
        include = sysconfig.get_path("include", scheme="posix_prefix")
        if not (Path(include) / "Python.h").is_file():
            missing.append(
                f"the Python headers ({include}/Python.h not found; e.g. "
                "apt-get install python3-dev)"
            )
        return missing

    def extension_name(self) -> str:
        """``speechbrain_s4_<source stem>_<digest of -march=native>``.

        torch only hashes the sources and flags, and "-march=native" reads
        the same everywhere; the digest covers the compiler version and the
        instruction sets that "native" selects on this machine.
        """
        return f"speechbrain_s4_{self.source.stem}_{_native_digest()}"

    def _build(self):
        missing = self.missing_build_tools()
        if missing:
            raise ImportError(
                f"{self.what} compiles a C++ extension on first use and needs "
                f"{'; '.join(missing)}; or {self.fallback}"
            )
        from torch.utils.cpp_extension import load

        name = self.extension_name()
        logger.info(
            "%s: loading the C++ CPU kernel %s (compiled on first use, cached "
            "by torch)",
            self.what,
            name,
        )
        try:
            return load(
                name=name,
                sources=[str(self.source)],
                extra_cflags=self.cflags,
                extra_ldflags=LDFLAGS,
                verbose=False,
            )
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            message = str(err)
            if len(message) > 3000:  # the compiler's last lines tell why
                message = "..." + message[-3000:]
            raise ImportError(
                f"{self.what}: compiling {self.source} failed: {message}; "
                f"{self.fallback}"
            ) from err


def _compiler():
    """The C++ compiler torch's extension builder runs (CXX or c++)."""
    return os.environ.get("CXX", "c++")


def _native_digest():
    """12 hex digits naming the compiler and what -march=native selects."""
    try:
        probe = subprocess.run(
            [_compiler(), "-march=native", "-###", "-E", "-x", "c++", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        target = probe.stdout + probe.stderr
    except (OSError, subprocess.SubprocessError) as err:
        target = repr(err)
    return hashlib.sha1(target.encode()).hexdigest()[:12]
