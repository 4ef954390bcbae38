"""Whether Qt can open windows here; GUI tests are skipped with one clear reason when not.

Without a display, creating a ``QApplication`` does not raise: Qt calls ``qFatal`` and the
whole pytest process dies with SIGABRT, losing the summary of every test that ran. So the
check runs before any GUI test, and the last step asks a child process to create the
application, which also catches a display that exists while Qt's xcb libraries do not.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Setting this (to anything but "" or "0") simulates a machine without a screen.
NO_DISPLAY_ENV = "EMPANADA_NAPARI_NO_DISPLAY"
# Fixtures that create a QApplication: a test that asks for one is a GUI test.
GUI_FIXTURES = frozenset({"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp"})
HOW_TO_FIX = (
    "install Xvfb and Qt's xcb libraries (Debian/Ubuntu: the apt-get line in .ci/run) so "
    "pytest-xvfb can start a virtual display, and a Qt binding (pip install -e '.[testing]')"
)
_PROBE = "from qtpy.QtWidgets import QApplication; app = QApplication([]); print('qt-ok')"


def _probe_qt() -> str | None:
    """Create a QApplication in a child process; None if it works, else Qt's last words."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return None  # a slow machine, not a missing display: let the tests run and tell
    if "qt-ok" in res.stdout:
        return None
    lines = [line for line in (res.stderr or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {res.returncode}"


def no_display_reason() -> str | None:
    """Why GUI tests cannot run here (one sentence with the fix), or None when they can."""
    if os.environ.get(NO_DISPLAY_ENV, "") not in ("", "0"):
        return f"GUI tests skipped: {NO_DISPLAY_ENV} is set (simulated machine without a screen)"
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    headless_qt = platform.startswith(("offscreen", "minimal", "vnc"))
    on_x11 = sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))
    has_screen = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if on_x11 and not headless_qt and not has_screen:
        return f"GUI tests skipped: no display (DISPLAY is not set); {HOW_TO_FIX}"
    failure = _probe_qt()
    if failure is not None:
        return f"GUI tests skipped: Qt cannot start here ({failure}); {HOW_TO_FIX}"
    return None
