"""`python -m services.cli`: the same as the `comfyui-docker` console script."""

from services.cli.commands import main

if __name__ == "__main__":
    main()
