"""Autoscaling decisions for a model's replicas, with Knative KPA's semantics.

Pure: samples in, a desired replica count and a reason out. The local supervisor and the
Kubernetes scaler own the clocks, the metrics and the processes.
"""

from vfleet.autoscale.kpa import Autoscaler
from vfleet.autoscale.policy import Decision, Metric, Sample, ScalePolicy, policy_for

__all__ = ["Autoscaler", "Decision", "Metric", "Sample", "ScalePolicy", "policy_for"]
