"""`python -m hin ...` (and `torchrun -m hin ...`) run the command-line interface."""

from hin.cli import main

raise SystemExit(main())
