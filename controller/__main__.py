"""`python -m controller` runs the `cadml` command line."""

from controller.cli import main

raise SystemExit(main())
