"""Importers: other tools' values files onto the fleet spec's models."""
