"""DVC stage `stack`: thin glue over `alphaforge.stages.stack`; see `alphaforge stack --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["stack", *sys.argv[1:]])


if __name__ == "__main__":
    main()
