"""``python -m igan`` (also what ``torchrun -m igan`` runs)."""

from igan.cli import main

if __name__ == "__main__":
    main()
