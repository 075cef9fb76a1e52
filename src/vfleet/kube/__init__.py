"""Kubernetes: fleet -> chart values, the Helm chart rendered and installed through the Helm SDK."""
