"""Deprecated name of ``python -m gangealing.pck`` (PCK-Transfer); kept for one release."""

from __future__ import annotations

import sys

from gangealing.pck import main as _pck_main


def main() -> None:
    print(
        "warning: gangealing.evaluate_pck is deprecated and will be removed in the next release; "
        "use python -m gangealing.pck (console script gangealing-pck), same arguments",
        file=sys.stderr,
    )
    _pck_main()


if __name__ == "__main__":
    main()
