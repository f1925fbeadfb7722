"""The study's modules live in scripts/repro (scripts/ is not a package; a site-packages module named `scripts`
shadows it), so they are imported as `repro` from scripts/."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
