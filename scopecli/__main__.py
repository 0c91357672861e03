from scopecli.cli import main

main()
