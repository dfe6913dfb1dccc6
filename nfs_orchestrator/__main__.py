"""Runs the posenfs command line: ``python -m nfs_orchestrator``."""

from nfs_orchestrator.cli import main

main()
