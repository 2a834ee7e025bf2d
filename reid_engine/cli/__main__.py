"""``python -m reid_engine.cli``: the same as the ``reid-engine`` command."""
from . import main

if __name__ == "__main__":
    main()
