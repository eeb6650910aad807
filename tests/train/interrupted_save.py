"""``jaxdiff train`` whose checkpoint of one step never completes: the files are written, the
rename that commits them waits forever (the test kills the process there). Usage:
``python interrupted_save.py STEP <jaxdiff train arguments>``."""

import sys
import time

from orbax.checkpoint._src.path import atomicity

from jaxdiff.cli import main

STEP = sys.argv[1]
_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def finalize(self):
    if self._final_path.name == STEP:
        print(f"saving step {STEP}", flush=True)
        time.sleep(3600)
    await _finalize(self)


atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.exit(main(sys.argv[2:]))
