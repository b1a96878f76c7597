"""`python -m lorafit` (also what `torchrun -m lorafit` and `accelerate launch -m lorafit` run)."""

from lorafit.cli import main

if __name__ == "__main__":
    main()
