"""``python -m mbias`` (and ``accelerate launch -m mbias ...``)."""

from mbias.cli import main_entry

if __name__ == "__main__":
    main_entry()
