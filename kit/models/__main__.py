"""`python -m kit.models [--all]`: the model cards as the README's model table (markdown); with --all, a row for
every model of every family too (torchvision's 80 at their input sizes: a minute or so to count)."""
from __future__ import annotations

import argparse

from kit.models import CARDS, FAMILIES
from kit.models.registry import table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.models", description=__doc__)
    parser.add_argument("--all", action="store_true", help="every family's models too, one row each")
    args = parser.parse_args(argv)
    cards = list(CARDS.values())
    if args.all:
        cards += [family.card(name) for family in FAMILIES.values() if not family.missing() for name in family.names()]
    print(table(cards, list(FAMILIES.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
