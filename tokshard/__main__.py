"""`python -m tokshard ...` is the `tokshard` command (what tests and Ray jobs run when no script is on PATH)."""

from tokshard.pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
