"""`python -m assistant …` — the entry point delegates to the composition root (runtime/), so the
core package itself never imports a web framework, a channel or the store."""
import sys

from runtime.cli import main

sys.exit(main())
