"""``python -m tcd_train``, ``accelerate launch -m tcd_train``, ``torchrun -m tcd_train``."""

from .train import main

if __name__ == "__main__":
    raise SystemExit(main())
