"""The fleet spec: typed models, the files they are read from, and importers onto them."""
