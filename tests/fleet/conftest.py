"""Fleet tests reuse the gateway tests' helpers (fake replica, free ports, SSE parsing)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "gateway"))
