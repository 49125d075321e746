"""`python -m cli`: the same as the installed `mailnet` command."""

from cli.main import main

if __name__ == "__main__":
    main()
