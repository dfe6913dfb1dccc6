from nfs_orchestrator.cli import main

main()
