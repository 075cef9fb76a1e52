"""The vfleet router: one OpenAI-compatible endpoint in front of many engines."""
