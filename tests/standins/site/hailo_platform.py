"""``import hailo_platform`` gives the stand-in (``tests.standins.hailo_platform``): put this
folder on ``PYTHONPATH`` to run the assistant's own processes on it (no NPU is here)."""

import sys

from tests.standins import hailo_platform as _standin

sys.modules[__name__] = _standin
