"""``python -m fivewsi`` runs the command line (handy under ``torchrun``)."""

from fivewsi.cli import main

main()
