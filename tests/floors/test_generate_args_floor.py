"""`generate` read without typer (cli/generate_args.py) must agree with the typer installed: in the floors
run that is the oldest typer pyproject.toml allows, which parses with click itself instead of pydantic."""

from tests.cli.test_generate_args import *  # noqa: F401,F403 (the same tests, collected here too)
