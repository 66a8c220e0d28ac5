"""The shipped demo evidence bundle (profiles/demo-evidence), and how it was made.

The bundle is the lab's flawed Contoso written as an administrator's collector
would write it, collected at a fixed moment so its verdicts never drift: the
auth certificate has 45 days left *as of collection*, whatever today's date.

    python -m hybridtrust.demo profiles/demo-evidence
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

from hybridtrust.lab.bundle import write_evidence_bundle
from hybridtrust.lab.contoso import flawed_contoso

COLLECTED_AT = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def build_demo_bundle(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    write_evidence_bundle(flawed_contoso(COLLECTED_AT), directory, collected_at=COLLECTED_AT)


if __name__ == "__main__":
    build_demo_bundle(Path(sys.argv[1] if len(sys.argv) > 1 else "profiles/demo-evidence"))
