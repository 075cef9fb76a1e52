"""`python -m vfleet.download` runs `vfleet download` on its own (tests, slim Job images)."""

from vfleet.download.command import download

download(prog_name="vfleet download")
