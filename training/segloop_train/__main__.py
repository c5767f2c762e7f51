"""``python -m segloop_train``: the same as ``segloop-train``."""

from segloop_train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
