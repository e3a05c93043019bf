"""``python -m syncd.emulator``: the same as ``syncd emulator``."""

from __future__ import annotations

from syncd.emulator.main import main

raise SystemExit(main())
