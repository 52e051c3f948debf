"""DVC stage `rl`: thin glue over `alphaforge.stages.rl`; see `alphaforge rl --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["rl", *sys.argv[1:]])


if __name__ == "__main__":
    main()
