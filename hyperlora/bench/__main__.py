"""``python -m hyperlora.bench`` = ``hyperlora bench``."""

from hyperlora.bench.main import main

raise SystemExit(main())
