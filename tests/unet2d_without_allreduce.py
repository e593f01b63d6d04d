"""unet2d.py whose Horovod ranks keep their own gradients (no all-reduce of them).

Only tests/test_horovod.py runs it, to show that without the all-reduce the
ranks drift apart; the production code has no switch for it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unet2d  # noqa: E402
from runtime.execution import distribution  # noqa: E402

distribution.HorovodWorkers.wrap_tape = lambda self, tape: tape
sys.exit(unet2d.main())
