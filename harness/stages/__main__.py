"""`python -m harness.stages <stage.json> [--rank]` (harness.stages.runner.main)."""

import sys

from harness.stages.runner import main

sys.exit(main())
