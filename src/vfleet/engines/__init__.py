"""What vfleet launches and with which settings: vLLM and simulator command lines, the router's
settings from the spec, and the engine rules shared with the Helm chart (`rules`)."""
