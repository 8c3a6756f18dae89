"""Keep the native libraries' chatter out of the tuner's output, and nothing else.

TensorFlow's converter, oneDNN, absl and the LiteRT interpreter write from C++
straight to file descriptor 2 ("fully_quantize: 0, inference_type: 6 ...",
"Created TensorFlow Lite XNNPACK delegate", "oneDNN custom operations are on"),
where Python cannot filter them. ``native_quiet`` points fd 2 at a temporary
file for the duration of a call and afterwards writes back every line that is
not one of those known notices, so real errors still reach the user.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(
    r"^(?:"
    r"fully_quantize: \d|"  # the MLIR quantiser's summary of each conversion
    r"INFO: Created TensorFlow Lite .*delegate|"
    r"INFO: Initialized TensorFlow Lite runtime|"
    r"WARNING: All log messages before absl::InitializeLog|"
    r"[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]|"  # absl INFO / WARNING lines of the C++ libraries
    r"To enable the following instructions: |"
    r"This TensorFlow binary is optimized to use|"
    r"Estimated count of arithmetic ops: |"
    r"Warning: Please consider providing the trackable_obj"
    r")"
)


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """Run the body with fd 2 captured; re-emit the lines that are not known notices."""
    fd = 2  # where the C++ libraries write, whatever sys.stderr is
    try:
        os.fstat(fd)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line
                for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                if line.strip() and not NOISE.match(line)
            ]
            if kept:
                os.write(fd, "".join(kept).encode())
